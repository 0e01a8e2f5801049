"""Progress lines for a run: shards done and images per second, on stderr."""

import sys
import time

from curation.pipeline.steps import BY_NAME, STEPS


class Progress:
    def __init__(self, shards: int):
        self.shards, self.started = shards, time.perf_counter()
        self.done = {step.name: 0 for step in STEPS if step.per_shard}
        self.images = 0
        self.seconds = dict.fromkeys(self.done, 0.0)  # summed over shards run or skipped

    def _say(self, text: str) -> None:
        print(f"[curate {time.perf_counter() - self.started:7.1f}s] {text}", file=sys.stderr)

    def step_done(self, step: str, shard: int, summary: dict) -> None:
        self.done[step] += 1
        self.seconds[step] += summary["seconds"]
        self.images += summary.get("images", 0)  # the model step counts decoded images
        detail = BY_NAME[step].describe(summary)
        self._say(f"{step} shard {shard:05d} done ({self.done[step]}/{self.shards}): {detail}")

    def finish(self, counts: dict) -> None:
        elapsed = time.perf_counter() - self.started
        self._say(
            f"run done: {counts['input']} in = {counts['curated']} curated + "
            f"{counts['rejected']} rejected; {self.images / max(elapsed, 1e-9):.1f} img/s overall"
        )
