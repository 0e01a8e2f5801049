"""Each stage function on tiny in-memory inputs: one test per reject reason and conversion."""

import pyarrow as pa
import pytest
from conftest import encode, exif_rotated_jpeg, hostile_web
from PIL import Image

from curation import config
from curation.pipeline import capfilt, download, images, urls


def test_invalid_url_schemes_and_malformed_urls():
    for url in [
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "not a url",
        "",
        None,
        "http://example.com:99999999/a.jpg",
        "http:///nohost.jpg",
    ]:
        assert download.check_url(url, allow_private_network=True)[0] == "invalid_url", url


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "[::1]", "localhost", "0.0.0.0"],
)
def test_private_addresses_are_blocked_unless_allowed(host):
    url = f"http://{host}/a.jpg"
    reason, detail = download.check_url(url, allow_private_network=False)
    assert reason == "blocked_address" and "non-public" in detail
    assert download.check_url(url, allow_private_network=True) is None


def test_decode_error_for_html_and_truncated_bytes():
    web = hostile_web()
    for path in ["/page.jpg", "/truncated.jpg"]:
        decoded = images.decode_image(web[path][2], min_side=8, max_pixels=10**8)
        assert decoded.image is None and decoded.reason == "decode_error", path
    assert images.decode_image(b"", 8, 10**8).reason == "decode_error"


def test_image_too_small_and_too_large():
    assert images.decode_image(hostile_web()["/pixel.png"][2], 8, 10**8).reason == "image_too_small"
    big = encode(Image.new("RGB", (64, 64)), "PNG")
    assert images.decode_image(big, 8, max_pixels=64 * 63).reason == "image_too_large"


@pytest.mark.parametrize("path", ["/gray.png", "/cmyk.jpg", "/alpha.png", "/good.jpg"])
def test_every_mode_becomes_rgb(path):
    decoded = images.decode_image(hostile_web()[path][2], 8, 10**8)
    assert decoded.reason is None and decoded.image.mode == "RGB"


def test_alpha_is_composited_on_white_and_exif_rotation_applied():
    alpha = images.decode_image(hostile_web()["/alpha.png"][2], 8, 10**8).image
    assert alpha.getpixel((0, 0))[0] > 100  # white shows through the transparent green
    rotated = images.decode_image(exif_rotated_jpeg(), 8, 10**8).image
    assert rotated.size == (12, 24)


def test_16_bit_png_keeps_its_range():
    image = Image.new("I;16", (10, 10), 1000)
    image.putpixel((0, 0), 4000)
    decoded = images.decode_image(encode(image, "PNG"), 8, 10**8).image
    assert decoded.getpixel((0, 0))[0] == 255 and 50 < decoded.getpixel((1, 1))[0] < 80


def test_judge_keeps_texts_at_threshold_and_picks_best():
    cands = [
        {"text": "w", "source": "web", "itm": 0.6},
        {"text": "s", "source": "synthetic", "itm": 0.9},
        {"text": "t", "source": "synthetic", "itm": 0.2},
    ]
    cands, best = capfilt.judge(cands, threshold=0.5)
    assert [c["kept"] for c in cands] == [True, True, False] and best["text"] == "s"


def test_caption_choice_web_first_prefers_a_kept_web_text():
    def cands(web_itm):
        return [
            {"text": "w", "source": "web", "itm": web_itm},
            {"text": "s", "source": "synthetic", "itm": 0.9},
            {"text": "t", "source": "synthetic", "itm": 0.7},
        ]

    assert capfilt.judge(cands(0.6), 0.5, "itm")[1]["text"] == "s"
    assert capfilt.judge(cands(0.6), 0.5, "web_first")[1]["text"] == "w"
    kept, best = capfilt.judge(cands(0.4), 0.5, "web_first")  # web text dropped: best synthetic
    assert best["text"] == "s" and [c["kept"] for c in kept] == [False, True, True]


def test_judge_no_matching_text():
    cands, best = capfilt.judge([{"text": "w", "source": "web", "itm": 0.49}], threshold=0.5)
    assert best is None and cands[0]["kept"] is False


def test_empty_texts_web_or_synthetic_are_not_candidates():
    assert capfilt.candidate_texts("  ", ["a cat"]) == [("a cat", "synthetic")]
    assert capfilt.candidate_texts(None, []) == []
    assert capfilt.candidate_texts(" dog ", []) == [("dog", "web")]
    # a captioner that decodes to "" must not outrank the web text with an empty caption
    assert capfilt.candidate_texts("a blue square", ["", " \n", " a cat "]) == [
        ("a blue square", "web"),
        ("a cat", "synthetic"),
    ]


