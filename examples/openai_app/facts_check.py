"""Example application: does the deployed model know the product's facts? A keyword check.

    python examples/openai_app/facts_check.py data/support-faq/fact-checks.jsonl \
        --base-url http://127.0.0.1:8000/v1 --api-key ... [--min 7]

Each line of the checks file is {"question": ..., "keywords": [...]}: the answer passes when
it contains every keyword (case-insensitive, as a whole word or figure: "$16" is not found
in "$160"). The questions come from the training set, so this shows whether fine-tuning
taught the model its facts, not whether it generalises (the evaluation suite's held-out
questions do that). Greedy decoding, so a rerun gives the same
answers. Questions go `--concurrency` at a time (the deployment batches them; keep it within
its max_concurrency); answers print in the file's order. Each answer is rated (up when it
passes, down when not) through /v1/feedback, so a wrong answer never becomes a training row
when the deployment's traffic is collected.

A busy deployment answers a question late (504 after its timeout_s, 429/503 when its queue is
full, or no answer within --timeout): that question is asked again, up to --retries times
with a doubling wait from --backoff seconds, and if it still gets no answer it is reported as
that question's failure ("timed out"), never the end of the check.
Exit 0, or 1 when fewer than --min answers pass or the deployment cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from deployment import add_connection_arguments, send_feedback
from openai import APIError, APIStatusError, APITimeoutError, OpenAI

# Answers of a deployment that is busy, not broken: asking again later may get an answer.
RETRYABLE_STATUS = {
    408: "timed out",
    429: "busy",
    502: "bad gateway",
    503: "busy",
    504: "timed out",
}


@dataclass
class Answer:
    """One question's outcome: the reply (id and text), or why there was none."""

    reply_id: str | None = None
    text: str = ""
    failure: str | None = None
    retried: list[str] = field(default_factory=list)  # why each earlier try got no answer


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
    return all(_mentions(answer, keyword) for keyword in keywords)


def _mentions(answer: str, keyword: str) -> bool:
    """The keyword as a whole word or figure: "$16" is not in "$160", "Android 10" not in
    "Android 100" (a keyword that starts or ends with a letter or digit must not run on)."""
    before = r"(?<![\w])" if keyword[:1].isalnum() else ""
    after = r"(?![\w])" if keyword[-1:].isalnum() else ""
    return re.search(before + re.escape(keyword) + after, answer, re.IGNORECASE) is not None


def ask_patiently(
    ask: Callable[[], tuple[str, str]],
    retries: int,
    backoff_s: float,
) -> Answer:
    """`ask()` until it answers: a timeout or a busy answer (RETRYABLE_STATUS) is retried up to
    `retries` times, waiting backoff_s, then twice as long each time; after the last try the
    question's Answer says why ("timed out (HTTP 504) after 4 tries"). Other errors (a wrong key, a
    deployment that is not there) are raised: they would fail every question alike."""
    retried: list[str] = []
    for attempt in range(retries + 1):
        try:
            reply_id, text = ask()
            return Answer(reply_id, text, retried=retried)
        except APITimeoutError:
            why = "timed out"
        except APIStatusError as err:
            if err.status_code not in RETRYABLE_STATUS:
                raise
            why = f"{RETRYABLE_STATUS[err.status_code]} (HTTP {err.status_code})"
        retried.append(why)
        if attempt < retries:
            time.sleep(backoff_s * 2**attempt)
    tries = "1 try" if retries == 0 else f"{retries + 1} tries"
    return Answer(failure=f"{retried[-1]} after {tries}", retried=retried[:-1])


def rate(base_url: str, api_key: str, reply_id: str, rating: str) -> None:
    try:
        response = send_feedback(base_url, api_key, {"id": reply_id, "rating": rating})
    except httpx.HTTPError as err:  # a busy deployment: the answer still counts
        print(f"      (feedback not recorded: {type(err).__name__})")
        return
    if response.status_code != 200:  # a deployment that collects nothing has no feedback route
        print(f"      (feedback not recorded: HTTP {response.status_code})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checks", type=Path)
    add_connection_arguments(parser)
    parser.add_argument("--concurrency", type=int, default=4, help="questions at a time")
    parser.add_argument("--min", type=int, default=0, help="fail below this many passes")
    parser.add_argument(
        "--retries", type=int, default=3, help="more tries for a question that timed out"
    )
    parser.add_argument(
        "--backoff", type=float, default=5.0, help="seconds before the first retry (then x2)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for one answer"
    )
    args = parser.parse_args(argv)
    if args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
        parser.error("--retries and --backoff must be >= 0 and --timeout > 0")

    checks = read_checks(args.checks)
    # Retries are this script's (ask_patiently), per question and reported; none hidden here.
    client = OpenAI(
        base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=args.timeout
    )
    passed = failed = 0
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

        def ask_check(check: dict) -> Answer:
            return ask_patiently(lambda: ask(check), args.retries, args.backoff)

        with ThreadPoolExecutor(max(1, args.concurrency)) as pool:
            answers = list(pool.map(ask_check, checks))
        for check, answer in zip(checks, answers, strict=True):
            listed = f"{check['question']}  [{', '.join(check['keywords'])}]"
            if answer.failure is not None or answer.reply_id is None:
                failed += 1
                print(f"fail  {listed}")
                print(f"      no answer: {answer.failure}")
                continue
            ok = passes(answer.text, check["keywords"])
            passed += ok
            # Rated like a user would: a thumbs-down keeps a wrong answer out of the data the
            # deployment collects for retraining (the production loop drops those rows).
            rate(args.base_url, args.api_key, answer.reply_id, "up" if ok else "down")
            mark = "pass" if ok else "miss"
            print(f"{mark}  {listed}")
            print(f"      {answer.text[:160]}")
            if answer.retried:
                earlier = "; ".join(answer.retried)
                print(f"      (answered on try {len(answer.retried) + 1}; before: {earlier})")
    except APIError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 1
    unanswered = f"; {failed} got no answer" if failed else ""
    print(f"facts: {passed}/{len(checks)} answers contain the fact that matters{unanswered}")
    return 0 if passed >= args.min else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
