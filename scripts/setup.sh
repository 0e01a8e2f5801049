#!/usr/bin/env bash
# Create .venv with the verified versions. Re-running is instant when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.installed-$(cat constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # torch first and pinned: an unpinned torch (or one pulled in by another package) brings
  # several GB of CUDA packages; 2.13.0 resolves to the local CPU build on these machines.
  .venv/bin/pip install --quiet torch==2.13.0
  .venv/bin/pip install --quiet -c constraints.txt -e ".[dev]"
  # img2dataset installs the `dataclasses` backport, which shadows the standard library and
  # kills Prefect's API server (README, first section).
  .venv/bin/pip uninstall --quiet --yes dataclasses
  rm -f .venv/.installed-*
  touch "$stamp"
fi
