"""Runner `train`, curves: loss, eval loss, learning rate and gradient norm as PNG."""

from __future__ import annotations

from pathlib import Path

from runners.train.log import read_log


def plot_run(log: Path, target: Path, title: str) -> None:
    plot_runs({title: log}, target, title)


def plot_runs(logs: dict[str, Path], target: Path, title: str) -> None:
    """One panel each for loss, eval loss, learning rate and gradient norm; runs overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {name: read_log(path) for name, path in logs.items()}
    figure, axes = plt.subplots(2, 2, figsize=(10, 6), dpi=100)
    panels = (
        ("loss", "training loss"),
        ("eval_loss", "eval loss"),
        ("lr", "learning rate"),
        ("grad_norm", "gradient norm"),
    )
    for (key, label), axis in zip(panels, axes.flat, strict=True):
        for name, run in runs.items():
            records = [r for r in run if key in r and "event" not in r]
            if records:
                axis.plot(
                    [r["step"] for r in records],
                    [r[key] for r in records],
                    marker="o" if key == "eval_loss" else None,
                    label=name,
                )
        axis.set_title(label)
        axis.set_xlabel("step")
        if len(logs) > 1 and axis.lines:
            axis.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, metadata={"Software": None})
    plt.close(figure)
