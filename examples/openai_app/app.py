"""Example application: ask an llmops deployment a question with the official openai client.

    LLMOPS_BASE_URL=http://127.0.0.1:8000/v1 LLMOPS_API_KEY=... \
        python examples/openai_app/app.py "How do I reset my password?" --rating up

Prints the answer, then (with --rating or --correction) sends feedback to /v1/feedback.
"""

from __future__ import annotations

import argparse
import sys

from deployment import add_connection_arguments, send_feedback
from openai import APIError, OpenAI


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    add_connection_arguments(parser)
    parser.add_argument("--rating", choices=["up", "down"])
    parser.add_argument("--correction", help="the answer you expected")
    args = parser.parse_args(argv)

    # A busy deployment answers 504 after its timeout or 429/503 when its queue is full: the
    # openai client asks again (with backoff) on those, so give it room on a loaded machine.
    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=5, timeout=180)
    try:
        model = args.model or client.models.list().data[0].id
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": args.question}],
            max_tokens=args.max_tokens,
        )
    except APIError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 1
    print(f"id: {reply.id}")
    print(f"answer: {reply.choices[0].message.content}")

    if args.rating or args.correction:
        feedback = {"id": reply.id, "rating": args.rating or "down", "correction": args.correction}
        response = send_feedback(args.base_url, args.api_key, feedback)
        if response.status_code != 200:
            print(f"feedback refused: {response.json()['error']['message']}", file=sys.stderr)
            return 1
        print(f"feedback: {response.json()['message']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
