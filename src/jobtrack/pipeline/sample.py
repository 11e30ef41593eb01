"""A deterministic sample photo collection for the demo and the tests.

The collection mimics a real folder of photos closely enough to exercise every
path of the image pipeline: mostly JPEG with some PNG, WebP, GIF and TIFF;
sizes from a fraction of a megapixel up to the camera maximum; portrait and
landscape; EXIF orientation tags; transparency, palettes, CMYK and 16-bit
grayscale; a few broken files; and non-image files a scanner must skip.

Pictures are painted at thumbnail size with Pillow's C primitives (gradients,
shapes, blur) and resized up, then get fine grain so that they compress like
photographs. Nothing loops over pixels in Python, so 200 images take seconds.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

try:
    from PIL import ExifTags, Image, ImageChops, ImageDraw, ImageFilter, ImageOps
except ModuleNotFoundError as exc:  # Pillow is the ``images`` extra
    raise ModuleNotFoundError(
        "the sample collection needs Pillow: pip install 'jobtrack[images]'", name=exc.name
    ) from exc

from jobtrack.errors import InvalidRequest

__all__ = ["SampleManifest", "generate_sample"]

logger = logging.getLogger(__name__)

_MIN_MEGAPIXELS = 0.3
_SMALLEST_MAXIMUM = 0.01
_FOLDERS = ("", "2023", "2023/summer", "family/archive")
_ASPECTS = ((4, 3), (3, 2), (16, 9), (1, 1))
_CANVAS_EDGE = 320  # painting size; resized up to the final size afterwards
_NOISE_TILE = 256
_NOISE_AMPLITUDE = 9  # +/- levels of grain: enough to look and compress like a photo
_PORTRAIT_SHARE = 0.3
_RADIAL_RIM = 74  # inverted radial gradient's value at the middle of an edge

# Kinds that every collection gets, in priority order so that even a small
# collection has every format; the rest is filled with ordinary photos.
_SPECIAL_KINDS = (
    "jpeg_max",
    "png_rgba",
    "webp",
    "gif_animated",
    "tiff_cmyk",
    "png16",
    "jpeg_exif6",
    "jpeg_exif3",
    "jpeg_exif8",
    "jpeg_max_portrait",
    "gif_animated",
    "webp_animated",
    "png_rgba",
)
_FILL_KINDS = (("jpeg", 0.77), ("jpeg_max", 0.03), ("png", 0.1), ("webp", 0.1))
_BROKEN_KINDS = ("broken_truncated", "broken_garbage")

# Formats that are slow to encode, or that phones never write large, stay small.
_MEGAPIXEL_CAPS = {
    "png": 2.0,
    "png_rgba": 1.0,
    "png16": 0.5,
    "webp": 1.5,
    "webp_animated": 0.3,
    "gif_animated": 0.3,
    "tiff_cmyk": 0.5,
    "broken_truncated": 1.0,
    "broken_garbage": 1.0,
}

# Every other kind is a JPEG, or pretends to be one.
_SUFFIXES = {
    "png": ".png",
    "png_rgba": ".png",
    "png16": ".png",
    "webp": ".webp",
    "webp_animated": ".webp",
    "gif_animated": ".gif",
    "tiff_cmyk": ".tif",
}

# How a camera stores an upright picture for each EXIF orientation: the
# inverse of the transpose a viewer applies when displaying it.
_STORED_AS = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}

_OTHER_FILES = {
    "notes.txt": b"Holiday photos, sorted by year.\nAsk before sharing.\n",
    # Shaped like the Finder's metadata file: binary, and no image suffix.
    "2023/.DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(2036),
}


@dataclass(frozen=True, slots=True)
class SampleManifest:
    """What :func:`generate_sample` wrote under ``root``.

    ``images`` open and render; ``broken`` carry image names but fail to
    decode; ``others`` are non-image files a scanner must skip.
    """

    root: Path
    images: tuple[Path, ...]
    broken: tuple[Path, ...]
    others: tuple[Path, ...]

    @property
    def candidates(self) -> tuple[Path, ...]:
        """Every file with an image suffix: what a scanner should pick up."""
        return tuple(sorted(self.images + self.broken))

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file written, image or not."""
        return tuple(sorted(self.images + self.broken + self.others))


@dataclass(frozen=True, slots=True)
class _Item:
    kind: str
    relative: PurePosixPath
    size: tuple[int, int]  # as displayed, after any EXIF orientation


