"""Observe, the machine: what `llmops doctor` checks before anything runs (Python, packages,
torch's device, the state folder, registry, blob store, artifact store, container engine,
Kubernetes context, llama.cpp, chromium). Each check is a pure classification of what a
thin probe found."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from controller import DISTRIBUTION
from controller.state.artifacts.base import StoreError, round_trip
from controller.state.artifacts.url import open_store
from controller.state.paths import REGISTRY_URL_ENV, STATE_DIR_ENV, STORE_ENV, StatePaths
from controller.state.registry.db import current_revision, head_revision
from runners.deploy.docker_engine import find_engine

Status = Literal["ok", "warning", "missing"]
GIB = 1 << 30
MIN_PYTHON = (3, 11)
# Below this much free space a pull or a training run's checkpoints can fill the disk.
LOW_DISK_GIB = 10.0
# The packages llmops runs on: (distribution, what needs it); torch is required.
PACKAGES = (
    ("torch", "training, evaluation and serving"),
    ("transformers", "loading and training models"),
    ("peft", "LoRA fine-tuning"),
    ("lm-eval", "lm-eval-harness evaluation tasks"),
    ("trl", "preference training (DPO, ORPO, KTO)"),
)
REQUIRED_PACKAGES = {"torch"}
CHROMIUM = Path("/usr/bin/chromium")  # what tests/integration/test_ui.py drives
NOT_WRITABLE = "not writable"
STATE_FIX = f"set {STATE_DIR_ENV} to a folder you can write, or fix the folder's permissions"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report: `missing` is a required piece, exit 1."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == "missing" for c in checks) else 0


# Classification: pure functions of what the probes found.


def python_check(version: tuple[int, int, int]) -> Check:
    shown = ".".join(map(str, version))
    if version[:2] >= MIN_PYTHON:
        return Check("python", "ok", f"Python {shown}")
    need = ".".join(map(str, MIN_PYTHON))
    return Check(
        "python",
        "missing",
        f"Python {shown}; llmops needs {need} or newer",
        f"install Python {need}+ and recreate the virtualenv with it",
    )


def package_check(name: str, version: str | None, needed_for: str) -> Check:
    if version is not None:
        return Check(name, "ok", version)
    required = name in REQUIRED_PACKAGES
    fix = (
        "pip install llmops-gitops (or pip install -e . in a checkout: it runs uninstalled)"
        if name == "llmops"
        else f"pip install '{name}' (or reinstall llmops: pip install -e .)"
    )
    return Check(
        name,
        "missing" if required else "warning",
        f"not installed; needed for {needed_for}",
        fix,
    )


def device_check(
    torch_version: str | None,
    gpus: list[tuple[str, int]],
    mps: bool,
    cpus: int,
    memory_bytes: int | None,
) -> Check:
    """`gpus`: (name, memory in bytes) per CUDA device."""
    if torch_version is None:
        return Check("torch device", "missing", "torch cannot be imported", "pip install torch")
    if gpus:
        shown = ", ".join(f"{name} {memory / GIB:.0f} GiB" for name, memory in gpus)
        return Check("torch device", "ok", f"GPU: {shown} (torch {torch_version})")
    memory = f", {memory_bytes / GIB:.1f} GiB memory" if memory_bytes else ""
    if mps:
        return Check("torch device", "ok", f"Apple MPS{memory} (torch {torch_version})")
    return Check(
        "torch device",
        "ok",
        f"CPU only: {cpus} cores{memory} (torch {torch_version}); "
        "fine for the demo's 135M model, slow for billions of parameters",
    )


def state_check(folder: Path, exists: bool, writable: bool, free_bytes: int | None) -> Check:
    """`writable`: the folder, or when it does not exist yet the folder it would be made in."""
    where = f"{folder}" + ("" if exists else " (created by the first apply)")
    if not writable:
        return Check("state folder", "missing", f"{where} is not writable", STATE_FIX)
    if free_bytes is None:
        return Check("state folder", "ok", where)
    free = free_bytes / GIB
    if free < LOW_DISK_GIB:
        return Check(
            "state folder",
            "warning",
            f"{where}: only {free:.1f} GiB free",
            f"free disk space (models and checkpoints need several GiB) or set {STATE_DIR_ENV} "
            "to a bigger disk; `llmops models gc` removes unreferenced blobs",
        )
    return Check("state folder", "ok", f"{where}: {free:.0f} GiB free")


def registry_check(url: str, configured: bool, error: str | None, revision: str | None) -> Check:
    """`error`: why it could not be opened; `revision`: the schema's (None: not created)."""
    shown = _hide_password(url)
    source = f" ({REGISTRY_URL_ENV})" if configured else ""
    if error is not None:
        if configured:
            fix = (
                f"set {REGISTRY_URL_ENV} to sqlite:///path/registry.db or "
                "postgresql+psycopg://user@host/db and make sure the database answers"
            )
        elif error == NOT_WRITABLE:
            fix = STATE_FIX
        else:
            fix = (
                "restore the registry file from a backup, or move it aside and the next apply "
                "starts an empty one (the versions it registered are then forgotten)"
            )
        return Check("registry", "missing", f"{shown}{source}: {error}", fix)
    if revision is None:
        return Check("registry", "ok", f"{shown}{source}: not created yet (the first apply does)")
    if revision != head_revision():
        return Check(
            "registry",
            "warning",
            f"{shown}{source}: schema {revision}, this llmops has {head_revision()}",
            "the next llmops command that opens it migrates it; an older llmops cannot read it",
        )
    return Check("registry", "ok", f"{shown}{source}: schema {revision}")


