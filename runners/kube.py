"""Runners, Kubernetes access: one API client for the Job executor and the KServe target."""

from __future__ import annotations

from kubernetes import client, config

from runners.errors import RetryableError


class ClusterUnavailable(RetryableError):
    """No cluster is configured: neither a service account nor a kube config."""


def api_client(host: str | None = None) -> client.ApiClient:
    """The cluster from the pod's service account or the kube config; `host` for tests."""
    if host:
        configuration = client.Configuration()
        configuration.host = host
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except config.ConfigException as err:
            raise ClusterUnavailable(
                f"no Kubernetes cluster configured ({err}); set KUBECONFIG or run in a pod"
            ) from err
    return client.ApiClient()
