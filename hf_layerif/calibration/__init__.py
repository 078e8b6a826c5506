"""Block-by-block calibration shared by OWL (allocation) and the pruning methods."""

from .data import draw_windows, get_calibration_and_selection_data, get_calibration_data
from .runner import BlockSequentialRunner, InputStatistics

__all__ = ["draw_windows", "get_calibration_and_selection_data", "get_calibration_data", "BlockSequentialRunner", "InputStatistics"]
