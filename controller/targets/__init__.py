"""Deploy targets: one module per target kind (local, docker, kserve) behind the Target
interface in base.py, looked up by name with `target_for`."""

# The built-in targets register themselves on import; importing the package imports them,
# so `target_for` finds them however base.py was reached.
from controller.targets import docker, kserve, local

__all__ = ["docker", "kserve", "local"]
