"""The experiment side: typed run configs (`config`), sweeps (`sweep`), one run (`runner`), the results
store (`results`), evaluation references (`scoring`), reports (`report`), bootstrap intervals and verdicts
(`intervals`, `score_intervals`), W&B logging, the default study (`demo`) and the zoo card (`zoo_card`)."""
