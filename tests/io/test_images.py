"""Tests for fluxsr.io.images: formats, bit depths, metadata, bad files, naming and resizing."""

from __future__ import annotations

import os
import pickle
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageFile, ImageOps

from fluxsr.io import images
from fluxsr.io.images import (
    ImageError,
    find_images,
    output_path,
    quantize,
    read_image,
    resize,
    target_size,
    write_image,
)
from fluxsr.io.images.reading import orient
from fluxsr.io.images.writing import png16_bytes

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
LOSSLESS = ["png", "PNG", "bmp", "tif", "tiff"]
LOSSY = ["jpg", "jpeg", "JPG", "webp"]


def gradient(h: int = 12, w: int = 16, channels: int = 3, top: int = 255) -> np.ndarray:
    """A smooth (H,W,C) integer test image that lossy codecs keep close."""
    y, x = np.mgrid[0:h, 0:w]
    planes = [(x * (c + 1) + y * (3 - c)) / ((w - 1) * (c + 1) + (h - 1) * (3 - c)) for c in range(channels)]
    dtype = np.uint8 if top == 255 else np.uint16
    return np.round(np.stack(planes, -1) * top).astype(dtype)


def noise(h: int, w: int, channels: int, top: int, seed: int = 0) -> np.ndarray:
    """Random (H,W,C) integers over the whole range: any precision loss shows."""
    dtype = np.uint8 if top == 255 else np.uint16
    return np.random.default_rng(seed).integers(0, top + 1, (h, w, channels)).astype(dtype)


def as_tensor(array: np.ndarray, top: int) -> torch.Tensor:
    """(H,W,C) integers to a (C,H,W) float tensor in [0,1]."""
    return torch.from_numpy(array.astype(np.float32) / top).permute(2, 0, 1)


def as_ints(loaded: images.LoadedImage, top: int) -> np.ndarray:
    """The loaded pixels back as (H,W,C) integers: gray as one channel, alpha appended."""
    planes = [loaded.rgb[:1] if loaded.is_gray else loaded.rgb]
    planes += [loaded.alpha] if loaded.alpha is not None else []
    return quantize(torch.cat(planes), 8 if top == 255 else 16).permute(1, 2, 0).numpy()


def save_pil(path: Path, array: np.ndarray, **options) -> Path:
    """Write an (H,W,C) uint8 array with PIL (channels 1..4 -> L, LA, RGB, RGBA)."""
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(path, **options)
    return path


