"""The pull-request report with hostile text (pipes, backticks, `<`, newlines, very long
names) in every value it renders: parsed by markdown-it-py with GFM tables, every table row
has its header's number of cells, no raw HTML leaks and the text reads as written (golden
file tests/golden/report/hostile.md); an arena where every battle tied ranks nobody."""

from __future__ import annotations

import os
import re
from pathlib import Path

from markdown_it import MarkdownIt

from controller.observe.leaderboard import (
    Outcomes,
    no_decision_note,
    outcomes_of,
    separation_note,
    shown_ranks,
)
from controller.plan.address import Address
from controller.plan.types import Action, ActionKind, Plan
from controller.report.escape import MAX_CELL, cell, code
from controller.report.markdown import Curve, DesiredEvaluation, ReportInputs, render_report
from controller.report.model_card import render_card
from controller.state.lockfile import LockEntry
from controller.state.registry.schema import FileRow, MetricRow, ModelRow, VersionRow

GOLDEN = Path(__file__).parents[1] / "golden" / "report" / "hostile.md"
LONG = "very-long-name-" * 20  # 300 characters


def nasty(tag: str) -> str:
    """A value that breaks an unescaped table: a pipe, backticks, an HTML tag, a newline."""
    return f"{tag}|x `y` <b>z\nw {LONG}"


def entry(address: str, digest: str, outputs: dict[str, object]) -> LockEntry:
    kind = Address.parse(address).kind
    return LockEntry.model_validate({"kind": kind, "digest": digest, "outputs": outputs})


EXP = f"Experiment/{nasty('exp')}/run`1`"
EVAL = f"Evaluation/{nasty('ev')}/r|1"
PENDING = f"Evaluation/{nasty('pend')}/r2"
ARENA = f"Arena/{nasty('arena')}"
DATA = f"Dataset/{nasty('data')}"
DEPLOY = f"Deployment/{nasty('dep')}"
MODEL = "Model/m|odel"


def hostile_inputs() -> ReportInputs:
    metric = nasty("task") + "/rouge|l"
    gate = f"{metric} max_drop 0.02"
    head = {
        EXP: entry(
            EXP,
            "sha256:e2",
            {
                "version": nasty("ver") + "@2",
                "metrics": {"final_loss": 3.2, "final_eval_loss": 3.4, "steps": 39},
                "scan": {
                    "digest": "sha256:s",
                    "against": nasty("base"),
                    "modules_changed": [nasty("q_proj"), "v|proj"],
                    "layers_changed_most": [3, 1],
                    "alarms": ["error: |value| > 1e4 in " + nasty("layer"), "warning: `x`<y>"],
                },
            },
        ),
        EVAL: entry(
            EVAL,
            "sha256:v2",
            {
                "subject": nasty("subject"),
                "suite": nasty("suite"),
                "baseline": nasty("baseline"),
                "metrics": {metric: 0.2},
                "comparison": [
                    {
                        "metric": metric,
                        "baseline": 0.1,
                        "candidate": 0.2,
                        "difference": 0.1,
                        "low": 0.05,
                        "high": 0.15,
                        "p_value": 0.01,
                        "higher_is_better": True,
                        "candidate_low": 0.19,
                        "candidate_high": 0.21,
                    }
                ],
                "gates": {gate: {"passed": False, "detail": nasty("detail")}},
            },
        ),
        ARENA: entry(
            ARENA,
            "sha256:a2",
            {
                "models": {"m1": nasty("model-a") + "@1", "m2": "b|`<i>`@1"},
                "battles": 4,
                "votes": {"judge": 3},
                "unparseable": 2,
                "decided": 0,
                "leaderboard": [
                    {
                        "model": nasty("model-a") + "@1",
                        "rating": 1000,
                        "lower": 1000,
                        "upper": 1000,
                        "rank": 1,
                        "battles": 3,
                    },
                    {
                        "model": "b|`<i>`@1",
                        "rating": 1000,
                        "lower": 1000,
                        "upper": 1000,
                        "rank": 1,
                        "battles": 3,
                    },
                ],
                "gates": {nasty("arena-gate"): {"passed": True, "detail": nasty("why")}},
            },
        ),
        DATA: entry(
            DATA,
            "sha256:d2",
            {
                "version": "sha256:" + "b" * 64,
                "rows": {nasty("split"): 3},
                "removed": {nasty("dedup"): 1},
            },
        ),
        MODEL: entry(MODEL, "sha256:m2", {"version": "m|odel@2", "aliases": ["champ|ion"]}),
    }
    base = {
        DATA: entry(DATA, "sha256:d1", {"version": "sha256:" + "a" * 64, "rows": {"x": 1}}),
        DEPLOY: entry(DEPLOY, "sha256:p1", {"version": nasty("served"), "target": "lo|cal"}),
    }
    actions = [
        Action(ActionKind.RETRAIN, EXP, "Experiment", "x", None, "sha256:x", nasty("reason"), 0),
        Action(ActionKind.REEVALUATE, EVAL, "Evaluation", "x", None, "sha256:x", "a|b", 0),
        Action(ActionKind.CREATE, PENDING, "Evaluation", "x", None, "sha256:x", "new", 0),
        Action(
            ActionKind.DEPLOY,
            DEPLOY,
            "Deployment",
            "deploy",
            "sha256:p1",
            "sha256:p2",
            "spec x",
            0,
            changes=("spec port: 1 -> `2`|<3>",),
        ),
    ]
    return ReportInputs(
        base=nasty("base-ref"),
        head="head`|",
        plan=Plan(tuple(actions)),
        base_lock=base,
        head_lock=head,
        desired={
            EXP: "sha256:e2",
            EVAL: "sha256:v2",
            PENDING: "sha256:v3",
            ARENA: "sha256:a2",
            DATA: "sha256:d2",
            MODEL: "sha256:m2",
            DEPLOY: "sha256:p2",
        },
        curves={EXP: Curve([3.0, 2.0], "report-assets/a b (1).png", "sha256:" + "c" * 64)},
        dataset_diffs={DATA: {"added": 1, "removed": 0, "changed": 0}},
        deployments={DEPLOY: nasty("ref") + "@champion"},
        manifest_diffs={DEPLOY: "--- a\n+++ b\n-```\n+````\n"},
        evaluations={PENDING: DesiredEvaluation(nasty("psuite"), EXP, (gate,))},
        untrusted={EVAL: nasty("provenance")},
    )


