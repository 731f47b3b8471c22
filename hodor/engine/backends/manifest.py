"""The export directory's ``manifest.json``: what was exported, with which limits, and how to check it.

Written by ``hodor-export``, read by every runtime backend that runs exported graphs (ONNX
Runtime, TensorRT). It lives in ``engine`` because the runtime must read it without the
exporter's dependencies; nothing here imports ``hodor.export``.

Layout of an export directory::

    manifest.json                 this schema
    backbone.onnx  encoder.onnx  decoder.onnx                 fp32 graphs (always present)
    backbone.fp16.onnx  encoder.fp16.onnx  decoder.fp16.onnx  only with --precision fp16

Every graph takes and returns float32 (and bool) tensors whatever its precision: the fp16
graphs cast at their edges, so a runtime feeds both kinds identically.

Symbolic dimensions in the recorded shapes: ``batch`` (frames per backbone call), ``H``/``W``
(the padded frame, multiples of 32; feature maps are written ``H/4``, ``H/8``), ``objects``
(I) and ``history`` (T).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hodor
from hodor.config import HodorConfig
from hodor.errors import HodorError

MANIFEST_NAME = "manifest.json"
FORMAT = "hodor-export"
# Bumped whenever the graphs' signatures or this schema change meaning.
FORMAT_VERSION = 1
STAGES = ("backbone", "encoder", "decoder")
PRECISIONS = ("fp32", "fp16")
# The padded frame is a multiple of this (Swin's coarsest level is 1/32).
SIZE_MULTIPLE = 32


def graph_filename(stage: str, precision: str) -> str:
    """``backbone.onnx`` for fp32, ``backbone.fp16.onnx`` for fp16."""
    return f"{stage}.onnx" if precision == "fp32" else f"{stage}.{precision}.onnx"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Limits:
    """What the graphs (and engines built from them) accept. Sizes are the padded frame's."""

    max_objects: int
    max_history: int  # max_window + 1 slots
    max_batch: int
    min_size: int  # each side of the padded frame, pixels
    max_size: int
    opt_height: int  # the size TensorRT tunes for
    opt_width: int

    @property
    def max_window(self) -> int:
        return self.max_history - 1

    def describe_axes(self) -> dict[str, str]:
        """The symbolic dimensions of the graphs' shapes and the range each is exported for."""
        return {
            "batch": f"frames per backbone call, 1..{self.max_batch}",
            "H": f"padded frame height, a multiple of {SIZE_MULTIPLE} in {self.min_size}..{self.max_size}",
            "W": f"padded frame width, a multiple of {SIZE_MULTIPLE} in {self.min_size}..{self.max_size}",
            "H/4, W/4, H/8, W/8": "feature map sizes that follow from H and W",
            "objects": f"objects (I), 1..{self.max_objects}",
            "history": f"history slots (T = min(t, window) + 1), 1..{self.max_history}",
        }

    def check(self, num_objects: int, history: int, height: int, width: int) -> None:
        """Raise ``HodorError`` naming the first limit a call would exceed and the re-export lifting it."""
        if num_objects > self.max_objects:
            raise HodorError(
                f"{num_objects} objects exceed this export's limit of {self.max_objects}: "
                f"re-export with hodor-export CKPT --max-objects {num_objects}"
            )
        if history > self.max_history:
            raise HodorError(
                f"a temporal window of {history - 1} needs {history} history slots, but this export "
                f"holds at most {self.max_history} (--max-window {self.max_window}): "
                f"re-export with hodor-export CKPT --max-window {history - 1}"
            )
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise HodorError(f"frame size {height}x{width} is not padded to a multiple of {SIZE_MULTIPLE}")
        if max(height, width) > self.max_size:
            raise HodorError(
                f"padded frame size {height}x{width} exceeds this export's largest side, {self.max_size}: "
                "lower --min-dim/--max-dim, or re-export with "
                f"hodor-export CKPT --max-size {max(height, width)}"
            )
        if min(height, width) < self.min_size:
            raise HodorError(
                f"padded frame size {height}x{width} is below this export's smallest side, {self.min_size}: "
                f"raise --min-dim, or re-export with hodor-export CKPT --min-size {min(height, width)}"
            )


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy spelling: float32, bool
    shape: tuple[int | str, ...]  # str entries are symbolic (see the module docstring)