def fake_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but whose data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def assert_one_line_error(error: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    """The ImageError names the file, is one line and mentions every word."""
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message.lower()


# ----------------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("ext", LOSSLESS)
def test_lossless_formats_round_trip_exactly(tmp_path: Path, ext: str) -> None:
    pixels = noise(9, 13, 3, 255)
    path = write_image(tmp_path / f"a.{ext}", as_tensor(pixels, 255))
    loaded = read_image(path)
    assert loaded.rgb.dtype == torch.float32 and loaded.rgb.shape == (3, 9, 13)
    assert (loaded.bit_depth, loaded.is_gray, loaded.alpha) == (8, False, None)
    np.testing.assert_array_equal(as_ints(loaded, 255), pixels)


@pytest.mark.parametrize("ext", LOSSY)
def test_lossy_formats_round_trip_closely(tmp_path: Path, ext: str) -> None:
    pixels = gradient()
    path = write_image(tmp_path / f"a.{ext}", as_tensor(pixels, 255), quality=95)
    loaded = read_image(path)
    assert loaded.rgb.shape == (3, 12, 16) and loaded.bit_depth == 8
    error = np.abs(as_ints(loaded, 255).astype(int) - pixels)
    assert error.mean() < 3 and error.max() <= 12


def test_webp_quality_100_is_lossless(tmp_path: Path) -> None:
    pixels = noise(9, 13, 4, 255)
    path = write_image(
        tmp_path / "a.webp", as_tensor(pixels[..., :3], 255), as_tensor(pixels[..., 3:], 255), quality=100
    )
    np.testing.assert_array_equal(as_ints(read_image(path), 255), pixels)


def test_format_follows_extension(tmp_path: Path) -> None:
    rgb = as_tensor(gradient(), 255)
    expected = {
        "png": "PNG",
        "jpg": "JPEG",
        "jpeg": "JPEG",
        "webp": "WEBP",
        "bmp": "BMP",
        "tif": "TIFF",
        "TIFF": "TIFF",
    }
    for ext, name in expected.items():
        with Image.open(write_image(tmp_path / f"a.{ext}", rgb)) as im:
            assert im.format == name


def test_tiny_7x5_image_reads(tmp_path: Path) -> None:
    pixels = noise(5, 7, 3, 255)
    loaded = read_image(save_pil(tmp_path / "tiny.png", pixels))
    assert loaded.rgb.shape == (3, 5, 7) and (loaded.height, loaded.width) == (5, 7)
    assert 0.0 <= float(loaded.rgb.min()) and float(loaded.rgb.max()) <= 1.0
    np.testing.assert_array_equal(as_ints(loaded, 255), pixels)


def test_content_wins_over_extension(tmp_path: Path) -> None:
    pixels = noise(5, 7, 4, 255)
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(save_pil(tmp_path / "src.png", pixels).read_bytes())
    loaded = read_image(path)
    assert loaded.format == "PNG" and loaded.alpha is not None
    np.testing.assert_array_equal(as_ints(loaded, 255), pixels)


def test_unknown_output_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as error:
        write_image(tmp_path / "a.gif", torch.zeros(3, 4, 4))
    assert_one_line_error(error, tmp_path / "a.gif", "cannot write")
    assert not (tmp_path / "a.gif").exists()


# ----------------------------------------------------------------------------------------------------- 16 bit


@pytest.mark.parametrize("ext", ["png", "tif"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16_bit_round_trips_exactly(tmp_path: Path, ext: str, channels: int) -> None:
    pixels = noise(6, 11, channels, 65535, seed=channels)
    gray = channels <= 2
    color = as_tensor(pixels, 65535)
    rgb, alpha = color[: 1 if gray else 3], (color[-1:] if channels in (2, 4) else None)
    path = write_image(tmp_path / f"deep.{ext}", rgb, alpha, is_gray=gray, bit_depth=16)
    loaded = read_image(path)
    assert loaded.bit_depth == 16
    assert loaded.is_gray == (gray and not (ext == "tif" and channels == 2))  # 16-bit gray+alpha TIFF is RGBA
    assert (loaded.alpha is not None) == (channels in (2, 4))
    expected = pixels[..., [0, 0, 0, 1]] if (ext, channels) == ("tif", 2) else pixels
    np.testing.assert_array_equal(as_ints(loaded, 65535), expected)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16_bit_files_are_16_bit_for_other_decoders(tmp_path: Path, ext: str) -> None:
    pixels = noise(6, 11, 3, 65535)
    path = write_image(tmp_path / f"deep.{ext}", as_tensor(pixels, 65535), bit_depth=16)
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded[..., ::-1], pixels)
    gray = noise(6, 11, 1, 65535)
    path = write_image(tmp_path / f"gray.{ext}", as_tensor(gray, 65535), is_gray=True, bit_depth=16)
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")
        np.testing.assert_array_equal(np.asarray(im), gray[..., 0])


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16_bit_files_from_other_encoders_keep_precision(tmp_path: Path, ext: str) -> None:
    rgba = noise(6, 11, 4, 65535)
    cv2.imwrite(str(tmp_path / f"rgba.{ext}"), rgba[..., [2, 1, 0, 3]])
    loaded = read_image(tmp_path / f"rgba.{ext}")
    assert (loaded.bit_depth, loaded.is_gray) == (16, False)
    np.testing.assert_array_equal(as_ints(loaded, 65535), rgba)
    gray = noise(6, 11, 1, 65535)
    Image.fromarray(gray[..., 0]).save(tmp_path / f"gray.{ext}")
    loaded = read_image(tmp_path / f"gray.{ext}")
    assert (loaded.bit_depth, loaded.is_gray) == (16, True)
    np.testing.assert_array_equal(as_ints(loaded, 65535), gray)


@pytest.mark.parametrize("ext", ["jpg", "webp", "bmp"])
def test_16_bit_falls_back_to_8_bit(tmp_path: Path, ext: str) -> None:
    path = write_image(tmp_path / f"a.{ext}", as_tensor(gradient(top=65535), 65535), bit_depth=16)
    loaded = read_image(path)
    assert loaded.bit_depth == 8
    error = np.abs(as_ints(loaded, 255).astype(int) - gradient())
    assert error.mean() < 3 and error.max() <= 12


def test_32_bit_int_and_float_gray(tmp_path: Path) -> None:
    ints = noise(4, 5, 1, 65535)[..., 0].astype(np.int32)
    Image.fromarray(ints, mode="I").save(tmp_path / "int.tif")
    loaded = read_image(tmp_path / "int.tif")
    assert (loaded.bit_depth, loaded.is_gray) == (16, True)
    np.testing.assert_array_equal(as_ints(loaded, 65535)[..., 0], ints)
    Image.fromarray(ints * 2 + 1, mode="I").save(tmp_path / "wide.tif")
    with pytest.raises(ImageError) as error:
        read_image(tmp_path / "wide.tif")
    assert_one_line_error(error, tmp_path / "wide.tif", "unsupported", "0..65535")
    floats = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    Image.fromarray(floats, mode="F").save(tmp_path / "float.tif")
    assert torch.equal(read_image(tmp_path / "float.tif").rgb[0], torch.from_numpy(floats))
    Image.fromarray(floats * 255, mode="F").save(tmp_path / "float255.tif")
    with pytest.raises(ImageError) as error:
        read_image(tmp_path / "float255.tif")
    assert_one_line_error(error, tmp_path / "float255.tif", "unsupported", "0..1")


# ----------------------------------------------------------------------------------------------------- alpha, gray, modes


def test_rgba_png_keeps_alpha(tmp_path: Path) -> None:
    pixels = noise(8, 9, 4, 255)
    loaded = read_image(save_pil(tmp_path / "rgba.png", pixels))
    assert loaded.alpha is not None and loaded.alpha.shape == (1, 8, 9)
    out = write_image(tmp_path / "out.png", loaded.rgb, loaded.alpha)
    with Image.open(out) as im:
        assert im.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(im), pixels)


@pytest.mark.parametrize("ext", ["jpg", "bmp"])
def test_alpha_is_dropped_where_the_format_cannot_hold_it(tmp_path: Path, ext: str) -> None:
    pixels = gradient(channels=4)
    path = write_image(
        tmp_path / f"a.{ext}", as_tensor(pixels[..., :3], 255), as_tensor(pixels[..., 3:], 255)
    )
    with Image.open(path) as im:
        assert im.mode == "RGB"
    assert read_image(path).alpha is None


def test_grayscale_stays_gray(tmp_path: Path) -> None:
    pixels = noise(6, 7, 1, 255)
    loaded = read_image(save_pil(tmp_path / "gray.png", pixels))
    assert loaded.is_gray and loaded.rgb.shape == (3, 6, 7)
    assert torch.equal(loaded.rgb[0], loaded.rgb[1]) and torch.equal(loaded.rgb[0], loaded.rgb[2])
    for ext, mode in [("png", "L"), ("jpg", "L"), ("bmp", "L"), ("tif", "L"), ("webp", "RGB")]:
        out = write_image(tmp_path / f"out.{ext}", loaded.rgb, is_gray=True)
        with Image.open(out) as im:
            assert im.mode == mode, ext
    with Image.open(tmp_path / "out.png") as im:
        np.testing.assert_array_equal(np.asarray(im), pixels[..., 0])


def test_gray_with_alpha_stays_gray(tmp_path: Path) -> None:
    pixels = noise(6, 7, 2, 255)
    loaded = read_image(save_pil(tmp_path / "la.png", pixels))
    assert loaded.is_gray and loaded.alpha is not None
    out = write_image(tmp_path / "out.png", loaded.rgb, loaded.alpha, is_gray=True)
    with Image.open(out) as im:
        assert im.mode == "LA"
        np.testing.assert_array_equal(np.asarray(im), pixels)


def test_palette_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    im = Image.new("P", (4, 3))
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((1, 1), 1)
    im.save(tmp_path / "p.png", transparency=0)
    loaded = read_image(tmp_path / "p.png")
    assert loaded.alpha is not None and not loaded.is_gray
    assert float(loaded.alpha[0, 0, 0]) == 0.0 and float(loaded.alpha[0, 1, 1]) == 1.0
    assert loaded.rgb[:, 1, 1].tolist() == [0.0, 1.0, 0.0]
    im.save(tmp_path / "opaque.png")
    assert read_image(tmp_path / "opaque.png").alpha is None


def test_one_bit_and_cmyk_are_converted(tmp_path: Path) -> None:
    Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "bits.png")
    loaded = read_image(tmp_path / "bits.png")
    assert loaded.is_gray and loaded.rgb[0].tolist() == np.eye(4).tolist()
    Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    loaded = read_image(tmp_path / "cmyk.jpg")
    assert loaded.rgb.shape == (3, 3, 4) and loaded.icc_profile is None
    red = loaded.rgb[:, 1, 1]
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1


