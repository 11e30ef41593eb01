"""Image operations of the reference application: thumbnails and display copies.

Everything here is a module-level function taking plain, picklable arguments,
because renditions are produced in worker processes.

Decoding is done with Pillow, in a fixed order chosen for speed and safety:

1. open the file (headers only) and refuse decompression bombs before any
   pixel is decoded;
2. ask the JPEG decoder for a DCT-scaled draft no smaller than the target, so a
   12 MP photo is decoded at 1/2 to 1/8 of its size;
3. apply the EXIF orientation, convert to a mode that resizes correctly,
   downscale, flatten transparency onto white;
4. write a baseline JPEG to a temporary file next to the destination and
   rename it into place, so readers never see a partial rendition.

A writer killed mid-write leaves its temporary file behind:
:func:`sweep_temporaries` removes those. The writer holds an exclusive
``flock`` on its temporary file until it is renamed, and the kernel drops
the lock when the writer dies, however it dies; the sweep removes only
temporaries older than a bound *and* not locked. The lock alone would do on
one host; the age bound covers what it cannot (the instant between creating
the file and locking it, and network filesystems whose locks other hosts do
not see), the way ``git gc`` prunes only temporary objects past an age.
A writer's pid in the name would not do: pids are reused, and mean nothing
on another host or in another pid namespace sharing the data folder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import struct
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from jobtrack.errors import ImageError, InvalidRequest

if TYPE_CHECKING:
    from PIL import Image

# Pillow is the ``images`` extra: it is imported when an image is rendered,
# not when this module is, so the core installs and starts without it.

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "STALE_TEMPORARY_AGE",
    "Rendition",
    "render",
    "sweep_temporaries",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"}
)
"""Lower-case file suffixes treated as images."""

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest width * height accepted; 12 MP photos are ordinary input."""

# Only the decoders for the suffixes above. Restricting the list keeps hostile
# input away from rarely exercised decoders and from plugins that shell out.
# "JPEG" also opens the multi-picture (MPO) files many phones write; naming
# "MPO" here would make Pillow fail, as it has no opener of its own.
_PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")

# What Pillow raises for corrupt, truncated, hostile or unsupported input
# (and its DecompressionBombError, named where Pillow is imported).
_DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    struct.error,
)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255)
# 65535 / 257 == 255: maps the full 16-bit range onto the full 8-bit range.
_SIXTEEN_TO_EIGHT = 257
_REDUCING_GAP = 3.0
_MAX_QUALITY = 100

STALE_TEMPORARY_AGE = 600.0
"""Seconds after its last write that an unlocked temporary file is debris: a
rendition is written in well under a second."""

# ".<destination name>.<12 hex digits>.tmp", as _save_atomically names them.
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


@dataclass(frozen=True, slots=True)
class Rendition:
    """A rendition written to disk: its pixel size and its file size."""

    width: int
    height: int
    size_bytes: int


def render(
    source: Path | BinaryIO,
    destination: Path,
    *,
    max_edge: int,
    quality: int = 85,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Rendition:
    """Write a JPEG copy of ``source`` whose longest edge is at most ``max_edge``.

    ``source`` is a path, or a file already opened in binary mode (the caller
    then owns it; errors name it by its ``name`` attribute when that is a path).

    Images are never upscaled. The EXIF orientation is applied, transparency is
    flattened onto white and only the first frame of an animation is used. The
    destination's folder is created if missing; the file appears atomically.

    Pillow's own decompression-bomb guard stays active, so the effective limit
    is the smaller of ``max_pixels`` and twice ``PIL.Image.MAX_IMAGE_PIXELS``.

    Raises:
        ImageError: the source is missing, unreadable, corrupt, truncated, in a
            format we do not read, or larger than ``max_pixels``; or Pillow,
            the ``images`` extra, is not installed.
        InvalidRequest: ``max_edge``, ``quality`` or ``max_pixels`` is out of range.
        OSError: the destination cannot be written; no partial file remains.
    """
    _check_options(max_edge=max_edge, quality=quality, max_pixels=max_pixels)
    label = _label(source)
    if find_spec("PIL") is None:
        raise ImageError(
            f"cannot render {label.name}: rendering needs Pillow, which is not installed: "
            "pip install 'jobtrack[images]'"
        )
    from PIL import Image  # noqa: PLC0415

    with _decoding(label):
        opened = Image.open(source, formats=_PILLOW_FORMATS)
    with opened:
        with _decoding(label):
            image = _prepare(opened, label.name, max_edge=max_edge, max_pixels=max_pixels)
        size_bytes = _save_atomically(image, destination, quality=quality)
    return Rendition(width=image.width, height=image.height, size_bytes=size_bytes)


def _label(source: Path | BinaryIO) -> Path:
    """The path errors and logs name the source by."""
    if isinstance(source, Path):
        return source
    name = getattr(source, "name", None)
    return Path(name) if isinstance(name, str) else Path("image")


def _check_options(*, max_edge: int, quality: int, max_pixels: int) -> None:
    if max_edge < 1:
        raise InvalidRequest(f"max_edge must be at least 1, not {max_edge}")
    if not 1 <= quality <= _MAX_QUALITY:
        raise InvalidRequest(f"quality must be between 1 and {_MAX_QUALITY}, not {quality}")
    if max_pixels < 1:
        raise InvalidRequest(f"max_pixels must be at least 1, not {max_pixels}")


@contextmanager
def _decoding(source: Path) -> Iterator[None]:
    """Turn decoder failures into ImageError and Pillow warnings into log records."""
    # catch_warnings swaps process-global state; that is safe here because a
    # worker process renders one image at a time. Recording (rather than
    # raising) means no warning escapes, whatever the caller's filters are;
    # our own pixel limit is what refuses bombs.
    from PIL import Image  # noqa: PLC0415

    errors: tuple[type[Exception], ...] = (*_DECODE_ERRORS, Image.DecompressionBombError)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except errors as exc:
            raise ImageError(f"cannot render {source.name}: {_reason(exc, source)}") from exc
        finally:
            for warning in caught:
                logger.info("%s: %s", source.name, warning.message)


def _reason(exc: Exception, source: Path) -> str:
    """One line explaining ``exc`` that names the file but not its folder."""
    from PIL import UnidentifiedImageError  # noqa: PLC0415

    if isinstance(exc, UnidentifiedImageError):
        return "not an image, or an image format we do not read"
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).replace(str(source), source.name)
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return first_line or type(exc).__name__


