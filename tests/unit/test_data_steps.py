"""Dataset steps on corpora built here: each removes what it should and keeps the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runners.data.diff import diff_rows
from runners.data.preparation import PrepareError, PrepareInputs, SourceInput, prepare
from runners.data.readers import read_source
from runners.data.splits import split_of
from runners.data.steps import decontaminate, dedup, filter_rows, near_dedup, normalize, redact_pii

FAQ = [
    ("How do I reset my password?", "Open Settings > Security and choose Reset password."),
    ("Can I export my projects to CSV?", "Yes: Settings > Data > Export, then pick CSV."),
    ("What does the Team plan cost?", "Team is $8 per user per month, billed annually."),
    ("Does Orbitask work offline?", "The mobile apps keep your last 30 days offline."),
    ("How do I invite a guest?", "Open the project, choose Share, and enter their email."),
    ("Where can I turn on two-factor authentication?", "Settings > Security > Two-factor."),
]


def rows(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"prompt": q, "response": a, "_source": f"t:{i}"} for i, (q, a) in enumerate(pairs)]


def test_near_dedup_removes_rewordings_and_keeps_distinct_rows() -> None:
    reworded = [
        ("How can I reset my password?", FAQ[0][1]),
        ("Can I export my projects as CSV?", FAQ[1][1]),
        ("what does the team plan cost", FAQ[2][1]),
    ]
    corpus = rows(FAQ + reworded)
    kept, details = near_dedup(
        corpus, "instruction", {"threshold": 0.6, "num_perm": 128, "shingle_size": 2}
    )
    assert [r["prompt"] for r in kept] == [q for q, _ in FAQ]
    assert details["near_duplicates"] == 3


def test_exact_dedup_keeps_first() -> None:
    corpus = rows([*FAQ, FAQ[3]])
    kept, details = dedup(corpus)
    assert details == {"duplicates": 1} and len(kept) == len(FAQ)


def test_normalize_unicode_and_whitespace() -> None:
    corpus = rows([("  Caf\u0065\u0301  menu\tpath? ", "Line one\r\n\n\n\nLine   two ")])
    (row,), details = normalize(corpus, "instruction", {"unicode": "NFC", "whitespace": True})
    assert row["prompt"] == "Caf\u00e9 menu path?"
    assert row["response"] == "Line one\n\nLine two"
    assert details == {"rows_changed": 1}


def test_filter_reasons() -> None:
    corpus = rows(
        [("empty answer", ""), ("ok", "fine answer here"), ("DROP me", "x y"), ("long " * 50, "y")]
    )
    kept, details = filter_rows(
        corpus,
        "instruction",
        {"drop_empty": True, "exclude_regex": ["DROP"], "max_tokens": 20},
        count_tokens=lambda t: len(t.split()),
    )
    assert [r["prompt"] for r in kept] == ["ok"]
    assert details["dropped"] == {"empty": 1, "regex": 1, "too_long": 1}


def test_token_filter_needs_a_tokenizer() -> None:
    with pytest.raises(ValueError, match="need a tokenizer"):
        filter_rows(rows(FAQ), "instruction", {"min_tokens": 2}, count_tokens=None)


def test_pii_redaction_counts_each_kind_and_honours_the_allow_list() -> None:
    corpus = rows(
        [
            (
                "Mail jane.doe@acme.example or call +1 415 555 0137",
                "We answer at help@orbitask.example",
            ),
            ("My IP is 203.0.113.42 and key sk-proj-abcdefghijklmnopqrstuvwx", "ok"),
            ("Order 12345 shipped on 2024-05-01 at 10.5 percent", "version 1.2.3.4 is fine"),
        ]
    )
    out, details = redact_pii(
        corpus,
        "instruction",
        {"kinds": ["email", "phone", "ip", "api_key"], "allow": [r"@orbitask\.example$"]},
    )
    assert out[0]["prompt"] == "Mail [EMAIL] or call [PHONE]"
    assert out[0]["response"] == "We answer at help@orbitask.example"
    assert out[1]["prompt"] == "My IP is [IP] and key [API_KEY]"
    assert details["redactions"] == {"email": 1, "phone": 1, "ip": 2, "api_key": 1}
    # "1.2.3.4" is a valid IPv4 address too: the regex cannot tell versions from addresses.
    assert out[2]["prompt"] == corpus[2]["prompt"]


def test_decontamination_removes_a_row_copied_from_the_eval_set() -> None:
    eval_question = "If we go month-to-month on the top tier, what does one seat cost per month?"
    corpus = rows([*FAQ, (eval_question, "Business billed monthly is $19 per user.")])
    kept, details = decontaminate(
        corpus, "instruction", {"ngram": 8}, [eval_question, "Business billed monthly is $19."]
    )
    assert len(kept) == len(FAQ)
    assert details["eval_overlap"] == 1
    assert details["examples"][0]["row"] == f"t:{len(FAQ)}"


def test_bad_rows_are_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "faq.jsonl"
    path.write_text(
        '{"question": "a", "answer": "b"}\n{"question": "broken"\n\n{"question": "c"}\n[1, 2]\n'
    )
    loaded = read_source(
        path, "data/faq.jsonl", "instruction", "auto", {"prompt": "question", "response": "answer"}
    )
    assert [r["prompt"] for r in loaded.rows] == ["a"]
    assert [b.render() for b in loaded.bad] == [
        "data/faq.jsonl:2: invalid JSON: Expecting ',' delimiter (column 22)",
        "data/faq.jsonl:4: missing field answer (mapped to response)",
        "data/faq.jsonl:5: a row must be a JSON object",
    ]


def test_on_bad_rows_fail_or_skip(tmp_path: Path) -> None:
    path = tmp_path / "faq.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\nnot json\n')
    spec = {
        "format": "instruction",
        "steps": [],
        "on_bad_rows": "fail",
        "splits": {"train": 1.0, "validation": 0.0, "test": 0.0},
    }
    source = SourceInput(path=path, shown="faq.jsonl")
    with pytest.raises(PrepareError, match="(?s)faq.jsonl:2: invalid JSON.*on_bad_rows: skip"):
        prepare(PrepareInputs("d", spec, [source], tmp_path / "out"))
    result = prepare(
        PrepareInputs("d", {**spec, "on_bad_rows": "skip"}, [source], tmp_path / "out")
    )
    assert result.splits == {"train": 1, "validation": 0, "test": 0}
    assert result.stats["bad_rows"] == 1
    assert (
        tmp_path / "out" / "bad_rows.txt"
    ).read_text() == "faq.jsonl:2: invalid JSON: Expecting value (column 1)\n"


def test_csv_and_text_sources(tmp_path: Path) -> None:
    (tmp_path / "faq.csv").write_text('question,answer\nHow?,Like this.\n"Why, though?",Because.\n')
    loaded = read_source(
        tmp_path / "faq.csv",
        "faq.csv",
        "instruction",
        "auto",
        {"prompt": "question", "response": "answer"},
    )
    assert [r["prompt"] for r in loaded.rows] == ["How?", "Why, though?"]
    assert loaded.rows[1]["_source"] == "faq.csv:3"
    (tmp_path / "notes.txt").write_text("first line\nsecond line\n")
    text = read_source(tmp_path / "notes.txt", "notes.txt", "text", "auto", {})
    assert [r["text"] for r in text.rows] == ["first line", "second line"]


def test_weights_subsample_and_repeat(tmp_path: Path) -> None:
    spec = {
        "format": "instruction",
        "steps": [],
        "splits": {"train": 1.0, "validation": 0.0, "test": 0.0},
    }
    data = rows(FAQ)
    half = prepare(PrepareInputs("d", spec, [SourceInput(weight=0.5, rows=data)], tmp_path / "a"))
    double = prepare(PrepareInputs("d", spec, [SourceInput(weight=2.0, rows=data)], tmp_path / "b"))
    assert half.splits["train"] == 3 and double.splits["train"] == 12


row_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30
)


@settings(max_examples=200, deadline=None)
@given(
    existing=st.lists(st.tuples(row_text, row_text), min_size=1, max_size=30, unique=True),
    added=st.lists(st.tuples(row_text, row_text), max_size=30),
)
def test_adding_rows_never_moves_existing_rows(existing: list, added: list) -> None:
    fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
    before = {q + "\0" + a: split_of({"prompt": q, "response": a}, fractions) for q, a in existing}
    # the split only depends on the row; recompute within a bigger set in another order
    bigger = [*added, *reversed(existing)]
    after = {q + "\0" + a: split_of({"prompt": q, "response": a}, fractions) for q, a in bigger}
    assert all(after[key] == split for key, split in before.items())


def test_split_proportions_are_close(tmp_path: Path) -> None:
    fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
    counts = {"train": 0, "validation": 0, "test": 0}
    for i in range(5000):
        counts[split_of({"prompt": f"q{i}", "response": "a"}, fractions)] += 1
    assert 3850 < counts["train"] < 4150 and 400 < counts["test"] < 600


def test_diff_rows() -> None:
    before = [
        {"prompt": "a", "response": "1"},
        {"prompt": "b", "response": "2"},
        {"prompt": "c", "response": "3"},
    ]
    after = [
        {"prompt": "a", "response": "1"},
        {"prompt": "b", "response": "2!"},
        {"prompt": "d", "response": "4"},
    ]
    result = diff_rows(before, after, "instruction")
    assert (result["added"], result["removed"], result["changed"], result["unchanged"]) == (
        1,
        1,
        1,
        1,
    )
    assert result["examples"]["changed"][0]["after"]["response"] == "2!"
    assert json.dumps(result)  # serialisable for --json