def test_unsupported_mode_is_a_clear_error(tmp_path: Path) -> None:
    Image.new("LAB", (4, 3)).save(tmp_path / "lab.tif")
    with pytest.raises(ImageError) as error:
        read_image(tmp_path / "lab.tif")
    assert_one_line_error(error, tmp_path / "lab.tif", "unsupported", "lab")


# ----------------------------------------------------------------------------------------------------- metadata


def exif_with(orientation: int) -> bytes:
    """EXIF bytes holding an orientation and a camera maker."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "fluxsr-test"
    return exif.tobytes()


def test_exif_orientation_6_rotates_jpeg(tmp_path: Path) -> None:
    pixels = gradient(10, 16)
    save_pil(tmp_path / "rot.jpg", pixels, exif=exif_with(6), quality=98)
    loaded = read_image(tmp_path / "rot.jpg")
    assert loaded.rgb.shape == (3, 16, 10)
    with Image.open(tmp_path / "rot.jpg") as im:
        reference = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(as_ints(loaded, 255), reference)
    exif = Image.Exif()
    exif.load(loaded.exif)
    assert exif[0x0112] == 1 and exif[0x010F] == "fluxsr-test"
    out = write_image(tmp_path / "out.jpg", loaded.rgb, exif=loaded.exif)
    with Image.open(out) as im:
        assert im.size == (10, 16) and im.getexif()[0x0112] == 1 and im.getexif()[0x010F] == "fluxsr-test"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_orientations_match_pil(tmp_path: Path, orientation: int) -> None:
    pixels = noise(5, 7, 3, 255)
    save_pil(tmp_path / "o.png", pixels, exif=exif_with(orientation))
    with Image.open(tmp_path / "o.png") as im:
        reference = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(as_ints(read_image(tmp_path / "o.png"), 255), reference)
    np.testing.assert_array_equal(orient(pixels, orientation), reference)


def test_orientation_applies_to_16_bit_color(tmp_path: Path) -> None:
    pixels = noise(5, 7, 3, 65535)
    (tmp_path / "o.png").write_bytes(png16_bytes(pixels, None, exif_with(6)))
    loaded = read_image(tmp_path / "o.png")
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(as_ints(loaded, 65535), np.rot90(pixels, -1))


@pytest.mark.parametrize("ext", ["jpg", "png", "webp", "tif"])
def test_camera_exif_survives(tmp_path: Path, ext: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x0110] = "Model X"
    exif.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"
    save_pil(tmp_path / "cam.jpg", gradient(6, 8), exif=exif.tobytes())
    loaded = read_image(tmp_path / "cam.jpg")
    out = write_image(tmp_path / f"out.{ext}", loaded.rgb, exif=loaded.exif)
    with Image.open(out) as im:
        written = im.getexif()
        assert im.size == (6, 8) and written[0x0112] == 1 and written[0x0110] == "Model X"
        assert written.get_ifd(0x8769)[0x9003] == "2024:01:02 03:04:05"


def test_write_resets_orientation(tmp_path: Path) -> None:
    out = write_image(tmp_path / "a.png", torch.rand(3, 4, 5), exif=exif_with(8))
    with Image.open(out) as im:
        assert im.size == (5, 4) and im.getexif()[0x0112] == 1


@pytest.mark.parametrize(
    "ext,bits", [("png", 8), ("jpg", 8), ("webp", 8), ("tif", 8), ("png", 16), ("tif", 16)]
)
def test_icc_profile_is_kept(tmp_path: Path, ext: str, bits: int) -> None:
    save_pil(tmp_path / "src.png", gradient(), icc_profile=SRGB)
    loaded = read_image(tmp_path / "src.png")
    assert loaded.icc_profile == SRGB
    out = write_image(tmp_path / f"out.{ext}", loaded.rgb, bit_depth=bits, icc_profile=loaded.icc_profile)
    assert read_image(out).icc_profile == SRGB
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == SRGB


def test_rgb_profile_is_not_put_on_gray_pixels(tmp_path: Path) -> None:
    out = write_image(tmp_path / "g.png", torch.rand(1, 4, 5), is_gray=True, icc_profile=SRGB)
    with Image.open(out) as im:
        assert im.mode == "L" and "icc_profile" not in im.info


# ----------------------------------------------------------------------------------------------------- bad files


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path, "empty")


@pytest.mark.parametrize("ext", ["png", "jpg"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_file(tmp_path: Path, ext: str, keep: float) -> None:
    full = save_pil(
        tmp_path / f"full.{ext}", noise(40, 50, 3, 255), **({"quality": 90} if ext == "jpg" else {})
    )
    data = full.read_bytes()
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_text("this is not an image\n" * 10)
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path, "not an image")


def test_image_error_survives_pickling(tmp_path: Path) -> None:
    error = ImageError(tmp_path / "a.png", "bad\nthing")
    assert str(error) == f"{tmp_path / 'a.png'}: bad thing"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert str(ImageError(str(error))) == str(error)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as error:
        read_image(tmp_path / "nope.png")
    assert_one_line_error(error, tmp_path / "nope.png", "cannot read")
    with pytest.raises(ImageError) as error:
        read_image(tmp_path)
    assert_one_line_error(error, tmp_path, "folder")


def no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make any pixel decoding record itself; return the record."""
    calls: list[str] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: calls.append("load"))
    return calls


