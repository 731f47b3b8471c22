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

Every file the manifest names (graphs, TensorRT engines) is a plain file name inside the
export directory; a manifest naming anything else (a path with a directory part, ``..``, an
absolute path) is refused when it is read, so a doctored manifest cannot make the runtime
read files elsewhere.

Symbolic dimensions in the recorded shapes: ``batch`` (frames per backbone call), ``streams``
(videos per encode or decode call), ``H``/``W`` (the padded frame, multiples of 32; feature maps
are written ``H/4``, ``H/8``), ``objects`` (I) and ``history`` (T).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import hodor
from hodor.config import HodorConfig
from hodor.engine.io.files import atomic_write
from hodor.errors import HodorError

MANIFEST_NAME = "manifest.json"
FORMAT = "hodor-export"
# Bumped whenever the graphs' signatures or this schema change meaning.
# 2: encode and decode take a batch of streams; the encoder takes fg_invalid; limits.max_streams.
FORMAT_VERSION = 2
STAGES = ("backbone", "encoder", "decoder")
PRECISIONS = ("fp32", "fp16")
# The padded frame is a multiple of this (Swin's coarsest level is 1/32).
SIZE_MULTIPLE = 32
#: Version of the ``tensorrt`` section of ``manifest.json``.
TENSORRT_RECORD_VERSION = 1


