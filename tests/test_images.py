"""Decoding odd and broken files: RGB out, or a clear ImageDecodeError naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fusionfeat.data.images import Preprocess, dihedral_views, read_rgb, to_square
from fusionfeat.errors import FusionfeatError, ImageDecodeError


def test_modes_become_rgb(tmp_path):
    gray16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    Image.fromarray(gray16).save(tmp_path / "g16.tif")
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :15, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.tif")
    Image.fromarray(rgba[..., 0]).convert("P").save(tmp_path / "p.png")
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "g.jpg")
    for name in ("g16.tif", "rgba.tif", "p.png", "g.jpg"):
        image, digest = read_rgb(str(tmp_path / name))
        assert image.mode == "RGB" and len(digest) == 64
    g16, _ = read_rgb(str(tmp_path / "g16.tif"))
    assert np.asarray(g16).max() > 200  # scaled from 16 bits, not clipped to white or black
    rgba_rgb = np.asarray(read_rgb(str(tmp_path / "rgba.tif"), fill=(0, 0, 0))[0])
    assert rgba_rgb[0, 0].tolist() == [255, 0, 0] and rgba_rgb[0, -1].tolist() == [0, 0, 0]


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"this is not a bitmap", "not an image"),
])
def test_non_images(tmp_path, content, reason):
    path = tmp_path / "x.bmp"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason) as info:
        read_rgb(str(path))
    assert info.value.path == str(path)


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        read_rgb(str(tmp_path / "cut.jpg"))


def test_missing_file_is_decode_error(tmp_path):
    with pytest.raises(ImageDecodeError, match="No such file"):
        read_rgb(str(tmp_path / "nope.png"))


def test_pad_to_square_then_resize_keeps_aspect(tmp_path):
    image = Image.fromarray(np.full((50, 100, 3), 255, np.uint8))
    square = np.asarray(to_square(image, 40, (0, 0, 0)))
    assert square.shape == (40, 40, 3)
    assert square[0, 20].tolist() == [0, 0, 0] and square[20, 20].tolist() == [255, 255, 255]
    assert (square[:, :, 0] == 255).sum() == 40 * 20


def test_preprocess_views(tmp_path):
    array = np.zeros((32, 32, 3), np.uint8)
    array[0, 0] = 255  # a marked corner shows where each view moved it
    Image.fromarray(array).save(tmp_path / "a.png")
    views, _ = Preprocess(input_size=32, views="dihedral8").load(str(tmp_path / "a.png"))
    assert views.shape == (8, 3, 32, 32) and views.dtype == torch.uint8
    assert torch.equal(views[0], torch.from_numpy(array).permute(2, 0, 1))
    corners = {tuple((v[0] == 255).nonzero()[0].tolist()) for v in views}
    assert len(corners) == 4  # each corner reached twice (rotation, and rotation of the mirror)
    assert len({v.numpy().tobytes() for v in dihedral_views(torch.arange(9).view(1, 3, 3))}) == 8


@pytest.mark.parametrize("kwargs", [{"input_size": 8}, {"normalize": "zscore"}, {"views": "4"}, {"fill": (300, 0, 0)}])
def test_bad_preprocess_options(kwargs):
    with pytest.raises(FusionfeatError):
        Preprocess(**kwargs)
