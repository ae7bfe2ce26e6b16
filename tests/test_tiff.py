"""TIFF input through tifffile: BigTIFF pyramids and the chosen level, codecs, sample layouts, the pixel limit
checked from the level's tags before decoding, and a pyramid level predicted end to end."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import cli, read_png

from segensemble.errors import ImageError
from segensemble.formats.images import ReadOptions, read_image

tifffile = pytest.importorskip("tifffile")


def _pyramid(path, image: np.ndarray, levels: int = 3, compression: str = "zlib") -> list[np.ndarray]:
    """A tiled BigTIFF pyramid (SubIFDs, as OME and whole-slide writers store it); returns each level's pixels."""
    pixels = [image[:: 2 ** k, :: 2 ** k] for k in range(levels)]
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(pixels[0], tile=(64, 64), subifds=levels - 1, compression=compression, photometric="rgb")
        for level in pixels[1:]:
            tw.write(level, tile=(64, 64), subfiletype=1, compression=compression, photometric="rgb")
    return pixels


@pytest.mark.parametrize("compression", ["zlib", "lzw", "jpeg"])
def test_every_level_of_a_bigtiff_pyramid_reads_as_written(tmp_path, compression):
    y, x = np.mgrid[0:300, 0:500]
    image = np.stack([y * 255 // 299, x * 255 // 499, (x + y) * 255 // 798], axis=2).astype(np.uint8)  # smooth at every level
    pixels = _pyramid(tmp_path / "slide.tif", image, compression=compression)
    assert (tmp_path / "slide.tif").read_bytes()[:4] == b"II+\x00"  # BigTIFF
    for level, want in enumerate(pixels):
        got = read_image(tmp_path / "slide.tif", tiff_level=level)
        assert got.shape == want.shape and got.dtype == np.uint8
        if compression == "jpeg":  # lossy: close, not equal
            assert np.abs(got.astype(int) - want).mean() < 3  # garbage would be ~80
        else:
            assert (got == want).all()


def test_a_missing_level_and_the_pixel_limit_are_refused_from_the_tags(tmp_path):
    _pyramid(tmp_path / "slide.tif", np.zeros((300, 500, 3), np.uint8))
    with pytest.raises(ImageError, match=r"slide.tif: --tiff-level 3: this TIFF has 3 level\(s\), 0..2"):
        read_image(tmp_path / "slide.tif", tiff_level=3)
    with pytest.raises(ImageError, match=r"500x300 = 150000 pixels \(level 0\) exceeds the limit of 100000"):
        read_image(tmp_path / "slide.tif", max_pixels=100_000)
    seen = []
    assert read_image(tmp_path / "slide.tif", max_pixels=100_000, tiff_level=1, admit=seen.append).shape == (150, 250, 3)
    assert seen == [(150, 250)]
    assert ReadOptions(tiff_level=2).size(tmp_path / "slide.tif") == (75, 125)


def test_sample_layouts_follow_the_png_rules(tmp_path):
    rng = np.random.default_rng(1)
    grey16 = rng.integers(0, 65535, (40, 60), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "grey16.tif", grey16)
    assert (read_image(tmp_path / "grey16.tif") == np.repeat((grey16 >> 8).astype(np.uint8)[..., None], 3, 2)).all()
    rgb = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    assert (read_image(tmp_path / "planar.tif") == rgb).all()
    rgba = np.concatenate([rgb, np.full((40, 60, 1), 7, np.uint8)], axis=2)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert (read_image(tmp_path / "rgba.tif") == rgb).all()
    tifffile.imwrite(tmp_path / "float.tif", rgb.astype(np.float32))
    with pytest.raises(ImageError, match="float32 TIFF samples are not supported"):
        read_image(tmp_path / "float.tif")


def test_orientation_and_palette_equal_pillows_reading(tmp_path):
    from PIL import Image, ImageOps

    rgb = np.random.default_rng(2).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    for orientation in (3, 6, 8):
        path = tmp_path / f"o{orientation}.tif"
        tifffile.imwrite(path, rgb, photometric="rgb", extratags=[(274, "H", 1, orientation, True)])
        with Image.open(path) as img:
            want = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        assert (read_image(path) == want).all(), orientation
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.tif")
    with Image.open(tmp_path / "p.tif") as img:
        want = np.asarray(img.convert("RGB"))
    assert (read_image(tmp_path / "p.tif") == want).all()


def test_predict_reads_the_chosen_level(built, tmp_path):
    from segensemble.synthetic.data import smooth_image

    images = tmp_path / "slides"
    images.mkdir()
    _pyramid(images / "slide.tif", smooth_image((160, 224), 4), levels=2)
    out = tmp_path / "out"
    result = cli("predict", images, "--build", built["dir"], "-o", out / "sub.csv", "--tiff-level", 1, "--save-masks", out / "masks", "--quiet")
    assert result.returncode == 0, result.stderr
    assert read_png(out / "masks" / "slide.tif.png").shape == (80, 112)
    result = cli("predict", images, "--build", built["dir"], "-o", tmp_path / "o2.csv", "--tiff-level", 2, "--quiet")
    assert result.returncode != 0 and "this TIFF has 2 level(s)" in result.stderr
