"""The one terminal renderer of gate verdicts."""

from __future__ import annotations

from rich.console import Console

from controller.report.terminal import gate_line


def _plain(markup: str) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(markup)
    return console.export_text().strip()


def test_pass_and_fail_lines() -> None:
    assert _plain(gate_line("answers/rouge_l max_drop", True, "drop 0.01 <= 0.02")) == (
        "gate answers/rouge_l max_drop: pass (drop 0.01 <= 0.02)"
    )
    assert "[red]FAIL[/red]" in gate_line("g", False, "d")


def test_spec_text_is_never_read_as_markup() -> None:
    line = _plain(gate_line("[bold]x[/bold]", False, "ci [0.1, 0.3] [link=http://e]y"))
    assert line == "gate [bold]x[/bold]: FAIL (ci [0.1, 0.3] [link=http://e]y)"
