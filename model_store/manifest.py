"""model.json: what a model is (config, schedule, normalisation, training record) and its weights' digest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from model_store.errors import ModelStoreError

FORMAT = "diffusetv-model/1"
MANIFEST = "model.json"
WEIGHTS = "ema.safetensors"
# Fields of model.json that name or describe a version but do not decide its output; all others do.
NOT_OUTPUT = frozenset({"format", "name", "version", "weights", "training"})
KNOWN = NOT_OUTPUT | {"kind", "config", "schedule", "normalization"}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    config: dict  # diffusion.unet.UNetConfig fields
    schedule: str
    mean: list[float]
    std: list[float]
    sha256: str  # of the weights file: the model's digest
    weights: str = WEIGHTS
    training: dict = field(default_factory=dict)
    kind: str = "ddim-unet"
    path: Path | None = None  # the version directory, when read from a store
    extras: dict = field(default_factory=dict)  # further top-level fields a kind reads (e.g. a vocabulary)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def digest(self) -> str:
        return self.sha256

    @cached_property
    def identity(self) -> str:
        """sha256 of the weights' sha256 and a canonical JSON of every output-relevant field (DESIGN.md):
        two versions that differ in anything that decides their output never share an identity."""
        output = {k: v for k, v in self.to_json().items() if k not in NOT_OUTPUT}
        return sha256_bytes(canonical_json({"weights_sha256": self.sha256, "output": output}).encode())

    @property
    def file(self) -> str:
        """Where this manifest was read from, for messages."""
        return str(self.path / MANIFEST) if self.path is not None else f"{self.ref} ({MANIFEST})"

    @property
    def weights_path(self) -> Path:
        if self.path is None:
            raise ModelStoreError(f"{self.ref} has no location on disk")
        return self.path / self.weights

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "config": self.config,
            "schedule": self.schedule,
            "normalization": {"mean": self.mean, "std": self.std},
            "weights": {"file": self.weights, "sha256": self.sha256},
            "training": self.training,
            **self.extras,
        }

    @classmethod
    def from_json(cls, data: dict, path: Path | None = None) -> Manifest:
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r} is not {FORMAT!r}")
        return cls(
            name=data["name"],
            version=int(data["version"]),
            config=dict(data["config"]),
            schedule=str(data["schedule"]),
            mean=[float(v) for v in data["normalization"]["mean"]],
            std=[float(v) for v in data["normalization"]["std"]],
            sha256=str(data["weights"]["sha256"]),
            weights=str(data["weights"]["file"]),
            training=dict(data.get("training", {})),
            kind=str(data.get("kind", "ddim-unet")),
            path=path,
            extras={k: v for k, v in data.items() if k not in KNOWN},
        )


def read_manifest(version_dir: Path) -> Manifest:
    file = version_dir / MANIFEST
    try:
        manifest = Manifest.from_json(json.loads(file.read_text()), path=version_dir)
    except FileNotFoundError:
        raise ModelStoreError(f"{file}: missing") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelStoreError(f"{file}: unreadable manifest ({exc})") from None
    if "/" in manifest.weights or manifest.weights.startswith("."):
        raise ModelStoreError(f"{file}: weights file name {manifest.weights!r} is not a plain file name")
    return manifest


def read_verified_weights(manifest: Manifest) -> bytes:
    """The weights file's bytes, after checking them against the manifest's sha256."""
    file = manifest.weights_path
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ModelStoreError(f"{file}: cannot read weights ({exc.strerror or exc})") from None
    actual = sha256_bytes(data)
    if actual != manifest.sha256:
        raise ModelStoreError(
            f"{file}: sha256 mismatch (manifest {manifest.sha256[:12]}…, file {actual[:12]}…); "
            "the weights are corrupt or were changed"
        )
    return data
