"""Drawing a scene with Pillow (`render_scene`) and encoding it as JPEG (`encode_jpeg`)."""

from io import BytesIO

import numpy as np
from PIL import Image, ImageDraw

from curation.world.scenes import POSITIONS, Scene

RGB = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (130, 50, 170),
    "pink": (245, 130, 185),
    "brown": (125, 75, 35),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
}

JPEG_QUALITY = 90


# --------------------------------------------------------------------------- drawing


def _polygon(cx: float, cy: float, radii: list[float], start_deg: float = -90.0) -> list:
    """Points at equal angles around (cx, cy), one radius per point."""
    step = 2 * np.pi / len(radii)
    start = np.deg2rad(start_deg)
    return [
        (cx + r * np.cos(start + i * step), cy + r * np.sin(start + i * step))
        for i, r in enumerate(radii)
    ]


def _draw_heart(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill) -> None:
    h = r / 2
    for dx in (-h, h):
        draw.ellipse([cx + dx - h, cy - 0.35 * r - h, cx + dx + h, cy - 0.35 * r + h], fill=fill)
    draw.polygon([(cx - r, cy - 0.25 * r), (cx + r, cy - 0.25 * r), (cx, cy + r)], fill=fill)


def _draw_cross(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill) -> None:
    t = 0.3 * r
    draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
    draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill):
    """Draw one filled shape of 'radius' r centred at (cx, cy)."""
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(0.35 * r)))
    elif shape == "square":
        draw.rectangle([cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r], fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, [r, r, r]), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, [r, 0.45 * r] * 5), fill=fill)
    elif shape == "diamond":
        draw.polygon(
            [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=fill
        )
    elif shape == "cross":
        _draw_cross(draw, cx, cy, r, fill)
    elif shape == "heart":
        _draw_heart(draw, cx, cy, r, fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene, width: int, height: int) -> Image.Image:
    """Draw the scene: each object centred in its grid cell; large fills 90% of the cell."""
    img = Image.new("RGB", (width, height), RGB[scene.background])
    draw = ImageDraw.Draw(img)
    cell = min(width, height) / 3
    for obj in scene.objects:
        row, col = divmod(POSITIONS.index(obj.position), 3)
        cx, cy = (col + 0.5) * width / 3, (row + 0.5) * height / 3
        r = cell * (0.45 if obj.size == "large" else 0.25)
        _draw_shape(draw, obj.shape, cx, cy, r, RGB[obj.colour])
    return img


def encode_jpeg(img: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buf = BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
