"""Shared fixtures: tiny real images, a loopback web, tiny BLIP checkpoints, a Prefect harness."""

import io
import os
import socket

import pytest
from PIL import Image

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see curation/__init__.py


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    """A 24x12 JPEG whose EXIF says 'rotate 90° clockwise': upright it is 12x24."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    return encode(Image.new("RGB", (24, 12), (200, 30, 30)), "JPEG", exif=exif)


def hostile_web() -> dict[str, tuple[int, str, bytes]]:
    """path -> (HTTP status, content type, body) for every case the flow must account for."""
    rgb = encode(Image.new("RGB", (32, 32), (10, 120, 240)), "JPEG")
    return {
        "/good.jpg": (200, "image/jpeg", rgb),
        "/empty_caption.jpg": (200, "image/jpeg", rgb),
        "/gray.png": (200, "image/png", encode(Image.new("L", (20, 20), 128), "PNG")),
        "/cmyk.jpg": (
            200,
            "image/jpeg",
            encode(Image.new("CMYK", (20, 20), (0, 90, 90, 0)), "JPEG"),
        ),
        "/alpha.png": (
            200,
            "image/png",
            encode(Image.new("RGBA", (20, 20), (0, 255, 0, 80)), "PNG"),
        ),
        "/rotated.jpg": (200, "image/jpeg", exif_rotated_jpeg()),
        "/pixel.png": (200, "image/png", encode(Image.new("RGB", (1, 1)), "PNG")),
        "/page.jpg": (200, "image/jpeg", b"<html><body>Not found</body></html>"),
        "/truncated.jpg": (200, "image/jpeg", rgb[: len(rgb) // 2]),
        "/redirect.jpg": (302, "text/plain", b"/good.jpg"),
        "/loop.jpg": (302, "text/plain", b"/loop.jpg"),
        "/to-ftp.jpg": (302, "text/plain", b"ftp://127.0.0.1/x.jpg"),
        "/error.jpg": (500, "text/plain", b"internal error"),
        "/page.html": (200, "text/html", b"<html><body>an article</body></html>"),
        "/huge.jpg": (200, "image/jpeg", rgb + bytes(HUGE)),
    }


HUGE = 3_000_000  # bytes appended to a JPEG: past the tests' 2 MB max_bytes


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def web():
    from curation.webserver import Routes, Server

    server = Server(Routes(hostile_web()))
    yield server
    server.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """(captioner_dir, filter_dir): tiny random BLIP checkpoints saved with save_pretrained."""
    from curation.tiny import save_blip_checkpoints

    return save_blip_checkpoints(tmp_path_factory.mktemp("tiny"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
