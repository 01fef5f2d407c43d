"""`rlaif review ...` and `rlaif merge`: the review service, reviewer tokens, queue export/import, the merge."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from rlaif.cli.errors import friendly_errors
from rlaif.config import Config, ConfigError, load_config
from rlaif.run_files import read_jsonl, write_json_atomic, write_jsonl_atomic

if TYPE_CHECKING:
    from fastapi import FastAPI

    from rlaif.review.store import ReviewStore

review_app = typer.Typer(
    help="The human-review queue: serve it, hand out tokens, export and import.", no_args_is_help=True
)
token_app = typer.Typer(help="Reviewer tokens (stored hashed).", no_args_is_help=True)
review_app.add_typer(token_app, name="token")

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Review database URL; default: the review.db of --config (runs/review.db)."),
]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML config whose review.db to use.")]


def database_url(db: str | None, config: Path | None) -> str:
    """--db if given, else the config's review.db (checked like any config value)."""
    return load_config(config, [f"review.db={json.dumps(db)}"] if db else []).review_db()


def _open(db: str | None, config: Path | None) -> ReviewStore:
    return _store(database_url(db, config))


def _store(url: str) -> ReviewStore:
    from rlaif.review.store import ReviewStore

    return ReviewStore.open(url)


@token_app.command("add")
@friendly_errors
def token_add(
    name: Annotated[str, typer.Argument(help="The reviewer's name (shown on the page and stored with labels).")],
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a reviewer (or renew their token) and print the token alone on the last line."""
    with _open(db, config) as store:
        token = store.add_reviewer(name)
    typer.echo(f"reviewer {name.strip()}: new token (shown once; only its hash is stored):", err=True)
    typer.echo(token)


@token_app.command("list")
@friendly_errors
def token_list(db: DbOption = None, config: ConfigOption = None) -> None:
    """Reviewers, when their token was made, and whether it is active."""
    with _open(db, config) as store:
        for name, created, active in store.reviewers():
            typer.echo(f"{name}\t{created.isoformat(timespec='seconds')}Z\t{'active' if active else 'revoked'}")


@token_app.command("revoke")
@friendly_errors
def token_revoke(name: str, db: DbOption = None, config: ConfigOption = None) -> None:
    """Revoke a reviewer's token: every request with it answers 401 from now on."""
    with _open(db, config) as store:
        store.revoke_reviewer(name)
    typer.echo(f"revoked {name}")


@review_app.command("serve")
@friendly_errors
def serve(
    db: DbOption = None,
    config: ConfigOption = None,
    host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless behind TLS.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    lease_s: Annotated[float | None, typer.Option(help="Seconds a claim lasts; default review.lease_s.")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes; one uses at most one core (PostgreSQL: 2 served 50 reviewers in half the time).",
        ),
    ] = 1,
) -> None:
    """Serve the review page and JSON API until interrupted."""
    import uvicorn

    cfg = load_config(config)
    store = _open(db, config)
    if not _is_loopback(host):
        typer.echo(
            f"warning: binding {host}: the review service is reachable from other machines; tokens travel in "
            "clear text unless a TLS proxy sits in front",
            err=True,
        )
    settings = {"db": store.engine.url.render_as_string(hide_password=False), "lease_s": lease_s or cfg.review.lease_s}
    typer.echo(f"review service on http://{host}:{port}/ (database {store.engine.url!r})", err=True)
    try:
        if workers == 1:
            uvicorn.run(_app(store, settings["lease_s"]), host=host, port=port, log_level="warning")
        else:  # each process makes its own app (and database connections) from the settings in its environment
            store.close()
            os.environ[SERVE_SETTINGS] = json.dumps(settings)
            uvicorn.run(WORKER_APP, factory=True, workers=workers, host=host, port=port, log_level="warning")
    finally:
        store.close()


SERVE_SETTINGS = "RLAIF_REVIEW_SERVE"  # how `serve --workers N` hands its settings to the server processes
WORKER_APP = "rlaif.cli.review:worker_app"


def worker_app() -> FastAPI:
    """The app of one of `serve --workers N`'s processes, from the settings `serve` put in the environment."""
    settings = json.loads(os.environ[SERVE_SETTINGS])
    return _app(_store(settings["db"]), settings["lease_s"])


def _app(store: ReviewStore, lease_s: float) -> FastAPI:
    from rlaif.flows.merge import emit_queue_emptied
    from rlaif.review.app import create_app

    return create_app(store, lease_s=lease_s, on_queue_emptied=emit_queue_emptied)


@review_app.command("enqueue")
@friendly_errors
def enqueue(
    run_dir: Annotated[Path, typer.Argument(help="A labelled run directory.")],
    db: DbOption = None,
) -> None:
    """Put a labelled run's routed pairs into the review database (labeling runs do this themselves)."""
    from rlaif.pipeline.enqueue import enqueue_routed
    from rlaif.run_directory import RunDirectory

    cfg = _run_config(run_dir, db)
    with _store(cfg.review_db()) as store:
        added = enqueue_routed(RunDirectory(run_dir), cfg, store)
    typer.echo(f"{added} new items in the review queue of run {cfg.run.name}")


