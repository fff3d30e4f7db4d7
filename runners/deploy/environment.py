"""Runner `deploy`, environment: what a runtime llmops starts may see of the environment.

Every process llmops starts to serve or train (local runtimes, `llmops serve`, the training
runner) gets a minimal environment built here, never the apply environment wholesale: a CI
job's tokens, cloud keys and other deployments' keys stay out of processes that outlive
apply and run model code. The key a runtime needs is passed by name, under the runtime's
own variable. A key is sent to a container engine on another machine only when the
operator trusts that engine (REMOTE_ENGINES_ENV).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from runners.deploy.release import DeployError

# What a Python process with torch, transformers or llama.cpp needs to run as it would in
# the shell that started apply: where things are, locale, threads, accelerators, offline
# switches. Nothing here holds a credential (HF_TOKEN, for one, is left out on purpose:
# runtimes load local folders only).
ALLOWED = frozenset(
    {
        # the process itself
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        # runners/serve/ports.py keeps its port claims here
        "XDG_RUNTIME_DIR",
        "LLMOPS_PORT_CLAIMS",
        # Python and the virtual environment llmops runs from
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONHASHSEED",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "VIRTUAL_ENV",
        # Hugging Face libraries: caches and offline switches, never a token
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_DATASETS_CACHE",
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "TRANSFORMERS_CACHE",
        "TOKENIZERS_PARALLELISM",
        # CPU threads
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "KMP_AFFINITY",
        "OMP_PROC_BIND",
        # accelerators
        "CUDA_VISIBLE_DEVICES",
        "CUDA_HOME",
        "NVIDIA_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
        "LD_LIBRARY_PATH",
        "PYTORCH_CUDA_ALLOC_CONF",
        # measuring tests' coverage inside the processes they start
        "COVERAGE_PROCESS_START",
    }
)
ALLOWED_PREFIXES = ("LC_", "COV_CORE_")
# The container engines on other machines the operator trusts with deployment keys: their
# docker.host addresses, space- or comma-separated, in the apply environment (never a spec).
REMOTE_ENGINES_ENV = "LLMOPS_REMOTE_ENGINES"


def allowed(name: str) -> bool:
    return name in ALLOWED or name.startswith(ALLOWED_PREFIXES)


def minimal(
    extra: Mapping[str, str] | None = None,
    keep: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The allowlisted variables of `environ` (this process's by default), the names in
    `keep` that the started program reads itself, then `extra` (its key, its config)."""
    environ = os.environ if environ is None else environ
    names = set(keep)
    env = {k: v for k, v in environ.items() if allowed(k) or k in names}
    env.update(extra or {})
    return env


def is_local_engine(host: str | None) -> bool:
    """Whether a docker.host address is this machine's engine: unset, a unix socket, or a
    loopback address (tcp://127.0.0.1:2375, ssh://localhost)."""
    if not host or host.startswith(("unix:", "npipe:")) or host.startswith("/"):
        return True
    name = urlsplit(host).hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def trusted_engines(environ: Mapping[str, str] | None = None) -> list[str]:
    environ = os.environ if environ is None else environ
    return environ.get(REMOTE_ENGINES_ENV, "").replace(",", " ").split()


def check_key_destination(
    deployment: str, host: str | None, environ: Mapping[str, str] | None = None
) -> None:
    """DeployError unless a key may be sent to the engine at `host`: this machine's, or one
    the operator listed in REMOTE_ENGINES_ENV (a spec alone cannot send a key elsewhere)."""
    if is_local_engine(host) or host in trusted_engines(environ):
        return
    raise DeployError(
        f"Deployment {deployment}: docker.host {host} is another machine's engine, and "
        f"its api_key would be sent there; if that engine is yours, list it in "
        f"{REMOTE_ENGINES_ENV} (e.g. export {REMOTE_ENGINES_ENV}='{host}') where apply runs, "
        "or drop api_key, or use this machine's engine"
    )
