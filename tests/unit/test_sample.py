"""The sample collection: exact counts, determinism, and variety of content."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageStat

from jobtrack.errors import ImageError, InvalidRequest
from jobtrack.pipeline.imaging import IMAGE_SUFFIXES, render
from jobtrack.pipeline.sample import SampleManifest, generate_sample


def small_sample(directory: Path, *, seed: int = 7) -> SampleManifest:
    """Sixteen files of at most 0.5 MP: every kind of file, generated quickly."""
    return generate_sample(directory, count=16, seed=seed, max_megapixels=0.5)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleManifest:
    """A small collection, shared by the read-only tests of this module."""
    return small_sample(tmp_path_factory.mktemp("sample"))


def describe(path: Path) -> tuple[str | None, str, int]:
    """Format, mode and frame count of the image at ``path``."""
    with Image.open(path) as image:
        return image.format, image.mode, getattr(image, "n_frames", 1)


def orientation_of(path: Path) -> int | None:
    """The EXIF orientation stored in the file at ``path``, if any."""
    with Image.open(path) as image:
        value = image.getexif().get(ExifTags.Base.Orientation)
    return value if isinstance(value, int) else None


def relative_files(root: Path) -> list[str]:
    """Every file under ``root``, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# -- counts and layout ---------------------------------------------------------


def test_counts(sample: SampleManifest) -> None:
    assert (len(sample.images), len(sample.broken), len(sample.others)) == (14, 2, 2)
    assert len(sample.candidates) == 16
    assert len(sample.files) == 18


def test_manifest_lists_exactly_the_files_written(sample: SampleManifest) -> None:
    listed = sorted(p.relative_to(sample.root).as_posix() for p in sample.files)
    assert relative_files(sample.root) == listed


def test_suffixes_tell_images_from_others(sample: SampleManifest) -> None:
    assert all(p.suffix.lower() in IMAGE_SUFFIXES for p in sample.candidates)
    assert all(p.suffix.lower() not in IMAGE_SUFFIXES for p in sample.others)
    assert sorted(p.relative_to(sample.root).as_posix() for p in sample.others) == [
        "2023/.DS_Store",
        "notes.txt",
    ]


def test_spread_over_nested_folders(sample: SampleManifest) -> None:
    folders = {p.parent.relative_to(sample.root).as_posix() for p in sample.candidates}
    assert folders == {".", "2023", "2023/summer", "family/archive"}


# -- content -----------------------------------------------------------------------


def test_every_good_image_decodes_within_the_size_limit(sample: SampleManifest) -> None:
    for path in sample.images:
        with Image.open(path) as image:
            image.load()
            assert image.width * image.height <= 500_000, path.name


def test_formats_and_modes(sample: SampleManifest) -> None:
    kinds = Counter(describe(path) for path in sample.images)
    assert {fmt for fmt, _, _ in kinds} == {"JPEG", "PNG", "WEBP", "GIF", "TIFF"}
    assert kinds[("PNG", "RGBA", 1)] == 2
    assert kinds[("PNG", "I;16", 1)] == 1
    assert kinds[("TIFF", "CMYK", 1)] == 1
    assert kinds[("GIF", "P", 3)] == 2
    assert kinds[("WEBP", "RGBA", 3)] == 1
    assert sum(n for (fmt, _, _), n in kinds.items() if fmt == "JPEG") >= 5


def test_animated_gifs_have_transparency(sample: SampleManifest) -> None:
    gifs = [p for p in sample.images if p.suffix == ".gif"]
    assert len(gifs) == 2
    for path in gifs:
        with Image.open(path) as image:
            assert "transparency" in image.info


def test_largest_images_are_at_the_maximum(sample: SampleManifest) -> None:
    sizes = set()
    for path in sample.images:
        with Image.open(path) as image:
            sizes.add(image.size)
    # 0.5 MP at 4:3, landscape and portrait: isqrt(666_666) == 816.
    assert {(816, 612), (612, 816)} <= sizes
    assert any(w > h for w, h in sizes)
    assert any(w < h for w, h in sizes)


def test_exif_orientations(sample: SampleManifest) -> None:
    orientations = sorted(o for p in sample.images if (o := orientation_of(p)) is not None)
    assert orientations == [3, 6, 8]