def graph_filename(stage: str, precision: str) -> str:
    """``backbone.onnx`` for fp32, ``backbone.fp16.onnx`` for fp16."""
    return f"{stage}.onnx" if precision == "fp32" else f"{stage}.{precision}.onnx"


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_name(value: Any, what: str) -> str:
    """``value`` if it names a file directly inside the export directory; ``HodorError`` otherwise.

    The manifest only ever records bare file names; anything else (``../x``, ``/etc/x``,
    ``sub/x``) did not come from hodor-export, and following it would read outside the export.
    """
    if (
        not isinstance(value, str)
        or value in ("", ".", "..")
        or "/" in value
        or "\\" in value
        or Path(value).name != value
    ):
        raise HodorError(
            f"the manifest names {value!r} as {what}, which is not a file in the export directory; "
            "refusing to follow it: re-export with hodor-export CKPT --out DIR"
        )
    return value


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
    max_streams: int = 16  # videos per encode or decode call (a batch of sessions)

    @property
    def max_window(self) -> int:
        return self.max_history - 1

    def describe_axes(self) -> dict[str, str]:
        """The symbolic dimensions of the graphs' shapes and the range each is exported for."""
        return {
            "batch": f"frames per backbone call, 1..{self.max_batch}",
            "streams": f"videos per encode or decode call, 1..{self.max_streams}",
            "H": f"padded frame height, a multiple of {SIZE_MULTIPLE} in {self.min_size}..{self.max_size}",
            "W": f"padded frame width, a multiple of {SIZE_MULTIPLE} in {self.min_size}..{self.max_size}",
            "H/4, W/4, H/8, W/8": "feature map sizes that follow from H and W",
            "objects": f"objects (I), 1..{self.max_objects}",
            "history": f"history slots (T = min(t, window) + 1), 1..{self.max_history}",
        }

    def check(self, num_objects: int, history: int, height: int, width: int, streams: int = 1) -> None:
        """Raise ``HodorError`` naming the first limit a call would exceed and the re-export lifting it."""
        if streams > self.max_streams:
            raise HodorError(
                f"{streams} videos in one batch exceed this export's limit of {self.max_streams}: "
                f"batch fewer videos at once, or re-export with hodor-export CKPT --max-streams {streams}"
            )
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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphEntry:
        def spec(s: dict[str, Any]) -> TensorSpec:
            return TensorSpec(s["name"], s["dtype"], tuple(s["shape"]))

        profile = {k: tuple(tuple(s) for s in v) for k, v in d.get("profile", {}).items()}
        return cls(
            file=file_name(d["file"], "a graph"),
            sha256=d["sha256"],
            bytes=int(d["bytes"]),
            inputs=tuple(spec(s) for s in d["inputs"]),
            outputs=tuple(spec(s) for s in d["outputs"]),
            profile=profile,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class EngineEntry:
    """One stage's TensorRT engine file and what it was built from.

    ``profile`` maps each input name to ``[min, opt, max]`` shapes, as JSON lists (the form in
    which builds are compared with the previous record).
    """

    file: str
    onnx: str
    onnx_sha256: str
    engine_sha256: str
    profile: dict[str, list[list[int]]]
    build_seconds: float  # rounded to milliseconds, so that a record equals itself read back

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "onnx": self.onnx,
            "onnx_sha256": self.onnx_sha256,
            "engine_sha256": self.engine_sha256,
            "profile": self.profile,
            "build_seconds": self.build_seconds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineEntry:
        return cls(
            file=file_name(d["file"], "an engine"),
            onnx=file_name(d["onnx"], "an engine's graph"),
            onnx_sha256=d["onnx_sha256"],
            engine_sha256=d["engine_sha256"],
            profile={k: [list(map(int, s)) for s in v] for k, v in d["profile"].items()},
            build_seconds=float(d.get("build_seconds", 0.0)),
        )


@dataclass(frozen=True)
class TensorRTRecord:
    """The ``tensorrt`` section of ``manifest.json``: how the engines were built.

    ``targets`` are compute capabilities (``"sm_86"``): for ``rtx`` the ahead-of-time
    targets, for ``tensorrt`` the one of the GPU named by ``gpu`` that built them.
    """

    flavour: str
    version: str
    precision: str
    targets: tuple[str, ...]
    gpu: str | None
    engines: dict[str, EngineEntry] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_version": TENSORRT_RECORD_VERSION,
            "flavour": self.flavour,
            "version": self.version,
            "precision": self.precision,
            "targets": list(self.targets),
            "gpu": self.gpu,
            "engines": {stage: entry.to_dict() for stage, entry in self.engines.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorRTRecord:
        if d.get("record_version") != TENSORRT_RECORD_VERSION:
            raise HodorError(
                f"the manifest's tensorrt section has version {d.get('record_version')!r}, this program "
                f"reads version {TENSORRT_RECORD_VERSION}: re-export with hodor-export --tensorrt on"
            )
        return cls(
            flavour=d["flavour"],
            version=d["version"],
            precision=d["precision"],
            targets=tuple(d["targets"]),
            gpu=d.get("gpu"),
            engines={stage: EngineEntry.from_dict(e) for stage, e in d["engines"].items()},
        )


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
    tensorrt: TensorRTRecord | None = None
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

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``manifest.json``)."""
        d = asdict(replace(self, tensorrt=None))
        d["tensorrt"] = self.tensorrt.to_dict() if self.tensorrt is not None else None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        section = d.get("tensorrt")
        return cls(
            hodor_version=d["hodor_version"],
            opset=int(d["opset"]),
            precision=d["precision"],
            io_dtype=d["io_dtype"],
            config=d["config"],
            preprocessing=d["preprocessing"],
            limits=Limits(**d["limits"]),
            graphs={
                precision: {stage: GraphEntry.from_dict(e) for stage, e in stages.items()}
                for precision, stages in d["graphs"].items()
            },
            exporter=d["exporter"],
            checkpoint=d["checkpoint"],
            dynamic_axes=d.get("dynamic_axes", {}),
            tensorrt=TensorRTRecord.from_dict(section) if section else None,
            format=d["format"],
            format_version=int(d["format_version"]),
        )


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write ``directory/manifest.json`` whole (temporary name, then rename)."""
    path = Path(directory) / MANIFEST_NAME
    with atomic_write(path) as tmp:
        tmp.write_text(manifest.to_json())
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
    except HodorError as exc:
        raise HodorError(f"{path}: {exc}") from None
    if verify:
        for precision, stages in manifest.graphs.items():
            for stage in STAGES:
                if stage not in stages:
                    raise HodorError(f"{path} lists no {precision} {stage} graph: re-export")
                verify_graph(directory, stages[stage])
    return manifest


def verify_graph(directory: Path, entry: GraphEntry) -> Path:
    """The graph's path, after checking it exists and matches the manifest's sha256."""
    path = _graph_path(directory, entry)
    with open(path, "rb") as f:
        _check_digest(path, directory, hashlib.file_digest(f, "sha256").hexdigest(), entry)
    return path


def read_graph(directory: Path, entry: GraphEntry) -> bytes:
    """The graph's bytes, checked against the manifest's sha256 as read: no window in which the
    file could be swapped between the check and its use."""
    path = _graph_path(directory, entry)
    data = path.read_bytes()
    _check_digest(path, directory, hashlib.sha256(data).hexdigest(), entry)
    return data


def _graph_path(directory: Path, entry: GraphEntry) -> Path:
    path = Path(directory) / file_name(entry.file, "a graph")
    if not path.is_file():
        raise HodorError(
            f"{path} is missing from the export: re-export with hodor-export CKPT --out {directory}"
        )
    return path


def _check_digest(path: Path, directory: Path, digest: str, entry: GraphEntry) -> None:
    if digest != entry.sha256:
        raise HodorError(
            f"{path} does not match its sha256 in {MANIFEST_NAME} (the file was changed or damaged): "
            f"re-export with hodor-export CKPT --out {directory}"
        )
