"""CapFilt data curation for vision-language pretraining: the library (no orchestration)."""

import os

# torch's OpenMP threads spin at every barrier by default; when another thread or process takes
# a core (the decode threads, a download, a neighbour's job) each op then stalls. Passive waiting
# measured 5-20x faster on a busy 2-core machine (docs/benchmarks.md). Must be set before torch
# is first imported; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
