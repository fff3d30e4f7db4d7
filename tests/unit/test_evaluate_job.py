"""`python -m runners.evaluate JOB`: the job file round-trips; bad input is a one-line error
and exit 2 (the evaluation itself runs in tests/integration/test_runner_image.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.evaluate.__main__ import main
from runners.evaluate.job import EvalJob


def job(tmp_path: Path) -> EvalJob:
    return EvalJob(
        suite_name="smoke",
        suite={"tasks": [{"name": "answers", "type": "generate_until"}]},
        task_data={"answers": "/llmops/data/eval.jsonl"},
        model="/llmops/models/tiny/1",
        output=str(tmp_path / "out"),
        judge_model="/llmops/models/judge/1",
    )


def test_the_job_file_round_trips_and_names_the_inputs(tmp_path: Path) -> None:
    written = job(tmp_path)
    written.save(tmp_path / "job.json")
    read = EvalJob.load(tmp_path / "job.json")
    assert read == written
    inputs = read.inputs()
    assert inputs.task_data == {"answers": Path("/llmops/data/eval.jsonl")}
    assert inputs.model_path == Path("/llmops/models/tiny/1")
    assert inputs.judge_path == Path("/llmops/models/judge/1")
    assert inputs.out == tmp_path / "out" and inputs.batch_size == 8


def test_usage_and_unreadable_jobs_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runners.evaluate"]) == 2
    assert capsys.readouterr().err == "usage: python -m runners.evaluate JOB.json\n"
    assert main(["runners.evaluate", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot read the evaluation job {tmp_path / 'missing.json'}: "
        "No such file or directory\n"
    )
    (tmp_path / "bad.json").write_text('{"suite_name": "smoke"}')
    assert main(["runners.evaluate", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'bad.json'} is not an evaluation job (")
    assert err.count("\n") == 1


def test_a_suite_that_cannot_run_is_recorded_as_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model folder the container does not see fails in one line, and result.json says so."""
    import json

    bad = job(tmp_path)
    bad.suite = {"tasks": [{"name": "x", "type": "lm_eval", "lm_eval_task": "no_such_task"}]}
    bad.model = str(tmp_path / "no-model")
    bad.save(tmp_path / "job.json")
    code = main(["runners.evaluate", str(tmp_path / "job.json")])
    result = json.loads((tmp_path / "out/result.json").read_text())
    assert code == 2 and result["status"] == "failed"
    assert capsys.readouterr().err == (
        f"error: the evaluation job's model {tmp_path / 'no-model'}, task answers data "
        "/llmops/data/eval.jsonl, judge model /llmops/models/judge/1 not found; the job's paths "
        "must be as this machine (or container) sees them: mount the state folder there\n"
    )


def test_a_job_can_target_an_endpoint_the_model_folder_giving_the_tokenizer(
    tmp_path: Path,
) -> None:
    from runners.evaluate.endpoint import Endpoint
    from runners.evaluate.run import EvalError

    written = job(tmp_path)
    written.endpoint = {"base_url": "http://127.0.0.1:8000/v1", "model": "support-assistant"}
    written.save(tmp_path / "job.json")
    read = EvalJob.load(tmp_path / "job.json")
    assert read.inputs().endpoint == Endpoint(
        "http://127.0.0.1:8000/v1", "support-assistant", Path("/llmops/models/tiny/1")
    )
    assert job(tmp_path).inputs().endpoint is None
    read.endpoint = {"base_url": "http://127.0.0.1:8000/v1", "url": "x"}
    with pytest.raises(EvalError, match="endpoint is malformed"):
        read.inputs()
