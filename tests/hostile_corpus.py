"""The hostile and broken input corpus (issue 6): every bad input with the outcome it must get.

This list is the corpus. tests/test_hostile.py runs every WEB case through one real `curate run`
(loopback web server, tiny models) and every LIST case through the CLI; NETWORK and MODEL cases
name the tests that check them. The table in docs/benchmarks.md is this module's output:
`.venv/bin/python tests/hostile_corpus.py`.

Outcomes: "curated", a `schema.Reason` value, or for a URL list "exit 2" with a part of
the one-line error.
"""

import gzip
import io
import struct
import zlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

TIMEOUT = 2  # [download] timeout of the hostile run, seconds
MAX_BYTES = 2_000_000  # [download] max_bytes of the hostile run
MAX_PIXELS = 4_000_000  # [capfilt] max_image_pixels of the hostile run
HUGE = 3_000_000  # bytes appended to a JPEG: past MAX_BYTES


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    """A 24x12 JPEG whose EXIF says 'rotate 90° clockwise': upright it is 12x24."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    return encode(Image.new("RGB", (24, 12), (200, 30, 30)), "JPEG", exif=exif)


def with_exif(jpeg: bytes, payload: bytes) -> bytes:
    """`jpeg` with an APP1 segment holding `payload` (b"Exif\\0\\0" + TIFF bytes) after SOI."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def broken_exif_rotation() -> bytes:
    """Orientation 6 (readable) next to a tag whose data lies past the end of the segment."""
    entries = [(0x0112, 3, 1, b"\x06\x00\x00\x00"), (0x010E, 2, 1000, struct.pack("<I", 9999))]
    tiff = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    tiff += b"".join(struct.pack("<HHI", *entry[:3]) + entry[3] for entry in entries)
    jpeg = encode(Image.new("RGB", (24, 12), (30, 200, 30)), "JPEG")
    return with_exif(jpeg, b"Exif\x00\x00" + tiff + bytes(4))