def _prepare(image: Image.Image, name: str, *, max_edge: int, max_pixels: int) -> Image.Image:
    """Decode ``image`` once and return it upright, RGB, at most ``max_edge``."""
    from PIL import Image, ImageOps  # noqa: PLC0415

    _refuse_bomb(image, name, max_pixels=max_pixels)
    stored_target = _fit(image.size, max_edge)
    if stored_target != image.size:
        # Only JPEG honours draft; the size must be aspect-correct because the
        # decoder picks a scale that fits within *both* dimensions.
        image.draft("RGB", stored_target)
    image.load()
    decoded_size = image.size
    # In place: the non-in-place variant copies even when there is nothing to do.
    ImageOps.exif_transpose(image, in_place=True)
    turned = image.size != decoded_size
    target = (stored_target[1], stored_target[0]) if turned else stored_target
    working = _resizable(image)
    if working.size != target:
        working = working.resize(target, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)
    return _to_rgb(working)


def _refuse_bomb(image: Image.Image, name: str, *, max_pixels: int) -> None:
    # Checked on the header's size, before a single pixel is decoded.
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"cannot render {name}: {width}x{height} pixels exceeds the limit "
            f"of {max_pixels} pixels (possible decompression bomb)"
        )


def _fit(size: tuple[int, int], max_edge: int) -> tuple[int, int]:
    """The size with the same aspect whose longest edge is ``max_edge``; never larger."""
    width, height = size
    longest = max(width, height)
    if longest <= max_edge:
        return size
    scale = max_edge / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resizable(image: Image.Image) -> Image.Image:
    """``image`` in L, RGB or RGBA: modes that resize with a real filter.

    Palette images would resize with nearest-neighbour only, and 16-bit
    grayscale would clip to white when converted, so both are converted first.
    """
    if image.mode.startswith("I"):
        return _sixteen_bit_to_l(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return image.convert("RGBA")
    if image.mode in ("L", "RGB"):
        return image
    if image.mode == "1":
        return image.convert("L")
    return image.convert("RGB")


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """Scale 16-bit grayscale (and I, which decoders use for it) to 8 bits."""
    # Pillow's I;16 -> L conversion clips every value above 255 to white, so
    # scale first. point() takes the fast linear path only for I and native
    # I;16, and truncates: adding a half rounds to the nearest level instead.
    if image.mode not in ("I", "I;16"):
        image = image.convert("I")
    return image.point(lambda value: value / _SIXTEEN_TO_EIGHT + 0.5).convert("L")


def _to_rgb(image: Image.Image) -> Image.Image:
    from PIL import Image  # noqa: PLC0415

    if image.mode == "RGBA":
        # Flattened after the resize: cheaper, and compositing over a solid
        # colour commutes with resampling premultiplied pixels.
        flat = Image.new("RGB", image.size, _WHITE)
        flat.paste(image, (0, 0), image)  # an RGBA mask means its alpha channel
        return flat
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _save_atomically(image: Image.Image, destination: Path, *, quality: int) -> int:
    """Write ``image`` as JPEG to ``destination`` via a temporary file; return its size."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    # A dot-prefixed ``.tmp`` name is never mistaken for an image by a scanner.
    temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    # 0o666 lets the umask decide the final permissions, as for any new file.
    descriptor = os.open(temporary, flags, 0o666)
    try:
        # Held until the file is renamed and closed: a sweep leaves it alone.
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        with os.fdopen(descriptor, "wb") as stream:
            image.save(stream, format="JPEG", quality=quality, optimize=False, progressive=False)
            stream.flush()
            # The caller records the rendition as done once we return: after a
            # crash the renamed file must hold the data, not zero bytes.
            os.fsync(stream.fileno())
            size_bytes = stream.tell()
            # Renamed while the lock is held (closing the file releases it):
            # until then a sweep finds a live writer, never a stale file.
            os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return size_bytes


def sweep_temporaries(folder: Path, *, older_than: float = STALE_TEMPORARY_AGE) -> int:
    """Remove the temporary files that writers killed mid-write left in
    ``folder``: those not written for ``older_than`` seconds whose lock no
    writer holds. Returns how many were removed; a missing folder has none.

    Never raises for one file (it is left for the next sweep and logged).

    Raises:
        OSError: ``folder`` cannot be listed (other than missing).
    """
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for entry in entries:
        if not _TEMPORARY.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff and _remove_unlocked(entry.path):
                removed += 1
        except OSError as exc:
            logger.warning(
                "cannot sweep %s: %s", entry.path, exc, extra={"action": "cleanup_failed"}
            )
    return removed


def _remove_unlocked(path: str) -> bool:
    """Unlink ``path`` if no writer holds its lock; False when one does, or
    when the name no longer holds the file opened (renamed meanwhile)."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer
        try:
            if os.stat(path, follow_symlinks=False).st_ino != os.fstat(descriptor).st_ino:
                return False
        except FileNotFoundError:
            return False  # renamed into place by its writer just now
        os.unlink(path)  # under our lock: no writer can take this file now
        return True
    finally:
        os.close(descriptor)
