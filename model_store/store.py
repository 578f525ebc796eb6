"""Model stores: list, resolve references, verify digests, and reserve the next version.

`Store()` is the default store: the user store (`user_root()`), where imports and publications are written,
over the bundled store (the models shipped in `model_store/models`), which is only read. A name is in one of
them: the bundled names cannot be written into the user store, so `name@version` never means two models.
`Store(root)` is exactly one directory, read and written.
"""

from __future__ import annotations

import os
from pathlib import Path

from model_store.errors import ModelStoreError
from model_store.manifest import Manifest, read_manifest, read_verified_weights
from model_store.refs import VERSION_RE, parse_ref, valid_name

BUNDLED = Path(__file__).resolve().parent / "models"
ENV = "DIFFUSETV_MODEL_STORE"
BUNDLED_ENV = "DIFFUSETV_BUNDLED_MODELS"
# The words a boolean setting takes (as pydantic reads DIFFUSETV_* booleans).
TRUE_WORDS = ("1", "true", "t", "yes", "y", "on")
FALSE_WORDS = ("0", "false", "f", "no", "n", "off")


def user_root() -> Path:
    """The user store: $DIFFUSETV_MODEL_STORE, else $XDG_DATA_HOME/diffusetv/models, else
    ~/.local/share/diffusetv/models."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "diffusetv" / "models"


def bundled_served() -> bool:
    """Whether the default store serves the bundled models: $DIFFUSETV_BUNDLED_MODELS, true unless set false."""
    value = os.environ.get(BUNDLED_ENV, "").strip().lower()
    if value in ("", *TRUE_WORDS):
        return True
    if value in FALSE_WORDS:
        return False
    raise ModelStoreError(f"{BUNDLED_ENV}={value!r}: expected true or false (0 leaves the bundled models out)")


class Store:
    """Model versions in `roots`, read in order (the first root that has a name holds all its versions); new
    versions are written into `root`, the first."""

    def __init__(self, root: str | Path | None = None) -> None:
        """`Store(root)`: exactly that directory. `Store()`: the default store, `Store.layered()`."""
        if root is None:
            self._layer(user_root(), bundled_served())
        else:
            self.root = Path(root)
            self.roots: tuple[Path, ...] = (self.root,)
            self.reserved: Path | None = None  # a store whose names this one may not write

    @classmethod
    def layered(cls, user: str | Path | None = None, bundled: bool | None = None) -> Store:
        """The user store (default `user_root()`) over the bundled store, unless `bundled` is false (default
        `bundled_served()`). The bundled names stay reserved either way; a user store that is the bundled folder
        itself is that one directory."""
        store = cls.__new__(cls)
        store._layer(Path(user) if user is not None else user_root(), bundled_served() if bundled is None else bundled)
        return store

    def _layer(self, user: Path, bundled: bool) -> None:
        self.root = user
        own = user.resolve() == BUNDLED
        self.roots = (user,) if own or not bundled else (user, BUNDLED)
        self.reserved = None if own else BUNDLED

    def names(self) -> list[str]:
        return sorted({name for root in self.roots for name in names_in(root)})

    def root_of(self, name: str) -> Path:
        """The root that holds `name`: the first that has a version of it (else the written one)."""
        return next((root for root in self.roots if versions_in(root, name)), self.root)

    def versions(self, name: str) -> list[int]:
        return versions_in(self.root_of(name), name)

    def list(self) -> list[Manifest]:
        """Every model version in the store, by name then version."""
        return [read_manifest(self.root_of(n) / n / str(v)) for n in self.names() for v in self.versions(n)]

    def refs(self) -> list[str]:
        return [f"{n}@{v}" for n in self.names() for v in self.versions(n)]

    def where(self) -> str:
        """The store's directories, for messages."""
        return " and ".join(map(str, self.roots))

    def resolve(self, ref: str) -> Manifest:
        """The manifest for `name` (highest version) or `name@version`."""
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            available = ", ".join(self.names()) or "none"
            raise ModelStoreError(f"model {name!r} not found in {self.where()} (available: {available})")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise ModelStoreError(f"model {name}@{version} not found (versions: {', '.join(map(str, versions))})")
        manifest = read_manifest(self.root_of(name) / name / str(version))
        if (manifest.name, manifest.version) != (name, version):
            raise ModelStoreError(f"{manifest.path}/model.json names {manifest.ref}, not {name}@{version}")
        return manifest

    def verify(self, ref: str) -> Manifest:
        """Check the weights' sha256 against the manifest; raise ModelStoreError naming the file if not."""
        manifest = self.resolve(ref)
        read_verified_weights(manifest)
        return manifest

    def next_version(self, name: str) -> int:
        """The version a new model of `name` gets in `root`; a bad or a bundled name is refused."""
        if not valid_name(name):
            raise ModelStoreError(f"bad model name {name!r}: expected [a-z0-9][a-z0-9._-]{{0,63}}")
        if self.reserved is not None and versions_in(self.reserved, name):
            raise ModelStoreError(f"model name {name!r} is a bundled model ({self.reserved / name}); pick another name")
        versions = versions_in(self.root, name)
        return versions[-1] + 1 if versions else 1


def names_in(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return [p.name for p in root.iterdir() if p.is_dir() and valid_name(p.name)]


def versions_in(root: Path, name: str) -> list[int]:
    folder = root / name
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name) for p in folder.iterdir() if VERSION_RE.fullmatch(p.name) and (p / "model.json").is_file()
    )
