"""Download stage: img2dataset fetches each shard; every input row leaves with a status.

URLs are checked first: only http(s), and hosts that resolve to loopback, private, link-local,
reserved or cloud-metadata addresses are refused unless the run allows the private network, so a
hostile URL list cannot make a curation server reach its internal network.

img2dataset runs in a child process: it starts its own process pool and prints its own progress,
neither of which belongs in the orchestrator's process.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import idna
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import schema
from curation.config import DownloadConfig
from curation.pipeline import safe_fetch

GUARD_DIR = Path(__file__).resolve().parent / "_fetchguard"
# The child dies with its parent (Linux prctl PR_SET_PDEATHSIG): a killed run must not leave a
# downloader running on; the rerun downloads the shard again. Its one img2dataset shard is
# downloaded in the child itself: img2dataset (1.47, pinned) would spawn two more interpreters
# that import it again, a pool of one for the shard and a process that prints its statistics
# (each ~2.5 s: most of a small shard's time, and a pool worker would outlive a killed run).
# The distributor's shard retries (`retrier`) are kept; the statistics stay in the output
# folder's *_stats.json, which nobody prints.
_IMG2DATASET = """
import ctypes, json, os, signal, sys
if sys.platform == "linux":
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[2]):  # the parent died before prctl took effect
        sys.exit(1)
import importlib
from img2dataset.distributor import retrier
main = importlib.import_module("img2dataset.main")  # the package's `main` is a function

def in_this_process(processes_count, downloader, reader, _, max_shard_retry):
    def run(shards):
        return [row for status, row in map(downloader, shards) if status is False]
    retrier(run, run(reader), max_shard_retry)

class Quiet:
    done_shards = set()
    def start(self): pass
    def join(self): pass
    def terminate(self): pass

