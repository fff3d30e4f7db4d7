"""Observation: ObservedState from the lock file (later also the registry and Kubernetes)."""
