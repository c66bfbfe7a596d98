"""Safe image decoding: formats, caps, bombs, truncation, EXIF, colour modes."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from clipsearch.errors import ImageError, ImageTooLarge, InvalidInput, TooLarge
from clipsearch.images import decode_image, read_image_file
from conftest import make_image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_allowed_formats_decode_to_rgb(fmt):
    img = decode_image(make_image(1, size=(33, 21), fmt=fmt))
    assert img.mode == "RGB" and img.size == (33, 21)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "1", "LA", "I;16"])
def test_colour_modes_become_rgb(mode):
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    if mode == "I;16":
        buf = io.BytesIO()
        Image.new("I;16", (10, 10)).save(buf, "PNG")
        data = buf.getvalue()
    else:
        data = make_image(2, size=(20, 20), fmt=fmt, mode=mode)
    assert decode_image(data).mode == "RGB"


def test_transparency_is_composited_on_white():
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buf, "PNG")
    assert decode_image(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_gif_takes_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    r, g, b = decode_image(buf.getvalue()).getpixel((4, 4))
    assert r > 200 and b < 50


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; the pixel data is a few bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [7_000, 20_000, 100_000])
def test_decompression_bombs_are_refused_from_the_header(side):
    with pytest.raises(ImageTooLarge) as err:
        decode_image(_png_header_only(side, side), max_pixels=40_000_000)
    assert isinstance(err.value, TooLarge) and "pixels" in str(err.value)
    assert err.value.size == side * side  # the image's own size, not Pillow's limit


def test_real_bomb_small_file_many_pixels():
    buf = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buf, "PNG", optimize=True)  # ~50 KB, 48 MP
    assert len(buf.getvalue()) < 200_000
    with pytest.raises(ImageTooLarge):
        decode_image(buf.getvalue(), max_pixels=40_000_000)


def test_byte_cap():
    data = make_image(1, size=(300, 300), fmt="PNG")
    with pytest.raises(ImageTooLarge, match="bytes"):
        decode_image(data, max_bytes=len(data) - 1)
    assert decode_image(data, max_bytes=len(data)).size == (300, 300)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"hello world, not an image", "not a supported image"),
        (b"<html><body>404</body></html>", "not a supported image"),
        (b"%PDF-1.4\n...", "not a supported image"),
        (b"\xff\xd8\xff", "header|truncated|not a supported"),
    ],
)
def test_non_images_are_refused_with_a_reason(data, message):
    with pytest.raises(ImageError, match=message) as err:
        decode_image(data)
    assert isinstance(err.value, InvalidInput)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_images_are_refused(fmt):
    data = make_image(5, size=(256, 256), fmt=fmt)
    with pytest.raises(ImageError):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "ICO", "PPM"])
def test_formats_outside_the_allowlist_are_refused(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, fmt)
    with pytest.raises(ImageError, match="JPEG, PNG, WebP or GIF"):
        decode_image(buf.getvalue())


def test_not_bytes_is_refused():
    with pytest.raises(ImageError, match="expected image bytes"):
        decode_image("a string")  # type: ignore[arg-type]


def test_exif_orientation(image_bytes):
    img = Image.open(io.BytesIO(image_bytes(3, size=(90, 40))))
    exif = Image.Exif()
    exif[0x0112] = 8
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert decode_image(buf.getvalue()).size == (40, 90)


def test_read_image_file_checks_size_before_reading(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(b"\xff" * 2048)
    with pytest.raises(ImageTooLarge):
        read_image_file(path, max_bytes=1024)
    path.write_bytes(make_image(1))
    assert read_image_file(path).mode == "RGB"
