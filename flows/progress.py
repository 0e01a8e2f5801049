"""Progress lines for a run: shards done and images per second, on stderr."""

import sys
import time


class Progress:
    def __init__(self, shards: int):
        self.shards, self.started = shards, time.perf_counter()
        self.done = {"download": 0, "capfilt": 0, "annotate": 0, "select": 0}
        self.images = 0
        self.seconds = dict.fromkeys(self.done, 0.0)  # summed over shards run or skipped

    def _say(self, text: str) -> None:
        print(f"[curate {time.perf_counter() - self.started:7.1f}s] {text}", file=sys.stderr)

    def step_done(self, step: str, shard: int, summary: dict) -> None:
        self.done[step] += 1
        self.seconds[step] += summary["seconds"]
        detail = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("status", {}).items()))
        if step == "capfilt":
            self.images += summary["images"]
            rate = summary["images"] / max(summary["seconds"], 1e-9)
            detail = f"{summary['passed']} passed, {rate:.1f} img/s"
        if step == "select":
            detail = f"{summary['curated']} curated of {summary['rows']}"
        if step == "annotate":
            detail = f"{summary['rows']} rows"
        self._say(f"{step} shard {shard:05d} done ({self.done[step]}/{self.shards}): {detail}")

    def finish(self, counts: dict) -> None:
        elapsed = time.perf_counter() - self.started
        self._say(
            f"run done: {counts['input']} in = {counts['curated']} curated + "
            f"{counts['rejected']} rejected; {self.images / max(elapsed, 1e-9):.1f} img/s overall"
        )
