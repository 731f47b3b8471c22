"""The three stages run by OpenVINO on the CPU from an export directory (``hodor-run --backend openvino``).

OpenVINO reads the export's fp32 ONNX graphs itself; nothing is converted ahead of time. The
compute precision is chosen when the graphs are compiled: ``fp32`` (the default, which matches
the PyTorch model to float32 rounding) or ``bf16`` (``--precision bf16``, on CPUs with AVX-512
BF16 or AMX; inputs and outputs stay float32). OpenVINO's own default on such CPUs is bf16, so
fp32 is always asked for explicitly.

The decoder's deformable convolutions are handed to OpenVINO as its own ``DeformableConvolution``
(:mod:`hodor.engine.backends.native_deform_conv` rewrites the decoder graph as it is read; the
export's file stays as it is): about 1.2x faster in fp32 than the exported ``GridSample`` and
``MatMul``, and it keeps the sampling positions out of bf16. With ``bf16`` all three stages
compile with OpenVINO's bf16 inference hint. Were the rewrite not to apply (a graph of another
shape), the decoder would run as exported, and in fp32 even with ``bf16``: the hint would round
its absolute sampling positions (pixel coordinates up to the map's width) to bf16, moving samples
by a sizeable fraction of a pixel (relative error of the logits about 0.6 at 480p).
OpenVINO's ``DeformableConvolution`` computes its product in fp32 even then, so with ``bf16`` each
becomes instead sampled columns (a small operation built on first use with the machine's C++
compiler, :mod:`hodor.engine.backends.openvino_ops` and
:mod:`hodor.engine.backends.deform_columns`) and one bf16 matrix product: the bf16 decoder 1.25x
faster at 480p. The bf16 stages' dense 3x3 convolutions run as Winograd F(3x3, 3x3) through two
more operations of that library (:func:`hodor.engine.backends.winograd_conv.rewrite_winograd_ops`):
3.2x fewer multiplications at about 6x a direct bf16 convolution's error (the stages' outputs
within 2e-2 of fp32 at 480p, the limit 5e-2). Without a compiler both keep OpenVINO's own
operations, with a warning. In bf16 the exported group normalisations' one-axis-at-a-time means
are merged (:mod:`hodor.engine.backends.group_norm`), so that OpenVINO runs them as its ``MVN``.
In every stage a map flattened into pixel rows that constant weights multiply is transposed
before it is flattened, and pixel rows made back into a map are reshaped before they are
transposed, and keys split into heads are transposed as 4-D maps
(:mod:`hodor.engine.backends.pixel_rows`): OpenVINO then transposes the encoder's rows once
instead of once per product, and the decoder's rows and every key matrix with a compiled kernel.

In the fp32 stages the dense 3x3 convolutions (the FPN's outputs, the decoder's 1/4-map and
catch-all ones) are rewritten as Winograd F(6x6, 3x3) (:mod:`hodor.engine.backends.winograd_conv`):
5x fewer multiplications, its transforms through the same library's operations (F(4x4, 3x3), 4x
fewer, in plain graph operations, slower, where it cannot be built), which OpenVINO runs faster
than its own fp32 convolution; the backbone's features within 1e-5 of PyTorch, the logits 6e-6.
The rewritten graphs are kept (below), so a warm start does not redo it. Not in bf16, where
larger tiles' transformed values lose too much (F(3x3, 3x3) there, above).

The graphs are compiled for any input shape. OpenVINO runs a graph compiled for fixed shapes
faster (at 480p in ``benchmarks/cpu_backends.py``: the encoder's CPU time 22-27 % less, the
decoder's 5-10 %; the backbone's gain was within noise when tried), so the encoder and decoder
are compiled again, for exactly those shapes, when a set of input shapes comes for the third time
(:data:`STATIC_SHAPES_AFTER`) within the stage's last :data:`STATIC_SHAPES_SPAN` calls: a video's
steady state (its size, its objects, a full history window) repeats every frame, while the first
frames' growing histories come once per video (twice when two videos are stepped in turn) and
keep the shape-free graphs, however many videos of that size follow one another. Up to
:data:`STATIC_SHAPES_KEPT` such compilations are kept per stage (least recently used
dropped); the encoder and decoder together took 0.8 s once at 480p, in memory only (the disk
cache below holds the shape-free graphs, so it does not grow with every video size).

Compiling the three graphs takes a few seconds; the compiled models are cached in
``openvino-cache/`` inside the export directory (OpenVINO's model cache, keyed by the graph, the
compile options and the OpenVINO version; one subdirectory per OpenVINO version,
:data:`REWRITES_VERSION` and CPU, removed once unused for
:data:`~hodor.engine.backends.export_files.CACHE_IDLE_DAYS` days), so later runs start in a
fraction of that. Graph bytes are checked against the manifest's sha256 as they are read. Each
graph is parsed and rewritten once (both rewrites in one pass), and the graph is kept in
the same directory (``<stage>.<key>.onnx``, the key made of the exported graph's sha256,
:data:`REWRITES_VERSION` and the rewrites asked for; a small ``.json`` beside it says what was
rewritten; graphs no rewrite changed are kept too): a later start reads it instead of rewriting,
and OpenVINO finds its compiled model by that file's path without reading the graph. A kept graph
that no longer loads is dropped and made again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
import warnings
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hodor.config import HodorConfig
from hodor.engine.backends.base import ConfigOverrides
from hodor.engine.backends.export_files import cpu_flags, mark_used, prune_idle, writable_cache_dir
from hodor.engine.backends.graph_seam import HostGraphSeam, host_feeds
from hodor.engine.backends.manifest import STAGES, GraphEntry, load_manifest, read_graph
from hodor.engine.backends.onnxruntime_backend import usable_cores
from hodor.engine.io.files import atomic_write
from hodor.errors import HodorError

PRECISIONS = ("fp32", "bf16")
"""Run-time precisions (``--precision``) this backend takes."""
BF16_STAGES = ("backbone", "encoder", "decoder")
"""The stages ``bf16`` compiles in bf16 (the decoder only with its deformable convolutions
rewritten; see the module docstring)."""
CACHE_DIR_NAME = "openvino-cache"
CACHE_KEY_NAME = re.compile(r"[0-9a-f]{16}")
"""The names of the cache's directories, one per OpenVINO version, rewrite version and CPU."""
STATIC_SHAPE_STAGES = ("encoder", "decoder")
"""The stages compiled again for input shapes that recur (see the module docstring)."""
STATIC_SHAPES_AFTER = 3
"""How many of a stage's last :data:`STATIC_SHAPES_SPAN` calls must have had the same input shapes
for the stage to be compiled for them."""
STATIC_SHAPES_SPAN = 8
"""The recent calls of a stage whose shapes are counted: a shape that comes every frame (one video,
or up to three groups of videos stepped in turn) is compiled for, a growing history that comes once
per video is not, unless the videos are shorter than four frames (then those shapes are all there
is). Counting over all calls instead compiled, in a run of many videos of one size, each
growing-history length once every third video, and the compilations pushed one another (and the
steady state's) out of the few kept: 9 compilations, 5-6 s, in a third 20-frame video at 480p."""
STATIC_SHAPES_KEPT = 4
"""How many fixed-shape compilations each of those stages keeps."""
BF16_WINOGRAD_TILE = 3
"""The bf16 stages' Winograd: F(3x3, 3x3) (:mod:`hodor.engine.backends.winograd_conv` says why)."""
FP32_WINOGRAD_TILE = 6
"""The fp32 stages' Winograd through the engine's operations: F(6x6, 3x3)
(:mod:`hodor.engine.backends.winograd_conv` says why)."""
REWRITES_VERSION = 10
"""Part of the key of the graphs kept in the cache: raised whenever a rewrite's output changes."""
_LOWEST = torch.finfo(torch.float32).min