def bomb_png(side: int) -> bytes:
    """A 1-bit PNG of side x side black pixels: ~50 KB at 20000, 400 Mpx once decoded.

    Written by hand, row by row: Pillow would have to hold the image to encode it.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = bytes(1 + (side + 7) // 8)  # filter byte + packed pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def palette_with_transparency() -> bytes:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([255, 0, 0, 0, 255, 0])
    image.paste(1, (0, 0, 10, 20))
    return encode(image, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 20), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def sixteen_bit_png() -> bytes:
    image = Image.new("I;16", (20, 20), 1000)
    image.putpixel((0, 0), 40000)
    return encode(image, "PNG")


BLUE = encode(Image.new("RGB", (32, 32), (10, 120, 240)), "JPEG")
BOMB = bomb_png(20_000)
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><rect/></svg>'


@dataclass(frozen=True)
class Case:
    """One row of the URL list the hostile run curates."""

    name: str
    category: str  # "url" | "image" | "text"
    url: str | None  # "{base}": the loopback server; "{closed}": a port nothing listens on
    expected: str  # "curated" or the reject reason
    text: str | None = "an image"  # the row's web text, kept exactly in the output
    route: tuple | None = None  # what the server answers at the URL's path: status, type, body
    detail: str = ""  # a part of the reject's detail
    why: str = ""  # the decision, where the outcome is a choice


IMAGE_TYPES = {"png": "image/png", "gif": "image/gif", "svg": "image/svg+xml", "jpg": "image/jpeg"}


def _image(name: str, path: str, body: bytes, expected: str, detail: str = "", why: str = ""):
    kind = IMAGE_TYPES[path.rsplit(".", 1)[1]]
    return Case(
        name, "image", "{base}" + path, expected, route=(200, kind, body), detail=detail, why=why
    )


def _text(name: str, text: str | None, why: str = "") -> Case:
    route = (200, "image/jpeg", BLUE)
    return Case(name, "text", "{base}/text/" + name + ".jpg", "curated", text, route, why=why)


WEB = [
    Case("good", "url", "{base}/good.jpg", "curated", "a blue square", (200, "image/jpeg", BLUE)),
    Case("http_404", "url", "{base}/missing.jpg", "download_failed", detail="404"),
    Case(
        "http_500",
        "url",
        "{base}/error.jpg",
        "download_failed",
        detail="500",
        route=(500, "text/plain", b"internal error"),
    ),
    Case(
        "timeout",
        "url",
        "{base}/slow.jpg",
        "download_failed",
        detail="deadline",
        route=(200, "image/jpeg", BLUE, 3 * TIMEOUT),
        why="answers after 3x the timeout",
    ),
    Case(
        "drip",
        "url",
        "{base}/drip.jpg",
        "download_failed",
        detail="deadline",
        route=(200, "image/jpeg", BLUE, {"drip": 20}),
        why="20 bytes/s: every read within the timeout, the whole body 15x over it",
    ),
    Case(
        "cut_body",
        "url",
        "{base}/cut.jpg",
        "download_failed",
        detail=f"incomplete body: 400 of {len(BLUE)} bytes",
        route=(200, "image/jpeg", BLUE, {"send": 400}),
    ),
    Case(
        "gzip_encoded",
        "url",
        "{base}/gzip.jpg",
        "curated",
        route=(200, "image/jpeg", gzip.compress(BLUE), {"headers": {"Content-Encoding": "gzip"}}),
        why="decoded as a browser does",
    ),
    Case(
        "gzip_chunked",
        "url",
        "{base}/gzip-chunked.jpg",
        "curated",
        route=(
            200,
            "image/jpeg",
            gzip.compress(BLUE),
            {"headers": {"Content-Encoding": "gzip"}, "chunked": True},
        ),
    ),
    Case(
        "brotli_encoded",
        "url",
        "{base}/br.jpg",
        "download_failed",
        detail="content encoding br is not supported",
        route=(200, "image/jpeg", BLUE, {"headers": {"Content-Encoding": "br"}}),
    ),
    Case(
        "gzip_bomb",
        "url",
        "{base}/bomb.jpg",
        "download_failed",
        detail="once decoded",
        route=(
            200,
            "image/jpeg",
            gzip.compress(bytes(HUGE)),
            {"headers": {"Content-Encoding": "gzip"}},
        ),
        why="3 KB that decode to 3 MB, past max_bytes",
    ),
    Case(
        "rate_limited",
        "url",
        "{base}/busy.jpg",
        "download_failed",
        detail="429",
        route=(200, "image/jpeg", BLUE, {"fail_first": 1}),
        why="waits Retry-After (1 s); the hostile run does not retry",
    ),
    Case(
        "connection_refused",
        "url",
        "http://127.0.0.1:{closed}/x.jpg",
        "download_failed",
        detail="refused",
    ),
    Case(
        "redirect", "url", "{base}/redirect.jpg", "curated", route=(302, "text/plain", b"/good.jpg")
    ),
    Case(
        "redirect_loop",
        "url",
        "{base}/loop.jpg",
        "download_failed",
        detail="redirect",
        route=(302, "text/plain", b"/loop.jpg"),
    ),
    Case(
        "redirect_to_ftp",
        "url",
        "{base}/to-ftp.jpg",
        "download_failed",
        detail="non-http",
        route=(302, "text/plain", b"ftp://127.0.0.1/x.jpg"),
    ),
    Case(
        "far_too_large",
        "url",
        "{base}/huge.jpg",
        "download_failed",
        detail="larger than",
        route=(200, "image/jpeg", BLUE + bytes(HUGE)),
        why="refused while read, at max_bytes",
    ),
    Case(
        "html_content_type",
        "url",
        "{base}/page.html",
        "download_failed",
        detail="not an image",
        route=(200, "text/html", b"<html><body>an article</body></html>"),
    ),
    Case(
        "html_saved_as_jpg",
        "url",
        "{base}/page.jpg",
        "decode_error",
        detail="cannot identify",
        route=(200, "image/jpeg", b"<html><body>Not found</body></html>"),
    ),
    Case("file_scheme", "url", "file:///etc/passwd", "invalid_url", detail="only http(s)"),
    Case("ftp_scheme", "url", "ftp://127.0.0.1/x.jpg", "invalid_url", detail="only http(s)"),
    Case("data_uri", "url", "data:image/png;base64,iVBORw0KGgo=", "invalid_url"),
    Case("scheme_only", "url", "http://", "invalid_url", detail="with a host"),
    Case("not_a_url", "url", "not a url", "invalid_url", detail="only http(s)"),
    Case("unclosed_ipv6", "url", "http://[::1", "invalid_url", detail="malformed"),
    Case(
        "port_out_of_range",
        "url",
        "http://127.0.0.1:99999/x.jpg",
        "invalid_url",
        detail="malformed",
    ),
    Case(
        "space_inside",
        "url",
        "{base}/a b.jpg",
        "invalid_url",
        detail="whitespace",
        why="malformed (RFC 3986); refused before any request",
    ),
    Case(
        "spaces_around",
        "url",
        "  {base}/good.jpg\n",
        "curated",
        why="leading/trailing whitespace is stripped for the fetch; `url` keeps it",
    ),
    Case(
        "non_ascii_path",
        "url",
        "{base}/café.jpg",
        "curated",
        route=(200, "image/jpeg", BLUE),
        why="percent-encoded as UTF-8 like a browser does",
    ),
    Case("empty_url", "url", "", "invalid_url"),
    Case("null_url", "url", None, "invalid_url"),
    Case(
        "duplicate_url",
        "url",
        "{base}/good.jpg",
        "curated",
        "a blue square",
        why="no dedup: both rows curated, same sha256 (`curate stats` counts duplicates)",
    ),
    _image("truncated_jpeg", "/truncated.jpg", BLUE[: len(BLUE) // 2], "decode_error"),
    _image("empty_body", "/empty.jpg", b"", "decode_error", "empty"),
    _image(
        "svg_as_image",
        "/vector.svg",
        SVG,
        "decode_error",
        "cannot identify",
        why="Pillow has no SVG decoder",
    ),
    _image(
        "decompression_bomb",
        "/bomb.png",
        BOMB,
        "image_too_large",
        "decompression bomb",
        why=f"20000x20000 in {len(BOMB) // 1000} KB: Pillow's DecompressionBombError",
    ),
    _image(
        "over_max_image_pixels",
        "/big.png",
        bomb_png(3_000),
        "image_too_large",
        "bomb guard",
        why=f"3000x3000 > max_image_pixels {MAX_PIXELS:,}, checked from the header",
    ),
    _image("one_pixel", "/pixel.png", encode(Image.new("RGB", (1, 1)), "PNG"), "image_too_small"),
    _image(
        "aspect_4000x4",
        "/banner.png",
        encode(Image.new("RGB", (4000, 4)), "PNG"),
        "image_too_small",
        "4000x4",
        why="min_image_side applies to the short side",
    ),
    _image(
        "aspect_2000x10",
        "/strip.png",
        encode(Image.new("RGB", (2000, 10)), "PNG"),
        "curated",
        why="aspect ratio alone is no reject reason; the filter judges the pixels",
    ),
    _image(
        "cmyk_jpeg",
        "/cmyk.jpg",
        encode(Image.new("CMYK", (20, 20), (0, 90, 90, 0)), "JPEG"),
        "curated",
    ),
    _image("greyscale_png", "/gray.png", encode(Image.new("L", (20, 20), 128), "PNG"), "curated"),
    _image(
        "sixteen_bit_png",
        "/16bit.png",
        sixteen_bit_png(),
        "curated",
        why="rescaled to 8 bits by its peak, not clipped",
    ),
    _image(
        "rgba_png",
        "/alpha.png",
        encode(Image.new("RGBA", (20, 20), (0, 255, 0, 80)), "PNG"),
        "curated",
        why="composited over white",
    ),
    _image("palette_transparency", "/palette.png", palette_with_transparency(), "curated"),
    _image("animated_gif", "/animated.gif", animated_gif(), "curated", why="first frame"),
    _image(
        "exif_rotation",
        "/rotated.jpg",
        exif_rotated_jpeg(),
        "curated",
        why="upright: stored 24x12, curated 12x24",
    ),
    _image(
        "corrupt_exif",
        "/bad-exif.jpg",
        with_exif(BLUE, b"Exif\x00\x00" + b"\xde\xad" * 20),
        "curated",
        why="unreadable EXIF is ignored, the pixels are fine",
    ),
    _image(
        "corrupt_exif_rotation",
        "/bad-exif-rotated.jpg",
        broken_exif_rotation(),
        "curated",
        why="the readable orientation is still applied (12x24)",
    ),
    _text("empty_text", "", why="no web candidate; synthetic captions only"),
    _text("whitespace_text", " \t\n  ", why="as empty"),
    _text("null_text", None, why="as empty"),
    _text(
        "long_text",
        "a very long caption " * 500,
        why="10,000 chars, truncated to the model's tokens for scoring only",
    ),
    _text("nul_bytes", "a red\x00 bus\x00"),
    _text("mixed_scripts", "Tokyo 東京 Москва Αθήνα 서울 দিল্লি"),
    _text("right_to_left", "قطة على السجادة — חתול על השטיח"),
    _text("emoji", "🐈‍⬛ on a 🛋️ 👍🏽 🇯🇵"),
    _text("control_chars", "\x1b[31mred\x1b[0m\r\x07 text\u200b\ufeff"),
]


@dataclass(frozen=True)
class ListCase:
    """A URL list `curate run` must refuse before any work: exit 2, one line naming it."""

    name: str
    file: str  # its suffix picks the reader
    content: bytes | None  # None: the file does not exist
    message: str  # a part of the one-line error
    args: tuple = ()  # more `curate run` arguments


def parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


GOOD_PARQUET = parquet(pa.table({"url": ["http://example.com/a.jpg"], "caption": ["a"]}))
LATIN1_CSV = "url,caption\nhttp://x/a.jpg,café\n".encode() + "http://x/b.jpg,déjà vu\n".encode(
    "latin-1"
)

LISTS = [
    ListCase("missing_file", "nope.parquet", None, "URL list not found"),
    ListCase("unknown_format", "urls.xlsx", b"PK\x03\x04", "unknown URL list format"),
    ListCase("missing_column", "urls.csv", b"link,caption\nhttp://x/a.jpg,a\n", "no column 'url'"),
    ListCase(
        "missing_caption_column",
        "urls.csv",
        b"url\nhttp://x/a.jpg\n",
        "no column 'caption' (--caption-col)",
    ),
    ListCase(
        "url_column_of_ints",
        "urls.parquet",
        parquet(pa.table({"url": [1, 2], "caption": ["a", "b"]})),
        "column 'url' holds int64, expected text",
    ),
    ListCase(
        "caption_column_of_lists",
        "urls.parquet",
        parquet(pa.table({"url": ["http://x/a"], "caption": [["a"]]})),
        "column 'caption' holds list",
    ),
    ListCase("empty_csv", "urls.csv", b"", "Empty CSV file"),
    ListCase("empty_parquet", "urls.parquet", b"", "Parquet file size is 0 bytes"),
    ListCase("empty_jsonl", "urls.jsonl", b"", "Empty JSON file"),
    ListCase("header_only", "urls.csv", b"url,caption\n", "has no rows"),
    ListCase("corrupt_parquet", "urls.parquet", b"PAR1 garbage", "cannot read URL list"),
    ListCase(
        "truncated_parquet",
        "urls.parquet",
        GOOD_PARQUET[: len(GOOD_PARQUET) // 2],
        "cannot read URL list",
    ),
    ListCase("ragged_csv", "urls.csv", b"url,caption\nhttp://x/a.jpg,a,b\n", "Expected 2 columns"),
    ListCase(
        "broken_jsonl", "urls.jsonl", b'{"url": "http://x/a.jpg"}\n{"url": \n', "JSON parse error"
    ),
    ListCase("mixed_encodings_csv", "urls.csv", LATIN1_CSV, "not UTF-8 at line 3, byte 0xe9"),
    ListCase(
        "mixed_encodings_jsonl",
        "urls.jsonl",
        '{"url": "http://x/a.jpg", "caption": "é"}\n'.encode("latin-1"),
        "not UTF-8 at line 1, byte 0xe9",
    ),
]


@dataclass(frozen=True)
class Guard:
    """A safety property checked by a dedicated test rather than by the hostile run."""

    name: str
    category: str  # "network" | "model"
    expected: str
    test: str


NETWORK_HOSTS = [
    "127.0.0.1",
    "10.1.2.3",
    "192.168.0.1",
    "169.254.169.254",
    "[::1]",
    "localhost",
    "0.0.0.0",
]

GUARDS = [
    *[
        Guard(
            f"private_host {host}",
            "network",
            "blocked_address",
            "test_stages.py::test_private_addresses_are_blocked_unless_allowed",
        )
        for host in NETWORK_HOSTS
    ],
    Guard(
        "loopback in a default run",
        "network",
        "blocked_address",
        "test_flow.py::test_private_network_refused_by_default",
    ),
    Guard(
        "checked again after DNS resolution, at connect",
        "network",
        "blocked_address",
        "test_stages.py::test_safe_fetch_refuses_private_targets_after_resolution",
    ),
    Guard(
        "folder with only config.json",
        "model",
        "exit 2: no .safetensors weights",
        "test_models.py::test_check_model_source_folder_without_checkpoint",
    ),
    Guard(
        "folder with only pytorch_model.bin",
        "model",
        "exit 2: no .safetensors weights",
        "test_hostile.py::test_pickle_weights_are_refused",
    ),
    Guard(
        "config.json asking for remote code (auto_map)",
        "model",
        "loads, code never imported",
        "test_hostile.py::test_remote_code_is_never_run",
    ),
]


def routes() -> dict[str, tuple]:
    """path -> server answer for every WEB case that has one (curation.world.webserver.Routes)."""
    from urllib.parse import quote

    # The server sees the path as sent: percent-encoded, as download.fetchable sends it.
    return {quote(c.url.removeprefix("{base}")): c.route for c in WEB if c.route is not None}


def markdown() -> str:
    """The corpus as the table in docs/benchmarks.md."""

    def cell(value) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| category | case | outcome | note |", "|---|---|---|---|"]
    for case in WEB:
        outcome = case.expected + (f" ({case.detail})" if case.detail else "")
        lines.append(f"| {case.category} | {case.name} | {cell(outcome)} | {cell(case.why)} |")
    for case in LISTS:
        outcome = f"exit 2: {case.message}"
        lines.append(f"| url list | {case.name} | {cell(outcome)} | `{case.file}` |")
    for guard in GUARDS:
        lines.append(
            f"| {guard.category} | {cell(guard.name)} | {cell(guard.expected)} | `{guard.test}` |"
        )
    return "\n".join(lines)


def counts() -> dict[str, int]:
    """Cases per category."""
    categories = [c.category for c in WEB] + ["url list"] * len(LISTS)
    categories += [g.category for g in GUARDS]
    return {c: categories.count(c) for c in dict.fromkeys(categories)}


if __name__ == "__main__":
    print(markdown())
    print()
    print(", ".join(f"{n} {c}" for c, n in counts().items()), f"= {sum(counts().values())} cases")
