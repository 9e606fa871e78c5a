"""`mergelab report` extension of the study ties_micro: the micro-zoo version of experiments/ties that the
golden-number test runs (methods, ablation and sign conflicts)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mergelab.studies.ties import write_ties_report


def extend_report(rows: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The TIES analyses of this study (see `mergelab.studies.ties`)."""
    return write_ties_report(rows, summary, out_dir, sign_conflicts=True)
