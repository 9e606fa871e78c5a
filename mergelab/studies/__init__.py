"""Study-specific analyses. A study's overlay names its function (`report.extension:
mergelab.studies.ties:write_ties_report`, with `report.options`), which `mergelab report` calls as
`function(rows, summary, out_dir, **options)` after the common tables and figures (see
`mergelab.experiment.report`)."""
