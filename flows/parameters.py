"""The parameters every deployable flow takes: a config file and typed overrides of its keys.

    prefect deployment run 'rlaif-pipeline/default' --param config=configs/demo.yaml \
        --param overrides='{"judge.prompt": "prompts/my_judge.md.j2", "sampling.n": 6}'

`ConfigOverrides` has one optional field per config key, named by its dotted path, with the key's
type and no others allowed, so Prefect checks a run's parameters against its JSON schema when the
run is created: a misspelt key or a value of the wrong type is refused then, naming the key.
"""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from rlaif.config import Config, apply_overrides, load_config


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


def override_list(overrides: BaseModel | dict[str, Any] | None) -> list[str]:
    """The overrides as `key=value` items for `load_config` (only the keys that were given)."""
    if overrides is None:
        return []
    given = (
        overrides.model_dump(mode="json", by_alias=True, exclude_unset=True)
        if isinstance(overrides, BaseModel)
        else ConfigOverrides.model_validate(overrides).model_dump(mode="json", by_alias=True, exclude_unset=True)
    )
    return [f"{key}={json.dumps(value)}" for key, value in given.items()]


def run_config(config: Config | str | None, overrides: BaseModel | dict[str, Any] | None = None) -> Config:
    """The Config of a flow run: a Config, or a file (default: the embedded demo config), with the overrides."""
    if isinstance(config, Config):
        items = override_list(overrides)
        return Config.model_validate(apply_overrides(config.model_dump(mode="json"), items)) if items else config
    return load_config(config, override_list(overrides))
