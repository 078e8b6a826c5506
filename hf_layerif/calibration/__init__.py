"""Block-by-block calibration shared by OWL (allocation) and the pruning methods."""

from .data import get_calibration_data
from .runner import BlockSequentialRunner, InputStatistics

__all__ = ["get_calibration_data", "BlockSequentialRunner", "InputStatistics"]
