"""Loading: YAML files -> validated spec objects with source positions -> desired state."""