def blob_check(folder: Path, exists: bool, writable: bool) -> Check:
    if not writable:
        return Check("blob store", "missing", f"{folder} is not writable", STATE_FIX)
    return Check("blob store", "ok", f"{folder}" + ("" if exists else " (created on first pull)"))


def store_check(url: str | None, error: str | None, detail: str = "") -> Check:
    """The artifact store (LLMOPS_STORE): unset is fine (the state folder holds everything);
    set, it must take a write, a read and a delete, or every apply fails."""
    if not url:
        return Check("artifact store", "ok", f"{STORE_ENV} not set: the state folder holds all")
    if error:
        return Check(
            "artifact store",
            "missing",
            f"{url}: {error}",
            f"fix the store's settings ({STORE_ENV}, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
            f"AWS_SECRET_ACCESS_KEY) or unset {STORE_ENV}",
        )
    return Check("artifact store", "ok", f"{url}: {detail}")


def engine_check(engine: str | None, why: str) -> Check:
    if engine is not None:
        return Check("container engine", "ok", f"{engine} answers")
    return Check(
        "container engine",
        "warning",
        f"no docker or podman answers ({why})",
        "install docker or podman (only deployments with target docker and `llmops images` "
        "need one)",
    )


def kube_check(in_cluster: bool, context: str | None, error: str | None) -> Check:
    if in_cluster:
        return Check("kube context", "ok", "in a pod: the service account's cluster")
    if context is not None:
        return Check("kube context", "ok", f"current context {context} (not contacted)")
    return Check(
        "kube context",
        "warning",
        f"no Kubernetes cluster configured ({error})",
        "set KUBECONFIG or run `kubectl config use-context` (only target kserve and "
        "executor kubernetes need one)",
    )


def llama_cpp_check(version: str | None, error: str | None) -> Check:
    if error is None and version is not None:
        return Check("llama.cpp backend", "ok", f"llama-cpp-python {version} imports")
    return Check(
        "llama.cpp backend",
        "warning",
        f"llama_cpp cannot be imported ({error})",
        "make llama-cpp (or pip install 'llmops[llama-cpp]'); only GGUF deployments need it",
    )


def chromium_check(path: Path | None) -> Check:
    if path is not None:
        return Check("chromium", "ok", f"{path} (the dashboard's browser tests)")
    return Check(
        "chromium",
        "warning",
        f"no chromium at {CHROMIUM}; the dashboard's browser tests are skipped",
        "make chromium (apt-get install chromium as root)",
    )


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


# Probes: the thin part that looks at this machine.


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nearest_existing(folder: Path) -> Path:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate
    return Path(folder.anchor)


def _can_write(folder: Path) -> bool:
    """Whether a file can be made in `folder`, or (when it does not exist) in the nearest folder
    above it: really tried, since permission bits say nothing for root."""
    target = _nearest_existing(folder)
    if not target.is_dir():
        return False
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".llmops-doctor-"):
            return True
    except OSError:
        return False


def probe_device() -> Check:
    try:
        from torch import __version__, backends, cuda
    except (ImportError, OSError) as err:  # installed, but its libraries do not load
        missing = device_check(None, [], False, 0, None)
        return Check(missing.check, missing.status, f"{missing.detail}: {err}", missing.fix)
    gpus = [
        (cuda.get_device_name(i), cuda.get_device_properties(i).total_memory)
        for i in range(cuda.device_count())
    ]
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    return device_check(
        __version__, gpus, bool(backends.mps.is_available()), os.cpu_count() or 1, memory
    )


