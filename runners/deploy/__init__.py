"""Runner `deploy`: put a registered model version on a target (local, docker image, KServe).

The interface is plain data: a `Release` (deployment name, `DeploymentSpec.model_dump()`,
model version, smoke prompts). `runners.deploy.local` starts and swaps serving processes on
this machine; `runners.deploy.docker_context` renders a build context and
`runners.deploy.docker_engine` builds, runs and stops it; `runners.deploy.kserve_manifests`
renders KServe objects and `runners.deploy.kserve_rollout` applies, waits for, rolls back and
deletes them. Never imports the controller.
"""

from runners.deploy.release import DeployError, Release, container_config

__all__ = ["DeployError", "Release", "container_config"]
