"""Runner `pull`: fetch a model from its source into a folder of safetensors and metadata.

The interface is plain data: `fetch(source, dest, options)` takes the Model spec's source as
a dict and returns a FetchResult; it never imports the controller.
"""

from runners.pull.fetch import FetchOptions, FetchResult, PullError, fetch, source_key

__all__ = ["FetchOptions", "FetchResult", "PullError", "fetch", "source_key"]
