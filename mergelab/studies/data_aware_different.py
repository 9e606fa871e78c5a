"""`mergelab report` extension of the study data_aware_different (experiments/data_aware):
experts fine-tuned from two different bases."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mergelab.studies.data_aware import write_data_aware_report


def extend_report(rows: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The data-aware analyses of this study (see `mergelab.studies.data_aware`)."""
    return write_data_aware_report(rows, summary, out_dir)
