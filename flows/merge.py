"""Prefect side of human review: the merge flow, and the event the review service emits when a queue empties.

The full pipeline does not hold a process while people label: it ends after labeling, and the merge
deployment starts when the review service emits `rlaif.review.queue-emptied` for the run (a deployment
trigger), or at the run's review deadline (a scheduled run of the merge deployment).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.events import emit_event
from prefect.settings import PREFECT_API_URL

from rlaif.config import Config
from rlaif.flows.parameters import ConfigOverrides, ConfigParameter, run_config
from rlaif.pipeline.certify import certify_run
from rlaif.pipeline.merge import merge_run
from rlaif.review.store import ReviewStore
from rlaif.run_storage import stored_run

QUEUE_EMPTIED = "rlaif.review.queue-emptied"


def emit_queue_emptied(run_id: str) -> None:
    """Tell Prefect (when PREFECT_API_URL is set) that every review item of a run is finished."""
    if not PREFECT_API_URL.value():
        logging.getLogger(__name__).info(f"review queue of run {run_id} is empty (no PREFECT_API_URL: no event)")
        return
    emit_event(
        event=QUEUE_EMPTIED,
        resource={"prefect.resource.id": f"rlaif.review-run.{run_id}", "rlaif.run": run_id},
    )


@flow(name="rlaif-merge")
async def merge_flow(
    config: ConfigParameter = None,
    overrides: ConfigOverrides | None = None,
    on_pending: Literal["block", "judge"] | None = None,
) -> dict[str, Any]:
    """Merge a labelled run's judge labels and human labels into RUN_DIR/dataset.

    With `review.target_agreement`, the first call after the audit is labelled routes the second phase (the
    pairs below the certified threshold) instead, and returns status "waiting_for_review"; the queue-emptied
    event of that phase starts the merge again."""
    config = run_config(config, overrides)
    with stored_run(config.run.stored_at(), config.run.directory()):  # a run on object storage
        return await merge_run_directory(config, on_pending)


async def merge_run_directory(config: Config, on_pending: Literal["block", "judge"] | None) -> dict[str, Any]:
    """merge_flow's work, in the run directory (the local copy of a stored run)."""
    logger = get_run_logger()
    run_dir = config.run.directory()
    with ReviewStore.open(config.review_db()) as store:
        certification = await certify_run(run_dir, config, store)  # review.target_agreement: the second phase
        if certification is not None:
            logger.info(certification["message"])
        stats = store.stats(config.run.name)
        waiting = stats["pending"] + stats["claimed"]
        if certification is not None and waiting and (on_pending or config.merge.on_pending) == "block":
            logger.info(f"{waiting} review items of run {config.run.name!r} wait for people; the merge follows")
            return {"status": "waiting_for_review", "open_review_items": waiting, "certification": certification}
        result = merge_run(run_dir, config, store, on_pending=on_pending)
    figures = result.figures
    audit = figures["audit_agreement"]
    audit_line = (
        f"judge vs people on the audit sample: {100 * audit['agreement']:.1f}% of {audit['n']} "
        f"(95% CI {100 * audit['ci95'][0]:.1f}-{100 * audit['ci95'][1]:.1f}%)"
        if audit
        else "no audit pair labelled by people yet"
    )
    logger.info(f"dataset {result.path}: {figures['rows']} rows, sources {figures['label_sources']}; {audit_line}")
    await acreate_markdown_artifact(
        key="merge-summary",
        markdown=(
            f"# Merged dataset of run `{config.run.name}`\n\n{figures['rows']} rows; label sources "
            f"{figures['label_sources']}; left out {figures['dropped'] or 'none'}.\n\n{audit_line}.\n\n"
            f"Dataset: `{result.path}`"
        ),
    )
    return {"dataset": str(result.path), **figures}