def tables(markdown: str) -> list[list[list[str]]]:
    """Each table as rows of cell texts (header row first), as GFM parses them."""
    out: list[list[list[str]]] = []
    in_cell = False
    for token in MarkdownIt("commonmark").enable("table").parse(markdown):
        if token.type == "table_open":
            out.append([])
        elif token.type == "tr_open":
            out[-1].append([])
        elif token.type in ("th_open", "td_open"):
            out[-1][-1].append("")
            in_cell = True
        elif token.type in ("th_close", "td_close"):
            in_cell = False
        elif token.type == "inline" and in_cell:
            out[-1][-1][-1] = "".join(
                c.content for c in token.children or [] if c.type in ("text", "code_inline")
            )
    return out


def test_every_table_keeps_its_columns_and_the_text_reads_as_written() -> None:
    text = render_report(hostile_inputs())
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    found = tables(text)
    # Every table the source writes is parsed as a table (none fell apart into a paragraph).
    separators = [line for line in text.splitlines() if re.fullmatch(r"\|[-:|]+\|", line)]
    assert len(found) == len(separators) == 8, (len(found), separators)
    for table in found:
        widths = {len(row) for row in table}
        assert widths == {len(table[0])}, table
        for row in table:
            for value in row:
                assert len(value) <= 3 * MAX_CELL, value  # long names are shortened
    html = MarkdownIt("commonmark").enable("table").render(text)
    assert "<b>z" not in html and "<i>" not in html  # text, not markup
    assert "&lt;b&gt;z" in html
    cells = [value for table in found for row in table for value in row]
    # Pipes and backticks read as written, in plain and in code cells.
    assert any(v.startswith("reason|x `y` <b>z ⏎ w very-long-name-") for v in cells), cells
    assert any(v.startswith("Experiment/exp|x `y` <b>z ⏎ w very-long") for v in cells), cells
    assert any(v.startswith("error: |value| > 1e4 in layer|x") for v in cells), cells
    assert "b|`<i>`@1" in cells
    assert text == GOLDEN.read_text()


def test_an_arena_where_every_battle_tied_ranks_nobody_and_says_so() -> None:
    text = render_report(hostile_inputs())
    arena = next(t for t in tables(text) if t[0][0] == "rank")
    assert [row[0] for row in arena[1:]] == ["–", "–"]  # no rank 1 for a model that won nothing
    assert "No battle was decided: all 3 counted vote(s) were ties or both bad" in text
    assert "2 verdict(s) were unparseable" in text
    assert "0 decided, 3 tie(s) or both bad, 2 unparseable verdict(s)" in text


