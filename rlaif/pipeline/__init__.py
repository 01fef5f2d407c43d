"""The steps of a labelling run, one module each, in the order of a run: `prompt_sources`, `shard_plan`,
`sample`, `pair`, `judge_step`, `route`, `enqueue`, `merge`, `report` (report.json) and `report_page`
(RUN_DIR/report.html). Plain functions over the run directory; the Prefect flows (`rlaif.flows`) run them.

Layer: above judges, the review store and the generation backends; below the flows and the CLI.
"""