@pytest.mark.parametrize("max_pixels", [None, 5000])
def test_bomb_header_rejected_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_pixels: int | None
) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(fake_png(100_000, 100_000))
    calls = no_decoding(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(ImageError) as error:
        read_image(path, max_pixels=max_pixels)
    assert time.perf_counter() - start < 1.0
    assert calls == []
    # PIL refuses this header itself (past twice its limit); the message still names the cap in force
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    assert_one_line_error(error, path, "10000000000 pixels", f"limit of {limit} pixels")


def test_max_pixels_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_pil(tmp_path / "big.png", noise(100, 100, 3, 255))
    assert read_image(path, max_pixels=10_000).rgb.shape == (3, 100, 100)
    calls = no_decoding(monkeypatch)
    with pytest.raises(ImageError) as error:
        read_image(path, max_pixels=5000)
    assert calls == []
    assert_one_line_error(error, path, "100x100", "limit of 5000")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_default_cap_is_pil_max_image_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_pil(tmp_path / "a.png", noise(10, 10, 3, 255))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 99)
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path, "limit of 99")
    assert read_image(path, max_pixels=100).rgb.shape == (3, 10, 10)


# ----------------------------------------------------------------------------------------------------- writing safely


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_are_refused_and_nothing_is_written(tmp_path: Path, bad: float) -> None:
    rgb = torch.rand(3, 4, 5)
    rgb[1, 2, 3] = bad
    with pytest.raises(ImageError) as error:
        write_image(tmp_path / "a.png", rgb)
    assert_one_line_error(error, tmp_path / "a.png", "nan")
    alpha = torch.full((1, 4, 5), bad)
    with pytest.raises(ImageError):
        write_image(tmp_path / "b.png", torch.rand(3, 4, 5), alpha)
    assert list(tmp_path.iterdir()) == []


