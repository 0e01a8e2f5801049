"""Every path of a run directory, and of a bootstrap loop's folder, in one place.

A curation run (`curate run --out RUN_DIR`), deterministic paths so a rerun finds what is done:

    run.json                 what the run is (URL list fingerprint, configuration)
    input/00000.parquet      the URL list cut into shards (schema.INPUT)
    raw/00000.parquet        download results, one row per input row (schema.RAW)
    capfilt/00000.parquet    images that passed CapFilt (schema.CURATED, before selection)
    annotations/00000.parquet  their DFN score and matched concepts (schema.ANNOTATIONS)
    duplicates.parquet       the dedup stage's removals (pipeline.duplicates.REMOVALS)
    selection.json           the global selection plan (select.SelectionPlan)
    decisions/00000.parquet  keep / reason per CapFilt survivor (schema.DECISIONS)
    shards/00000.parquet     curated rows (schema.CURATED)
    rejects/<step>-00000.parquet  every input row that did not make it (schema.REJECTS)
    _done/<step>/00000.json  completion marker with the step's counts and timings
    manifest.json            configuration, versions, counts per stage and reason, timings
    retries.json             `--retry-failed` attempts: downloads fetched again, recovered
    .curate.lock(.pid)       held by the process writing the run (and its pid)
    report.html              `curate report`

A bootstrap loop (`curate bootstrap --out OUT`, see `LoopDir`) holds curation runs and models.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

SHARD_KINDS = ("input", "raw", "capfilt", "annotations", "decisions", "shards", "rejects")
# The per-shard steps in run order, by the names of their marker folders (`pipeline.steps`).
SHARD_STEPS = ("download", "capfilt", "annotate", "select")


OUR_FILE = re.compile(r"([a-z]+-)?\d{5}\.parquet")  # 00000.parquet, capfilt-00000.parquet
MARKER_FILE = re.compile(r"\d{5}\.json")


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


@dataclass(frozen=True)
class RunDir:
    """The paths of one curation run under `root`; nothing else joins run paths."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, run_dir: "RunDir | str | Path") -> "RunDir":
        return run_dir if isinstance(run_dir, RunDir) else cls(run_dir)

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    MANIFEST = "manifest.json"

    @property
    def manifest(self) -> Path:
        return self.root / self.MANIFEST

    @property
    def selection(self) -> Path:
        return self.root / "selection.json"

    @property
    def duplicates(self) -> Path:
        return self.root / "duplicates.parquet"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    LOCK, LOCK_PID = ".curate.lock", ".curate.lock.pid"  # held while a process writes the run

    @property
    def lock(self) -> Path:
        return self.root / self.LOCK

    @property
    def lock_pid(self) -> Path:
        """The lock holder's pid, for the message refusing a second writer."""
        return self.root / self.LOCK_PID

    @property
    def retries(self) -> Path:
        """`curate run --retry-failed` attempts: rows fetched again and recovered."""
        return self.root / "retries.json"

    def shard_file(self, kind: str, shard: int, step: str = "") -> Path:
        """KIND/00000.parquet; rejects are named after the step that wrote them."""
        if kind not in SHARD_KINDS:
            raise ValueError(f"unknown shard kind {kind!r} (known: {', '.join(SHARD_KINDS)})")
        prefix = f"{step}-" if step else ""
        return self.root / kind / f"{prefix}{shard_name(shard)}.parquet"

    def shard_files(self, kind: str, listed: set[str] | None = None) -> list[Path]:
        """The KIND files the run wrote, in shard order: named as it names them (not links),
        and, once its markers record their outputs, listed by a marker (`listed`: the
        caller's `listed_outputs()`, read once for several kinds). A stray
        `shards/foreign.parquet` or a file of a step still running is not the run's data."""
        if kind == "input":
            listed = None  # written before any step: no marker lists them
        elif listed is None:
            listed = self.listed_outputs()
        return [
            path
            for path in sorted(self.root.glob(self.pattern(kind)))
            if OUR_FILE.fullmatch(path.name)
            and not path.is_symlink()
            and (not listed or f"{kind}/{path.name}" in listed)
        ]

    def listed_outputs(self) -> set[str]:
        """Every output file (relative path) the step markers list; empty for markers of a
        version that did not record them."""
        return {
            out["file"]
            for path in self.marker_files()
            for out in json.loads(path.read_text()).get("outputs", [])
        }

    def marker_files(self) -> list[Path]:
        """The completion markers of the run's steps (named as the run names them)."""
        return sorted(
            path
            for path in self.root.glob(self.MARKERS_PATTERN)
            if MARKER_FILE.fullmatch(path.name) and not path.is_symlink()
        )

    @staticmethod
    def pattern(kind: str) -> str:
        """The glob, relative to the run, of every KIND file."""
        return f"{kind}/*.parquet"

    def marker(self, step: str, shard: int) -> Path:
        return self.root / "_done" / step / f"{shard_name(shard)}.json"

    MARKERS_PATTERN = "_done/*/*.json"

    def markers(self, step: str) -> list[Path]:
        return sorted((self.root / "_done" / step).glob("*.json"))

    def read_marker(self, step: str, shard: int) -> dict | None:
        """The step's summary for `shard` if it completed, else None."""
        path = self.marker(step, shard)
        return json.loads(path.read_text()) if path.exists() else None

    @staticmethod
    def read_json(path: Path) -> dict:
        """A JSON file of the run ({} when it is not written yet)."""
        return json.loads(path.read_text()) if path.exists() else {}

    def is_run(self) -> bool:
        return self.run_json.is_file()

    def holds_data(self, path: str | Path) -> bool:
        """Whether writing `path` could overwrite or add to the run's data: a path in one of
        its data folders, or one of its JSON files (a report or export must go elsewhere)."""
        path, root = Path(path).resolve(), self.root.resolve()
        folders = [root / kind for kind in SHARD_KINDS] + [root / "_done"]
        files = [self.run_json, self.manifest, self.selection, self.duplicates, self.retries]
        return any(path.is_relative_to(f) for f in folders) or path in [f.resolve() for f in files]

    def own_folders(self) -> list[Path]:
        """The folders the run writes files into: the only ones its partial-file cleaner
        looks in (a user's `sub/.draft.tmp-7` elsewhere is not ours)."""
        done = [p for p in (self.root / "_done").glob("*") if p.is_dir()]
        return [self.root, *(self.root / kind for kind in SHARD_KINDS), *done]


