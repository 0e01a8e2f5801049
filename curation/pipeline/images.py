"""Decoding downloaded bytes into RGB images the models can take.

Web images come in every mode Pillow knows: CMYK JPEGs, palette PNGs with transparency, 16-bit
greyscale, EXIF-rotated phone photos, animated GIFs. Each is turned into an upright RGB image;
anything that is not an image, is truncated, is a tracking pixel or a decompression bomb becomes
a reject with a reason, never an exception that stops the shard.
"""

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps


@dataclass
class Decoded:
    image: Image.Image | None  # upright RGB, None when rejected
    reason: str | None = None  # a schema.Reason value
    detail: str | None = None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Pillow's own conversion clips 16-bit values at 255; rescale the range instead.
        pixels = np.asarray(image, dtype=np.float64)
        peak = pixels.max() or 1.0
        image = Image.fromarray((pixels * (255.0 / peak)).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels carry arbitrary colour; show them over white, as a browser would.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def decode_image(data: bytes | None, min_side: int, max_pixels: int) -> Decoded:
    """Decode `data` into an upright RGB image, or say why not."""
    if not data:
        return Decoded(None, "decode_error", "empty response body")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size  # from the header: nothing decoded yet
        if width * height > max_pixels:
            return Decoded(None, "image_too_large", f"{width}x{height} pixels (bomb guard)")
        image.load()
        image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as err:  # Pillow's own guard, at 2x its pixel limit,
        return Decoded(None, "image_too_large", str(err)[:300])  # fires before ours in open()
    except Exception as err:  # noqa: BLE001 -- any decoder failure is a property of the bytes
        # Pillow names the in-memory file by its address; drop it so reruns give the same detail
        message = re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(err).__name__}: {err}")
        return Decoded(None, "decode_error", message[:300])
    if min(image.size) < min_side:
        return Decoded(None, "image_too_small", f"{image.width}x{image.height} < {min_side}px")
    try:
        return Decoded(_to_rgb(image))
    except Exception as err:  # noqa: BLE001
        return Decoded(None, "decode_error", f"cannot convert {image.mode}: {err}"[:300])