def generate_sample(
    directory: Path,
    *,
    count: int = 200,
    seed: int = 0,
    broken: int = 2,
    max_megapixels: float = 12.0,
) -> SampleManifest:
    """Write a sample photo collection of ``count`` image files under ``directory``.

    ``broken`` of them are undecodable (alternately a JPEG cut in half and
    garbage with a ``.jpg`` name); the others are valid images of at most
    ``max_megapixels`` (4000x3000 at 12). A few non-image files are added on top
    of ``count``. The same arguments always produce the same names and bytes;
    files already present under those names are overwritten.

    Raises:
        InvalidRequest: ``count`` is below 1 or below ``broken``, ``broken`` is
            negative, or ``max_megapixels`` is below 0.01.
    """
    _check_options(count=count, broken=broken, max_megapixels=max_megapixels)
    items = _plan(count=count, seed=seed, broken=broken, max_megapixels=max_megapixels)
    noise = _noise_field(items, seed=seed)
    images: list[Path] = []
    broken_paths: list[Path] = []
    for index, item in enumerate(items):
        path = directory.joinpath(item.relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        _WRITERS[item.kind](path, item.size, random.Random(f"{seed}/{index}"), noise)
        (broken_paths if item.kind in _BROKEN_KINDS else images).append(path)
    others = _write_others(directory)
    logger.debug("wrote %d sample images under %s", len(items), directory)
    return SampleManifest(
        root=directory,
        images=tuple(sorted(images)),
        broken=tuple(sorted(broken_paths)),
        others=others,
    )


def _check_options(*, count: int, broken: int, max_megapixels: float) -> None:
    if count < 1:
        raise InvalidRequest(f"count must be at least 1, not {count}")
    if broken < 0:
        raise InvalidRequest(f"broken must not be negative, not {broken}")
    if count < broken:
        raise InvalidRequest(f"count ({count}) must be at least broken ({broken})")
    if not max_megapixels >= _SMALLEST_MAXIMUM:
        raise InvalidRequest(
            f"max_megapixels must be at least {_SMALLEST_MAXIMUM}, not {max_megapixels}"
        )


def _plan(*, count: int, seed: int, broken: int, max_megapixels: float) -> list[_Item]:
    """Decide every file's kind, name, folder and size before painting any."""
    rng = random.Random(seed)
    good = count - broken
    kinds = list(_SPECIAL_KINDS[:good])
    fill_names = [name for name, _ in _FILL_KINDS]
    fill_weights = [weight for _, weight in _FILL_KINDS]
    kinds += rng.choices(fill_names, fill_weights, k=good - len(kinds))
    kinds += [_BROKEN_KINDS[n % len(_BROKEN_KINDS)] for n in range(broken)]
    rng.shuffle(kinds)
    return [
        _Item(
            kind=kind,
            relative=PurePosixPath(_FOLDERS[index % len(_FOLDERS)], _file_name(index, kind, rng)),
            size=_size_for(kind, rng, max_megapixels),
        )
        for index, kind in enumerate(kinds)
    ]


def _file_name(index: int, kind: str, rng: random.Random) -> str:
    suffix = _SUFFIXES.get(kind)
    if suffix is None:
        # Cameras disagree on the spelling; scanners must not care.
        suffix = rng.choices((".jpg", ".jpeg", ".JPG"), (0.85, 0.1, 0.05))[0]
    return f"IMG_{index + 1:04d}{suffix}"


def _size_for(kind: str, rng: random.Random, max_megapixels: float) -> tuple[int, int]:
    """The displayed size of one picture: log-uniform area, a common aspect ratio."""
    if kind in ("jpeg_max", "jpeg_max_portrait"):
        return _dimensions(max_megapixels, (4, 3), portrait=kind == "jpeg_max_portrait")
    cap = min(max_megapixels, _MEGAPIXEL_CAPS.get(kind, max_megapixels))
    low = min(_MIN_MEGAPIXELS, cap)
    megapixels = math.exp(rng.uniform(math.log(low), math.log(cap)))
    aspect = rng.choice(_ASPECTS)
    # Phones store portrait shots as landscape pixels plus a 6 or 8 orientation.
    portrait = kind in ("jpeg_exif6", "jpeg_exif8") or rng.random() < _PORTRAIT_SHARE
    return _dimensions(megapixels, aspect, portrait=portrait)


def _dimensions(megapixels: float, aspect: tuple[int, int], *, portrait: bool) -> tuple[int, int]:
    across, down = aspect
    # Integer square root keeps width * height within the budget, and gives
    # exactly 4000x3000 for 12 MP at 4:3.
    width = max(1, math.isqrt(int(megapixels * 1_000_000 * across / down)))
    height = max(1, width * down // across)
    return (height, width) if portrait else (width, height)


def _noise_field(items: list[_Item], *, seed: int) -> Image.Image:
    """Grain large enough for every picture, tiled from one small random tile."""
    width = max((item.size[0] for item in items), default=1)
    height = max((item.size[1] for item in items), default=1)
    rng = random.Random(f"{seed}/noise")
    raw = Image.frombytes("RGB", (_NOISE_TILE, _NOISE_TILE), rng.randbytes(_NOISE_TILE**2 * 3))
    low = 128 - _NOISE_AMPLITUDE
    tile = raw.point(lambda value: low + value * 2 * _NOISE_AMPLITUDE // 255)
    field = Image.new("RGB", (width, height))
    for left in range(0, width, _NOISE_TILE):
        for top in range(0, height, _NOISE_TILE):
            field.paste(tile, (left, top))
    return field


def _photo(size: tuple[int, int], rng: random.Random, noise: Image.Image) -> Image.Image:
    """A landscape-like RGB picture: bright sky above, darker ground below."""
    picture = _scene(size, rng).resize(size, Image.Resampling.BILINEAR)
    grain = noise.crop((0, 0, *size))
    return ImageChops.add(picture, grain, scale=1.0, offset=-128)


def _scene(size: tuple[int, int], rng: random.Random) -> Image.Image:
    scale = _CANVAS_EDGE / max(size)
    width, height = max(8, round(size[0] * scale)), max(8, round(size[1] * scale))
    horizon = round(height * rng.uniform(0.45, 0.65))
    gradient = Image.linear_gradient("L")
    sky = ImageOps.colorize(
        gradient.resize((width, horizon)), black=_colour(rng, 90, 160), white=_colour(rng, 205, 250)
    )
    ground = ImageOps.colorize(
        gradient.resize((width, height - horizon)),
        black=_colour(rng, 70, 130),
        white=_colour(rng, 15, 55),
    )
    canvas = Image.new("RGB", (width, height))
    canvas.paste(sky, (0, 0))
    canvas.paste(ground, (0, horizon))
    _paint_sun(canvas, rng, horizon)
    _paint_shapes(canvas, rng, horizon)
    return canvas.filter(ImageFilter.GaussianBlur(1.2))


def _colour(rng: random.Random, low: int, high: int) -> tuple[int, int, int]:
    return rng.randint(low, high), rng.randint(low, high), rng.randint(low, high)


def _paint_sun(canvas: Image.Image, rng: random.Random, horizon: int) -> None:
    diameter = max(4, round(horizon * rng.uniform(0.3, 0.7)))
    glow = _soft_disc(steepness=2).resize((diameter, diameter))
    left = rng.randint(0, max(0, canvas.width - diameter))
    top = rng.randint(0, max(0, horizon - diameter))
    canvas.paste(_colour(rng, 235, 255), (left, top, left + diameter, top + diameter), glow)


def _soft_disc(*, steepness: int) -> Image.Image:
    """A 256x256 mask: opaque centre, fading to nothing at the middle of each edge."""
    # Pillow's radial gradient reaches 255 in the corners, not at the edges:
    # inverted, it is still 74 mid-edge, which would show the square's outline.
    inverted = ImageOps.invert(Image.radial_gradient("L"))
    return inverted.point(lambda value: max(0, min(255, (value - _RADIAL_RIM) * steepness)))


def _paint_shapes(canvas: Image.Image, rng: random.Random, horizon: int) -> None:
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    hills = [(0, horizon)]
    hills += [(x, horizon - rng.randint(0, max(1, horizon // 4))) for x in range(0, width + 40, 40)]
    hills += [(width, height), (0, height)]
    draw.polygon(hills, fill=_colour(rng, 40, 100))
    for _ in range(rng.randint(3, 8)):
        # Trees, rocks and people stay below the horizon so the sky stays
        # bright: tests rely on "up" being the lighter half of the picture.
        x = rng.randint(0, width)
        y = rng.randint(horizon, height)
        r = rng.randint(3, max(4, height // 8))
        shape = draw.ellipse if rng.random() < 0.6 else draw.rectangle
        shape((x - r, y - r, x + r, y + r // 2), fill=_colour(rng, 10, 90))


# -- writers: one per kind ---------------------------------------------------


def _write_jpeg(
    path: Path,
    size: tuple[int, int],
    rng: random.Random,
    noise: Image.Image,
    *,
    orientation: int | None = None,
) -> None:
    picture = _photo(size, rng, noise)
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "jobtrack"
    exif[ExifTags.Base.Model] = "sample camera"
    if orientation is not None:
        picture = picture.transpose(_STORED_AS[orientation])
        exif[ExifTags.Base.Orientation] = orientation
    picture.save(path, "JPEG", quality=rng.choice((85, 90, 92)), exif=exif)


def _orientated_writer(orientation: int) -> _Writer:
    def write(path: Path, size: tuple[int, int], rng: random.Random, noise: Image.Image) -> None:
        _write_jpeg(path, size, rng, noise, orientation=orientation)

    return write


def _write_png(path: Path, size: tuple[int, int], rng: random.Random, noise: Image.Image) -> None:
    # Level 1: noisy pixels barely compress better at higher levels, only slower.
    _photo(size, rng, noise).save(path, "PNG", compress_level=1)


def _write_png_rgba(
    path: Path, size: tuple[int, int], rng: random.Random, noise: Image.Image
) -> None:
    picture = _photo(size, rng, noise)
    # A soft-edged cut-out: opaque middle, fully transparent edges and corners.
    picture.putalpha(_soft_disc(steepness=3).resize(size, Image.Resampling.BICUBIC))
    picture.save(path, "PNG", compress_level=1)


def _write_png16(path: Path, size: tuple[int, int], rng: random.Random, noise: Image.Image) -> None:
    gray = _photo(size, rng, noise).convert("L")
    # Pillow writes I;16 as a 16-bit grayscale PNG; * 257 spans 0..65535.
    sixteen = gray.convert("I").point(lambda value: value * 257).convert("I;16")
    sixteen.save(path, "PNG", compress_level=1)


def _write_webp(path: Path, size: tuple[int, int], rng: random.Random, noise: Image.Image) -> None:
    _photo(size, rng, noise).save(path, "WEBP", quality=80, method=0)


def _frames(
    size: tuple[int, int], rng: random.Random, noise: Image.Image, *, transparent: bool
) -> list[Image.Image]:
    """Three frames of a ball crossing the picture; optionally a transparent corner."""
    base = _photo(size, rng, noise).convert("RGBA" if transparent else "RGB")
    width, height = size
    radius = max(2, min(size) // 8)
    frames = []
    for step in range(3):
        frame = base.copy()
        draw = ImageDraw.Draw(frame)
        x = (step + 1) * width // 4
        draw.ellipse((x - radius, height // 2 - radius, x + radius, height // 2 + radius), "red")
        if transparent:
            draw.rectangle((0, 0, width // 5, height // 5), fill=(0, 0, 0, 0))
        frames.append(frame)
    return frames


def _write_gif_animated(
    path: Path, size: tuple[int, int], rng: random.Random, noise: Image.Image
) -> None:
    # Pillow quantizes RGBA frames to a palette with a transparent index.
    first, *rest = _frames(size, rng, noise, transparent=True)
    first.save(path, "GIF", save_all=True, append_images=rest, duration=120, loop=0, disposal=2)


def _write_webp_animated(
    path: Path, size: tuple[int, int], rng: random.Random, noise: Image.Image
) -> None:
    first, *rest = _frames(size, rng, noise, transparent=False)
    first.save(path, "WEBP", save_all=True, append_images=rest, duration=120, quality=80, method=0)


def _write_tiff_cmyk(
    path: Path, size: tuple[int, int], rng: random.Random, noise: Image.Image
) -> None:
    _photo(size, rng, noise).convert("CMYK").save(path, "TIFF")


def _write_truncated(
    path: Path, size: tuple[int, int], rng: random.Random, noise: Image.Image
) -> None:
    _write_jpeg(path, size, rng, noise)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_garbage(
    path: Path, size: tuple[int, int], rng: random.Random, noise: Image.Image
) -> None:
    del size, noise  # unused: same signature as every writer
    # Leading zero bytes match no image signature, whatever the random tail holds.
    path.write_bytes(bytes(4) + rng.randbytes(rng.randint(2_000, 20_000)))


def _write_others(directory: Path) -> tuple[Path, ...]:
    paths = []
    for relative, content in _OTHER_FILES.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        paths.append(path)
    return tuple(sorted(paths))


_Writer = Callable[[Path, tuple[int, int], random.Random, Image.Image], None]

_WRITERS: dict[str, _Writer] = {
    "jpeg": _write_jpeg,
    "jpeg_max": _write_jpeg,
    "jpeg_max_portrait": _write_jpeg,
    "jpeg_exif3": _orientated_writer(3),
    "jpeg_exif6": _orientated_writer(6),
    "jpeg_exif8": _orientated_writer(8),
    "png": _write_png,
    "png_rgba": _write_png_rgba,
    "png16": _write_png16,
    "webp": _write_webp,
    "webp_animated": _write_webp_animated,
    "gif_animated": _write_gif_animated,
    "tiff_cmyk": _write_tiff_cmyk,
    "broken_truncated": _write_truncated,
    "broken_garbage": _write_garbage,
}