@dataclass(frozen=True)
class LoopDir:
    """The folders of a bootstrap loop under `root` (`curate bootstrap --out`)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def web(self) -> RunDir:
        """Round 0's download of the URL list (every round reuses it)."""
        return RunDir(self.root / "web")

    @property
    def vision(self) -> Path:
        return self.root / "vision"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def round(self, round_no: int) -> Path:
        return self.root / f"round{round_no}"

    def model(self, round_no: int) -> Path:
        return self.round(round_no) / "model"

    def finetuned(self, round_no: int) -> Path:
        return self.round(round_no) / "finetuned"

    def capfilt(self, round_no: int) -> RunDir:
        return RunDir(self.round(round_no) / "capfilt")

    def capfilt_web_only(self, round_no: int) -> RunDir:
        """The round's CapFilt pass without synthetic captions, when the gate withheld them."""
        return RunDir(self.round(round_no) / "capfilt-web-only")

    def ablation_variant(self, slug: str) -> Path:
        """ablate/SLUG: one data variant's CapFilt run (`run/`) and model (`model/`)."""
        return self.root / "ablate" / slug

    @property
    def ablation_json(self) -> Path:
        return self.root / "ablation.json"

    @property
    def ablation_md(self) -> Path:
        return self.root / "ablation.md"
