import json
import subprocess
import sys

import pytest
import torch

from helpers import make_tiny_net, run_cli
from model_store import ModelStoreError, Store, parse_ref
from model_store.weights import load_model, save_model


@pytest.mark.parametrize(
    "ref",
    [
        "../x",
        "/etc",
        "a@b",
        "A",
        "",
        "x@0",
        "x@-1",
        "x@1.5",
        "a/b",
        ".hidden",
        "x@",
        "é",
        "a" * 65,
        "emoji32@01",
        "ok@1@2",
    ],
)
def test_bad_references_are_rejected_before_any_file_is_read(ref, tmp_path):
    with pytest.raises(ModelStoreError, match="bad model reference"):
        parse_ref(ref)
    with pytest.raises(ModelStoreError, match="bad model reference"):
        Store(tmp_path / "does-not-exist").resolve(ref)


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        ("emoji32", ("emoji32", None)),
        ("emoji32@2", ("emoji32", 2)),
        ("a.b_c-d", ("a.b_c-d", None)),
        ("a" * 64, ("a" * 64, None)),
    ],
)
def test_good_references(ref, want):
    assert parse_ref(ref) == want


def test_save_then_load_gives_bit_identical_outputs(tiny_store):
    net = make_tiny_net()
    loaded = load_model(tiny_store.resolve("tiny"))
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    v = torch.full((4, 1, 1, 1), 0.3)
    with torch.no_grad():
        assert torch.equal(net(x, v), loaded(x, v))
    assert not loaded.training


def test_versions_and_resolution(tiny_store):
    m2 = save_model(tiny_store, "tiny", make_tiny_net(seed=1), "linear", [0.5] * 3, [0.2] * 3, {})
    assert m2.version == 2
    assert tiny_store.resolve("tiny").version == 2
    assert tiny_store.resolve("tiny@1").version == 1
    assert tiny_store.refs() == ["tiny@1", "tiny@2"]
    with pytest.raises(ModelStoreError, match=r"tiny@3 not found \(versions: 1, 2\)"):
        tiny_store.resolve("tiny@3")
    with pytest.raises(ModelStoreError, match=r"'nope' not found .*available: tiny"):
        tiny_store.resolve("nope")


def flip_one_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_fails_load_and_verify_naming_the_file(tiny_store):
    weights = tiny_store.resolve("tiny").weights_path
    flip_one_byte(weights)
    for action in (lambda: load_model(tiny_store.resolve("tiny")), lambda: tiny_store.verify("tiny")):
        with pytest.raises(ModelStoreError) as info:
            action()
        assert str(weights) in str(info.value) and "sha256 mismatch" in str(info.value)
    proc = run_cli("models", "verify", check=False)
    assert proc.returncode == 2
    assert str(weights) in proc.stderr and "Traceback" not in proc.stderr


def test_corrupt_manifest_and_missing_weights_are_clear_errors(tiny_store):
    manifest = tiny_store.resolve("tiny")
    manifest.weights_path.unlink()
    with pytest.raises(ModelStoreError, match="cannot read weights"):
        tiny_store.verify("tiny")
    (manifest.path / "model.json").write_text("{not json")
    with pytest.raises(ModelStoreError, match="unreadable manifest"):
        tiny_store.resolve("tiny")


def test_a_manifest_cannot_point_outside_its_folder(tiny_store):
    path = tiny_store.resolve("tiny").path / "model.json"
    data = json.loads(path.read_text())
    data["weights"]["file"] = "../../../etc/passwd"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelStoreError, match="not a plain file name"):
        tiny_store.resolve("tiny")


def test_listing_and_verifying_do_not_import_torch(tiny_store):
    code = (
        "import sys; from model_store import Store; s = Store(); "
        "print([m.ref for m in s.list()]); s.verify('tiny'); assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['tiny@1']"
