"""The full pipeline as one flow, `rlaif-pipeline`: label, then merge once people have finished the review.

It never holds a process while people label. When review items are open after labeling, the flow
ends in the state "waiting for review" and the merge happens later, as a run of the `rlaif-merge`
deployment started either by the review service's `rlaif.review.queue-emptied` event (a deployment
trigger) or, when `review.deadline_hours` is set, at the deadline, where `review.on_deadline` says
whether unfinished items keep the judge's label (`judge`) or fail the merge (`fail`).
Outside a deployment, `rlaif merge RUN_DIR` continues the run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.runtime import deployment

from flows.labeling import label_pipeline
from flows.review import merge_flow
from rlaif.config import Config
from rlaif.review_store import ReviewStore


def open_review_items(config: Config) -> int:
    """Items of the run that people have not finished (pending or claimed)."""
    with ReviewStore.open(config.review_db()) as store:
        if config.run.name not in store.runs():
            return 0
        stats = store.stats(config.run.name)
    return stats["pending"] + stats["claimed"]


async def schedule_deadline_merge(config: Config) -> datetime | None:
    """Schedule the merge deployment's run at the review deadline; None outside a deployment or without one."""
    if config.review.deadline_hours is None or deployment.get_id() is None:
        return None
    at = datetime.now(UTC) + timedelta(hours=config.review.deadline_hours)
    await run_deployment(
        name=f"rlaif-merge/{deployment.get_name()}",
        parameters={
            "config": config.model_dump(mode="json"),
            "on_pending": "judge" if config.review.on_deadline == "judge" else "block",
        },
        scheduled_time=at,
        timeout=0,
        as_subflow=False,
    )
    return at


@flow(name="rlaif-pipeline")
async def rlaif_pipeline(config: Config) -> dict[str, Any]:
    """Label the prompts; merge now if nothing waits for people, else end and let the review finish it."""
    logger = get_run_logger()
    report = await label_pipeline(config)
    waiting = open_review_items(config)
    if waiting == 0:
        merged = await merge_flow(config)
        return {"status": "merged", "label": report, "merge": merged}
    deadline = await schedule_deadline_merge(config)
    run_dir = config.run.directory()
    logger.info(
        f"{waiting} review items of run {config.run.name!r} wait for people: serve them with "
        f"`rlaif review serve --db {config.review_db()}` (tokens: `rlaif review token add NAME`). "
        + (
            f"The merge deployment starts when the queue empties, or at {deadline.isoformat(timespec='minutes')} "
            f"(review.on_deadline={config.review.on_deadline})."
            if deadline
            else f"Then run `rlaif merge {run_dir}`."
        )
    )
    return {
        "status": "waiting_for_review",
        "open_review_items": waiting,
        "deadline": deadline.isoformat() if deadline else None,
        "label": report,
    }
