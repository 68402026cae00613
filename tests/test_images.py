"""Reading photos: odd formats decode, broken ones name themselves, EXIF is honoured."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from edge_smw import images
from edge_smw.errors import ImageReadError, InputError


def save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_plain_rgb_jpeg_is_bgr(tmp_path):
    path = save(Image.new("RGB", (20, 10), (255, 0, 0)), tmp_path / "red.jpg", quality=95)
    out = images.read_image(path)
    assert out.shape == (10, 20, 3) and out.dtype == np.uint8
    assert np.abs(out[0, 0].astype(int) - [0, 0, 255]).max() <= 3  # JPEG's own error


def test_grayscale_rgba_16bit_and_palette_decode(tmp_path):
    gray = images.read_image(save(Image.new("L", (8, 8), 100), tmp_path / "g.png"))
    assert gray.shape == (8, 8, 3) and gray[0, 0].tolist() == [100, 100, 100]
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 0))  # fully transparent -> white background
    assert images.read_image(save(rgba, tmp_path / "a.png"))[0, 0].tolist() == [255, 255, 255]
    deep = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    out16 = images.read_image(save(deep, tmp_path / "d.png"))
    assert out16.dtype == np.uint8 and out16[0, 0].tolist() == [255, 255, 255]
    pal = Image.new("P", (8, 8), 3)
    assert images.read_image(save(pal, tmp_path / "p.png")).shape == (8, 8, 3)


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif)
    assert images.read_image(path).shape == (40, 20, 3)  # shown upright: portrait


@pytest.mark.parametrize(
    "content, name, words",
    [
        (b"", "zero.jpg", "0 bytes"),
        (b"just some text, not pixels", "fake.jpg", "not an image"),
    ],
)
def test_broken_files_name_themselves(tmp_path, content, name, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=words) as info:
        images.read_image(path)
    assert name in str(info.value)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="truncated|corrupt") as info:
        images.read_image(path)
    assert "cut.jpg" in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        images.read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageReadError, match="folder"):
        images.read_image(tmp_path)


def test_very_large_images_are_refused_or_shrunk(tmp_path):
    path = save(Image.new("RGB", (300, 200), (1, 2, 3)), tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="too large.*limit 10000"):
        images.read_image(path, max_pixels=10_000)  # the pixel limit is a setting
    with pytest.raises(ImageReadError, match="too large"):
        images.decode_image_bytes(path.read_bytes(), max_pixels=10_000)
    assert images.read_image(path, max_side=100).shape == (67, 100, 3)


def _halves(size, mode="RGB", left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    img = Image.new(mode, size, left)
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return img


@pytest.mark.parametrize(("name", "make"), [
    ("png", lambda: _halves((9000, 3000))),
    ("jpg", lambda: _halves((9000, 3000))),
    ("gif", lambda: _halves((9000, 3000)).convert("P")),  # a palette: converted, then reduced
    ("tif", lambda: _halves((9000, 3000), "L", 30, 220)),
])
def test_large_photos_are_decoded_reduced_upright_and_faithful(tmp_path, name, make):
    """9,000 x 3,000 decoded at <= 4,096 a side (draft for JPEG, reduce otherwise), shown
    upright per EXIF, and the same picture as a full decode shrunk afterwards."""
    img = make()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display: the left half goes on top
    oriented = name in ("png", "jpg")  # GIF has no EXIF (TIFF: Pillow orients it on load)
    path = save(img, tmp_path / f"wide.{name}", **({"exif": exif} if oriented else {}))
    out = images.read_image(path)
    assert out.shape[:2] == ((4096, 1365) if oriented else (1365, 4096))
    with Image.open(path) as full:
        reference = images._to_bgr8(ImageOps.exif_transpose(full))
    reference = cv2.resize(reference, out.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - reference).mean() < 3
    first, last = out[100, 100].astype(int), out[-100, -100].astype(int)
    assert np.abs(first - reference[100, 100]).max() < 8 and not np.array_equal(first, last)


def test_to_bgr_validates_frames():
    frame = np.zeros((4, 5, 3), np.uint8)
    assert images.to_bgr(frame) is frame
    assert images.to_bgr(np.zeros((4, 5), np.uint8), "gray").shape == (4, 5, 3)
    for bad, color, words in [(frame.astype(np.float32), "bgr", "uint8 image, got dtype float32"),
                              (np.zeros((0, 3, 3), np.uint8), "bgr", r"shape \(0, 3, 3\)"),
                              (np.zeros((4, 5), np.uint8), "bgr", "pass color='gray'"),
                              (frame, "hsv", "got 'hsv'")]:
        with pytest.raises(InputError, match=words):
            images.to_bgr(bad, color)
    with pytest.raises(InputError, match="4-channel .*COLOR_BGRA2BGR"):  # not "pass gray"
        images.to_bgr(np.zeros((4, 5, 4), np.uint8))


def test_decode_upload_bytes():
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), (0, 0, 0)).save(buf, format="PNG")
    assert images.decode_image_bytes(buf.getvalue()).shape == (4, 6, 3)
    with pytest.raises(ImageReadError):
        images.decode_image_bytes(b"GIF89a broken")
