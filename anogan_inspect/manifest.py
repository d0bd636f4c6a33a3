"""The bundle manifest's schema, checked when a bundle is read (pydantic, strict types).

What serving relies on is typed and bounded: finite positive thresholds, positive steps
and rates, a geometry the networks share, file names the manifest's checksums cover.
Fields the server does not read (training metadata, score summaries) may hold anything.
A violation is one message per field, naming the file, the field, what was expected and
what was found.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

FORMAT = "anogan-inspect-bundle"
FORMAT_VERSION = 1
NETWORK_NAMES = ("generator", "features", "encoder")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    """Strict types ("20" is not 20), no NaN or infinity, no unknown fields (a misspelt
    or foreign field is named, never ignored). Sections that only record how a bundle was
    made (training, score summaries, timings) are free-form dicts."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")


class Geometry(_Strict):
    channels: Literal[1, 3]
    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)

    @model_validator(mode="after")
    def _square(self) -> Geometry:
        if self.height != self.width:
            raise ValueError(f"height ({self.height}) and width ({self.width}) must be equal: "
                             "the networks are square")
        return self


class Search(_Strict):
    steps: int = Field(gt=0, le=1_000_000)
    lr: float = Field(gt=0)
    lam: float = Field(ge=0, le=1)
    beta1: float = Field(ge=0, lt=1)
    beta2: float = Field(ge=0, lt=1)
    eps: float = Field(gt=0)
    patience: int = Field(ge=0)
    min_delta: float = Field(ge=0)


class Threshold(_Strict):
    value: float = Field(gt=0)
    method: str | None = None  # how it was set: "quantile" of held-out normal scores
    quantile: float | None = Field(default=None, gt=0, le=1)
    target_fpr: float | None = Field(default=None, ge=0, lt=1)
    heldout_fpr: float | None = Field(default=None, ge=0, le=1)
    scores: dict | None = None  # the held-out scores' summary (record)
    steps: int | None = Field(default=None, gt=0)  # the search budget it was calibrated at
    start: Literal["encoder", "random"] | None = None
    judged_by: Literal["memory"] | None = None
    frames: int | None = Field(default=None, gt=0)
    # Bundles written before MODE_FAST had its own threshold: the search's, shared
    shared_with_search: bool | None = None


class Network(_Strict):
    torch: str = Field(min_length=1)
    onnx: str = Field(min_length=1)
    inputs: list[str] | None = None
    outputs: list[str] | None = None
    parity_error: float | None = Field(default=None, ge=0)


class Networks(_Strict):
    generator: Network
    features: Network
    encoder: Network | None = None


class FileEntry(_Strict):
    sha256: str
    bytes: int | None = Field(default=None, ge=0)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError("must be 64 lowercase hexadecimal digits")
        return value


class TilingEntry(_Strict):
    patch: int = Field(gt=0)
    stride: int = Field(gt=0)
    scale: float = Field(gt=0, le=4)
    aggregate: Literal["max", "topk"]
    top_k: int = Field(gt=0)
    smoothing: float = Field(ge=0)
    pixel_threshold: float = Field(gt=0)
    pixel_quantile: float | None = Field(default=None, gt=0, le=1)


class ModelEntry(_Strict):
    """The networks' configuration (configs.ModelConfig)."""

    image_size: int = Field(gt=0)
    channels: Literal[1, 3]
    latent_dim: int = Field(gt=0)
    width: int = Field(gt=0)
    disc_norm: Literal["batch", "layer", "none"]
    leaky_slope: float = Field(ge=0)


class Normalization(_Strict):
    """How frames become model inputs (preprocess.NORMALIZATION)."""

    input: str
    resize: str
    scale: float
    offset: float


class Parity(_Strict):
    tolerance: float = Field(ge=0)
    max_error: dict[str, float]


class MemoryEntry(_Strict):
    """A memory bundle's scorer (anogan_inspect/memory.py) and its calibration."""

    extractor: Literal["disc", "pixels", "backbone"]
    scorer: Network
    rows: int = Field(gt=0)
    dim: int = Field(gt=0)
    stride: int = Field(gt=0)
    smoothing: float = Field(ge=0)
    image_threshold: float = Field(gt=0)
    pixel_threshold: float = Field(gt=0)
    calibration: dict
    # How it was built (configs.MemoryConfig) and what that took
    layers: list[int] | None = None
    aggregate: int | None = Field(default=None, gt=0)
    grid: Literal["fine", "coarse"] | None = None
    patch: int | None = Field(default=None, gt=0)
    step: int | None = Field(default=None, gt=0)
    standardize: bool | None = None
    size: int | None = Field(default=None, gt=0)
    sampler: Literal["coreset", "random"] | None = None
    projection: int | None = Field(default=None, ge=0)
    candidates: int | None = Field(default=None, gt=0)
    augment: bool | None = None
    edge_margin: int | None = Field(default=None, ge=0)  # 0 or absent: edges not calibrated
    layer_scales: list[float] | None = None
    candidates_seen: int | None = Field(default=None, ge=0)
    heldout: str | None = None  # the held-out normal frames' file (uint8 .npy), checksummed
    bytes: int | None = Field(default=None, ge=0)
    seconds: dict | None = None


