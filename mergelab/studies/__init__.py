"""Study-specific analyses: `mergelab/studies/<study>.py` defines `extend_report(rows, summary, out_dir)`,
which `mergelab report` calls after the common tables and figures (see `mergelab.report`)."""
