import csv

import numpy as np
import pytest
import torch

from diffusion.train import RunError, TrainConfig, train


@pytest.fixture
def blobs(tmp_path):
    """A small synthetic data set: coloured discs on white, 16x16."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    images = np.full((48, 16, 16, 3), 255, dtype=np.uint8)
    for img in images:
        cy, cx, r = rng.integers(5, 11), rng.integers(5, 11), rng.integers(3, 6)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(0, 200, 3)
    path = tmp_path / "blobs.npz"
    np.savez(path, train=images)
    return path


def tiny_cfg(data, steps, **kw):
    kw = {"checkpoint_every": 10, "sample_every": 0, **kw}
    return TrainConfig(data=str(data), steps=steps, image_size=16, batch_size=16, widths=(8, 16), block_depth=1, **kw)


def losses(run_dir):
    with (run_dir / "loss.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_its_run(tmp_path, blobs):
    run = tmp_path / "run"
    train(tiny_cfg(blobs, 120, sample_every=60), run, progress=False)
    curve = losses(run)
    assert len(curve) == 120
    assert np.mean(curve[-20:]) < 0.8 * np.mean(curve[:20])
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000060.png", "step_0000120.png"]
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    assert payload["step"] == 120 and set(payload) >= {"model", "ema", "optimizer", "rng", "torch_rng"}


def test_resume_is_bit_identical_to_a_straight_run(tmp_path, blobs):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_cfg(blobs, 30), straight, progress=False)
    train(tiny_cfg(blobs, 15), split, progress=False)
    with pytest.raises(RunError, match="--resume"):
        train(tiny_cfg(blobs, 30), split, progress=False)
    train(tiny_cfg(blobs, 30), split, resume=True, progress=False)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    assert losses(straight) == losses(split)


def test_resume_refuses_a_changed_recipe(tmp_path, blobs):
    run = tmp_path / "run"
    train(tiny_cfg(blobs, 2), run, progress=False)
    with pytest.raises(RunError, match="learning_rate"):
        train(tiny_cfg(blobs, 4, learning_rate=5e-4), run, resume=True, progress=False)