logger = logging.getLogger(__name__)


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise HodorError("OpenVINO is not installed: pip install hodor-engine[openvino]") from None
    return openvino


def cpu_supports_bf16(core: Any) -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively here (AVX-512 BF16 or AMX)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoBackend(HostGraphSeam):
    """Implements ``hodor.engine.backends.base.Backend`` over the export's fp32 ONNX graphs, on the CPU."""

    name = "openvino"

    def __init__(
        self,
        export_dir: str | Path,
        device: str | torch.device | None = None,
        config: HodorConfig | None = None,
        precision: str | None = None,
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        cache: bool = True,
        bf16_stages: tuple[str, ...] = BF16_STAGES,
        native_deform_conv: bool = True,
        static_shapes: bool = True,
        winograd: bool = True,
        deform_columns: bool = True,
        engine_ops: bool = True,
        bf16_winograd_tile: int = BF16_WINOGRAD_TILE,
        fp32_winograd_tile: int = FP32_WINOGRAD_TILE,
        extra_properties: dict[str, Any] | None = None,
    ) -> None:
        """``config`` overrides the manifest's (e.g. run-time ``--min-dim``); ``precision``: ``fp32``
        (default) or ``bf16``; ``threads``: default one per usable core; ``cache_dir``: where compiled
        models are kept (default ``openvino-cache/`` in the export directory), ``cache=False`` keeps none;
        ``bf16_stages``: the stages ``bf16`` applies to (a decoder whose deformable convolutions
        were not rewritten stays fp32 regardless); ``native_deform_conv=False`` runs the decoder
        graph as exported (for comparison); ``static_shapes=False`` keeps every stage on its
        shape-free compilation; ``winograd=False`` runs the dense 3x3 convolutions as exported
        instead of as Winograd (F(6x6, 3x3) in fp32 stages, F(3x3, 3x3) in bf16 ones, see
        :mod:`hodor.engine.backends.winograd_conv`); ``deform_columns=False`` keeps a bf16
        decoder's deformable convolutions on OpenVINO's fp32 ``DeformableConvolution`` instead of
        sampled columns and a bf16 product (:mod:`hodor.engine.backends.deform_columns`);
        ``engine_ops=False`` never uses the engine's operations (as where they cannot be built,
        without the warning: the fp32 Winograd in graph operations, bf16 as if both flags were off);
        ``bf16_winograd_tile``: the bf16 stages' Winograd, F(3x3, 3x3) (3, the default) or
        F(2x2, 3x3) (2: 2x a direct bf16 convolution's error instead of 6x, slower);
        ``fp32_winograd_tile``: the fp32 stages' Winograd through the engine's operations,
        F(6x6, 3x3) (6, the default) or F(4x4, 3x3) (4: half the rounding error, slower);
        ``extra_properties``: more OpenVINO compile properties (``{"PERF_COUNT": True}`` for
        :meth:`profile`). ``startup_s`` records how long reading, checking and compiling the graphs
        took; ``deform_convs_rewritten`` how many deformable convolutions OpenVINO runs as its own
        (``deform_columns_convs`` of them as columns and a bf16 product); ``winograd_convs`` how many
        convolutions run as Winograd (``winograd_ops_convs`` of them through the engine's operations:
        F(6x6, 3x3) in fp32 stages, F(3x3, 3x3) in bf16 ones); ``ops_unavailable`` says why the
        engine's operations (:mod:`hodor.engine.backends.openvino_ops`) are not used where asked for;
        ``static_compiles`` and ``static_compile_s`` how many fixed-shape compilations were made
        while running, and the seconds they took."""
        start = time.perf_counter()
        ov = _import_openvino()
        self.export_dir = Path(export_dir)
        self.manifest = load_manifest(self.export_dir, verify=False)
        self.device = torch.device(device if device is not None else "cpu")
        if self.device.type != "cpu":
            raise HodorError(
                f"the openvino backend runs on the CPU, not on --device {device}: use --device cpu, "
                "or --backend tensorrt / onnxruntime for a GPU"
            )
        self.config = config or self.manifest.hodor_config
        self.precision = precision or "fp32"
        if self.precision not in PRECISIONS:
            raise HodorError(
                f"the openvino backend computes in {' or '.join(PRECISIONS)}, not {self.precision}: "
                "use --precision fp32 or bf16"
            )
        self.threads = threads or usable_cores()
        core = self._core = ov.Core()
        if self.precision == "bf16" and not cpu_supports_bf16(core):
            raise HodorError(
                "--precision bf16 needs a CPU with AVX-512 BF16 or AMX, which this one lacks: "
                "use --precision fp32"
            )
        properties: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads}
        properties.update(extra_properties or {})
        self.cache_dir: Path | None = None
        if cache:
            root = Path(cache_dir) if cache_dir is not None else self.export_dir / CACHE_DIR_NAME
            # Compiled models are specific to the CPU's instruction set: one directory per CPU kind,
            # OpenVINO version and rewrite version; those no machine used for a while are removed.
            key_text = f"{ov.__version__}\n{REWRITES_VERSION}\n{cpu_flags()}"
            key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
            self.cache_dir = writable_cache_dir(root / key)
            if self.cache_dir is not None:
                properties["CACHE_DIR"] = str(self.cache_dir)
                mark_used(self.cache_dir)
                prune_idle(root, CACHE_KEY_NAME, keep=self.cache_dir)

        self.compiled: dict[str, Any] = {}
        self.requests: dict[str, Any] = {}
        # Fixed-shape compilations: the model to reshape, its compile options, the input shapes of
        # the stage's recent calls, the compilations made (shapes -> (compiled model, request)).
        self._reshapable: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._recent: dict[str, deque[tuple[Any, ...]]] = {}
        self._static: dict[str, OrderedDict[tuple[Any, ...], tuple[Any, Any]]] = {}
        self.static_compiles = 0
        self.static_compile_s = 0.0
        self._last_request: dict[str, Any] = {}
        self.stage_precisions: dict[str, str] = {}
        self.deform_convs_rewritten = 0
        self.deform_columns_convs = 0
        if bf16_winograd_tile not in (2, 3):
            raise ValueError(f"bf16_winograd_tile is 2 or 3, not {bf16_winograd_tile!r}")
        self._bf16_tile = bf16_winograd_tile
        if fp32_winograd_tile not in (4, 6):
            raise ValueError(f"fp32_winograd_tile is 4 or 6, not {fp32_winograd_tile!r}")
        self._fp32_tile = fp32_winograd_tile
        self.winograd_convs = 0
        self.winograd_ops_convs = 0
        self._deform_extension_added = False
        self._deform_columns = deform_columns and native_deform_conv and "decoder" in bf16_stages
        self.ops_library: Path | None = None  # when set, loaded into self._core
        self.ops_unavailable: str | None = None
        if engine_ops and (winograd or (self.precision == "bf16" and self._deform_columns)):
            self.ops_library = self._ops_library()
        for stage in STAGES:
            entry = self.manifest.graph(stage, "fp32")
            wants_bf16 = self.precision == "bf16" and stage in bf16_stages
            prepared = self._prepare(entry, stage, wants_bf16, native_deform_conv, winograd)
            if wants_bf16 and not prepared.bf16 and native_deform_conv:
                warnings.warn(
                    f"{entry.file}: its deformable convolutions are not in the shape this "
                    "version exports, so the decoder runs in fp32 (backbone and encoder in "
                    "bf16); re-export with this version of hodor-export for a bf16 decoder",
                    RuntimeWarning,
                    stacklevel=2,
                )
            if stage == "decoder":
                self.deform_convs_rewritten = prepared.deform_convs
                self.deform_columns_convs = prepared.columns_convs
            self.winograd_convs += prepared.winograd_convs
            self.winograd_ops_convs += prepared.winograd_ops_convs
            self.stage_precisions[stage] = "bf16" if prepared.bf16 else "fp32"
            hint = {"INFERENCE_PRECISION_HINT": "bf16" if prepared.bf16 else "f32"}
            try:
                compiled = self._compile(prepared, {**properties, **hint})
            except RuntimeError as exc:  # OpenVINO reports every load or compile failure as RuntimeError
                if not isinstance(prepared.source, Path):
                    raise self._cannot_compile(entry, exc) from None
                # A damaged cached graph: dropped, and the graph rewritten again in memory.
                reason = " ".join(str(exc).split())
                logger.warning("ignoring the damaged cached graph %s: %s", prepared.source, reason)
                prepared.source.unlink(missing_ok=True)
                prepared = self._prepare(entry, stage, wants_bf16, native_deform_conv, winograd, cached=False)
                try:
                    compiled = self._compile(prepared, {**properties, **hint})
                except RuntimeError as again:
                    raise self._cannot_compile(entry, again) from None
            self.compiled[stage] = compiled
            self.requests[stage] = compiled.create_infer_request()
            if static_shapes and stage in STATIC_SHAPE_STAGES:
                options = {k: v for k, v in {**properties, **hint}.items() if k != "CACHE_DIR"}
                again = (entry, stage, wants_bf16, native_deform_conv, winograd)
                load = functools.partial(self._model_to_reshape, prepared, *again)
                self._reshapable[stage] = (load, options)
                self._recent[stage] = deque(maxlen=STATIC_SHAPES_SPAN)
                self._static[stage] = OrderedDict()
        self.startup_s = time.perf_counter() - start

    def _prepare(
        self,
        entry: GraphEntry,
        stage: str,
        wants_bf16: bool,
        native_deform_conv: bool,
        winograd: bool,
        cached: bool = True,
    ) -> _Prepared:
        """``stage``'s graph as OpenVINO gets it: read (and checked), then rewritten in one pass
        (the decoder's deformable convolutions as OpenVINO's own; then, in fp32, the dense 3x3
        convolutions as Winograd). With a cache directory the graph is kept there, keyed by the
        exported graph's sha256 and the rewrites asked for: a later start skips the rewriting, and
        OpenVINO finds its compiled model by the kept file's path without reading the graph."""
        graph = read_graph(self.export_dir, entry)
        deform = native_deform_conv and stage == "decoder"
        ops = self.ops_library is not None
        columns = deform and ops and wants_bf16 and self._deform_columns
        files = None
        if cached and self.cache_dir is not None:
            key = json.dumps(
                [
                    entry.sha256,
                    REWRITES_VERSION,
                    stage,
                    deform,
                    winograd,
                    wants_bf16,
                    columns,
                    ops,
                    self._bf16_tile,
                    self._fp32_tile,
                ]
            )
            stem = f"{Path(entry.file).stem}.{hashlib.sha256(key.encode()).hexdigest()[:16]}"
            files = (self.cache_dir / f"{stem}.onnx", self.cache_dir / f"{stem}.json")
            found = _kept_graph(*files)
            if found is not None:
                self._note_deform_convs(found)
                return found
        if deform or winograd:
            prepared = _rewritten(
                graph, stage, wants_bf16, deform, winograd, columns, ops, self._bf16_tile, self._fp32_tile
            )
        else:
            prepared = _Prepared(graph, 0, 0, _compiles_in_bf16(wants_bf16, stage, deform_convs=0))
        self._note_deform_convs(prepared)
        return _keep_graph(prepared, *files) if files is not None else prepared

    def _note_deform_convs(self, prepared: _Prepared) -> None:
        """A graph with ``DeformConv`` nodes needs their conversion registered before it is read,
        one with the columns operation its library."""
        if prepared.deform_convs > prepared.columns_convs and not self._deform_extension_added:
            from hodor.engine.backends.native_deform_conv import openvino_deform_conv

            self._core.add_extension(openvino_deform_conv())
            self._deform_extension_added = True
        if (prepared.columns_convs or prepared.winograd_ops_convs) and self.ops_library is None:
            raise HodorError("internal: a graph with the engine's operations but no library loaded for them")

    def _ops_library(self) -> Path | None:
        """The engine's operations' library (built on first use), loaded into this backend's
        OpenVINO; or None with a warning saying why, and what runs instead: in fp32, Winograd in
        graph operations (slower); in bf16, OpenVINO's own operations (fp32 deformable
        convolutions, direct 3x3 convolutions)."""
        from hodor.engine.backends.openvino_ops import ExtensionUnavailable, extension_library

        try:
            for attempt in range(2):
                library = extension_library()
                try:
                    self._core.add_extension(str(library))
                except RuntimeError as exc:
                    # A damaged file is built again once; a cache on storage that does not allow
                    # running code fails both times.
                    reason = " ".join(str(exc).split())[:200]
                    if attempt == 0:
                        library.unlink(missing_ok=True)
                    continue
                return library
            raise ExtensionUnavailable(f"OpenVINO cannot load {library}: {reason}")
        except ExtensionUnavailable as exc:
            self.ops_unavailable = str(exc)
            instead = (
                "the bf16 decoder's deformable convolutions keep OpenVINO's fp32 kernel and the 3x3 "
                "convolutions run direct; everything else runs in bf16"
                if self.precision == "bf16"
                else "the 3x3 convolutions run as Winograd in plain graph operations, slower"
            )
            warnings.warn(
                f"the engine's OpenVINO operations are unavailable ({exc}): {instead}",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    def _model_to_reshape(self, prepared: _Prepared, *again: Any) -> Any:
        """The graph of ``prepared`` as an OpenVINO model, for fixed-shape compilations; prepared
        again in memory (``again``: :meth:`_prepare`'s arguments) if its kept file has gone since
        the start (a cache directory cleaned while running)."""
        if isinstance(prepared.source, Path):
            try:
                return self._core.read_model(str(prepared.source))
            except (RuntimeError, OSError):
                prepared = self._prepare(*again, cached=False)
        return self._core.read_model(prepared.source)

    @staticmethod
    def _cannot_compile(entry: GraphEntry, exc: Exception) -> HodorError:
        return HodorError(
            f"OpenVINO {_import_openvino().__version__} cannot compile {entry.file} "
            f"({' '.join(str(exc).split())[:300]}); re-export with this version of hodor-export"
        )

    def _compile(self, prepared: _Prepared, options: dict[str, Any]) -> Any:
        if isinstance(prepared.source, Path):
            # From the path, OpenVINO's model cache is looked up by the file's path (whose name holds
            # the rewrite's key) without reading the graph.
            return self._core.compile_model(str(prepared.source), "CPU", options)
        return self._core.compile_model(self._core.read_model(prepared.source), "CPU", options)

    # ------------------------------------------------------------------ the seam

    def _infer(
        self, stage: str, feeds: dict[str, np.ndarray], share_outputs: bool = False
    ) -> list[torch.Tensor]:
        # The inputs are only read during this synchronous call, so OpenVINO may use them in place;
        # the outputs are copied out of the request's buffers, which the next call overwrites
        # (unless ``share_outputs``: then they are those buffers).
        compiled, request = self._executable(stage, feeds)
        results = request.infer(feeds, share_inputs=True, share_outputs=share_outputs)
        self._last_request[stage] = request
        return [torch.from_numpy(results[output]) for output in compiled.outputs]

    def backbone_transient(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`backbone`, its features the request's own output buffers instead of copies: valid
        until the next ``backbone`` or ``backbone_transient`` call (the loop uses them within one
        step). Saves copying them, 32 MB a frame at 480p."""
        f4, f8 = self._infer("backbone", host_feeds({"images": images}), share_outputs=True)
        return f4, f8

    def profile(self, stage: str) -> list[tuple[str, str, str, float]]:
        """OpenVINO's per-node times of ``stage``'s last call (compiled with ``PERF_COUNT``):
        ``(node name, node type, kernel, milliseconds)`` for each node that ran."""
        request = self._last_request.get(stage)
        if request is None:
            raise HodorError(f"the {stage} has not run yet")
        return [
            (p.node_name, p.node_type, p.exec_type, p.real_time.total_seconds() * 1e3)
            for p in request.get_profiling_info()
            if p.status == p.Status.EXECUTED
        ]

    def _executable(self, stage: str, feeds: dict[str, np.ndarray]) -> tuple[Any, Any]:
        """The compiled model and request for ``feeds``: a fixed-shape compilation when these shapes
        came often enough lately (made now, at the :data:`STATIC_SHAPES_AFTER`-th of the stage's last
        :data:`STATIC_SHAPES_SPAN` calls), else the shape-free one."""
        if stage not in self._reshapable:
            return self.compiled[stage], self.requests[stage]
        shapes = tuple((name, array.shape) for name, array in feeds.items())
        recent = self._recent[stage]
        recent.append(shapes)  # every call, compiled for or not: the span is of calls
        kept = self._static[stage]
        if shapes in kept:
            kept.move_to_end(shapes)
            return kept[shapes]
        if recent.count(shapes) < STATIC_SHAPES_AFTER:
            return self.compiled[stage], self.requests[stage]
        model, options = self._reshapable[stage]
        start = time.perf_counter()
        try:
            if callable(model):  # read once, at the first fixed-shape compilation
                model = model()
                self._reshapable[stage] = (model, options)
            fixed = model.clone()
            fixed.reshape({name: list(shape) for name, shape in shapes})
            compiled = self._core.compile_model(fixed, "CPU", options)
        except RuntimeError as exc:  # never expected; the shape-free graph still runs these shapes
            del self._reshapable[stage]
            warnings.warn(
                f"OpenVINO could not compile the {stage} for fixed input shapes "
                f"({' '.join(str(exc).split())[:200]}); it keeps its shape-free compilation",
                RuntimeWarning,
                stacklevel=4,
            )
            return self.compiled[stage], self.requests[stage]
        self.static_compile_s += time.perf_counter() - start
        self.static_compiles += 1
        kept[shapes] = (compiled, compiled.create_infer_request())
        if len(kept) > STATIC_SHAPES_KEPT:
            kept.popitem(last=False)
        return kept[shapes]

    def _logits(self, logits: torch.Tensor) -> torch.Tensor:
        # OpenVINO's max over an all -inf history (an object with no valid slot) gives the lowest finite
        # float, where the seam promises -inf; no real logit comes near it.
        return logits.masked_fill_(logits <= _LOWEST, float("-inf"))


@dataclass(frozen=True)
class _Prepared:
    """A stage's graph for OpenVINO: its bytes, or the path of its rewritten form in the cache;
    how many deformable and Winograd convolutions were rewritten; whether it compiles in bf16."""

    source: bytes | Path
    deform_convs: int
    winograd_convs: int
    bf16: bool
    columns_convs: int = 0
    winograd_ops_convs: int = 0


def _compiles_in_bf16(wants_bf16: bool, stage: str, deform_convs: int) -> bool:
    """Whether a stage asked for in bf16 compiles in bf16: not a decoder whose deformable
    convolutions were not rewritten (the exported form's absolute sampling positions cannot take it)."""
    return wants_bf16 and (stage != "decoder" or deform_convs > 0)


def _rewritten(
    graph: bytes,
    stage: str,
    wants_bf16: bool,
    deform: bool,
    winograd: bool,
    columns: bool = False,
    ops: bool = False,
    bf16_tile: int = BF16_WINOGRAD_TILE,
    fp32_tile: int = FP32_WINOGRAD_TILE,
) -> _Prepared:
    """The rewrites on ``graph``, parsed once and serialised once (the bytes unchanged when none
    applies). A decoder whose deformable convolutions are not in the exporter's shape keeps its
    exported form, in fp32 (its absolute sampling positions cannot take bf16). With ``columns``
    a bf16 decoder's deformable convolutions become sampled columns and a bf16 product; with
    ``ops`` (the engine's operations loaded) the dense 3x3 convolutions' Winograd runs through them
    (F(6x6, 3x3) in fp32, F(3x3, 3x3) in bf16; without, F(4x4, 3x3) in graph operations in fp32
    and direct convolutions in bf16)."""
    try:
        import onnx
    except ImportError:
        raise HodorError(
            "the openvino backend rewrites the export's graphs with the onnx package, which is not "
            "installed: pip install 'hodor-engine[openvino]'"
        ) from None

    from hodor.engine.backends.group_norm import rewrite_group_norms
    from hodor.engine.backends.native_deform_conv import UnexpectedGraph, rewrite_deform_convs
    from hodor.engine.backends.pixel_rows import (
        rewrite_head_transposes,
        rewrite_map_views,
        rewrite_pixel_transposes,
    )
    from hodor.engine.backends.winograd_conv import rewrite_winograd_convs, rewrite_winograd_ops

    model = onnx.load_from_string(graph)
    deform_convs = 0
    if deform:
        try:
            deform_convs = rewrite_deform_convs(model)
        except UnexpectedGraph:
            pass  # the model is left untouched
    bf16 = _compiles_in_bf16(wants_bf16, stage, deform_convs)
    columns_convs = 0
    if columns and bf16 and deform_convs:
        from hodor.engine.backends.deform_columns import rewrite_as_columns

        columns_convs = rewrite_as_columns(model)
    # F(6x6, 3x3) in fp32; in bf16 F(3x3, 3x3), larger tiles' transformed values losing too much
    # there (see winograd_conv).
    winograd_convs = winograd_ops_convs = 0
    # The backbone's maps reach its two FPN convolutions as OpenVINO's sums of a lateral and an
    # upsampled level, kept channels first, which its Transpose to channels last handled slowly:
    # there the operations read and write channels first (bf16 backbone 400 against 415 ms,
    # benchmarks/RESULTS.md). The decoder's maps come channels last, where that costs more.
    nchw = stage == "backbone"
    if winograd and not bf16 and ops:
        winograd_convs = winograd_ops_convs = rewrite_winograd_ops(
            model, tile=fp32_tile, bf16=False, nchw=nchw
        )
    elif winograd and not bf16:
        winograd_convs = rewrite_winograd_convs(model)
    elif winograd and bf16 and ops:
        winograd_convs = winograd_ops_convs = rewrite_winograd_ops(
            model, tile=bf16_tile, bf16=True, nchw=nchw
        )
    # Group normalisations as OpenVINO's MVN, in bf16 only (in fp32 its MVN moves the decoder's
    # logits by 1.3e-4 from PyTorch's, against 5e-6 as exported).
    merged_means = rewrite_group_norms(model) if bf16 else 0
    # Maps to pixel rows and back, and keys into heads, with the transpositions OpenVINO runs
    # fastest (bit for bit the same): the encoder's rows transposed once, not once per projection;
    # the decoder layers' outputs back to maps, and the keys into heads, by 4-D transpositions.
    pixel_rows = rewrite_pixel_transposes(model) + rewrite_map_views(model) + rewrite_head_transposes(model)
    if deform_convs or winograd_convs or merged_means or pixel_rows:
        graph = model.SerializeToString()
    return _Prepared(graph, deform_convs, winograd_convs, bf16, columns_convs, winograd_ops_convs)


def _kept_graph(graph_file: Path, about_file: Path) -> _Prepared | None:
    """The graph :func:`_keep_graph` kept, or None when none is (or what it says is unreadable)."""
    try:
        about = json.loads(about_file.read_text())
        counts = (int(about["deform_convs"]), int(about["winograd_convs"]))
        bf16 = bool(about["bf16"])
        columns_convs = int(about["columns_convs"])
        winograd_ops_convs = int(about["winograd_ops_convs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not graph_file.is_file():
        return None
    return _Prepared(graph_file, *counts, bf16, columns_convs, winograd_ops_convs)


def _keep_graph(prepared: _Prepared, graph_file: Path, about_file: Path) -> _Prepared:
    """Keep ``prepared`` in the cache (the graph, then what was rewritten, each file whole or not
    at all); returns it with the kept file as its source. A failed write keeps the bytes."""
    assert isinstance(prepared.source, bytes)
    about = {
        "deform_convs": prepared.deform_convs,
        "winograd_convs": prepared.winograd_convs,
        "bf16": prepared.bf16,
        "columns_convs": prepared.columns_convs,
        "winograd_ops_convs": prepared.winograd_ops_convs,
    }
    try:
        with atomic_write(graph_file) as tmp:
            tmp.write_bytes(prepared.source)
        with atomic_write(about_file) as tmp:
            tmp.write_text(json.dumps(about))
    except OSError as exc:
        logger.warning("could not keep the graph at %s: %s", graph_file, exc)
        return prepared
    return replace(prepared, source=graph_file)


def open_openvino_backend(
    export_dir: Path,
    device: str | None,
    overrides: ConfigOverrides | None = None,
    precision: str | None = None,
) -> OpenVinoBackend:
    """``hodor.engine.backends.base.ExportOpener`` for ``openvino``; it also takes a run-time
    ``precision`` (``fp32`` or ``bf16``)."""
    manifest = load_manifest(export_dir, verify=False)
    config = overrides.apply(manifest.hodor_config) if overrides is not None else None
    return OpenVinoBackend(export_dir, device=device, config=config, precision=precision)