def test_ranks_are_shown_only_where_the_data_separates_models() -> None:
    assert shown_ranks([1, 1], decided=0) == ["", ""]
    assert shown_ranks([1, 1, 1], decided=5) == ["", "", ""]  # every interval overlaps
    assert shown_ranks([1, 1, 3], decided=5) == ["1", "1", "3"]  # shared, then separated
    assert shown_ranks([1, 2], decided=None) == ["1", "2"]  # an older lock file
    assert shown_ranks([1], decided=3) == [""]  # one model ranks against nobody
    assert separation_note([1, 1], decided=4) is not None
    assert separation_note([1, 2], decided=4) is None
    assert no_decision_note(Outcomes(2, 1, 0)) is None
    note = no_decision_note(Outcomes(0, 0, 0, unparseable=4))
    assert note is not None and "all 4 judge verdict(s) were unparseable" in note


def test_outcomes_are_read_from_the_standings_of_a_real_leaderboard() -> None:
    from runners.arena.outcomes import Vote
    from runners.arena.ratings import leaderboard

    votes = [Vote("a", "b", "tie"), Vote("a", "b", "tie (bothbad)"), Vote("b", "a", "model_a")]
    counts = outcomes_of(leaderboard(votes, rounds=20).standings, unparseable=1)
    assert counts == Outcomes(decided=1, ties=1, both_bad=1, unparseable=1)
    assert counts.line() == (
        "3 counted vote(s): 1 decided, 1 tie(s), 1 both bad; 1 unparseable verdict(s) not counted"
    )
    ties = leaderboard([Vote("a", "b", "tie")] * 3, rounds=20)
    assert shown_ranks([s.rank for s in ties.standings], outcomes_of(ties.standings).decided) == [
        "",
        "",
    ]


def test_cells_escape_structure_and_shorten_long_values() -> None:
    assert cell("a|b`c`<d>&e\\f") == "a\\|b\\`c\\`&lt;d>&amp;e\\\\f"
    assert cell("one\r\ntwo\n\nthree") == "one ⏎ two ⏎ three"
    long = "start-" + "x" * 500 + "-end"
    short = cell(long)
    assert len(short) == MAX_CELL and short.startswith("start-") and short.endswith("-end")
    assert code("a`b") == "``a`b``" and code("`a") == "`` `a ``"
    assert code("a|b") == "`a\\|b`" and code("") == "–"
    assert code("c:\\x|y") == cell("c:\\x|y")  # a backslash: plain escaped text instead


def test_the_status_line_names_no_first_place_without_decided_battles() -> None:
    from controller.observe.status import summarize
    from controller.state.lockfile import ArenaOutputs

    standing = {"rating": 1000, "lower": 1000, "upper": 1000, "rank": 1, "battles": 4}
    tied = [{"model": "a@1", **standing}, {"model": "b@1", **standing}]
    all_ties = ArenaOutputs.model_validate({"battles": 4, "decided": 0, "leaderboard": tied})
    assert (
        summarize(all_ties)
        == "4 battles; no battle decided (all ties or unparseable), no model ranked"
    )
    older = ArenaOutputs.model_validate({"battles": 4, "leaderboard": tied})  # no `decided`
    assert "#1" not in summarize(older) and "no model ranked" in summarize(older)
    ahead = [
        {"model": "a@1", "rating": 1100, "lower": 1060, "upper": 1140, "rank": 1, "battles": 9},
        {"model": "b@1", "rating": 900, "lower": 860, "upper": 940, "rank": 2, "battles": 9},
    ]
    clear = ArenaOutputs.model_validate({"battles": 9, "decided": 9, "leaderboard": ahead})
    assert summarize(clear) == "9 battles; #1 a@1 1100 [1060, 1140]"


def test_a_model_card_keeps_its_tables_with_hostile_values() -> None:
    """Model cards are Markdown too (Hugging Face renders them): every cell escaped."""
    model = ModelRow(id=1, name="m", description="")
    version = VersionRow(
        id=1,
        number=3,
        model=model,
        source={},
        architecture=nasty("arch"),
        model_type="llama|x",
        dtype="bfloat16",
        quantization="q4`k`",
        license="<b>mit</b>",
        size_bytes=10,
        extra={},
        spec_digest="sha256:`|`",
    )
    version.files = [FileRow(path=nasty("file"), sha256="ab|c", size=10)]
    version.metrics = [MetricRow(suite=nasty("suite"), name="rouge|l", value=0.5)]
    card = render_card(version)
    text = card.split("---\n", 2)[2]  # the YAML front matter is metadata, not Markdown
    found = tables(text)
    assert len(found) == 3, found
    for table in found:
        assert {len(row) for row in table} == {len(table[0])}, table
    html = MarkdownIt("commonmark").enable("table").render(text)
    assert "<b>mit" not in html and "&lt;b&gt;mit" in html
    cells = [value for table in found for row in table for value in row]
    assert "rouge|l" in cells and "q4`k` |" not in text
