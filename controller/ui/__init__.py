"""Dashboard (`llmops ui`): server-rendered pages over the state the CLI reads; sits between
the CLI and the production loop in the layers."""