def test_values_are_clamped(tmp_path: Path) -> None:
    rgb = torch.tensor([-0.5, 0.5, 1.5]).reshape(3, 1, 1).expand(3, 2, 2)
    out = write_image(tmp_path / "c.png", rgb)
    with Image.open(out) as im:
        assert np.asarray(im)[0, 0].tolist() == [0, 128, 255]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_image(tmp_path / "a.png", torch.zeros(3, 4, 4))
    before = path.read_bytes()

    def crash(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half a file")
        raise RuntimeError("power cut")

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(RuntimeError):
        write_image(path, torch.ones(3, 4, 4))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_write_replaces_and_creates_folders(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "a.png"
    write_image(path, torch.zeros(3, 4, 4))
    write_image(path, torch.ones(3, 4, 4))
    assert float(read_image(path).rgb.min()) == 1.0
    assert [p.name for p in path.parent.iterdir()] == ["a.png"]


def test_bad_shapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError):
        write_image(tmp_path / "a.png", torch.zeros(2, 4, 4))
    with pytest.raises(ImageError):
        write_image(tmp_path / "a.png", torch.zeros(3, 4, 4), torch.zeros(1, 4, 5))


def test_quantize_rounds_half_to_even() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, 3.5, 254.5]) / 255
    halves = (x * 255).numpy()
    expected = np.round(halves).astype(np.uint8)  # numpy rounds half to even too
    assert quantize(x, 8).numpy().tolist() == expected.tolist()
    assert quantize(torch.tensor([0.5, 1.5, 2.5]) / 65535 * 65535 / 65535, 16).dtype == torch.uint16
    assert quantize(torch.tensor([-1.0, 2.0]), 8).tolist() == [0, 255]
    with pytest.raises(ValueError):
        quantize(torch.tensor([float("nan")]), 8)