# img2dataset 1.47's names: a version without them fails the shard here, not slowly elsewhere
assert callable(main.multiprocessing_distributor) and callable(main.LoggerProcess)
main.multiprocessing_distributor = in_this_process
main.LoggerProcess = lambda *args: Quiet()
main.download(**json.loads(sys.argv[1]))
"""


@lru_cache(maxsize=4096)
def _resolve(host: str) -> tuple[str, ...]:
    return tuple(sorted({info[4][0] for info in socket.getaddrinfo(host, None)}))


# What http.client refuses inside a URL: whitespace and control characters (the ends are stripped).
_UNSAFE_CHARS = re.compile(r"[\x00-\x20\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def check_url(url: str | None, allow_private_network: bool) -> tuple[str, str] | None:
    """None when the URL may be fetched, else (reason, detail) for the rejects table."""
    try:
        parts = urlsplit(url or "")
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError as err:
        return "invalid_url", f"malformed URL: {err}"
    if parts.scheme not in ("http", "https") or not host:
        return "invalid_url", f"only http(s) URLs with a host are fetched, got {url!r:.200}"
    if _UNSAFE_CHARS.search(url.strip()):  # urlsplit drops some of them: check the URL itself
        return "invalid_url", f"whitespace or control character inside the URL {url!r:.200}"
    try:
        host = ascii_host(host) if not host.isascii() else host
    except ValueError as err:
        return "invalid_url", str(err)
    if allow_private_network:
        return None
    try:
        addresses = _resolve(host)
    except (socket.gaierror, UnicodeError) as err:
        return "download_failed", f"cannot resolve {host}: {err}"
    blocked = [a for a in addresses if not safe_fetch.is_public(a)]
    if blocked:
        return "blocked_address", safe_fetch.blocked_message(host, blocked[0])
    return None


def _refusals(table: pa.Table, allow_private: bool) -> dict[int, tuple[str, str]]:
    ids = table["sample_id"].to_pylist()
    urls = table["url"].to_pylist()
    checks = {i: check_url(u, allow_private) for i, u in zip(ids, urls, strict=True)}
    return {i: c for i, c in checks.items() if c is not None}


def _run_img2dataset(urls: pa.Table, work: Path, cfg: DownloadConfig) -> pa.Table:
    """Fetch `urls` (sample_id, url, web_text) and return img2dataset's rows (one per URL)."""
    pq.write_table(urls, work / "urls.parquet")
    args = dict(
        url_list=str(work / "urls.parquet"),
        input_format="parquet",
        url_col="url",
        caption_col="web_text",
        save_additional_columns=["sample_id"],
        output_format="parquet",
        output_folder=str(work / "out"),
        processes_count=1,
        thread_count=cfg.thread_count,
        number_sample_per_shard=max(len(urls), 1),
        timeout=cfg.timeout,
        retries=cfg.retries,
        disable_all_reencoding=True,  # keep the served bytes; we decode with Pillow ourselves
        compute_hash="sha256",
        enable_wandb=False,
        incremental_mode="incremental",  # "overwrite" deletes its own _tmp folder (1.47)
    )
    env = _guarded_env(cfg)
    with open(work / "img2dataset.log", "w") as log:
        done = subprocess.run(
            [sys.executable, "-c", _IMG2DATASET, json.dumps(args), str(os.getpid())],
            stdout=log,
            stderr=log,
            env=env,
        )
    if done.returncode != 0:
        tail = (work / "img2dataset.log").read_text()[-2000:]
        raise RuntimeError(f"img2dataset failed (exit {done.returncode}):\n{tail}")
    files = sorted((work / "out").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def _guarded_env(cfg: DownloadConfig) -> dict:
    """Environment of the img2dataset process: safe_fetch's guards in every worker."""
    paths = [str(GUARD_DIR), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        safe_fetch.ENV_MAX_BYTES: str(cfg.max_bytes),
        safe_fetch.ENV_ALLOW_PRIVATE: "1" if cfg.allow_private_network else "0",
        "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations checks for updates over the network
    }


def _failure(message: str | None) -> tuple[str, str]:
    """(reason, detail) of a failed fetch; the guards' refusals keep their own reason."""
    message = message or "failed to download"
    reason = "blocked_address" if message.startswith(safe_fetch.BLOCKED) else "download_failed"
    return reason, message


def _raw_rows(table: pa.Table, fetched: pa.Table | None, refused: dict) -> pa.Table:
    """Join img2dataset's output back to the input rows; a row it lost is a failure too."""
    by_id = {}
    if fetched is not None:
        cols = fetched.select(["sample_id", "status", "error_message", "jpg"]).to_pylist()
        by_id = {r["sample_id"]: r for r in cols}
    status, error, image = [], [], []
    for sample_id in table["sample_id"].to_pylist():
        got = by_id.get(sample_id)
        if sample_id in refused:
            reason, detail = refused[sample_id]
            row = (reason, detail, None)
        elif got is None:
            row = ("download_failed", "missing from the downloader's output", None)
        elif got["status"] == "success":
            row = ("success", None, got["jpg"])
        else:
            row = (*_failure(got["error_message"]), None)
        for column, value in zip((status, error, image), row, strict=True):
            column.append(value)
    extra = {"status": status, "error": error, "image": pa.array(image, pa.binary())}
    return pa.table({**{n: table[n] for n in table.column_names}, **extra})


# Failures a later attempt may not repeat: the network or the server, not the URL itself.
_TRANSIENT = re.compile(
    r"timed out|deadline|refused|reset by peer|incomplete body|IncompleteRead|Remote end closed"
    r"|Temporary failure|HTTP Error (5\d\d|429|408)",
    re.IGNORECASE,
)


def is_transient(status: str, error: str | None) -> bool:
    """Whether a raw row's failure may pass on a retry: a timeout or deadline, a refused or
    reset connection, a body cut short, a 5xx, 429 or 408 (not a 404, a blocked address or an
    invalid URL)."""
    return status == "download_failed" and bool(_TRANSIENT.search(error or ""))


def fetchable(url: str) -> str:
    """`url` as a browser sends it: a non-ASCII host IDNA-encoded (UTS 46, as browsers map it:
    `пример.рф` -> `xn--e1afmkfd.xn--p1ai`) and non-ASCII characters of the path and query
    percent-encoded as UTF-8 (RFC 3987); urllib does neither.

    Raises:
        ValueError: a host IDNA cannot encode (the row's `invalid_url`).
    """
    if url.isascii():
        return url
    parts = urlsplit(url.strip())
    userinfo, at, host_port = parts.netloc.rpartition("@")
    host, colon, port = host_port.partition(":")  # a non-ASCII host is no [IPv6] literal
    netloc = f"{userinfo}{at}{host if host.isascii() else ascii_host(host)}{colon}{port}"
    path, query = (_NON_ASCII.sub(lambda run: quote(run.group()), p) for p in parts[2:4])
    return urlunsplit(parts._replace(netloc=netloc, path=path, query=query))


def ascii_host(host: str) -> str:
    """`host` in its ASCII (IDNA, UTS 46) form; raises ValueError when it has none."""
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as err:
        raise ValueError(f"host {host!r} is not a valid internationalised name: {err}") from None


def download_shard(table: pa.Table, cfg: DownloadConfig) -> pa.Table:
    """Download one input shard (`schema.INPUT`) and return `schema.RAW`, one row per input.

    The rows keep their URL as given; img2dataset gets its `fetchable` form.
    """
    refused = _refusals(table, cfg.allow_private_network)
    allowed = table.filter(
        pc.invert(pc.is_in(table["sample_id"], pa.array(list(refused), pa.int64())))
    )
    urls = pa.array([fetchable(u) for u in allowed["url"].to_pylist()], pa.string())
    allowed = allowed.set_column(allowed.schema.get_field_index("url"), "url", urls)
    fetched = None
    if len(allowed):
        with tempfile.TemporaryDirectory(prefix="curate-dl-") as work:
            fetched = _run_img2dataset(allowed, Path(work), cfg)
    return _raw_rows(table, fetched, refused).cast(schema.RAW)
