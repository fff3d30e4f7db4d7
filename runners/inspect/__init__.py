"""Runner `inspect`: a "brain scan" of a model folder (R-VIZ-2), never imports the controller.

Weights are streamed from safetensors one tensor at a time (norms, spectral norm, stable rank,
moments, histograms); against a base, per-tensor deltas (full models densely, LoRA adapters
by an exact low-rank path); on probe prompts, hidden-state norms and MLP neurons; alarms with
a reason and a hint; heatmaps as JSON and PNG. `scan(ScanInputs(...))` is the entry point.
"""

from runners.inspect.scan import SCAN_VERSION, ScanInputs, scan, scan_digest

__all__ = ["SCAN_VERSION", "ScanInputs", "scan", "scan_digest"]
