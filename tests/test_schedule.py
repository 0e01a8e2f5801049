"""A scheduled deployment, triggered now instead of waiting for the clock."""

import asyncio
import json

import pyarrow as pa
import pyarrow.parquet as pq
from prefect.deployments import run_deployment
from prefect.runner import Runner

from flows.schedule import scheduled_curate


def test_deployment_run_writes_a_timestamped_run(tmp_path, web, tiny_models, prefect_harness):
    urls = tmp_path / "urls.parquet"
    pq.write_table(
        pa.table(
            {
                "url": [web.base_url + "/good.jpg", web.base_url + "/gone.jpg"],
                "caption": ["a blue square", "missing"],
            }
        ),
        urls,
    )
    captioner, filt = tiny_models
    config = {
        "download": {"allow_private_network": True, "timeout": 5},
        "capfilt": {
            "captioner": str(captioner),
            "filter": str(filt),
            "itm_threshold": 0.0,
            "num_captions": 1,
            "max_new_tokens": 5,
            "min_new_tokens": 2,
        },
    }
    params = {"urls": str(urls), "out_root": str(tmp_path / "runs"), "config": config}
    runner = Runner(name="test-runner")
    deployment_id = runner.add_flow(
        scheduled_curate, name="nightly", cron="0 3 * * *", parameters=params
    )
    run_deployment(deployment_id, timeout=0)  # scheduled for now, not 03:00
    asyncio.run(runner.start(run_once=True))
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.endswith("Z")
    counts = json.loads((runs[0] / "manifest.json").read_text())["counts"]
    assert counts == {
        "input": 2,
        "curated": 1,
        "rejected": 1,
        "rejects_by_reason": {"download_failed": 1},
    }
