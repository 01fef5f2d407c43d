"""The parameters every deployable flow takes: a config file and typed overrides of its keys.

    prefect deployment run 'rlaif-pipeline/default' --param config=configs/demo.yaml \
        --param overrides='{"judge.prompt": "prompts/my_judge.md.j2", "sampling.n": 6}'

`ConfigOverrides` has one optional field per config key, named by its dotted path, with the key's
type and no others allowed, so Prefect checks a run's parameters against its JSON schema when the
run is created: a misspelt key or a value of the wrong type is refused then, naming the key.

Anyone who can reach the Prefect API can start a deployment with parameters of their choosing, so a
run started from a deployment also gets `check_deployment_parameters`: the config file and every file
an override names must lie inside the allowed roots (`RLAIF_ALLOWED_ROOTS`, directories separated by
`:`; by default the working directory of the process that runs the flow, e.g. `rlaif deploy`'s), and
the keys that decide what program runs, where the API keys are sent or where labels are stored
(`DEPLOYMENT_CONFIG_ONLY`) can only come from the config file, and `config` must be a file's path: its
JSON schema (`ConfigParameter`) allows only a string, so the Prefect server refuses anything else when
the run is created, and a run created with schema enforcement turned off is refused when it starts
(Prefect would turn a JSON object given as `config` into a Config, which would otherwise pass unchecked).
"""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model

from rlaif.config import Config, ConfigError, apply_overrides, load_config
from rlaif.judges.setup import JudgeSetup


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields.update(_leaf_fields(annotation, f"{path}."))
        else:
            fields[path.replace(".", "__")] = (
                typing.Optional[annotation],  # noqa: UP045 - a runtime type, built from the annotation
                Field(None, alias=path, description=info.description),
            )
    return fields


ConfigOverrides = create_model(
    "ConfigOverrides",
    __config__=ConfigDict(extra="forbid", populate_by_name=False),
    __doc__='Config keys to override, by dotted path, e.g. {"judge.prompt": "prompts/my.md.j2"}.',
    **_leaf_fields(Config),
)


# A flow's `config` parameter: a Config when another flow calls it, a config file's path when a deployment
# or a person starts it. Its JSON schema, which the Prefect UI's run form and the server's check of a
# deployment run's parameters follow, is only the path: a deployment run refuses a config object anyway.
ConfigParameter = Annotated[
    Config | str | None,
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "description": "A config file's path (relative to the working directory of the process running the flow); "
            "null: the embedded demo config.",
        }
    ),
]


# A flow's `judge` parameter: the config's judge already loaded (`rlaif.judges.setup`), when a caller in this
# process has loaded it (the CLI does, to fail on a broken template before Prefect starts); null otherwise,
# and always null in a deployment run: the judge is then loaded from the config it runs with.
JudgeParameter = Annotated[
    JudgeSetup | None,
    WithJsonSchema({"type": "null", "description": "Leave empty: the judge is loaded from the config."}),
]


def override_mapping(overrides: BaseModel | dict[str, Any] | None) -> dict[str, Any]:
    """The overrides that were given, as {dotted key: value}: the form a deployment run takes them in."""
    if overrides is None:
        return {}
    model = overrides if isinstance(overrides, BaseModel) else ConfigOverrides.model_validate(overrides)
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)


def override_list(overrides: BaseModel | dict[str, Any] | None) -> list[str]:
    """The overrides as `key=value` items for `load_config` (only the keys that were given)."""
    return [f"{key}={json.dumps(value)}" for key, value in override_mapping(overrides).items()]


# Config keys a deployment run takes only from its config file (suffixes of dotted keys).
DEPLOYMENT_CONFIG_ONLY = ("api_key_env", "base_urls", "server.executable", "server.extra_args", "review.db")
# Config keys whose value is a file or folder (or a model name, which stays inside the roots as a path).
PATH_KEYS = (
    "run.dir",
    "prompts.path",
    "judge.prompt",
    "judgments",
    "model",
    "chat_template_from",
    "score_model",
    "reward_model",
    "train.data",
    "train.out",
)


def allowed_roots() -> list[Path]:
    """The directories a deployment run's file parameters may name: RLAIF_ALLOWED_ROOTS, else the working
    directory."""
    listed = [part for part in os.environ.get("RLAIF_ALLOWED_ROOTS", "").split(os.pathsep) if part.strip()]
    return [Path(root).resolve() for root in listed] or [Path.cwd().resolve()]


def check_deployment_parameters(config: str | None, overrides: dict[str, Any], roots: list[Path]) -> None:
    """Refuse a deployment run's parameters that reach outside `roots` or set a config-file-only key."""
    if config is not None:
        _check_inside(config, "config", roots)
    for key, value in _leaves(overrides):
        if key.endswith(DEPLOYMENT_CONFIG_ONLY):
            raise ConfigError(
                f"overrides: {key} cannot be set by a deployment run's parameters (it decides what program runs, "
                "where API keys are sent or where labels are stored); set it in the deployment's config file"
            )
        if key.endswith(PATH_KEYS) and isinstance(value, str) and value:
            _check_inside(value, f"overrides: {key}", roots)


def _leaves(value: Any, key: str = "") -> typing.Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf, inside lists of sections too (`judge.ensemble.0.base_urls`); a list of
    plain values is one leaf."""
    if isinstance(value, dict):
        for name, inner in value.items():
            yield from _leaves(inner, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list) and any(isinstance(inner, dict) for inner in value):
        for index, inner in enumerate(value):
            yield from _leaves(inner, f"{key}.{index}")
    else:
        yield key, value


def _check_inside(value: str, where: str, roots: list[Path]) -> None:
    resolved = Path(value).expanduser().resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ConfigError(
            f"{where}: {value} is outside the directories deployment runs may use "
            f"({', '.join(str(root) for root in roots)}; set RLAIF_ALLOWED_ROOTS where the flows run to change them)"
        )


def _started_by_a_deployment() -> bool:
    """Whether this flow run is one a deployment started, with the parameters of whoever started it, rather
    than a flow another flow called (with a Config it has checked). Read from the run the engine holds;
    `prefect.runtime.deployment.id` would ask the API (about 0.1 s) whenever the run has no deployment."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context is not None and context.flow_run is not None and context.flow_run.deployment_id is not None


def run_config(
    config: Config | str | None,
    overrides: BaseModel | dict[str, Any] | None = None,
    judge: JudgeSetup | None = None,
) -> Config:
    """The Config of a flow run: a Config, or a file (default: the embedded demo config), with the overrides.

    A run started from a deployment has its parameters checked first (`check_deployment_parameters`). A
    `judge` loaded by the caller must be the resulting config's judge."""
    if _started_by_a_deployment():
        if isinstance(config, Config):  # Prefect makes a Config of a JSON object given as `config`
            raise ConfigError("config: a deployment run takes the path of a config file, not a config object")
        if judge is not None:
            raise ConfigError("judge: a deployment run loads its judge from its config; leave the parameter empty")
        check_deployment_parameters(config, override_mapping(overrides), allowed_roots())
    if isinstance(config, Config):
        items = override_list(overrides)
        result = Config.model_validate(apply_overrides(config.model_dump(mode="json"), items)) if items else config
    else:
        result = load_config(config, override_list(overrides))
    if judge is not None and judge.section != result.judge:
        raise ConfigError("judge: the loaded judge is not the one the config describes (load it from the same config)")
    return result
