"""`mergelab report` extension of merging_at_scale_micro, the micro-zoo golden-number version of
experiments/merging_at_scale: the same findings and figures (see `mergelab.studies.merging_at_scale`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mergelab.studies import merging_at_scale


def extend_report(rows: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The findings table and the three figures of the study."""
    return merging_at_scale.extend_report(rows, summary, out_dir)
