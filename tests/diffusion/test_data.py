import numpy as np
import pytest
from PIL import Image

from diffusion.data import DataError, center_crop_resize, channel_stats, load_images


def test_folder_images_are_center_cropped_and_resized(tmp_path):
    wide = np.zeros((40, 80, 3), dtype=np.uint8)
    wide[:, 20:60] = 255  # the centre square is white, the sides black
    Image.fromarray(wide).save(tmp_path / "a.png")
    Image.fromarray(np.full((30, 30, 3), 90, dtype=np.uint8)).save(tmp_path / "b.jpg", quality=100)
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_images(tmp_path, 16)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert images[0].min() >= 250  # only the white centre survives the crop
    assert abs(int(images[1].mean()) - 90) <= 2


def test_transparent_images_go_on_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert center_crop_resize(rgba, 8).min() == 255


def test_npz_and_errors(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", train=arr, heldout=arr[:1])
    assert np.array_equal(load_images(tmp_path / "d.npz", 8), arr)
    with pytest.raises(DataError, match="not 16x16"):
        load_images(tmp_path / "d.npz", 16)
    np.savez(tmp_path / "f.npz", train=arr.astype(np.float32))
    with pytest.raises(DataError, match="uint8"):
        load_images(tmp_path / "f.npz", 8)
    with pytest.raises(DataError, match="no such file"):
        load_images(tmp_path / "missing", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no readable images"):
        load_images(tmp_path / "empty", 8)


def test_channel_stats():
    images = np.zeros((2, 2, 2, 3), dtype=np.uint8)
    images[0, ..., 0] = 255
    mean, std = channel_stats(images)
    assert mean == pytest.approx([0.5, 0.0, 0.0])
    assert std == pytest.approx([0.5, 0.0, 0.0])
