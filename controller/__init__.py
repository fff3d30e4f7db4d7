"""llmops controller: specs in, plan out, runners called, state recorded."""

__version__ = "0.1.0"
