"""`curate report`: a self-contained HTML page of a run (tiny run built as Parquet files)."""

import html
import json
from html.parser import HTMLParser

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_export import HOSTILE, make_run

from curation.outputs import report


class Tags(HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer would see them."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path)


def annotate(run_dir) -> None:
    """What the selection step leaves: annotations per CapFilt survivor and selection.json."""
    dfn = pa.array([0.30, 0.10, 0.25, 0.05], pa.float32())
    concepts = [["red", "square"], ["green", "square"], ["red"], []]
    table = pa.table({"sample_id": [0, 1, 3, 6], "dfn": dfn, "concepts": concepts})
    (run_dir / "annotations").mkdir()
    pq.write_table(table, run_dir / "annotations" / "00000.parquet")
    selection = {
        "order": "score_then_balance",
        "score": {"threshold": 0.2, "scorer": "tiny-dfn"},
        "balance": {"t": 1, "metadata": "default"},
    }
    (run_dir / "selection.json").write_text(json.dumps(selection))


def test_report_is_written_to_the_run_by_default(run_dir, tmp_path):
    assert report.write_report(run_dir) == run_dir / "report.html"
    out = report.write_report(run_dir, tmp_path / "elsewhere" / "r.html")
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert not list(out.parent.glob(".*tmp*"))
    with pytest.raises(report.ReportError, match="not a curation run"):
        report.write_report(tmp_path / "typo")


@pytest.mark.parametrize("inside", ["shards/00001.parquet", "_done/exp", "manifest.json"])
def test_a_report_inside_the_runs_data_is_refused(run_dir, inside):
    """`--out RUN/shards/00001.parquet` made `curate stats` crash afterwards."""
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(report.ReportError, match="inside the run's data"):
        report.write_report(run_dir, run_dir / inside)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_report_is_self_contained_and_escapes_hostile_text(run_dir):
    page = report.write_report(run_dir).read_text()
    tags = Tags(page).tags
    assert {t for t, _ in tags}.isdisjoint({"script", "link", "iframe", "object"})
    urls = [a[k] for _, a in tags for k in ("src", "href") if k in a]
    assert urls and all(u.startswith("data:image/") for u in urls)
    assert "Content-Security-Policy" in page
    assert html.escape(HOSTILE) in page and HOSTILE not in page


def test_report_shows_the_funnel_counts(run_dir):
    page = report.write_report(run_dir).read_text()
    for step, rows in [
        ("input", 7),
        ("downloaded", 6),
        ("decoded", 5),
        ("CapFilt passed", 4),
        ("curated", 4),
    ]:
        assert f"<td>{step}</td><td class=num>{rows}</td>" in page
    for reason in ("download_failed", "decode_error", "no_matching_text"):
        assert f'<span class="reason">{reason}</span> 1' in page
    assert "Rows do not add up" not in page and "not run" in page  # no selection step


def test_report_embeds_plots_and_thumbnails(run_dir):
    page = report.write_report(run_dir).read_text()
    assert page.count("data:image/png;base64,") == 2  # ITM and ITC histograms
    # 4 kept + the rejected JPEG from raw/; the 404 and the HTML page get a placeholder
    assert page.count('class=thumb src="data:image/jpeg;base64,') == 5
    assert page.count('class="thumb none"') == 2
    assert "DFN score" not in page and "Concepts" not in page  # no annotations: left out


def test_annotations_add_dfn_histogram_concepts_and_thresholds(run_dir):
    annotate(run_dir)
    page = report.write_report(run_dir).read_text()
    assert page.count("data:image/png;base64,") == 4  # ITM, ITC, DFN, concept rank
    assert 'alt="DFN score"' in page and "concept frequency by rank" in page
    assert (
        "<th>DFN threshold</th><td>0.2000</td>" in page and "<th>MetaCLIP t</th><td>1</td>" in page
    )
    # rows at or above the DFN threshold (0, 3) make the pool balancing saw
    assert "<td>red</td><td class=num>2</td><td class=num>2</td>" in page


def test_funnel_assigns_rejects_to_steps_by_reason_then_stage(run_dir):
    info = report.RunInfo(run_dir, {}, {"order": "balance_then_score", "score": {}}, False)
    rejects = [
        ("download", "download_failed", 2),
        ("select", "balanced_out", 3),
        ("select", "below_score_quantile", 1),
        ("select", "near_duplicate", 2),
        ("elsewhere", "unknown_reason", 1),
        ("capfilt", "some_new_reason", 1),
    ]
    steps = report.funnel(20, rejects, info)
    assert [(s.label, s.rows) for s in steps] == [
        ("input", 20),
        ("downloaded", 18),
        ("decoded", 18),
        ("decontaminated", 18),
        ("CapFilt passed", 17),
        ("deduplicated", 15),
        ("balanced", 12),
        ("scored", 11),
        ("curated", 10),
    ]
    assert steps[-1].dropped == [("unknown_reason", 1)]