def probe_state(paths: StatePaths) -> Check:
    folder = paths.root
    writable = _can_write(folder)
    existing = _nearest_existing(folder)
    free = shutil.disk_usage(existing).free if existing.is_dir() else None
    return state_check(folder, folder.is_dir(), writable, free)


def probe_registry(paths: StatePaths) -> Check:
    url = paths.registry_url
    configured = bool(os.environ.get(REGISTRY_URL_ENV))
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        return registry_check(url, configured, f"not a database URL ({err})", None)
    if parsed.drivername.startswith("sqlite"):
        database = Path(parsed.database or "")
        if not parsed.database or not database.exists():
            writable = _can_write(database.parent)
            return registry_check(url, configured, None if writable else NOT_WRITABLE, None)
        args: dict[str, object] = {"timeout": 5}
    elif parsed.drivername in ("postgresql", "postgresql+psycopg"):
        parsed = parsed.set(drivername="postgresql+psycopg")
        args = {"connect_timeout": 5}
    else:
        return registry_check(
            url, configured, f"{parsed.drivername} is not SQLite or PostgreSQL", None
        )
    engine = create_engine(parsed, connect_args=args)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        revision = current_revision(engine)
    except SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()
        return registry_check(url, configured, reason[0] if reason else type(err).__name__, None)
    finally:
        engine.dispose()
    return registry_check(url, configured, None, revision)


def probe_blobs(paths: StatePaths) -> Check:
    return blob_check(paths.blobs, paths.blobs.is_dir(), _can_write(paths.blobs))


def probe_store() -> Check:
    url = os.environ.get(STORE_ENV) or None
    try:
        store = open_store(url, quick=True)
        if store is None:
            return store_check(None, None)
        return store_check(url, None, round_trip(store))
    except StoreError as err:
        return store_check(url, str(err))


def probe_engine() -> Check:
    return engine_check(*find_engine())


def probe_kube() -> Check:
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return kube_check(True, None, None)
    from kubernetes.config import ConfigException, list_kube_config_contexts

    try:
        _contexts, current = list_kube_config_contexts()
    except (ConfigException, OSError) as err:
        return kube_check(False, None, str(err) or type(err).__name__)
    return kube_check(False, current.get("name") or "(unnamed)", None)


def probe_llama_cpp() -> Check:
    try:
        import llama_cpp
    except Exception as err:  # a missing module, or its shared library failing to load
        return llama_cpp_check(None, f"{type(err).__name__}: {err}")
    return llama_cpp_check(getattr(llama_cpp, "__version__", None) or "?", None)


def probe_chromium() -> Check:
    found = CHROMIUM if CHROMIUM.is_file() else shutil.which("chromium")
    return chromium_check(Path(found) if found else None)


def _guarded(name: str, probe: Callable[[], Check], required: bool = False) -> Check:
    """A probe that fails in a way nobody foresaw is that line's failure (missing when the
    piece is required, else a warning), not a traceback."""
    try:
        return probe()
    except Exception as err:
        if os.environ.get("LLMOPS_DEBUG"):
            raise
        return Check(
            name,
            "missing" if required else "warning",
            f"could not check: {type(err).__name__}: {err}",
            "rerun with LLMOPS_DEBUG=1 and report it if the message does not say what to do",
        )


def diagnose(repo: Path) -> list[Check]:
    """Every check, in the order a user fixes them: Python and packages, then where state
    lives, then the optional engines."""
    paths = StatePaths.for_repo(repo)
    python = sys.version_info
    checks = [python_check((python.major, python.minor, python.micro))]
    checks.append(package_check("llmops", _version(DISTRIBUTION), "the CLI itself"))
    checks += [package_check(name, _version(name), needed) for name, needed in PACKAGES]
    if _version("torch") is not None:
        checks.append(_guarded("torch device", probe_device, required=True))
    checks.append(_guarded("state folder", lambda: probe_state(paths), required=True))
    checks.append(_guarded("registry", lambda: probe_registry(paths), required=True))
    checks.append(_guarded("blob store", lambda: probe_blobs(paths)))
    checks.append(_guarded("artifact store", probe_store, required=True))
    checks.append(_guarded("container engine", probe_engine))
    checks.append(_guarded("kube context", probe_kube))
    checks.append(_guarded("llama.cpp backend", probe_llama_cpp))
    checks.append(_guarded("chromium", probe_chromium))
    return checks