@dataclass(frozen=True)
class GraphEntry:
    file: str
    sha256: str
    bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # name -> [min, opt, max] shapes, from the limits: TensorRT optimisation profiles.
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    hodor_version: str
    opset: int
    precision: str  # what was asked for: fp16 exports also carry the fp32 graphs
    io_dtype: str
    config: dict[str, Any]  # HodorConfig.to_dict()
    preprocessing: dict[str, Any]
    limits: Limits
    graphs: dict[str, dict[str, GraphEntry]]  # precision -> stage -> entry
    exporter: dict[str, Any]  # tool versions and method, for the record
    checkpoint: dict[str, Any]  # file, sha256, bytes
    # What each symbolic dimension of the recorded shapes means, and its range.
    dynamic_axes: dict[str, str] = field(default_factory=dict)
    # Written by the TensorRT half of the exporter (``hodor.export.tensorrt_build``); None: no engines.
    tensorrt: dict[str, Any] | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def hodor_config(self) -> HodorConfig:
        return HodorConfig.from_dict(self.config)

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(p for p in PRECISIONS if p in self.graphs)

    def graph(self, stage: str, precision: str = "fp32") -> GraphEntry:
        try:
            return self.graphs[precision][stage]
        except KeyError:
            have = ", ".join(self.precisions)
            raise HodorError(
                f"this export has no {precision} {stage} graph (it holds: {have}); "
                f"re-export with hodor-export CKPT --precision {precision}"
            ) from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        def spec(s: dict[str, Any]) -> TensorSpec:
            return TensorSpec(s["name"], s["dtype"], tuple(s["shape"]))

        def entry(e: dict[str, Any]) -> GraphEntry:
            profile = {k: tuple(tuple(s) for s in v) for k, v in e.get("profile", {}).items()}
            return GraphEntry(
                file=e["file"],
                sha256=e["sha256"],
                bytes=int(e["bytes"]),
                inputs=tuple(spec(s) for s in e["inputs"]),
                outputs=tuple(spec(s) for s in e["outputs"]),
                profile=profile,  # type: ignore[arg-type]
            )

        return cls(
            hodor_version=d["hodor_version"],
            opset=int(d["opset"]),
            precision=d["precision"],
            io_dtype=d["io_dtype"],
            config=d["config"],
            preprocessing=d["preprocessing"],
            limits=Limits(**d["limits"]),
            graphs={p: {s: entry(e) for s, e in stages.items()} for p, stages in d["graphs"].items()},
            exporter=d["exporter"],
            checkpoint=d["checkpoint"],
            dynamic_axes=d.get("dynamic_axes", {}),
            tensorrt=d.get("tensorrt"),
            format=d["format"],
            format_version=int(d["format_version"]),
        )


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(manifest.to_json())
    tmp.replace(path)
    return path


def load_manifest(directory: str | Path, verify: bool = True) -> Manifest:
    """Read and validate ``directory/manifest.json``.

    Raises ``HodorError`` when the directory is not an export, was written by another
    version of hodor-engine, or (with ``verify``) a graph is missing or its sha256 no
    longer matches the manifest.
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise HodorError(f"export directory not found: {directory} (create one with hodor-export CKPT)")
    if not path.is_file():
        raise HodorError(
            f"{directory} is not a hodor export directory (no {MANIFEST_NAME}); "
            "create one with hodor-export CKPT --out DIR"
        )
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HodorError(
            f"{path} is not valid JSON: re-export with hodor-export CKPT --out {directory}"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise HodorError(
            f"{path} is not a hodor-export manifest: re-export with hodor-export CKPT --out {directory}"
        )
    theirs = (raw.get("format_version"), raw.get("hodor_version"))
    ours = (FORMAT_VERSION, hodor.__version__)
    if theirs != ours:
        raise HodorError(
            f"{directory} was exported by hodor-engine {theirs[1]} (manifest format {theirs[0]}); this is "
            f"{ours[1]} (format {ours[0]}): re-export with hodor-export CKPT --out {directory}"
        )
    try:
        manifest = Manifest.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise HodorError(
            f"{path} is incomplete or damaged ({exc.__class__.__name__}: {exc}): re-export"
        ) from None
    if verify:
        for precision, stages in manifest.graphs.items():
            for stage in STAGES:
                if stage not in stages:
                    raise HodorError(f"{path} lists no {precision} {stage} graph: re-export")
                verify_graph(directory, stages[stage])
    return manifest


def verify_graph(directory: Path, entry: GraphEntry) -> Path:
    """The graph's path, after checking it exists and matches the manifest's sha256."""
    path = Path(directory) / entry.file
    if not path.is_file():
        raise HodorError(
            f"{path} is missing from the export: re-export with hodor-export CKPT --out {directory}"
        )
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise HodorError(
            f"{path} does not match its sha256 in {MANIFEST_NAME} (the file was changed or damaged): "
            f"re-export with hodor-export CKPT --out {directory}"
        )
    return path
