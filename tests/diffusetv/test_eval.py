"""`diffusetv features` and `diffusetv eval` as a user runs them, against a temporary store."""

import json

import numpy as np
import pytest

from helpers import make_tiny_net, run_cli


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A store with a 32x32 tiny U-Net, and a small data set of coloured discs on white."""
    from model_store import Store
    from model_store.weights import save_model

    store = Store(tmp_path / "models")
    net = make_tiny_net(image_size=32)
    save_model(store, "tiny32", net, "offset_cosine", [0.8, 0.8, 0.8], [0.3, 0.3, 0.3], {"steps": 0})
    monkeypatch.setenv("DIFFUSETV_MODEL_STORE", str(store.root))
    monkeypatch.setenv("DIFFUSETV_MODEL", "tiny32")
    monkeypatch.setenv("DIFFUSETV_BUNDLED_MODELS", "0")  # this store alone
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    images = np.full((60, 32, 32, 3), 255, dtype=np.uint8)
    for img in images:
        cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), rng.integers(5, 10)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(0, 200, 3)
    data = tmp_path / "discs.npz"
    np.savez(data, train=images[:40], heldout=images[40:])
    return store, data


@pytest.mark.slow
def test_features_are_published_listed_verified_and_used_by_eval(setup):
    store, data = setup
    out = run_cli("features", "--data", str(data), "--name", "feats", "--steps", "3").stdout
    assert "published feats@1" in out
    manifest = store.verify("feats")
    assert manifest.kind == "feature-cnn" and manifest.training["steps"] == 3
    assert manifest.training["objective"].startswith("exemplar classification")
    listing = run_cli("models").stdout
    assert "feats@1" in listing and "feature-cnn" in listing and "tiny32@1" in listing
    assert "2 model(s) verified" in run_cli("models", "verify").stdout

    args = ["eval", "--data", str(data), "--features", "feats", "--n", "6", "--steps", "2", "--subsets", "5"]
    figures = json.loads(run_cli(*args, "--json").stdout)
    assert figures["model"] == "tiny32@1" and figures["features"] == "feats@1" and figures["heldout"] == 20
    assert (figures["sampler"], figures["steps"]) == ("ddim", 2)
    assert figures["rows"][0]["label"] == "tiny32@1 (ddim, 2 steps)"
    assert [r["key"] for r in figures["rows"]] == ["model", "train", "noise", "untrained"]
    assert [r["n"] for r in figures["rows"]] == [6, 40, 6, 6]
    assert [r["subset_size"] for r in figures["rows"]] == [6, 20, 6, 6]  # min(1000, n, 20 held-out)
    assert all(r["low"] - 1e-9 <= r["kid"] <= r["high"] + 1e-9 for r in figures["rows"])
    assert isinstance(figures["model_below_noise"], bool)
    table = run_cli(*args).stdout
    assert "train split (floor)" in table and "model interval below noise:" in table


@pytest.mark.slow
def test_eval_errors_are_one_line(setup, tmp_path, monkeypatch):
    _, data = setup
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cases = {
        ("--features", "inception"): "nothing is downloaded",
        ("--features", "tiny32"): "'ddim-unet', not 'feature-cnn'",
        ("--n", "1"): "--n must be in",
    }
    for extra, message in cases.items():
        proc = run_cli("eval", "--data", str(data), *extra, check=False)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_eval_samples_with_the_sampler_and_names_it(setup):
    _, data = setup
    run_cli("features", "--data", str(data), "--name", "feats", "--steps", "3")
    # 3 steps: at 2, a multistep sampler's second step is its last (first order), so its image is DDIM's
    args = ["eval", "--data", str(data), "--features", "feats", "--n", "6", "--steps", "3", "--subsets", "5"]
    ddim = json.loads(run_cli(*args, "--json").stdout)
    unipc = json.loads(run_cli(*args, "--sampler", "unipc", "--json").stdout)
    assert (unipc["sampler"], unipc["rows"][0]["label"]) == ("unipc", "tiny32@1 (unipc, 3 steps)")
    assert unipc["rows"][0]["kid"] != ddim["rows"][0]["kid"]  # other samples
    assert unipc["rows"][1:] == ddim["rows"][1:]  # the same floor, noise and untrained network
    assert "tiny32@1 (unipc, 3 steps)" in run_cli(*args, "--sampler", "unipc").stdout
