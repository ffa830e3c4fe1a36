"""Fine-tuning dataset preparation on Ray Data."""

from ragtune.data.formats import DataError
from ragtune.data.pipeline import PrepareStats, ensure_prepared, output_dir, run_prepare

__all__ = ["DataError", "PrepareStats", "ensure_prepared", "output_dir", "run_prepare"]
