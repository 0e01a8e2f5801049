"""Prefect orchestration of the `curation` library: flows, tasks and the `curate` CLI."""
