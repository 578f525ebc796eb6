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


@pytest.fixture
def layers(tmp_path, monkeypatch):
    """(user, bundled): a user store with `mine@1` and `both@1`, and a bundled store with `shipped@1..2` and
    `both@1..3`, the default store's two layers."""
    from model_store import store as store_module

    user, bundled = Store(tmp_path / "user"), Store(tmp_path / "bundled")
    for store, name, versions in ((user, "mine", 1), (user, "both", 1), (bundled, "shipped", 2), (bundled, "both", 3)):
        for seed in range(versions):
            save_model(store, name, make_tiny_net(seed=seed), "linear", [0.5] * 3, [0.2] * 3, {})
    monkeypatch.setattr(store_module, "BUNDLED", bundled.root)
    monkeypatch.setenv("DIFFUSETV_MODEL_STORE", str(user.root))
    monkeypatch.delenv("DIFFUSETV_BUNDLED_MODELS", raising=False)
    return user, bundled


def test_the_user_store_is_the_setting_else_xdg_data_home_else_the_home_folder(tmp_path, monkeypatch):
    from model_store import user_root

    monkeypatch.setenv("DIFFUSETV_MODEL_STORE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_root() == tmp_path / "mine"
    monkeypatch.delenv("DIFFUSETV_MODEL_STORE")
    assert user_root() == tmp_path / "xdg" / "diffusetv" / "models"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert user_root() == tmp_path / "home" / ".local" / "share" / "diffusetv" / "models"


def test_the_default_store_reads_the_user_store_first_then_the_bundled_one(layers):
    user, bundled = layers
    store = Store()
    assert (store.root, store.roots) == (user.root, (user.root, bundled.root))
    assert store.names() == ["both", "mine", "shipped"]
    assert store.refs() == ["both@1", "mine@1", "shipped@1", "shipped@2"]  # `both`: the user store's, all of it
    assert [m.path for m in store.list()] == [user.root / "both" / "1", user.root / "mine" / "1"] + [
        bundled.root / "shipped" / str(v) for v in (1, 2)
    ]
    assert store.resolve("both").path == user.root / "both" / "1" and store.versions("both") == [1]
    assert store.resolve("shipped").path == bundled.root / "shipped" / "2"
    with pytest.raises(ModelStoreError, match=r"'nope' not found in .*user and .*bundled \(available: both, mine"):
        store.resolve("nope")


def test_writes_go_to_the_user_store_and_a_bundled_name_is_refused(layers):
    user, bundled = layers
    store = Store()
    assert save_model(store, "mine", make_tiny_net(seed=3), "linear", [0.5] * 3, [0.2] * 3, {}).path == (
        user.root / "mine" / "2"
    )
    assert store.next_version("new") == 1
    with pytest.raises(ModelStoreError) as info:
        save_model(store, "shipped", make_tiny_net(), "linear", [0.5] * 3, [0.2] * 3, {})
    assert str(info.value) == (
        f"model name 'shipped' is a bundled model ({bundled.root / 'shipped'}); pick another name"
    )
    assert not (user.root / "shipped").exists() and bundled.versions("shipped") == [1, 2]


def test_bundled_models_can_be_left_out_and_stay_reserved(layers, monkeypatch):
    user, _ = layers
    monkeypatch.setenv("DIFFUSETV_BUNDLED_MODELS", "0")
    store = Store()
    assert store.roots == (user.root,) and store.names() == ["both", "mine"]
    with pytest.raises(ModelStoreError, match="is a bundled model"):
        store.next_version("shipped")
    assert Store.layered(user.root, bundled=True).names() == ["both", "mine", "shipped"]
    monkeypatch.setenv("DIFFUSETV_BUNDLED_MODELS", "maybe")
    with pytest.raises(ModelStoreError, match="DIFFUSETV_BUNDLED_MODELS='maybe': expected true or false"):
        Store()


def test_an_explicit_root_is_exactly_one_directory(layers):
    user, bundled = layers
    store = Store(user.root)
    assert store.roots == (user.root,) and store.names() == ["both", "mine"]
    assert store.next_version("shipped") == 1  # no bundled store here, so no reserved names
    assert Store(bundled.root).resolve("both").version == 3


def test_a_user_store_that_is_the_bundled_folder_is_that_one_directory(layers, monkeypatch):
    _, bundled = layers
    monkeypatch.setenv("DIFFUSETV_MODEL_STORE", str(bundled.root))
    store = Store()
    assert store.roots == (bundled.root,) and store.next_version("shipped") == 3  # publishing a bundled model


def test_the_services_store_comes_from_their_settings(layers, tmp_path):
    from app.core.settings import Settings

    user, bundled = layers
    assert Settings().store().roots == (user.root, bundled.root)
    assert Settings(model_store=tmp_path / "other", bundled_models=False).store().roots == (tmp_path / "other",)