def test_image_seed_depends_on_run_seed_and_sample_only():
    assert capfilt.image_seed(0, 1) != capfilt.image_seed(0, 2)
    assert capfilt.image_seed(0, 1) != capfilt.image_seed(1, 1)


def test_url_list_formats_and_errors(tmp_path):
    (tmp_path / "a.csv").write_text('url,caption\nhttp://x/1.jpg,"a, b"\nhttp://x/2.jpg,\n')
    (tmp_path / "a.tsv").write_text('link\ttext\nhttp://x/1.jpg\tsays "hi\n')
    (tmp_path / "a.jsonl").write_text('{"url": "http://x/1.jpg", "caption": "c"}\n')
    assert urls.read_url_list(tmp_path / "a.csv")["web_text"].to_pylist() == ["a, b", ""]
    tsv = urls.read_url_list(tmp_path / "a.tsv", "link", "text")
    assert tsv["web_text"].to_pylist() == ['says "hi']
    assert urls.read_url_list(tmp_path / "a.jsonl")["sample_id"].to_pylist() == [0]
    with pytest.raises(urls.UrlListError, match="no column 'link'"):
        urls.read_url_list(tmp_path / "a.csv", url_col="link")
    with pytest.raises(urls.UrlListError, match="not found"):
        urls.read_url_list(tmp_path / "missing.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(urls.UrlListError, match="cannot read"):
        urls.read_url_list(tmp_path / "bad.parquet")


def test_a_large_csv_with_newlines_inside_quoted_captions_is_read_whole(tmp_path):
    """Python's csv module quotes captions holding newlines; a file larger than the reader's
    block (1 MB) was refused, a small one of the same rows accepted."""
    import csv

    rows = [
        (f"http://127.0.0.1/{i}.jpg", f'line one of {i}\nline two, "quoted"') for i in range(40_000)
    ]
    with open(tmp_path / "big.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["url", "caption"])
        writer.writerows(rows)
    assert (tmp_path / "big.csv").stat().st_size > 2_000_000
    table = urls.read_url_list(tmp_path / "big.csv")
    assert table["web_text"].to_pylist() == [caption for _, caption in rows]


def test_a_header_naming_a_column_twice_is_refused_in_one_line(tmp_path):
    (tmp_path / "twice.csv").write_text("url,caption,url\nhttp://x/1.jpg,a,http://x/2.jpg\n")
    with pytest.raises(urls.UrlListError, match="names column 'url' more than once"):
        urls.read_url_list(tmp_path / "twice.csv")


def test_split_shards_covers_every_row_once():
    table = pa.table({"x": list(range(10))})
    parts = urls.split_shards(table, 4)
    assert [len(p) for p in parts] == [4, 4, 2]
    assert sum((p["x"].to_pylist() for p in parts), []) == list(range(10))


def test_config_errors_name_the_problem(tmp_path):
    (tmp_path / "bad.toml").write_text("[capfilt\nx=1")
    with pytest.raises(config.ConfigError, match="bad TOML"):
        config.load(tmp_path / "bad.toml")
    with pytest.raises(config.ConfigError, match="unknown setting"):
        config.from_dict({"capfilt": {"itm_treshold": 0.4}})
    with pytest.raises(config.ConfigError, match="must be float"):
        config.from_dict({"capfilt": {"itm_threshold": "high"}})
    with pytest.raises(config.ConfigError, match="itm_threshold must be in"):
        config.from_dict({"capfilt": {"itm_threshold": 2}})
    assert config.from_dict({"capfilt": {"itm_threshold": 1}}).capfilt.itm_threshold == 1.0
    with pytest.raises(config.ConfigError, match="caption_choice must be itm or web_first"):
        config.from_dict({"capfilt": {"caption_choice": "longest"}})
    with pytest.raises(config.ConfigError, match="synthetic_gate must be >= 0"):
        config.from_dict({"train": {"synthetic_gate": -1.0}})


@pytest.mark.parametrize(
    "section, name, value",
    [
        ("download", "thread_count", 0),
        ("download", "retries", -1),
        ("download", "max_bytes", -1),
        ("download", "timeout", 0),
        ("capfilt", "repetition_penalty", 0.0),
        ("capfilt", "min_new_tokens", -1),
        ("capfilt", "prefetch_batches", 0),
        ("capfilt", "min_image_side", 0),
        ("capfilt", "max_image_pixels", 0),
        ("sharding", "torch_threads", -1),
    ],
)
def test_a_number_out_of_its_range_is_refused_in_one_line(section, name, value):
    """Such values were accepted and then every row failed (thread_count 0, max_bytes -1)."""
    with pytest.raises(config.ConfigError, match=rf"^\[{section}\] {name} must be "):
        config.from_dict({section: {name: value}})


def test_default_preset_documents_every_default():
    assert config.load("default") == config.RunConfig()


def test_metadata_build_cli(tmp_path, capsys):
    from flows import cli

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("new york city at night\nnew york skyline\nnew york taxi\nold dog\n" * 5)
    out = tmp_path / "meta.txt"
    argv = [
        "metadata",
        "build",
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--min-count",
        "5",
        "--min-pmi",
        "0.5",
        "--min-bigram-count",
        "5",
    ]
    assert cli.main(argv) == 0
    entries = out.read_text().splitlines()
    assert "new york" in entries and "york" in entries and "dog" in entries
    assert "night old" not in entries  # never adjacent in one text


def test_safe_fetch_refuses_private_targets_after_resolution(web):
    from curation.pipeline import safe_fetch

    guarded = safe_fetch.opener(allow_private=False, max_bytes=10**6)
    with pytest.raises(OSError, match="blocked address"):
        guarded.open(web.base_url + "/good.jpg", timeout=5)
    allowed = safe_fetch.opener(allow_private=True, max_bytes=10**6)
    assert allowed.open(web.base_url + "/good.jpg", timeout=5).read()[:2] == b"\xff\xd8"


def test_safe_fetch_caps_body_size_and_content_type(web):
    from curation.pipeline import safe_fetch

    guarded = safe_fetch.opener(allow_private=True, max_bytes=10**6)
    with pytest.raises(OSError, match="larger than"):
        guarded.open(web.base_url + "/huge.jpg", timeout=5).read()
    with pytest.raises(OSError, match="not an image"):
        guarded.open(web.base_url + "/page.html", timeout=5)
    with pytest.raises(OSError, match="non-http"):
        guarded.open(web.base_url + "/to-ftp.jpg", timeout=5)


@pytest.fixture(scope="module")
def fetch_web():
    """Routes that break HTTP as real servers do (drip, cut bodies, encodings, rate limits)."""
    import gzip
    import zlib

    from curation.world.webserver import Routes, Server

    jpeg = encode(Image.new("RGB", (32, 32), (10, 120, 240)), "JPEG")
    deflated = zlib.compress(jpeg)
    routes = Routes(
        {
            "/drip.jpg": (200, "image/jpeg", jpeg, {"drip": 20}),
            "/cut.jpg": (200, "image/jpeg", jpeg, {"send": 400}),
            "/gzip.jpg": (200, "image/jpeg", gzip.compress(jpeg), {"headers": GZIP}),
            "/gzip-chunked.jpg": (
                200,
                "image/jpeg",
                gzip.compress(jpeg),
                {"headers": GZIP, "chunked": True},
            ),
            "/deflate.jpg": (
                200,
                "image/jpeg",
                deflated,
                {"headers": {"Content-Encoding": "deflate"}},
            ),
            "/br.jpg": (200, "image/jpeg", jpeg, {"headers": {"Content-Encoding": "br"}}),
            "/bomb.jpg": (200, "image/jpeg", gzip.compress(bytes(3_000_000)), {"headers": GZIP}),
            "/busy.jpg": (200, "image/jpeg", jpeg, {"fail_first": 1}),
            "/good.jpg": (200, "image/jpeg", jpeg),
        }
    )
    server = Server(routes)
    yield server, jpeg
    server.close()


GZIP = {"Content-Encoding": "gzip"}


def test_a_request_ends_within_its_deadline_however_slowly_the_server_drips(fetch_web):
    from curation.pipeline import safe_fetch

    web, _ = fetch_web
    opener = safe_fetch.opener(allow_private=True, max_bytes=10**6)
    # each byte comes well within the 1 s socket timeout; the whole body would take 30 s
    with pytest.raises(OSError, match="within the 1 s deadline"):
        opener.open(web.base_url + "/drip.jpg", timeout=1).read()


def test_a_body_shorter_than_its_length_is_a_failure(fetch_web):
    from curation.pipeline import safe_fetch

    web, jpeg = fetch_web
    opener = safe_fetch.opener(allow_private=True, max_bytes=10**6)
    with pytest.raises(OSError, match=f"incomplete body: 400 of {len(jpeg)} bytes"):
        opener.open(web.base_url + "/cut.jpg", timeout=5)


@pytest.mark.parametrize("path", ["/gzip.jpg", "/gzip-chunked.jpg", "/deflate.jpg"])
def test_gzip_and_deflate_bodies_are_decoded(fetch_web, path):
    from curation.pipeline import safe_fetch

    web, jpeg = fetch_web
    opener = safe_fetch.opener(allow_private=True, max_bytes=10**6)
    assert opener.open(web.base_url + path, timeout=5).read() == jpeg


def test_unknown_encodings_and_decoded_bombs_are_refused_by_name(fetch_web):
    from curation.pipeline import safe_fetch

    web, _ = fetch_web
    opener = safe_fetch.opener(allow_private=True, max_bytes=2_000_000)
    with pytest.raises(OSError, match="content encoding br is not supported"):
        opener.open(web.base_url + "/br.jpg", timeout=5)
    with pytest.raises(OSError, match="larger than 2000000 bytes once decoded"):
        opener.open(web.base_url + "/bomb.jpg", timeout=5)


def test_a_rate_limited_answer_waits_for_retry_after_before_the_retry(fetch_web):
    import time
    import urllib.error

    from curation.pipeline import safe_fetch

    web, jpeg = fetch_web
    opener = safe_fetch.opener(allow_private=True, max_bytes=10**6)
    started = time.monotonic()
    with pytest.raises(urllib.error.HTTPError, match="429"):
        opener.open(web.base_url + "/busy.jpg", timeout=5)
    assert time.monotonic() - started >= 1.0  # Retry-After: 1, then the downloader retries
    assert opener.open(web.base_url + "/busy.jpg", timeout=5).read() == jpeg


@pytest.mark.parametrize(
    "address",
    [
        "::ffff:127.0.0.1",  # IPv4-mapped
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254, the cloud metadata address
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "::10.0.0.1",  # IPv4-compatible
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
        "192.0.0.8",  # IETF protocol assignments
    ],
)
def test_addresses_embedding_a_private_ipv4_are_not_public(address):
    from curation.pipeline import safe_fetch

    assert not safe_fetch.is_public(address)


def test_public_addresses_stay_public():
    from curation.pipeline import safe_fetch

    assert safe_fetch.is_public("8.8.8.8") and safe_fetch.is_public("2606:4700::1111")
    assert safe_fetch.is_public("64:ff9b::808:808")  # NAT64 of 8.8.8.8


def test_through_a_proxy_the_destination_is_still_checked(fetch_web, monkeypatch):
    """With http_proxy set, the connection goes to the proxy: the guard must judge the URL."""
    from curation.pipeline import safe_fetch

    web, _ = fetch_web
    monkeypatch.setenv("http_proxy", web.base_url)  # a loopback "proxy" the user configured
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    opener = safe_fetch.opener(allow_private=False, max_bytes=10**6)
    with pytest.raises(OSError, match="blocked address: 169.254.169.254"):
        opener.open("http://169.254.169.254/latest/meta-data/", timeout=5)


@pytest.mark.parametrize(
    "url, sent",
    [
        ("http://пример.рф/x.jpg", "http://xn--e1afmkfd.xn--p1ai/x.jpg"),
        (
            "http://u:p@Bücher.example:8080/ä?q=ü",
            "http://u:p@xn--bcher-kva.example:8080/%C3%A4?q=%C3%BC",
        ),
        ("http://127.0.0.1:8080/ä.jpg", "http://127.0.0.1:8080/%C3%A4.jpg"),
        ("http://[::1]/x.jpg", "http://[::1]/x.jpg"),
    ],
)
def test_urls_are_sent_as_a_browser_sends_them(url, sent):
    """An internationalised host failed with "'latin-1' codec can't encode" and no lookup."""
    assert download.fetchable(url) == sent


def test_a_host_idna_cannot_encode_is_an_invalid_url():
    reason, detail = download.check_url("http://a\u0378b.example/x.jpg", True)  # unassigned
    assert reason == "invalid_url" and "internationalised name" in detail
