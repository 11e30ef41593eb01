"""Renditions: sizes, orientation, colour modes, hostile input and atomic writes."""

from __future__ import annotations

import logging
import pickle
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageStat, JpegImagePlugin, UnidentifiedImageError

from jobtrack.errors import ImageError, InvalidRequest
from jobtrack.pipeline.imaging import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, Rendition, render

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


# -- helpers -----------------------------------------------------------------


def halves(
    size: tuple[int, int], left: tuple[int, ...], right: tuple[int, ...], mode: str
) -> Image.Image:
    """An image whose left half is ``left`` and right half is ``right``."""
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def save(image: Image.Image, path: Path, **params: Any) -> Path:
    """Save ``image`` to ``path`` and return the path."""
    image.save(path, **params)
    return path


def mean_colour(
    path: Path, box: tuple[float, float, float, float] = (0, 0, 1, 1)
) -> tuple[int, ...]:
    """Mean RGB of the part of the image at ``path`` given in fractions of its size."""
    with Image.open(path) as image:
        w, h = image.size
        crop = image.crop(
            (round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h))
        )
        return tuple(round(v) for v in ImageStat.Stat(crop).mean)


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> bool:
    """Whether every channel of ``actual`` is within ``tolerance`` of ``expected``."""
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def output_dir(tmp_path: Path) -> Path:
    """An empty folder to render into."""
    out = tmp_path / "out"
    out.mkdir()
    return out


def assert_nothing_written(folder: Path) -> None:
    """No rendition and no temporary file left behind."""
    assert sorted(p.name for p in folder.iterdir()) == []


