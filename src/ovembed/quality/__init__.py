"""`ovembed eval`: retrieval (BEIR folders) and STS quality of one or more models, side by side, in BGE-M3's
modes; datasets, metrics, modes, the encoding cache and the report each have their own module."""

from ovembed.quality.modes import MODES
from ovembed.quality.report import report, table
from ovembed.quality.runs import evaluate

__all__ = ["MODES", "evaluate", "report", "table"]
