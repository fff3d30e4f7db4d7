"""State, model registry: models, versions, files, aliases, tags, lineage, metrics, cards."""
