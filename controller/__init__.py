"""llmops controller: specs in, plan out, runners called, state recorded."""

from importlib.metadata import PackageNotFoundError, version

# The one place the version is written: pyproject.toml reads it (tool.setuptools.dynamic).
__version__ = "0.1.0"

# The name pip installs it by. `llmops` on PyPI belongs to an unrelated project (2023), so the
# distribution has a name of its own; the command stays `llmops`.
DISTRIBUTION = "llmops-gitops"


def installed_version() -> str:
    """The version of the installed llmops distribution (what `pip install llmops-gitops==` names);
    this source's `__version__` when it runs from a checkout that was never installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return __version__
