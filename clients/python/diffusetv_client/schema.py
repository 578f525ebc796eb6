"""The API's answers as dataclasses, named as in its OpenAPI schema (`__schema__`). A field the server adds later is
ignored, so an older client keeps working; a test checks that every field here is one of the schema's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

FINAL = frozenset({"succeeded", "failed", "canceled"})


def from_json(cls, data: dict[str, Any]):
    """An instance of the dataclass `cls` from a JSON object: its own fields (nested ones converted by
    `cls.__nested__`), the others left out."""
    nested: dict[str, Callable[[Any], Any]] = getattr(cls, "__nested__", {})
    kwargs = {}
    for f in fields(cls):
        if f.name.startswith("_") or f.name not in data:
            continue
        value = data[f.name]
        convert = nested.get(f.name)
        kwargs[f.name] = convert(value) if convert is not None and value is not None else value
    return cls(**kwargs)


def required(cls) -> list[str]:
    """The fields of `cls` without a default: the API always sends them."""
    return [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]


@dataclass
class ModelInfo:
    """The model a job runs: name, version, weights digest and identity."""

    __schema__: ClassVar[str] = "ModelInfo"
    name: str
    version: int
    digest: str
    identity: str | None = None


@dataclass
class Engine:
    """What ran the job: device, precision, kernels and PNG encoder fingerprints (docs/DETERMINISM.md)."""

    __schema__: ClassVar[str] = "Engine"
    device: str
    precision: str
    kernels: str = ""
    encoder: str = ""


@dataclass
class Progress:
    __schema__: ClassVar[str] = "Progress"
    step: int
    steps: int


@dataclass
class JobView:
    """A job as `GET /jobs/{id}` gives it. `params` is the request as the server keyed it (a dict: its fields depend
    on the job's kind), with any server-drawn seed."""

    __schema__: ClassVar[str] = "Job"
    __nested__: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "model": lambda v: from_json(ModelInfo, v),
        "engine": lambda v: from_json(Engine, v),
        "progress": lambda v: from_json(Progress, v),
    }
    id: str
    status: str
    params: dict[str, Any]
    model: ModelInfo
    created_at: str
    events_url: str
    kind: str = "generate"
    engine: Engine | None = None
    progress: Progress | None = None
    queue_position: int | None = None
    batch_size: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    image_url: str | None = None
    strip_url: str | None = None
    latent_url: str | None = None

    @property
    def done(self) -> bool:
        """The job has ended: succeeded, failed or canceled."""
        return self.status in FINAL

    def update(self, other: JobView) -> None:
        """Take `other`'s fields (the same job, seen later)."""
        for f in fields(JobView):
            setattr(self, f.name, getattr(other, f.name))


@dataclass
class Shape:
    __schema__: ClassVar[str] = "Shape"
    height: int
    width: int
    channels: int


@dataclass
class Size:
    __schema__: ClassVar[str] = "Size"
    width: int
    height: int


@dataclass
class ModelEntry:
    """A servable model of the store (`GET /models`)."""

    __schema__: ClassVar[str] = "ModelEntry"
    __nested__: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "shape": lambda v: from_json(Shape, v),
        "sizes": lambda v: [from_json(Size, s) for s in v],
    }
    name: str
    version: int
    ref: str
    digest: str
    identity: str
    kind: str
    shape: Shape
    image_size: int | None
    conditioning: str
    max_steps: int
    samplers: list[str]
    schedule: str
    default: bool
    served: bool
    sizes: list[Size] | None = None
    default_guidance: float | None = None


@dataclass
class ModelList:
    """`GET /models`: the default model's ref and every servable model."""

    __schema__: ClassVar[str] = "ModelList"
    __nested__: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "models": lambda v: [from_json(ModelEntry, m) for m in v],
    }
    default: str
    models: list[ModelEntry]

    def get(self, ref: str) -> ModelEntry | None:
        """The entry named `ref` (NAME or NAME@VERSION; a bare NAME is its newest listed version), or None."""
        name, _, version = ref.partition("@")
        matches = [m for m in self.models if m.name == name and (not version or str(m.version) == version)]
        return max(matches, key=lambda m: m.version) if matches else None
