"""A real Kubernetes API server for tests, controller-runtime's envtest arrangement.

kube-apiserver and etcd are found in the folder `KUBEBUILDER_ASSETS` names (`make engines`
unpacks ../shared/tools/kube-apiserver/kube-apiserver.xz into ~/.cache/llmops/envtest/bin and
links Debian's etcd there); etcd may also come from PATH. The server is real: admission, CRD
schema validation, server-side apply with field managers, status subresources. It runs no
controllers and no nodes, so a test plays KServe's controller or the Job controller by
patching status. One server per test process (pytest-xdist worker), started on first use.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

DEFAULT_ASSETS = Path.home() / ".cache" / "llmops" / "envtest" / "bin"
KSERVE_CRDS = Path(__file__).resolve().parents[2] / "shared" / "external-schemas" / "kserve"
# Kubeflow Trainer's CRDs and its torch-distributed runtime, vendored (see SOURCE.md there).
TRAINER_CRDS = Path(__file__).resolve().parent / "fixtures" / "crds" / "kubeflow-trainer"
TOKEN = "envtest-token"
APPLY_PATCH = "application/apply-patch+yaml"


@dataclass
class Cluster:
    host: str
    kubeconfig: Path
    folder: Path
    processes: list[subprocess.Popen[bytes]]

    def client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def stop(self) -> None:
        for process in self.processes:  # the API server first, while etcd is still up
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies, even killed, so no
    API server or etcd outlives a test run (Linux's PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binaries() -> tuple[Path, Path] | str:
    """(kube-apiserver, etcd), or why they are not here."""
    assets = Path(os.environ.get("KUBEBUILDER_ASSETS") or DEFAULT_ASSETS)
    kas = assets / "kube-apiserver"
    if not os.access(kas, os.X_OK):
        return (
            f"no kube-apiserver in {assets} (KUBEBUILDER_ASSETS): 'make engines' unpacks "
            "../shared/tools/kube-apiserver/kube-apiserver.xz there"
        )
    etcd = assets / "etcd"
    if not os.access(etcd, os.X_OK):
        found = shutil.which("etcd")
        if not found:
            return "no etcd in KUBEBUILDER_ASSETS or on PATH: 'apt-get install etcd-server'"
        etcd = Path(found)
    if shutil.which("openssl") is None:
        return "no openssl command to make the service-account key"
    return kas, etcd


def _wait(process: subprocess.Popen[bytes], ready: Any, what: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited {process.returncode}: {log.read_text()[-2000:]}")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready in 120 s: {log.read_text()[-2000:]}")


def start() -> Cluster:
    found = binaries()
    if isinstance(found, str):
        raise RuntimeError(found)
    kas, etcd = found
    import httpx

    folder = Path(tempfile.mkdtemp(prefix="llmops-envtest-"))
    certs = folder / "certs"
    certs.mkdir()
    subprocess.run(
        ["openssl", "genrsa", "-out", str(certs / "sa.key"), "2048"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "rsa", "-in", str(certs / "sa.key"), "-pubout", "-out", str(certs / "sa.pub")],
        check=True,
        capture_output=True,
    )
    (certs / "tokens.csv").write_text(f"{TOKEN},admin,admin,system:masters\n")
    client_port, peer_port, port = _free_port(), _free_port(), _free_port()
    processes: list[subprocess.Popen[bytes]] = []
    etcd_log = folder / "etcd.log"
    with etcd_log.open("wb") as out:
        etcd_process = subprocess.Popen(
            [
                str(etcd),
                "--data-dir",
                str(folder / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{client_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{client_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    cluster = Cluster(f"https://127.0.0.1:{port}", folder / "kubeconfig", folder, processes)
    try:

        def etcd_ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{client_port}/health", timeout=1).is_success
            except httpx.HTTPError:
                return False

        _wait(etcd_process, etcd_ready, "etcd", etcd_log)
        kas_log = folder / "kube-apiserver.log"
        with kas_log.open("wb") as out:
            kas_process = subprocess.Popen(
                [
                    str(kas),
                    f"--etcd-servers=http://127.0.0.1:{client_port}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={port}",
                    f"--cert-dir={certs}",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    f"--service-account-key-file={certs / 'sa.pub'}",
                    f"--service-account-signing-key-file={certs / 'sa.key'}",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    f"--token-auth-file={certs / 'tokens.csv'}",
                    "--authorization-mode=AlwaysAllow",
                    "--disable-admission-plugins=ServiceAccount",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        processes[:] = [kas_process, etcd_process]

        def kas_ready() -> bool:
            try:
                return httpx.get(
                    f"{cluster.host}/readyz",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    verify=False,
                    timeout=1,
                ).is_success
            except httpx.HTTPError:
                return False

        _wait(kas_process, kas_ready, "kube-apiserver", kas_log)
    except BaseException:
        processes[:] = [p for p in (locals().get("kas_process"), etcd_process) if p]
        cluster.stop()
        raise
    cluster.kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "envtest",
                        "cluster": {
                            "server": cluster.host,
                            "certificate-authority": str(certs / "apiserver.crt"),
                        },
                    }
                ],
                "users": [{"name": "admin", "user": {"token": TOKEN}}],
                "contexts": [
                    {"name": "envtest", "context": {"cluster": "envtest", "user": "admin"}}
                ],
                "current-context": "envtest",
            }
        )
    )
    return cluster


# How long a new CRD may take to list: seconds on a quiet machine, but a 60 s wait ran out
# while the full demo trained beside the suite on 2 cores (a 404 from discovery).
CRD_READY_S = 300


def install_kserve_crds(api: Any) -> None:
    """KServe's own CRDs, by server-side apply (client-side apply's annotation would exceed
    the 262,144-byte limit for the 1.9 MB InferenceService CRD), then wait for Established."""
    from kubernetes import client

    _install_crds(api, sorted(KSERVE_CRDS.glob("*.yaml")))
    deadline = time.monotonic() + CRD_READY_S
    # Established can precede discovery by a moment: wait until a list answers.
    custom = client.CustomObjectsApi(api)
    while True:
        try:
            custom.list_cluster_custom_object("serving.kserve.io", "v1beta1", "inferenceservices")
            custom.list_cluster_custom_object("serving.kserve.io", "v1alpha1", "servingruntimes")
            return
        except client.ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def install_trainer_crds(api: Any) -> None:
    """Kubeflow Trainer's CRDs (TrainJob, TrainingRuntime, ClusterTrainingRuntime) as KServe's
    are installed, then its torch-distributed ClusterTrainingRuntime, created once it lists."""
    from kubernetes import client

    _install_crds(api, sorted(TRAINER_CRDS.glob("trainer.kubeflow.org_*.yaml")))
    runtime = yaml.safe_load((TRAINER_CRDS / "torch_distributed_runtime.yaml").read_text())
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + CRD_READY_S
    while True:
        try:
            custom.list_cluster_custom_object("trainer.kubeflow.org", "v1alpha1", "trainjobs")
            custom.patch_cluster_custom_object(
                "trainer.kubeflow.org",
                "v1alpha1",
                "clustertrainingruntimes",
                runtime["metadata"]["name"],
                runtime,
                field_manager="llmops-tests",
                force=True,
                _content_type=APPLY_PATCH,
            )
            return
        except client.ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _install_crds(api: Any, paths: list[Path]) -> None:
    """CRDs by server-side apply, waited for until Established."""
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in paths:
        crd = yaml.safe_load(path.read_text())
        names.append(crd["metadata"]["name"])
        ext.patch_custom_resource_definition(
            crd["metadata"]["name"],
            crd,
            field_manager="llmops-tests",
            force=True,
            _content_type=APPLY_PATCH,
        )
    deadline = time.monotonic() + CRD_READY_S
    for name in names:
        while True:
            crd = ext.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            if conditions.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {name} not Established in 60 s: {conditions}")
            time.sleep(0.1)


def ensure_namespace(api: Any, name: str) -> None:
    from kubernetes import client

    try:
        client.CoreV1Api(api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
        )
    except client.ApiException as err:
        if err.status != 409:
            raise


_CLUSTER: Cluster | None = None
_FAILED: str | None = None


def cluster() -> Cluster:
    """The process's API server with KServe's CRDs installed; skips the test when the
    binaries are not here."""
    global _CLUSTER, _FAILED
    found = binaries()
    if isinstance(found, str):
        pytest.skip(f"no real Kubernetes API server: {found}")
    if _FAILED:
        pytest.fail(_FAILED)
    if _CLUSTER is None:
        try:
            started = start()
        except Exception as err:
            _FAILED = f"the test API server did not start: {err}"
            raise
        atexit.register(started.stop)
        install_kserve_crds(started.client())
        _CLUSTER = started
    return _CLUSTER


_TRAINER = False


def trainer_cluster() -> Cluster:
    """The process's API server with Kubeflow Trainer's CRDs and runtime installed too."""
    global _TRAINER
    found = cluster()
    if not _TRAINER:
        install_trainer_crds(found.client())
        _TRAINER = True
    return found