@pytest.fixture(scope="module")
def photo_4000(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4000x3000 JPEG: the size of a 12 MP camera photo."""
    path = tmp_path_factory.mktemp("photo") / "landscape.jpg"
    gradient = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    return save(gradient, path, quality=90)


# -- public constants ----------------------------------------------------------


def test_suffixes_and_limit() -> None:
    expected = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"}
    assert frozenset(expected) == IMAGE_SUFFIXES
    assert DEFAULT_MAX_PIXELS == 64_000_000


def test_render_and_rendition_pickle() -> None:
    # Both cross the boundary of a ProcessPoolExecutor.
    assert pickle.loads(pickle.dumps(render)) is render
    rendition = Rendition(width=300, height=225, size_bytes=1234)
    assert pickle.loads(pickle.dumps(rendition)) == rendition


# -- sizes ---------------------------------------------------------------------


@pytest.mark.parametrize(("max_edge", "expected"), [(300, (300, 225)), (1920, (1920, 1440))])
def test_camera_photo_sizes(
    photo_4000: Path, tmp_path: Path, max_edge: int, expected: tuple[int, int]
) -> None:
    destination = tmp_path / "out.jpg"
    rendition = render(photo_4000, destination, max_edge=max_edge)
    assert (rendition.width, rendition.height) == expected
    assert rendition.size_bytes == destination.stat().st_size
    with Image.open(destination) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", expected)


@pytest.mark.parametrize(
    ("size", "max_edge", "expected"),
    [
        ((3000, 4000), 300, (225, 300)),  # portrait
        ((1000, 333), 300, (300, 100)),  # 99.9 rounds to 100
        ((640, 480), 1920, (640, 480)),  # never upscaled
        ((300, 200), 300, (300, 200)),  # already exactly the size
        ((5000, 10), 300, (300, 1)),  # never collapses to zero
    ],
)
def test_sizes(
    tmp_path: Path, size: tuple[int, int], max_edge: int, expected: tuple[int, int]
) -> None:
    source = save(Image.new("RGB", size, RED), tmp_path / "in.jpg")
    rendition = render(source, tmp_path / "out.jpg", max_edge=max_edge)
    assert (rendition.width, rendition.height) == expected


def test_jpeg_draft_is_aspect_correct(
    photo_4000: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str | None, tuple[int, int] | None]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(
        self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None
    ) -> tuple[str, tuple[int, int, float, float]] | None:
        calls.append((mode, size))
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    render(photo_4000, tmp_path / "cache.jpg", max_edge=1920)
    render(photo_4000, tmp_path / "thumb.jpg", max_edge=300)
    # (1920, 1920) would make the decoder skip scaling: 3000 // 1920 == 1.
    assert calls == [("RGB", (1920, 1440)), ("RGB", (300, 225))]


def test_output_is_baseline_jpeg_without_exif(tmp_path: Path) -> None:
    source = save(Image.new("RGB", (800, 600), RED), tmp_path / "in.png")
    destination = tmp_path / "out.jpg"
    render(source, destination, max_edge=300, quality=70)
    with Image.open(destination) as image:
        assert "progressive" not in image.info
        assert "progression" not in image.info
        assert dict(image.getexif()) == {}


def test_quality_changes_the_file(photo_4000: Path, tmp_path: Path) -> None:
    low = render(photo_4000, tmp_path / "low.jpg", max_edge=300, quality=30)
    high = render(photo_4000, tmp_path / "high.jpg", max_edge=300, quality=95)
    assert low.size_bytes < high.size_bytes


# -- orientation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "expected_size", "red_box"),
    [
        (1, (200, 100), (0, 0, 0.5, 1)),  # left half
        (3, (200, 100), (0.5, 0, 1, 1)),  # turned over: red on the right
        (6, (100, 200), (0, 0, 1, 0.5)),  # stored left edge is the top
        (8, (100, 200), (0, 0.5, 1, 1)),  # stored left edge is the bottom
    ],
)
def test_exif_orientation(
    tmp_path: Path,
    orientation: int,
    expected_size: tuple[int, int],
    red_box: tuple[float, float, float, float],
) -> None:
    stored = halves((400, 200), RED, BLUE, "RGB")
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    source = save(stored, tmp_path / "in.jpg", exif=exif, quality=95)
    destination = tmp_path / "out.jpg"

    rendition = render(source, destination, max_edge=200)

    assert (rendition.width, rendition.height) == expected_size
    assert close_to(mean_colour(destination, red_box), RED, tolerance=12)


def test_orientation_from_tiff_tag(tmp_path: Path) -> None:
    # TIFF keeps orientation in its own tags, not in an EXIF block.
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    source = save(halves((400, 200), RED, BLUE, "RGB"), tmp_path / "in.tif", exif=exif)
    destination = tmp_path / "out.jpg"
    rendition = render(source, destination, max_edge=200)
    assert (rendition.width, rendition.height) == (100, 200)
    assert close_to(mean_colour(destination, (0, 0, 1, 0.5)), RED, tolerance=12)


# -- colour modes ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["cmyk.jpg", "cmyk.tif"])
def test_cmyk(tmp_path: Path, name: str) -> None:
    source = save(Image.new("CMYK", (600, 400), (0, 255, 255, 0)), tmp_path / name)
    destination = tmp_path / "out.jpg"
    rendition = render(source, destination, max_edge=300)
    assert (rendition.width, rendition.height) == (300, 200)
    with Image.open(destination) as image:
        assert image.mode == "RGB"
    assert close_to(mean_colour(destination), RED)


@pytest.mark.parametrize(("name", "mode"), [("gray16.png", "I;16"), ("gray16.tif", "I;16B")])
def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path, name: str, mode: str) -> None:
    # Left to right 0..255 in 8 bits, i.e. 0..65535 in 16 bits.
    eight = Image.linear_gradient("L").rotate(90).resize((512, 256))
    sixteen = eight.convert("I").point(lambda v: v * 257).convert(mode)
    source = save(sixteen, tmp_path / name)
    with Image.open(source) as check:
        assert check.mode == mode
    destination = tmp_path / "out.jpg"

    rendition = render(source, destination, max_edge=256)

    assert (rendition.width, rendition.height) == (256, 128)
    expected = round(ImageStat.Stat(eight).mean[0])
    actual = mean_colour(destination)
    assert close_to(actual, (expected, expected, expected), tolerance=3)
    # Darkest and brightest columns survive: nothing collapsed to one value.
    assert mean_colour(destination, (0, 0, 0.1, 1))[0] < 30
    assert mean_colour(destination, (0.9, 0, 1, 1))[0] > 225


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (128, 0), (25_900, 101), (65_535, 255)])
def test_sixteen_bit_levels_round_to_nearest(tmp_path: Path, value: int, expected: int) -> None:
    source = save(Image.new("I;16", (64, 64), value), tmp_path / "flat16.png")
    destination = tmp_path / "out.jpg"
    render(source, destination, max_edge=64)
    assert mean_colour(destination) == (expected, expected, expected)


def test_palette_with_transparency_is_flattened_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (400, 200), 0)
    image.putpalette([0, 0, 0, *RED])
    image.paste(1, (200, 0, 400, 200))
    source = save(image, tmp_path / "in.png", transparency=0)
    destination = tmp_path / "out.jpg"
    rendition = render(source, destination, max_edge=200)
    assert (rendition.width, rendition.height) == (200, 100)
    assert close_to(mean_colour(destination, (0, 0, 0.45, 1)), WHITE)
    assert close_to(mean_colour(destination, (0.55, 0, 1, 1)), RED)


@pytest.mark.parametrize(
    ("mode", "clear", "solid", "expected"),
    [
        ("RGBA", (0, 0, 0, 0), (*BLUE, 255), BLUE),
        ("LA", (0, 0), (0, 255), (0, 0, 0)),
    ],
)
def test_alpha_is_flattened_on_white(
    tmp_path: Path,
    mode: str,
    clear: tuple[int, ...],
    solid: tuple[int, ...],
    expected: tuple[int, int, int],
) -> None:
    source = save(halves((400, 200), clear, solid, mode), tmp_path / "in.png")
    destination = tmp_path / "out.jpg"
    render(source, destination, max_edge=200)
    with Image.open(destination) as image:
        assert image.mode == "RGB"
    # Transparent black must come out white, not black.
    assert close_to(mean_colour(destination, (0, 0, 0.45, 1)), WHITE)
    assert close_to(mean_colour(destination, (0.55, 0, 1, 1)), expected)


@pytest.mark.parametrize("name", ["anim.gif", "anim.webp"])
def test_animation_uses_first_frame(tmp_path: Path, name: str) -> None:
    frames = [Image.new("RGB", (300, 200), colour) for colour in (RED, BLUE, (0, 255, 0))]
    source = save(
        frames[0], tmp_path / name, save_all=True, append_images=frames[1:], duration=100, loop=0
    )
    with Image.open(source) as check:
        assert getattr(check, "n_frames", 1) == 3
    destination = tmp_path / "out.jpg"
    rendition = render(source, destination, max_edge=150)
    assert (rendition.width, rendition.height) == (150, 100)
    assert close_to(mean_colour(destination), RED, tolerance=10)


def test_animated_gif_with_transparency(tmp_path: Path) -> None:
    frames = [halves((300, 200), (0, 0, 0, 0), (*colour, 255), "RGBA") for colour in (RED, BLUE)]
    source = save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with Image.open(source) as check:
        assert (check.mode, "transparency" in check.info) == ("P", True)
    destination = tmp_path / "out.jpg"
    render(source, destination, max_edge=300)
    assert close_to(mean_colour(destination, (0, 0, 0.45, 1)), WHITE)
    assert close_to(mean_colour(destination, (0.55, 0, 1, 1)), RED, tolerance=10)


@pytest.mark.parametrize(("mode", "name"), [("1", "bw.bmp"), ("L", "gray.jpg"), ("RGB", "in.bmp")])
def test_other_modes_become_rgb(tmp_path: Path, mode: str, name: str) -> None:
    source = save(Image.new(mode, (600, 300), 1 if mode == "1" else 255), tmp_path / name)
    destination = tmp_path / "out.jpg"
    render(source, destination, max_edge=300)
    with Image.open(destination) as image:
        assert (image.mode, image.size) == ("RGB", (300, 150))


# -- hostile and broken input ----------------------------------------------------


def test_corrupt_bytes(tmp_path: Path) -> None:
    source = tmp_path / "garbage.jpg"
    source.write_bytes(b"\x00\x01 definitely not an image " * 100)
    out = output_dir(tmp_path)
    with pytest.raises(ImageError) as caught:
        render(source, out / "garbage.jpg", max_edge=300)
    message = str(caught.value)
    assert message == "cannot render garbage.jpg: not an image, or an image format we do not read"
    assert str(tmp_path) not in message
    assert isinstance(caught.value.__cause__, UnidentifiedImageError)
    assert_nothing_written(out)


def test_truncated_jpeg(photo_4000: Path, tmp_path: Path) -> None:
    data = photo_4000.read_bytes()
    source = tmp_path / "half.jpg"
    source.write_bytes(data[: len(data) // 2])
    out = output_dir(tmp_path)
    for max_edge in (300, 1920, 5000):  # scaled drafts and a full decode
        with pytest.raises(ImageError, match=r"^cannot render half\.jpg: image file is truncated"):
            render(source, out / "half.jpg", max_edge=max_edge)
    assert_nothing_written(out)


def test_header_only_jpeg(tmp_path: Path) -> None:
    source = tmp_path / "stub.jpg"
    source.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
    out = output_dir(tmp_path)
    with pytest.raises(ImageError, match=r"^cannot render stub\.jpg: "):
        render(source, out / "stub.jpg", max_edge=300)
    assert_nothing_written(out)


def test_pillow_bomb_error_becomes_image_error(tmp_path: Path) -> None:
    # 900 MP: beyond twice Pillow's MAX_IMAGE_PIXELS, so Pillow itself refuses.
    source = tmp_path / "bomb.png"
    source.write_bytes(png_claiming(30_000, 30_000))
    out = output_dir(tmp_path)
    with pytest.raises(ImageError, match=r"^cannot render bomb\.png: .*decompression bomb"):
        render(source, out / "bomb.jpg", max_edge=300)
    assert_nothing_written(out)


@pytest.mark.parametrize(("width", "height"), [(9_000, 9_000), (10_000, 10_000)])
def test_our_limit_refuses_before_decoding(tmp_path: Path, width: int, height: int) -> None:
    # 81 MP is over our 64 MP but under Pillow's limits; 100 MP also makes
    # Pillow warn, and that warning must not escape.
    source = tmp_path / "bomb.png"
    source.write_bytes(png_claiming(width, height))
    out = output_dir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError) as caught:
            render(source, out / "bomb.jpg", max_edge=300)
    assert str(caught.value) == (
        f"cannot render bomb.png: {width}x{height} pixels exceeds the limit of "
        "64000000 pixels (possible decompression bomb)"
    )
    assert_nothing_written(out)


def test_pillow_warning_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = tmp_path / "bomb.png"
    source.write_bytes(png_claiming(10_000, 10_000))
    with (
        caplog.at_level(logging.INFO, logger="jobtrack.pipeline.imaging"),
        pytest.raises(ImageError),
    ):
        render(source, tmp_path / "bomb.jpg", max_edge=300)
    assert [record.getMessage()[:24] for record in caplog.records] == ["bomb.png: Image size (10"]


def test_max_pixels_parameter(tmp_path: Path) -> None:
    # Genuinely 3 MP but only a few hundred bytes on disk.
    source = save(Image.new("RGB", (2000, 1500), RED), tmp_path / "flat.png")
    out = output_dir(tmp_path)
    with pytest.raises(ImageError, match=r"2000x1500 pixels exceeds the limit of 2999999 pixels"):
        render(source, out / "flat.jpg", max_edge=300, max_pixels=2_999_999)
    assert_nothing_written(out)
    rendition = render(source, out / "flat.jpg", max_edge=300, max_pixels=3_000_000)
    assert (rendition.width, rendition.height) == (300, 225)


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as caught:
        render(tmp_path / "nowhere.jpg", tmp_path / "out.jpg", max_edge=300)
    assert str(caught.value) == "cannot render nowhere.jpg: no such file or directory"
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    assert not (tmp_path / "out.jpg").exists()


def test_directory_as_source(tmp_path: Path) -> None:
    folder = tmp_path / "album.jpg"
    folder.mkdir()
    with pytest.raises(ImageError, match=r"^cannot render album\.jpg: is a directory$"):
        render(folder, tmp_path / "out.jpg", max_edge=300)


def test_format_we_do_not_read(tmp_path: Path) -> None:
    # A valid image, but not one of IMAGE_SUFFIXES' formats, even when misnamed.
    source = save(Image.new("RGB", (100, 100), RED), tmp_path / "in.jpg", format="PCX")
    with pytest.raises(ImageError, match="format we do not read"):
        render(source, tmp_path / "out.jpg", max_edge=300)


@pytest.mark.parametrize(
    "options",
    [
        {"max_edge": 0},
        {"max_edge": 300, "quality": 0},
        {"max_edge": 300, "quality": 101},
        {"max_edge": 300, "max_pixels": 0},
    ],
)
def test_invalid_options(tmp_path: Path, options: dict[str, int]) -> None:
    source = save(Image.new("RGB", (10, 10)), tmp_path / "in.png")
    with pytest.raises(InvalidRequest):
        render(source, tmp_path / "out.jpg", **options)


# -- writing ---------------------------------------------------------------------


def test_creates_missing_folders(tmp_path: Path) -> None:
    source = save(Image.new("RGB", (100, 50), RED), tmp_path / "in.png")
    destination = tmp_path / "a" / "b" / "c.jpg"
    render(source, destination, max_edge=300)
    assert sorted(p.name for p in destination.parent.iterdir()) == ["c.jpg"]


def test_replaces_existing_rendition(tmp_path: Path) -> None:
    source = save(Image.new("RGB", (100, 50), RED), tmp_path / "in.png")
    destination = tmp_path / "out.jpg"
    destination.write_bytes(b"old")
    rendition = render(source, destination, max_edge=300)
    assert destination.stat().st_size == rendition.size_bytes
    assert destination.read_bytes()[:2] == b"\xff\xd8"


def failing_save(after_bytes: int) -> Callable[..., None]:
    """A stand-in for Image.save that writes some bytes and then fails."""

    def save_partially(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        fp.write(b"\xff\xd8" + bytes(after_bytes))
        raise OSError(28, "No space left on device")

    return save_partially


def test_failed_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = save(Image.new("RGB", (100, 50), RED), tmp_path / "in.png")
    out = output_dir(tmp_path)
    destination = out / "out.jpg"
    destination.write_bytes(b"previous rendition")
    monkeypatch.setattr(Image.Image, "save", failing_save(1000))
    # A full disk is not the image's fault: it is not reported as ImageError.
    with pytest.raises(OSError, match="No space left on device"):
        render(source, destination, max_edge=300)
    assert sorted(p.name for p in out.iterdir()) == ["out.jpg"]
    assert destination.read_bytes() == b"previous rendition"
