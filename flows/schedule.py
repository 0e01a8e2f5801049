"""Scheduled curation: a Prefect deployment of the curate flow on a cron schedule.

`curate schedule` serves it from the current process (`Flow.serve`); each run writes a new,
timestamped run directory under OUT_ROOT. For production, deploy the same flow to a work pool
instead (README, "Scheduled runs").
"""

from datetime import UTC, datetime
from pathlib import Path

from prefect import flow

from curation.pipeline.run import RunSpec
from flows.curate import curate_on


def run_name(now: datetime | None = None) -> str:
    """Run directory name: UTC time to the second, sortable."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


@flow(name="curate-scheduled")
def scheduled_curate(
    urls: str,
    out_root: str,
    url_col: str = "url",
    caption_col: str | None = "caption",
    config: dict | None = None,
    workers: int = 0,
    cluster: str | None = None,
) -> dict:
    """One scheduled run: curate `urls` into OUT_ROOT/<UTC timestamp> (on Dask when asked).

    Flat parameters, not a RunSpec: they are the deployment's form in the Prefect UI."""
    out = str(Path(out_root) / run_name())
    return curate_on(RunSpec(urls, out, url_col, caption_col, config or {}), workers, cluster)


def serve(name: str, cron: str, parameters: dict) -> None:
    """Create the deployment with its schedule and run its flow runs until interrupted."""
    scheduled_curate.serve(name=name, cron=cron, parameters=parameters)
