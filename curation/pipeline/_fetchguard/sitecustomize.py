"""Imported at start-up by every Python process of the download stage (it is put on their
PYTHONPATH), including img2dataset's spawned workers: installs curation.pipeline.safe_fetch's
guards."""

from curation.pipeline.safe_fetch import install_from_env

install_from_env()