# ----------------------------------------------------------------------------------------------------- finding and naming


def test_find_images_recursive_sorted_filtered(tmp_path: Path) -> None:
    for name in ["b.png", "a.JPG", "sub/c.webp", "sub/deeper/d.TIFF", "sub/e.bmp", "sub/f.jpeg", "g.tif"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    for name in ["notes.txt", "anim.gif", ".hidden.png", ".cache/h.png", "sub/.x.png.1a2b.tmp", "noext"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.JPG", "b.png", "g.tif", "sub/c.webp", "sub/deeper/d.TIFF", "sub/e.bmp", "sub/f.jpeg"]
    assert find_images(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "missing")


def test_scan_images_reports_what_it_cannot_read_and_searches_each_folder_once(tmp_path: Path) -> None:
    for name in ["a.png", "sub/b.jpg", "out/old.png", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "gone.jpg").symlink_to("nowhere.jpg")
    (tmp_path / "here").symlink_to(".")
    (tmp_path / "up").symlink_to("..")
    (tmp_path / "alias").symlink_to("sub")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "c.png").write_bytes(b"x")
    (tmp_path / "far").symlink_to(outside)
    scan = images.scan_images(tmp_path, exclude=tmp_path / "out")
    assert [p.relative_to(tmp_path).as_posix() for p in scan.images] == ["a.png", "far/c.png", "sub/b.jpg"]
    assert scan.ignored == [tmp_path / "notes.txt"]
    assert [(p.path.name, p.reason.split(" (")[0]) for p in scan.problems] == [
        ("gone.jpg", "broken symbolic link"),
        ("loop", "symbolic link loop"),
        ("pipe.png", "not a regular file"),
    ]
    assert sorted(n.split(":")[0] for n in scan.notes) == [str(tmp_path / n) for n in ("alias", "here", "up")]
    assert all("not followed" in n for n in scan.notes)
    # find_images keeps what is named like an image, for the reader to report (it never opens a pipe)
    assert find_images(tmp_path, exclude=tmp_path / "out") == sorted(
        scan.images + [tmp_path / "gone.jpg", tmp_path / "pipe.png"]
    )
    with pytest.raises(FileNotFoundError, match="named pipe"):
        find_images(tmp_path / "pipe.png")
    with pytest.raises(FileNotFoundError, match="broken symbolic link"):
        find_images(tmp_path / "gone.jpg")


def test_output_path(tmp_path: Path) -> None:
    root, out = Path("/in"), Path("/out")
    assert output_path(Path("/in/a/b/x.jpg"), root, out, "_sr", None) == Path("/out/a/b/x_sr.jpg")
    assert output_path(Path("/in/a/x.JPG"), root, out, "", "auto") == Path("/out/a/x.JPG")
    assert output_path(Path("/in/x.jpg"), root, out, "_sr", "png") == Path("/out/x_sr.png")
    assert output_path(Path("/in/x.jpg"), root, out, "_sr", ".webp") == Path("/out/x_sr.webp")
    assert output_path(Path("/in/x.jpg"), root, out, "_sr", "auto", has_alpha=True) == Path("/out/x_sr.png")
    assert output_path(Path("/in/x.bmp"), root, out, "", None, has_alpha=True) == Path("/out/x.png")
    assert output_path(Path("/in/x.webp"), root, out, "", None, has_alpha=True) == Path("/out/x.webp")
    assert output_path(Path("/in/x.jpg"), root, out, "", "jpg", has_alpha=True) == Path("/out/x.jpg")
    assert output_path(Path("/in/one.png"), Path("/in/one.png"), out, "_x4", None) == Path("/out/one_x4.png")
    with pytest.raises(ValueError):
        output_path(Path("/elsewhere/x.png"), root, out, "", None)
    with pytest.raises(ValueError):
        output_path(Path("/in/x.png"), root, out, "", "gif")


# ----------------------------------------------------------------------------------------------------- resizing


def test_target_size() -> None:
    assert target_size(5, 7, scale=2.5) == (13, 18)
    assert target_size(100, 40, scale=2.5) == (250, 100)
    assert target_size(50, 200, long_side=100) == (25, 100)
    assert target_size(201, 67, long_side=100) == (100, 33)
    assert target_size(3, 1000, long_side=10) == (1, 10)
    assert target_size(5, 7) == (5, 7)
    assert target_size(2, 2, scale=0.01) == (1, 1)
    for bad in [
        dict(scale=0),
        dict(scale=-1.0),
        dict(scale=float("nan")),
        dict(long_side=0),
        dict(scale=2, long_side=4),
    ]:
        with pytest.raises(ValueError):
            target_size(5, 7, **bad)


def test_resize_shapes_and_clamp() -> None:
    image = torch.rand(3, 8, 10)
    assert resize(image, (20, 25)).shape == (3, 20, 25)
    assert resize(image[None].repeat(2, 1, 1, 1), (4, 5)).shape == (2, 3, 4, 5)
    sharp = torch.zeros(1, 8, 8)
    sharp[:, :, 4:] = 1
    up = resize(sharp, (32, 32))
    assert float(up.min()) == 0.0 and float(up.max()) == 1.0  # bicubic overshoot is clamped
    assert resize(sharp, (16, 16), mode="nearest").unique().tolist() == [0.0, 1.0]
    with pytest.raises(ValueError):
        resize(torch.rand(8, 8), (4, 4))


def test_resize_antialiases_downscale_only() -> None:
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]).remainder(2).float()[None]
    smooth = resize(checker, (4, 4))
    assert torch.allclose(smooth, torch.full_like(smooth, 0.5), atol=0.01)
    interpolate = torch.nn.functional.interpolate
    image = torch.rand(1, 3, 12, 12)
    for antialias in (True, False):
        expected = interpolate(image, size=(5, 7), mode="bicubic", antialias=antialias).clamp(0, 1)
        assert torch.equal(resize(image, (5, 7), antialias=antialias), expected)
    assert not torch.equal(resize(image, (5, 7)), resize(image, (5, 7), antialias=False))
    plain = interpolate(image, size=(24, 24), mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.equal(resize(image, (24, 24)), plain)


def test_read_image_checks_the_size_from_the_header_before_decoding(tmp_path, monkeypatch):
    """``check_size`` sees the header's (height, width) and can refuse before a single pixel is decoded (the output
    cap of an upscale: a huge input is refused without holding it in memory)."""
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    seen = []

    def refuse(h, w):
        seen.append((h, w))
        raise ValueError("output too large")

    def no_decoding(self, *a, **k):
        raise AssertionError("decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with pytest.raises(ImageError, match="a.png: output too large"):
        read_image(tmp_path / "a.png", check_size=refuse)
    assert seen == [(30, 40)]