@review_app.command("reward-round")
@friendly_errors
def reward_round(
    run_dir: Annotated[Path, typer.Argument(help="A merged run directory whose reward model is trained.")],
    reward_model: Annotated[
        Path | None, typer.Option(help="The reward model trained on the run's labels; default RUN_DIR/train/reward.")
    ] = None,
    fraction: Annotated[
        float | None, typer.Option(help="The most pairs people get, as a share of all; default in the run's config.")
    ] = None,
    db: DbOption = None,
) -> None:
    """Second review round: people get the judge-labelled pairs the trained reward model contradicts most.

    Decided once per run (RUN_DIR/reward_round.json); merge again once they are labelled. The rlaif-train flow
    does this itself when review.reward_round_fraction is set.
    """
    from rlaif.pipeline.reward_round import route_reward_round
    from rlaif.training.stages import stage_output

    cfg = _run_config(run_dir, db)
    if fraction is not None:
        cfg.review.reward_round_fraction = fraction
    if not cfg.review.reward_round_fraction:
        raise ConfigError("the round's budget is 0: give --fraction (e.g. 0.05) or set review.reward_round_fraction")
    model = reward_model or stage_output(cfg, "reward")
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"{model}: no trained reward model there (train it with `rlaif train reward`)")
    with _store(cfg.review_db()) as store:
        decision = route_reward_round(run_dir, cfg, store, model, say=lambda line: typer.echo(line, err=True))
    typer.echo(f"{decision['message']}; {decision['open_items']} wait for people")


@review_app.command("stats")
@friendly_errors
def stats(run: str, db: DbOption = None, config: ConfigOption = None) -> None:
    """A run's queue: items by status and reason, labels, agreement between reviewers (JSON)."""
    with _open(db, config) as store:
        typer.echo(json.dumps(store.stats(run), indent=2))


@review_app.command("settle")
@friendly_errors
def settle(
    item: Annotated[str, typer.Argument(help="The item's id (the agreement page and its API list them).")],
    label: Annotated[Literal["a", "b", "tie", "both_bad"], typer.Argument(help="a or b as stored, tie or both_bad.")],
    by: Annotated[str, typer.Option(help="Who settles it (kept with the label).")],
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Settle a disagreement as the run's owner: this label replaces the reviewers' majority in the merge."""
    with _open(db, config) as store:
        store.settle(item, label, by)
    typer.echo(f"item {item} settled as {label} by {by}")


@review_app.command("export")
@friendly_errors
def export(
    run: str,
    out: Annotated[Path, typer.Option(help="File to write.")],
    export_format: Annotated[
        Literal["jsonl", "label-studio"], typer.Option("--format", help="jsonl (re-importable) or label-studio.")
    ] = "jsonl",
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Write a run's queue with its labels as JSONL, or as Label Studio tasks (JSON)."""
    from rlaif.review.label_studio import label_studio_tasks

    with _open(db, config) as store:
        store.stats(run)  # an unknown run fails here with its name
        if export_format == "jsonl":
            count = write_jsonl_atomic(out, store.export_rows(run))
        else:
            tasks = label_studio_tasks(store.export_rows(run))
            write_json_atomic(out, tasks)
            count = len(tasks)
    typer.echo(f"{count} items written to {out}")


@review_app.command("import")
@friendly_errors
def import_queue(
    path: Annotated[Path, typer.Argument(help="A JSONL file written by `rlaif review export`.")],
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Load an exported queue: missing items and labels are added, existing ones kept."""
    from rlaif.review.store import ReviewStoreError

    rows = (row for _, row in read_jsonl(path, ReviewStoreError))
    with _open(db, config) as store:
        items, labels = store.import_rows(rows, source=str(path))
    typer.echo(f"imported {items} new items and {labels} new labels from {path}")


def merge(
    run_dir: Annotated[str, typer.Argument(help="A labelled run directory, or a stored run's URL (s3://...).")],
    db: DbOption = None,
    on_pending: Annotated[
        Literal["block", "judge"] | None,
        typer.Option(help="Unlabelled review items: block the merge, or keep the judge's label (flagged)."),
    ] = None,
    push_to_hub: Annotated[str | None, typer.Option(help="Also push the dataset to this Hub repository.")] = None,
) -> None:
    """Build RUN_DIR/dataset: judge labels, overridden by human labels, in TRL's prompt/chosen/rejected form."""
    from rlaif.pipeline.certify import certify_run
    from rlaif.pipeline.merge import merge_run
    from rlaif.run_storage import default_local_copy, is_stored, stored_run

    stored = run_dir if is_stored(run_dir) else None
    local = default_local_copy(run_dir) if stored else Path(run_dir)
    # A stored run: pulled into a local copy, its dataset pushed back.
    with stored_run(stored, local):
        cfg = _run_config(local, db, stored)
        with _store(cfg.review_db()) as store:
            certification = asyncio.run(certify_run(local, cfg, store))  # review.target_agreement: the second phase
            if certification is not None:
                typer.echo(certification["message"])
            result = merge_run(local, cfg, store, on_pending=on_pending)
    figures = result.figures
    audit = figures["audit_agreement"]
    typer.echo(
        f"dataset: {result.path} ({figures['rows']} rows; label sources {figures['label_sources']}; "
        f"left out {figures['dropped'] or 'none'})"
    )
    if audit:
        typer.echo(
            f"judge vs people on the audit sample: {100 * audit['agreement']:.1f}% of {audit['n']} "
            f"(95% CI {100 * audit['ci95'][0]:.1f}-{100 * audit['ci95'][1]:.1f}%)"
        )
    if push_to_hub:
        import datasets

        datasets.load_from_disk(str(result.path)).push_to_hub(push_to_hub)
        typer.echo(f"pushed to {push_to_hub}")


def _run_config(run_dir: Path, db: str | None, stored: str | None = None) -> Config:
    """The config a run was labelled with (RUN_DIR/config.yaml), with --db applied; `stored`: the URL of the run
    whose local copy `run_dir` is."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {stored or run_dir} is not a labelled run directory")
    where = [f"run.dir={json.dumps(stored)}", f"run.local_copy={json.dumps(str(run_dir))}"] if stored else []
    overrides = (where or [f"run.dir={json.dumps(str(run_dir))}"]) + ([f"review.db={json.dumps(db)}"] if db else [])
    return load_config(path, overrides)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
