"""The steps of a labelling run, one module each, in the order of a run: `prompt_sources`, `shard_plan`,
`sample`, `pair`, `judge_step`, `route`, `enqueue`, `certify` (the second review phase), `escalation` (judge
tiers), `merge`, `reward_round` (the review round after the reward model), `report` (report.json) and
`report_page` (RUN_DIR/report.html), with `refusal_contrast`, `bias_audit` and `cost_ledger` beside them.
Plain functions over the run directory; the Prefect flows (`rlaif.flows`) run them.

Layer: above judges, the review store and the generation backends; below the flows and the CLI.
"""
