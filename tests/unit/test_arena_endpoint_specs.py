"""Arena contestants that are endpoints: spec validation (key variables, URL schemes, names),
resolution (a Deployment contestant orders the arena, an endpoint is no digest input), arenas
of registry references keep their dump, and the endpoint usage wording escapes in reports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from controller.api.arena import ArenaSpec
from controller.load.desired import load_desired
from controller.observe.leaderboard import endpoint_lines
from controller.report.escape import cell
from controller.state.lockfile import ArenaOutputs, EndpointUsage

ARENA = """
apiVersion: llmops/v1
kind: Arena
metadata: {{name: duel}}
spec:
  models:
    - base
{models}
  prompts: {{type: file, path: data/eval.jsonl}}
  human_votes: true
{extra}
"""
ENDPOINT = """    - endpoint:
        base_url: {url}
        model: gpt-large
        api_key: {{env: {env}}}
      name: external"""


def arena(models: str, extra: str = "") -> str:
    return ARENA.format(models=models, extra=extra)


def endpoint(url: str = "https://api.example.com/v1", env: str = "LLMOPS_KEY_EXTERNAL") -> str:
    return ENDPOINT.format(url=url, env=env)


def diagnostics(root: Path) -> set[tuple[str, str]]:
    return {(d.path, d.message) for d in load_desired(root).diagnostics}


def test_endpoint_and_deployment_contestants_resolve(make_repo: Callable[..., Path]) -> None:
    models = endpoint() + "\n    - {deployment: assistant}"
    gate = "  gates: [{candidate: external, baseline: assistant, margin: -100}]"
    root = make_repo({"specs/arenas/duel.yaml": arena(models, gate)})
    loaded = load_desired(root)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    assert loaded.desired is not None
    resource = loaded.desired.resources["Arena/duel"]
    spec = resource.spec_as(ArenaSpec)
    assert spec.contestant_names() == ["base", "external", "assistant"]
    assert spec.registry_refs() == ["base"]
    # the deployment orders the arena after its rollout, but is not a digest input
    assert "Deployment/assistant" in resource.depends_on
    assert "Deployment/assistant" not in resource.inputs
    assert not any("example.com" in key for key in resource.inputs)
    assert loaded.desired.waves["Arena/duel"] > loaded.desired.waves["Deployment/assistant"]
    # what is recorded: the endpoint's identity and settings and the key's variable, no key
    dumped = resource.fields["models"][1]
    assert dumped["endpoint"]["base_url"] == "https://api.example.com/v1"
    assert dumped["endpoint"]["api_key"] == {"env": "LLMOPS_KEY_EXTERNAL"}


def test_an_arena_of_registry_references_dumps_as_before() -> None:
    spec = ArenaSpec.model_validate(
        {
            "models": ["base", "assistant@champion"],
            "prompts": {"type": "file", "path": "data/eval.jsonl"},
            "human_votes": True,
        }
    )
    dumped = spec.model_dump(mode="json")
    assert dumped["models"] == ["base", "assistant@champion"]
    assert set(dumped) == {
        "description", "models", "prompts", "battles_per_pair", "generation", "judge",
        "human_votes", "bootstrap", "gates",
    }  # fmt: skip


def test_a_key_variable_outside_llmops_key_is_refused(make_repo: Callable[..., Path]) -> None:
    root = make_repo({"specs/arenas/duel.yaml": arena(endpoint(env="GITHUB_TOKEN"))})
    found = diagnostics(root)
    assert any(
        path == "spec.models[1].endpoint.api_key.env" and "LLMOPS_KEY_<NAME>" in message
        for path, message in found
    ), found


def test_a_url_that_is_not_http_is_refused(make_repo: Callable[..., Path]) -> None:
    root = make_repo({"specs/arenas/duel.yaml": arena(endpoint(url="file:///etc/passwd"))})
    found = diagnostics(root)
    assert any(
        path == "spec.models[1].endpoint.base_url" and "not an http(s) URL" in message
        for path, message in found
    ), found


def test_contestants_need_distinct_names_and_known_deployments(
    make_repo: Callable[..., Path],
) -> None:
    twice = endpoint().replace("name: external", "name: base")
    root = make_repo({"specs/arenas/duel.yaml": arena(twice)})
    assert any("names base twice" in message for _, message in diagnostics(root))
    root = make_repo({"specs/arenas/duel.yaml": arena("    - {deployment: nowhere}")})
    found = diagnostics(root)
    assert any(path == "spec.models[1].deployment" for path, _ in found), found


def test_endpoint_usage_is_worded_and_escaped() -> None:
    usage = EndpointUsage(
        endpoint="http://127.0.0.1:9/v1",
        model="evil|<b>model</b>",
        settings={"max_new_tokens": 16, "concurrency": 4},
        answers=6,
        latency_s=0.25,
        latency_p95_s=0.5,
        prompt_tokens=120,
        completion_tokens=30,
        requests=7,
        retries=1,
    )
    outputs = ArenaOutputs(endpoints={"external": usage})
    (line,) = endpoint_lines(outputs.endpoints)
    assert line == (
        "Endpoint external: model evil|<b>model</b> at http://127.0.0.1:9/v1: 6 answer(s); "
        "latency 0.25 s mean, 0.5 s p95; 120 prompt + 30 completion tokens; 7 request(s) in "
        "the last run, 1 retried."
    )
    shown = cell(line, 1000)
    assert "|" not in shown.replace("\\|", "") and "<b>" not in shown
    # as stored in leaderboard.json, and an arena without endpoints says nothing
    assert endpoint_lines({"external": usage.model_dump(mode="json")}) == [line]
    assert "endpoints" not in ArenaOutputs().model_dump()


def test_the_pull_request_report_shows_endpoint_usage_escaped() -> None:
    from controller.plan.types import Plan
    from controller.report.markdown import ReportInputs, render_report
    from controller.state.lockfile import LockEntry

    outputs = {
        "models": {"tiny": "tiny@1", "vendor": "vendor"},
        "battles": 2,
        "votes": {"judge": 2},
        "decided": 2,
        "leaderboard": [
            {"model": "vendor", "rating": 1100, "lower": 1050, "upper": 1150, "rank": 1,
             "battles": 2},
            {"model": "tiny@1", "rating": 900, "lower": 850, "upper": 950, "rank": 2,
             "battles": 2},
        ],
        "endpoints": {
            "vendor": {"endpoint": "https://api.example.com/v1", "model": "big|<i>m</i>",
                       "answers": 2, "latency_s": 0.5, "latency_p95_s": 0.75,
                       "prompt_tokens": 40, "completion_tokens": 12, "requests": 3,
                       "retries": 1},
        },
    }  # fmt: skip
    lock = {
        "Arena/duel": LockEntry.model_validate(
            {"kind": "Arena", "digest": "sha256:a", "outputs": outputs}
        )
    }
    text = render_report(
        ReportInputs(
            base="main",
            head="branch",
            plan=Plan(()),
            base_lock={},
            head_lock=lock,
            desired={"Arena/duel": "sha256:a"},
        )
    )
    (line,) = [row for row in text.splitlines() if row.startswith("Endpoint vendor")]
    assert "https://api.example.com/v1" in line and "0.5 s mean, 0.75 s p95" in line
    assert "40 prompt + 12 completion tokens; 3 request(s) in the last run, 1 retried" in line
    assert "<i>" not in line and "big\\|" in line
