"""Resolution: references, duplicates, cycles, paths, the graph and digests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from controller.load.desired import load_desired

EXP = """
apiVersion: llmops/v1
kind: Experiment
metadata: {{name: exp}}
spec:
  base_model: {base}
  dataset: {dataset}
  eval_suite: suite
  register_as: assistant
"""


def problems(root: Path) -> list[tuple[str, int, str, str, str]]:
    loaded = load_desired(root)
    return [(d.file, d.line, d.path, d.message, d.hint) for d in loaded.diagnostics]


def test_minimal_repo_resolves_into_a_graph(make_repo: Callable[..., Path]) -> None:
    loaded = load_desired(make_repo())
    assert loaded.ok
    desired = loaded.desired
    assert desired is not None
    assert sorted(desired.resources) == [
        "Dataset/faq",
        "Deployment/assistant",
        "EvalSuite/suite",
        "Evaluation/exp/control",
        "Evaluation/exp/default",
        "Evaluation/exp/r16",
        "Experiment/exp/default",
        "Experiment/exp/r16",
        "Model/base",
    ]
    train = desired.resources["Experiment/exp/default"]
    assert set(train.inputs) == {"Model/base", "Dataset/faq"}
    assert desired.waves["Model/base"] < desired.waves["Experiment/exp/default"]
    assert desired.waves["Experiment/exp/default"] < desired.waves["Evaluation/exp/default"]
    evaluation = desired.resources["Evaluation/exp/default"]
    assert set(evaluation.inputs) == {"EvalSuite/suite", "Experiment/exp/default"}
    # The deployment follows an alias, resolved from the registry: ordering, not digest.
    deployment = desired.resources["Deployment/assistant"]
    assert "Experiment/exp/default" in deployment.depends_on
    assert "Experiment/exp/default" not in deployment.inputs


def test_unknown_reference_is_reported_where_it_is_named(make_repo: Callable[..., Path]) -> None:
    root = make_repo({"specs/experiments/exp.yaml": EXP.format(base="bsae", dataset="faqs")})
    found = problems(root)
    assert (
        "specs/experiments/exp.yaml",
        5,
        "spec.base_model",
        "unknown model 'bsae'",
        "did you mean 'base'?",
    ) in found
    assert (
        "specs/experiments/exp.yaml",
        6,
        "spec.dataset",
        "unknown Dataset 'faqs'",
        "did you mean 'faq'?",
    ) in found


def test_duplicate_names(make_repo: Callable[..., Path]) -> None:
    root = make_repo(
        {"specs/datasets/again.yaml": (make_repo().joinpath("specs/datasets/faq.yaml").read_text())}
    )
    found = problems(root)
    assert any(
        m.startswith("duplicate Dataset name 'faq'")
        and f == "specs/datasets/faq.yaml"
        and "first defined at specs/datasets/again.yaml" in h
        for f, _, _, m, h in found
    ), found


def test_cycles_are_named(make_repo: Callable[..., Path]) -> None:
    root = make_repo(
        {
            "specs/models/tuned.yaml": """
            apiVersion: llmops/v1
            kind: Model
            metadata: {name: tuned}
            spec:
              source: {type: experiment, experiment: exp}
            """,
            "specs/experiments/exp.yaml": EXP.format(base="tuned", dataset="faq").replace(
                "register_as: assistant", "register_as: tuned"
            ),
            "specs/deployments/assistant.yaml": """
            apiVersion: llmops/v1
            kind: Deployment
            metadata: {name: assistant}
            spec: {model: tuned@champion}
            """,
        }
    )
    found = problems(root)
    cycles = [m for _, _, _, m, _ in found if m.startswith("dependency cycle")]
    assert cycles, found
    assert "Model/tuned" in cycles[0] and "Experiment/exp/default" in cycles[0]


def test_paths_may_not_leave_the_repository(make_repo: Callable[..., Path]) -> None:
    root = make_repo()
    faq = root / "specs/datasets/faq.yaml"
    faq.write_text(faq.read_text().replace("data/faq.jsonl", "../../etc/passwd"))
    found = problems(root)
    assert any(
        p == "spec.sources[0].path" and "leaves the repository" in m for _, _, p, m, _ in found
    ), found


def test_missing_data_file(make_repo: Callable[..., Path]) -> None:
    root = make_repo()
    (root / "data/faq.jsonl").unlink()
    found = problems(root)
    assert any("'data/faq.jsonl' does not exist" in m for _, _, _, m, _ in found)


def test_register_as_may_not_shadow_a_model(make_repo: Callable[..., Path]) -> None:
    root = make_repo(
        {
            "specs/experiments/exp.yaml": EXP.format(base="base", dataset="faq").replace(
                "register_as: assistant", "register_as: base"
            )
        }
    )
    found = problems(root)
    assert any("already a Model spec" in m for _, _, _, m, _ in found)


def test_spec_in_the_wrong_folder_is_a_warning(make_repo: Callable[..., Path]) -> None:
    root = make_repo()
    (root / "specs/models/base.yaml").rename(root / "specs/datasets/base.yaml")
    loaded = load_desired(root)
    assert loaded.ok
    assert [d.severity for d in loaded.diagnostics] == ["warning"]


def test_data_change_moves_digests_downstream_only(make_repo: Callable[..., Path]) -> None:
    root = make_repo()
    before = load_desired(root).desired
    with (root / "data/faq.jsonl").open("a") as handle:
        handle.write('{"q": "New?", "a": "Yes."}\n')
    after = load_desired(root).desired
    assert before is not None and after is not None
    changed = {
        a for a in after.resources if after.resources[a].digest != before.resources[a].digest
    }
    assert changed == {
        "Dataset/faq",
        "Experiment/exp/default",
        "Experiment/exp/r16",
        "Evaluation/exp/default",
        "Evaluation/exp/r16",
    }


def test_digest_does_not_depend_on_yaml_layout(make_repo: Callable[..., Path]) -> None:
    root = make_repo()
    before = load_desired(root).desired
    suite = root / "specs/evals/suite.yaml"
    suite.write_text(
        "# a comment\n"
        + suite.read_text().replace(
            "{metric: answers/rouge_l, max_drop: 0.02}",
            "{max_drop: 0.020, metric: answers/rouge_l}",
        )
    )
    after = load_desired(root).desired
    assert before is not None and after is not None
    assert before.resources["EvalSuite/suite"].digest == after.resources["EvalSuite/suite"].digest
