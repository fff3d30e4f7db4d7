"""Runner `prepare`: Dataset spec (as a dict) + resolved inputs -> prepared splits and stats.

Never imports the controller: the controller resolves sources, models and eval data into
PrepareInputs and stores what `prepare` writes.
"""

from runners.data.preparation import PrepareError, PrepareInputs, PrepareResult, prepare

__all__ = ["PrepareError", "PrepareInputs", "PrepareResult", "prepare"]
