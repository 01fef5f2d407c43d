"""Prefect flows and tasks (installed as `rlaif.flows`): rlaif-label (`label`, over `shard_runner` and
`shard_claims`), rlaif-merge (`merge`), rlaif-train (`train`), rlaif-pipeline (`pipeline`), their parameters
(`parameters`) and `rlaif deploy` (`deployments`). Thin over the pipeline steps and the training stages.

Layer: above everything but the CLI.
"""