def test_oriented_photos_render_sky_up(sample: SampleManifest, tmp_path: Path) -> None:
    oriented = [p for p in sample.images if orientation_of(p) is not None]
    for path in oriented:
        destination = tmp_path / f"{path.stem}.jpg"
        render(path, destination, max_edge=200)
        with Image.open(destination) as image:
            w, h = image.size
            top = ImageStat.Stat(image.crop((0, 0, w, h // 4)).convert("L")).mean[0]
            bottom = ImageStat.Stat(image.crop((0, 3 * h // 4, w, h)).convert("L")).mean[0]
        assert top > bottom + 20, path.name


def test_photos_compress_like_photos(sample: SampleManifest) -> None:
    # Grain keeps JPEGs well above the size of flat colour, below raw pixels.
    for path in sample.images:
        if describe(path)[0] != "JPEG":
            continue
        with Image.open(path) as image:
            bytes_per_pixel = path.stat().st_size / (image.width * image.height)
        assert 0.05 < bytes_per_pixel < 1.5, path.name


def test_every_good_image_renders(sample: SampleManifest, tmp_path: Path) -> None:
    for index, path in enumerate(sample.images):
        rendition = render(path, tmp_path / f"{index}.jpg", max_edge=300)
        assert max(rendition.width, rendition.height) == 300, path.name


def test_broken_files_fail_to_render(sample: SampleManifest, tmp_path: Path) -> None:
    reasons = []
    for path in sample.broken:
        with pytest.raises(ImageError) as caught:
            render(path, tmp_path / "out.jpg", max_edge=300)
        reasons.append(str(caught.value).split(": ", 1)[1])
    assert sorted(r.split(" (")[0] for r in reasons) == [
        "image file is truncated",
        "not an image, or an image format we do not read",
    ]
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_is_half_a_jpeg(sample: SampleManifest) -> None:
    truncated = [p for p in sample.broken if p.read_bytes()[:2] == b"\xff\xd8"]
    assert len(truncated) == 1
    assert truncated[0].read_bytes()[-2:] != b"\xff\xd9"  # no end-of-image marker


# -- determinism -------------------------------------------------------------------


def test_same_seed_same_bytes(sample: SampleManifest, tmp_path: Path) -> None:
    again = small_sample(tmp_path)
    assert relative_files(tmp_path) == relative_files(sample.root)
    for first, second in zip(sample.files, again.files, strict=True):
        assert first.read_bytes() == second.read_bytes(), first.name


def test_other_seed_other_pictures(sample: SampleManifest, tmp_path: Path) -> None:
    other = small_sample(tmp_path, seed=8)
    assert len(other.candidates) == 16
    first = {p.read_bytes() for p in sample.images}
    assert first.isdisjoint(p.read_bytes() for p in other.images)


# -- arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(("count", "broken"), [(1, 0), (1, 1), (3, 3), (5, 4)])
def test_small_collections(tmp_path: Path, count: int, broken: int) -> None:
    manifest = generate_sample(tmp_path, count=count, broken=broken, max_megapixels=0.1)
    assert (len(manifest.images), len(manifest.broken)) == (count - broken, broken)


def test_more_broken_files_alternate(tmp_path: Path) -> None:
    manifest = generate_sample(tmp_path, count=6, broken=5, max_megapixels=0.1)
    starts = Counter(p.read_bytes()[:2] for p in manifest.broken)
    assert starts == Counter({b"\xff\xd8": 3, b"\x00\x00": 2})


@pytest.mark.parametrize(
    "options",
    [
        {"count": 0},
        {"count": 1, "broken": 2},
        {"count": 5, "broken": -1},
        {"count": 5, "max_megapixels": 0.0},
        {"count": 5, "max_megapixels": math.nan},
    ],
)
def test_invalid_arguments(tmp_path: Path, options: dict[str, float]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        generate_sample(tmp_path / "never", **options)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_defaults(tmp_path: Path) -> None:
    manifest = generate_sample(tmp_path)
    assert (len(manifest.images), len(manifest.broken), len(manifest.others)) == (198, 2, 2)
    sizes = []
    for path in manifest.images:
        with Image.open(path) as image:
            sizes.append(image.size)
    assert max(w * h for w, h in sizes) == 12_000_000
    assert {(4000, 3000), (3000, 4000)} <= set(sizes)
    assert min(w * h for w, h in sizes) >= 290_000
    formats = Counter(describe(p)[0] for p in manifest.images)
    assert set(formats) == {"JPEG", "PNG", "WEBP", "GIF", "TIFF"}
    assert formats["JPEG"] > sum(formats.values()) // 2
