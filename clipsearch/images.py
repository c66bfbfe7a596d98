"""Safe image decoding: byte and pixel caps, a format allowlist, EXIF orientation, RGB.

Every failure is a typed error saying what was wrong, so a server can answer 400/413 and a
batch job can skip and report the file.
"""

from __future__ import annotations

import io
import re
import warnings

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from clipsearch.errors import ImageError, ImageTooLarge

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000

# Truncated files must fail, not decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def decode_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode `data` into an upright RGB image, or raise ImageError / ImageTooLarge."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"expected image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge("bytes", len(data), max_bytes)
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) between max_pixels and 2x; we check the header ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
    except UnidentifiedImageError:
        raise ImageError(
            "not a supported image: send JPEG, PNG, WebP or GIF bytes"
        ) from None
    except Image.DecompressionBombError as exc:  # header already exceeds PIL's own 2x limit
        raise ImageTooLarge("pixels", _pixels_from(exc), max_pixels) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure means bad bytes
        raise ImageError(f"cannot read image header: {exc}") from None
    return _load_checked(img, max_pixels)


def _load_checked(img: Image.Image, max_pixels: int) -> Image.Image:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has invalid dimensions {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge("pixels", width * height, max_pixels)
    if img.format not in ALLOWED_FORMATS:
        raise ImageError(f"image format {img.format} is not allowed: send JPEG, PNG, WebP or GIF")
    try:
        img.seek(0)  # GIF / animated WebP: first frame only
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"image data is truncated or corrupt ({exc}): send the complete file") from None
    except Image.DecompressionBombError:
        raise ImageTooLarge("pixels", width * height, max_pixels) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency over white rather than over black garbage.
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _pixels_from(exc: Exception) -> int:
    """The image's pixel count from Pillow's "Image size (N pixels) exceeds limit of M pixels"."""
    numbers = re.findall(r"\d+", str(exc).replace(",", ""))
    return int(numbers[0]) if numbers else 0


def read_image_file(path, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read and decode a file with the same checks; the byte cap is checked before reading."""
    import os

    size = os.path.getsize(path)
    if size > max_bytes:
        raise ImageTooLarge("bytes", size, max_bytes)
    with open(path, "rb") as fh:
        return decode_image(fh.read(), max_bytes=max_bytes, max_pixels=max_pixels)
