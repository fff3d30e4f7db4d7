"""Example traffic for the production loop: customers ask the support deployment questions
with the official openai client and rate the answers, as a support desk would.

    python examples/openai_app/support_traffic.py --base-url http://127.0.0.1:8000/v1 \
        --api-key ... --count 220

Questions come from data/support-faq/faq.jsonl (questions people do ask); a support agent
who knows the right answer sends it as a correction for two replies in three and rates the
third down without one (no time to write it). Prints how many of each it sent.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from deployment import send_feedback
from openai import APIError, OpenAI

FAQ = Path(__file__).resolve().parents[2] / "data" / "support-faq" / "faq.jsonl"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--model", default="support-assistant")
    parser.add_argument("--count", type=int, default=220)
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args(argv)

    rows = [json.loads(line) for line in FAQ.read_text(encoding="utf-8").splitlines() if line]
    rows = [r for r in rows if str(r.get("question", "")).strip() and str(r.get("answer", ""))]
    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=2)
    sent = {"corrected": 0, "down": 0}
    for index, row in enumerate(itertools.islice(itertools.cycle(rows), args.count)):
        try:
            reply = client.chat.completions.create(
                model=args.model,
                messages=[{"role": "user", "content": row["question"]}],
                max_tokens=args.max_tokens,
            )
        except APIError as err:
            print(f"error: {err.message}", file=sys.stderr)
            return 1
        if index % 3 == 2:
            verdict, kind = {"rating": "down"}, "down"
        else:
            verdict, kind = {"rating": "down", "correction": row["answer"]}, "corrected"
        response = send_feedback(args.base_url, args.api_key, {"id": reply.id, **verdict})
        if response.status_code != 200:
            print(f"feedback refused: {response.text[:200]}", file=sys.stderr)
            return 1
        sent[kind] += 1
        if (index + 1) % 20 == 0:
            print(f"  {index + 1}/{args.count} questions asked", flush=True)
    print(f"sent {args.count} questions: {sent['corrected']} corrected, {sent['down']} rated down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