class Parent(_Strict):
    version: str = Field(min_length=1)
    manifest_sha256: str = Field(pattern=_SHA256.pattern)


class Lineage(_Strict):
    """A version learnt from confirmed frames: by a memory bundle's memory
    (trainer/learn.py, method "memory") or by a whole-frame bundle's GAN trained further
    (trainer/finetune.py, "finetune"): its parent, and the sha256 of the frames it learnt,
    calibrated on and held."""

    generation: int = Field(gt=0)
    method: Literal["memory", "finetune"] = "memory"
    parent: Parent
    learnt: list[str]
    calibrating: list[str]
    held: list[str]
    rows_offered: int | None = Field(default=None, ge=0)  # memory: feature rows offered
    epochs: dict[str, int] | None = None  # finetune: GAN and encoder epochs trained
    parent_threshold: float = Field(gt=0)
    defect_recall: float | None = Field(default=None, ge=0, le=1)
    parent_defect_recall: float | None = Field(default=None, ge=0, le=1)
    seconds: float = Field(ge=0)


class Manifest(_Strict):
    format: Literal["anogan-inspect-bundle"]
    format_version: Literal[1]
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    created: str | None = None
    lambda_: float | None = Field(default=None, alias="lambda", ge=0, le=1)
    model: ModelEntry | None = None
    normalization: Normalization | None = None
    parity: Parity | None = None
    training: dict | None = None  # how it was trained (record)
    geometry: Geometry
    latent_dim: int = Field(gt=0, le=4096)
    search: Search
    threshold: Threshold
    fast_threshold: Threshold | None = None
    thresholds: dict[str, Threshold] | None = None  # search budget (steps) → threshold
    networks: Networks
    files: dict[str, FileEntry]
    tiling: TilingEntry | None = None
    memory: MemoryEntry | None = None
    lineage: Lineage | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        for name in NETWORK_NAMES:
            network = getattr(self.networks, name)
            if network is not None:
                self._check_programs(f"networks.{name}", network)
        for steps in self.thresholds or {}:
            if not steps.isdigit() or int(steps) <= 0:
                raise ValueError(f"thresholds: keys are search budgets (positive step "
                                 f"counts), got {steps!r}")
        if self.memory is not None:
            if self.tiling is None:
                raise ValueError("memory: a memory bundle is a tiled bundle (its GAN learns "
                                 "tiles); `tiling` is missing")
            self._check_programs("memory.scorer", self.memory.scorer)
            if self.memory.heldout is not None and self.memory.heldout not in self.files:
                raise ValueError(f"memory.heldout: {self.memory.heldout!r} is not among the "
                                 "checksummed files")
            if self.threshold.value != self.memory.image_threshold:
                raise ValueError(f"threshold.value ({self.threshold.value}) must equal "
                                 f"memory.image_threshold ({self.memory.image_threshold}): "
                                 "a memory bundle's verdict is its memory's")
            if self.tiling.pixel_threshold != self.memory.pixel_threshold:
                raise ValueError(f"tiling.pixel_threshold ({self.tiling.pixel_threshold}) must "
                                 "equal memory.pixel_threshold "
                                 f"({self.memory.pixel_threshold})")
            if self.memory.pixel_threshold > self.memory.image_threshold:
                raise ValueError(f"memory.pixel_threshold ({self.memory.pixel_threshold}) is "
                                 f"above memory.image_threshold "
                                 f"({self.memory.image_threshold})")
        if self.tiling is not None:
            if self.tiling.patch != self.geometry.height:
                raise ValueError(f"tiling.patch ({self.tiling.patch}) must equal "
                                 f"geometry.height ({self.geometry.height})")
            if self.tiling.stride > self.tiling.patch:
                raise ValueError(f"tiling.stride ({self.tiling.stride}) must not exceed "
                                 f"tiling.patch ({self.tiling.patch})")
        return self


    def _check_programs(self, field: str, network: Network) -> None:
        """A network's torch and ONNX files: checksummed, named as their kind, inside."""
        for kind, suffix in (("torch", ".pt2"), ("onnx", ".onnx")):
            file = getattr(network, kind)
            if file not in self.files:
                raise ValueError(f"{field}.{kind}: {file!r} is not among the checksummed "
                                 "files")
            if not file.endswith(suffix) or "/" in file or file.startswith("."):
                raise ValueError(f"{field}.{kind}: expected a file name ending in {suffix} "
                                 f"inside the bundle, got {file!r}")


def validate_manifest(data: object, path: Path) -> Manifest:
    """The parsed manifest; ValueError with one line per problem, naming path and field."""
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        raise ValueError(describe(err, path)) from None


def describe(err: ValidationError, path: Path) -> str:
    problems = []
    for error in err.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (not part of this server's manifest format; misspelt?)"
        found = error.get("input")
        shown = "" if error["type"] == "missing" or isinstance(found, dict | list) else \
            f" (found {_show(found)})"
        problems.append(f"{field}: {message}{shown}")
    return f"{path}: " + "; ".join(problems)


def _show(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value)
