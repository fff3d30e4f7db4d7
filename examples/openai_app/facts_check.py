"""Example application: does the deployed model know the product's facts? A keyword check.

    python examples/openai_app/facts_check.py data/support-faq/fact-checks.jsonl \
        --base-url http://127.0.0.1:8000/v1 --api-key ... [--min 7]

Each line of the checks file is {"question": ..., "keywords": [...]}: the answer passes when
it contains every keyword (case-insensitive). The questions come from the training set, so
this shows whether fine-tuning taught the model its facts, not whether it generalises (the
evaluation suite's held-out questions do that). Greedy decoding, so a rerun gives the same
answers. Questions go `--concurrency` at a time (the deployment batches them; keep it within
its max_concurrency); answers print in the file's order. Each answer is rated (up when it
passes, down when not) through /v1/feedback, so a wrong answer never becomes a training row
when the deployment's traffic is collected.
Exit 0, or 1 when fewer than --min answers pass or the deployment cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deployment import add_connection_arguments, send_feedback
from openai import APIError, OpenAI


def read_checks(path: Path) -> list[dict]:
    checks = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question, keywords = row["question"], row["keywords"]
        except (ValueError, KeyError, TypeError) as err:
            raise SystemExit(
                f'{path}:{number}: expected {{"question": ..., "keywords": [...]}} ({err})'
            ) from None
        if not isinstance(question, str) or not keywords or not isinstance(keywords, list):
            raise SystemExit(f"{path}:{number}: 'question' must be text, 'keywords' a list")
        checks.append({"question": question, "keywords": [str(k) for k in keywords]})
    return checks


def passes(answer: str, keywords: list[str]) -> bool:
    text = answer.lower()
    return all(keyword.lower() in text for keyword in keywords)


def rate(base_url: str, api_key: str, reply_id: str, rating: str) -> None:
    response = send_feedback(base_url, api_key, {"id": reply_id, "rating": rating})
    if response.status_code != 200:  # a deployment that collects nothing has no feedback route
        print(f"      (feedback not recorded: HTTP {response.status_code})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checks", type=Path)
    add_connection_arguments(parser)
    parser.add_argument("--concurrency", type=int, default=4, help="questions at a time")
    parser.add_argument("--min", type=int, default=0, help="fail below this many passes")
    args = parser.parse_args(argv)

    checks = read_checks(args.checks)
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    passed = 0
    try:
        model = args.model or client.models.list().data[0].id

        def ask(check: dict) -> tuple[str, str]:
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": check["question"]}],
                max_tokens=args.max_tokens,
                temperature=0.0,
            )
            return reply.id, (reply.choices[0].message.content or "").replace("\n", " ").strip()

        with ThreadPoolExecutor(max(1, args.concurrency)) as pool:
            replies = list(pool.map(ask, checks))
        for check, (reply_id, answer) in zip(checks, replies, strict=True):
            ok = passes(answer, check["keywords"])
            passed += ok
            # Rated like a user would: a thumbs-down keeps a wrong answer out of the data the
            # deployment collects for retraining (the production loop drops those rows).
            rate(args.base_url, args.api_key, reply_id, "up" if ok else "down")
            mark = "pass" if ok else "miss"
            print(f"{mark}  {check['question']}  [{', '.join(check['keywords'])}]")
            print(f"      {answer[:160]}")
    except APIError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 1
    print(f"facts: {passed}/{len(checks)} answers contain the fact that matters")
    return 0 if passed >= args.min else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
