"""`rlaif deploy`: the four flows as deployments served from this process, with the config's schedules.

    rlaif-pipeline/<name>   label, review, merge, train            (schedules from deploy.schedules; with
                                                                   run.rounds, also started when a round's
                                                                   review queue empties)
    rlaif-label/<name>      label and route to review
    rlaif-merge/<name>      merge; also started by the review service's queue-emptied event for the run
    rlaif-train/<name>      reward model, then DPO or PPO

Every deployment takes the parameters `config` (a config file, relative to the working directory of
`rlaif deploy`) and `overrides` (typed config keys, see `rlaif.flows.parameters`); their defaults are the
config and --set values `rlaif deploy` was started with.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import serve
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron, Interval
from prefect.types.entrypoint import EntrypointType

from rlaif.config import Config, ConfigError, ScheduleSection, parse_override
from rlaif.flows.label import label_pipeline
from rlaif.flows.merge import QUEUE_EMPTIED, merge_flow
from rlaif.flows.parameters import DEPLOYMENT_CONFIG_ONLY, ConfigOverrides
from rlaif.flows.pipeline import rlaif_pipeline
from rlaif.flows.train import train_pipeline

FLOWS = {
    "rlaif-pipeline": rlaif_pipeline,
    "rlaif-label": label_pipeline,
    "rlaif-merge": merge_flow,
    "rlaif-train": train_pipeline,
}


def overrides_mapping(items: list[str]) -> dict[str, Any]:
    """`--set key=value` items as the typed `overrides` parameter (checked against the config's keys)."""
    mapping = dict(parse_override(item) for item in items)
    try:
        ConfigOverrides.model_validate(mapping)
    except ValueError as exc:
        raise ConfigError(f"--set: {exc}") from None
    refused = [key for key in mapping if key.endswith(DEPLOYMENT_CONFIG_ONLY)]
    if refused:
        raise ConfigError(f"--set {refused[0]}: deployment runs take this key only from the config file; set it there")
    return mapping


def schedule(section: ScheduleSection, base: dict[str, Any]) -> Any:
    parameters = {**base, "overrides": {**base["overrides"], **section.overrides}}
    if section.cron is not None:
        return Cron(section.cron, timezone=section.timezone, parameters=parameters)
    return Interval(timedelta(seconds=section.interval_s or 0), parameters=parameters)


def build_deployments(config_path: str | None, overrides: list[str], config: Config) -> list[Any]:
    """The four deployments, named `deploy.name`, with schedules and the merge trigger."""
    base = {"config": config_path, "overrides": overrides_mapping(overrides)}
    deployments = []
    for flow_name, flow in FLOWS.items():
        triggers = []
        if flow_name == "rlaif-pipeline" and config.run.rounds > 1:  # one round per trigger
            triggers.append(
                DeploymentEventTrigger(
                    name=f"continue {config.run.name} when a round's review queue empties",
                    expect={QUEUE_EMPTIED},
                    match={"rlaif.run": f"{config.run.name}-round-*"},
                    parameters=base,
                )
            )
        if flow_name == "rlaif-merge":
            triggers.append(
                DeploymentEventTrigger(
                    name=f"merge {config.run.name} when its review queue empties",
                    expect={QUEUE_EMPTIED},
                    match={"rlaif.run": config.run.name},
                    parameters=base,
                )
            )
        deployments.append(
            flow.to_deployment(
                name=config.deploy.name,
                parameters=base,
                schedules=[schedule(s, base) for s in config.deploy.schedules if s.flow == flow_name],
                triggers=triggers,
                # Import the flows as modules of the installed package, not as scripts from a path.
                entrypoint_type=EntrypointType.MODULE_PATH,
                description=(flow.description or "").strip().splitlines()[0] if flow.description else None,
            )
        )
    return deployments


def serve_deployments(config_path: str | None, overrides: list[str], config: Config) -> None:
    """Register the deployments with the Prefect server (PREFECT_API_URL) and run their flows until stopped."""
    serve(*build_deployments(config_path, overrides, config), limit=4)
