"""A directory of models: list, resolve references, verify digests, and reserve the next version."""

from __future__ import annotations

import os
from pathlib import Path

from model_store.errors import ModelStoreError
from model_store.manifest import Manifest, read_manifest, read_verified_weights
from model_store.refs import VERSION_RE, parse_ref, valid_name

BUNDLED = Path(__file__).resolve().parent / "models"
ENV = "DIFFUSETV_MODEL_STORE"


def default_root() -> Path:
    """$DIFFUSETV_MODEL_STORE, else the bundled store."""
    return Path(os.environ.get(ENV) or BUNDLED)


class Store:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and valid_name(p.name))

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name) for p in folder.iterdir() if VERSION_RE.fullmatch(p.name) and (p / "model.json").is_file()
        )

    def list(self) -> list[Manifest]:
        """Every model version in the store, by name then version."""
        return [read_manifest(self.root / n / str(v)) for n in self.names() for v in self.versions(n)]

    def refs(self) -> list[str]:
        return [f"{n}@{v}" for n in self.names() for v in self.versions(n)]

    def resolve(self, ref: str) -> Manifest:
        """The manifest for `name` (highest version) or `name@version`."""
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            available = ", ".join(self.names()) or "none"
            raise ModelStoreError(f"model {name!r} not found in {self.root} (available: {available})")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise ModelStoreError(f"model {name}@{version} not found (versions: {', '.join(map(str, versions))})")
        manifest = read_manifest(self.root / name / str(version))
        if (manifest.name, manifest.version) != (name, version):
            raise ModelStoreError(f"{manifest.path}/model.json names {manifest.ref}, not {name}@{version}")
        return manifest

    def verify(self, ref: str) -> Manifest:
        """Check the weights' sha256 against the manifest; raise ModelStoreError naming the file if not."""
        manifest = self.resolve(ref)
        read_verified_weights(manifest)
        return manifest

    def next_version(self, name: str) -> int:
        if not valid_name(name):
            raise ModelStoreError(f"bad model name {name!r}: expected [a-z0-9][a-z0-9._-]{{0,63}}")
        versions = self.versions(name)
        return versions[-1] + 1 if versions else 1
