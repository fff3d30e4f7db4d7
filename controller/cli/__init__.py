"""CLI: thin typer commands over the workspace, loaders, planner and renderers."""
