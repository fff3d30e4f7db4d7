"""Deploy targets: one module per target kind (local, docker, kserve) behind the Target
interface in base.py, looked up by name with `target_for`."""
