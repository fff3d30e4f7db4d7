"""Reports: renderers of plans and diagnostics for terminals, JSON and pull requests."""
