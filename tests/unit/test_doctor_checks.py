"""`llmops doctor`'s checks (controller/observe/doctor.py): how each finding is classified
(ok / warning / missing, with what to do), and the probes on real folders and databases."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.observe import doctor
from controller.observe.doctor import (
    GIB,
    STATE_FIX,
    Check,
    blob_check,
    chromium_check,
    device_check,
    engine_check,
    exit_code,
    kube_check,
    llama_cpp_check,
    package_check,
    python_check,
    registry_check,
    state_check,
)
from controller.state.paths import StatePaths
from controller.state.registry.db import head_revision
from controller.state.registry.store import Registry


def test_python_below_311_is_missing_with_what_to_install() -> None:
    assert python_check((3, 12, 1)) == Check("python", "ok", "Python 3.12.1")
    old = python_check((3, 10, 14))
    assert old.status == "missing"
    assert old.detail == "Python 3.10.14; llmops needs 3.11 or newer"
    assert "Python 3.11+" in old.fix


def test_torch_is_required_the_other_packages_warn() -> None:
    assert package_check("torch", "2.13.0", "x") == Check("torch", "ok", "2.13.0")
    torch = package_check("torch", None, "training")
    assert torch.status == "missing" and "pip install 'torch'" in torch.fix
    trl = package_check("trl", None, "preference training (DPO, ORPO, KTO)")
    assert trl.status == "warning"
    assert trl.detail == "not installed; needed for preference training (DPO, ORPO, KTO)"


def test_the_device_line_names_gpus_and_their_memory() -> None:
    gpu = device_check("2.13.0", [("NVIDIA H100 80GB HBM3", 85 * GIB)], False, 16, 128 * GIB)
    assert gpu == Check("torch device", "ok", "GPU: NVIDIA H100 80GB HBM3 85 GiB (torch 2.13.0)")
    cpu = device_check("2.13.0+cpu", [], False, 2, int(23.5 * GIB))
    assert cpu.status == "ok"
    assert cpu.detail.startswith("CPU only: 2 cores, 23.5 GiB memory (torch 2.13.0+cpu)")
    assert device_check("2.13.0", [], True, 8, None).detail == "Apple MPS (torch 2.13.0)"
    assert device_check(None, [], False, 2, None).status == "missing"


def test_the_state_folder_must_be_writable_and_warns_when_the_disk_is_low() -> None:
    folder = Path("/srv/state")
    unwritable = state_check(folder, True, False, 100 * GIB)
    assert unwritable == Check("state folder", "missing", "/srv/state is not writable", STATE_FIX)
    assert "LLMOPS_STATE_DIR" in STATE_FIX
    low = state_check(folder, True, True, 2 * GIB)
    assert low.status == "warning" and "only 2.0 GiB free" in low.detail
    assert "llmops models gc" in low.fix
    fresh = state_check(folder, False, True, 50 * GIB)
    assert fresh == Check(
        "state folder", "ok", "/srv/state (created by the first apply): 50 GiB free"
    )


def test_a_registry_that_does_not_open_is_missing_and_its_password_is_not_shown() -> None:
    url = "postgresql+psycopg://llmops:s3cret@db.example:5432/llmops"
    down = registry_check(url, True, "connection refused", None)
    assert down.status == "missing"
    assert "s3cret" not in down.detail and "***" in down.detail
    assert down.detail.endswith("(LLMOPS_REGISTRY_URL): connection refused")
    assert "LLMOPS_REGISTRY_URL" in down.fix
    # The default SQLite registry: its folder is the state folder, so is the fix.
    local = registry_check("sqlite:////srv/state/registry.db", False, "not writable", None)
    assert local.status == "missing" and local.fix == STATE_FIX


def test_a_registry_is_ok_when_new_or_current_and_warns_when_its_schema_differs() -> None:
    url = "sqlite:////srv/state/registry.db"
    assert registry_check(url, False, None, None).detail.endswith(
        "not created yet (the first apply does)"
    )
    assert registry_check(url, False, None, head_revision()).status == "ok"
    older = registry_check(url, False, None, "0001")
    assert older.status == "warning" and "schema 0001" in older.detail


def test_the_optional_engines_only_warn_and_say_who_needs_them() -> None:
    assert blob_check(Path("/x/blobs"), False, True).status == "ok"
    assert blob_check(Path("/x/blobs"), True, False).status == "missing"
    assert engine_check("podman", "") == Check("container engine", "ok", "podman answers")
    no_engine = engine_check(None, "no 'docker' command on PATH")
    assert no_engine.status == "warning" and "target docker" in no_engine.fix
    assert kube_check(True, None, None).status == "ok"
    assert kube_check(False, "kind-dev", None).detail == "current context kind-dev (not contacted)"
    no_kube = kube_check(False, None, "Invalid kube-config file")
    assert no_kube.status == "warning" and "KUBECONFIG" in no_kube.fix
    no_llama = llama_cpp_check(None, "ModuleNotFoundError: No module named 'llama_cpp'")
    assert no_llama.status == "warning" and "llmops[llama-cpp]" in no_llama.fix
    assert chromium_check(None).status == "warning"
    assert chromium_check(Path("/usr/bin/chromium")).status == "ok"


def test_only_a_missing_piece_exits_1() -> None:
    ok, warned = Check("a", "ok", ""), Check("b", "warning", "", "do this")
    assert exit_code([ok, warned]) == 0
    assert exit_code([ok, warned, Check("c", "missing", "", "do that")]) == 1


# The probes, on real folders and real databases.


def test_a_state_folder_under_a_file_cannot_be_written(tmp_path: Path) -> None:
    # Running as root defeats permission bits; a regular file in the path stops anyone.
    (tmp_path / "file").write_text("")
    blocked = doctor.probe_state(StatePaths(tmp_path / "file" / "state"))
    assert blocked.status == "missing" and blocked.fix == STATE_FIX
    fresh = doctor.probe_state(StatePaths(tmp_path / "new" / "state"))
    assert fresh.status in ("ok", "warning") and "created by the first apply" in fresh.detail
    # Looking creates nothing and leaves no probe file behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_the_registry_probe_opens_a_real_sqlite_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)
    paths = StatePaths(tmp_path / "state")
    assert "not created yet" in doctor.probe_registry(paths).detail
    Registry.open(paths)  # creates and migrates it
    opened = doctor.probe_registry(paths)
    assert opened.status == "ok" and opened.detail.endswith(f"schema {head_revision()}")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "registry.db").write_bytes(b"not a database" * 100)
    broken = doctor.probe_registry(StatePaths(tmp_path / "other"))
    assert broken.status == "missing" and "not a database" in broken.detail
    assert "restore the registry file from a backup" in broken.fix


def test_the_registry_probe_reports_a_bad_url_and_a_database_that_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = StatePaths(tmp_path)
    monkeypatch.setenv("LLMOPS_REGISTRY_URL", "registry.db")
    assert "not a database URL" in doctor.probe_registry(paths).detail
    monkeypatch.setenv("LLMOPS_REGISTRY_URL", "mysql://root@127.0.0.1/llmops")
    assert "is not SQLite or PostgreSQL" in doctor.probe_registry(paths).detail
    # Port 1 on this machine: nothing listens, the connection is refused at once.
    monkeypatch.setenv("LLMOPS_REGISTRY_URL", "postgresql://nobody:pw@127.0.0.1:1/none")
    refused = doctor.probe_registry(paths)
    assert refused.status == "missing"
    assert refused.detail.startswith(
        "postgresql://nobody:***@127.0.0.1:1/none (LLMOPS_REGISTRY_URL): "
    )
    assert "refused" in refused.detail
