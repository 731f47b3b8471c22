"""The three stages run by ONNX Runtime from an export directory (``hodor-run --backend onnxruntime``).

CPU execution provider by default. With ``onnxruntime-gpu`` installed (instead of
``onnxruntime``: the two conflict) and ``--device cuda``, the TensorRT and CUDA providers are
used, CPU as the fallback; tensors then still cross the seam through host memory.

Sessions are created once, from graph bytes whose sha256 is checked against the manifest as
they are read (``hodor.engine.backends.manifest.read_graph``), with full graph optimisation and
one intra-op thread per usable core, whose idle threads sleep rather than spin. On the CPU
the optimised graphs are saved in ``ort-cache/`` inside the export directory, keyed by the
original graph's sha256, the ONNX Runtime version and the CPU's features (full optimisation
rewrites the graph for the CPU at hand), and later sessions load them without optimising again;
entries no start has loaded for :data:`~hodor.engine.backends.export_files.CACHE_IDLE_DAYS` days
(another version's, another CPU's) are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hodor.config import HodorConfig
from hodor.engine.backends.base import ConfigOverrides
from hodor.engine.backends.export_files import cpu_flags, mark_used, prune_idle, writable_cache_dir
from hodor.engine.backends.graph_seam import HostGraphSeam
from hodor.engine.backends.manifest import STAGES, GraphEntry, Manifest, load_manifest, read_graph
from hodor.engine.io.files import atomic_write
from hodor.errors import HodorError

logger = logging.getLogger(__name__)

CACHE_DIR_NAME = "ort-cache"
CACHED_GRAPH_NAME = re.compile(r"[^/]+\.[0-9a-f]{16}\.onnx")
"""The names of the optimised graphs kept in the cache (``<stage>.<key>.onnx``)."""
GPU_HINT = "pip install hodor-engine[onnxruntime-gpu] (in place of onnxruntime)"


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise HodorError(
            "ONNX Runtime is not installed: pip install hodor-engine[onnxruntime] "
            "(or hodor-engine[onnxruntime-gpu] for NVIDIA GPUs)"
        ) from None
    return ort


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _providers(ort: Any, device: torch.device, export_dir: Path, entry: GraphEntry) -> list:
    """Execution providers for one graph on ``device``, most specific first."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise HodorError(
            f"--device {device} needs ONNX Runtime's CUDA provider, which this installation lacks "
            f"(it has {', '.join(available)}): {GPU_HINT}, or use --device cpu"
        )
    index = device.index or 0
    providers: list = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    if "TensorrtExecutionProvider" in available:
        # Its engines are cached beside the graphs, with profiles spanning the manifest's limits.
        trt = {
            "device_id": index,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(export_dir / "ort-trt-cache"),
        }
        for key, k in (
            ("trt_profile_min_shapes", 0),
            ("trt_profile_opt_shapes", 1),
            ("trt_profile_max_shapes", 2),
        ):
            trt[key] = ",".join(f"{n}:{'x'.join(map(str, shapes[k]))}" for n, shapes in entry.profile.items())
        providers.insert(0, ("TensorrtExecutionProvider", trt))
    return providers


class OnnxRuntimeBackend(HostGraphSeam):
    """Implements ``hodor.engine.backends.base.Backend`` over the export's ONNX graphs."""

    name = "onnxruntime"

    def __init__(
        self,
        export_dir: str | Path,
        device: str | torch.device | None = None,
        config: HodorConfig | None = None,
        precision: str | None = None,
        threads: int | None = None,
        manifest: Manifest | None = None,
        cache_dir: str | Path | None = None,
        cache: bool = True,
        spinning: bool = False,
    ) -> None:
        """``config`` overrides the manifest's (e.g. run-time ``--min-dim``); ``precision`` picks the
        graphs: default fp16 on a GPU when the export has them, else fp32 (the CPU provider lacks fp16
        kernels for much of the network, and runs fp32 faster anyway). ``cache_dir``: where optimised
        graphs are kept (default ``ort-cache/`` in the export directory; CPU only), ``cache=False``
        keeps none. ``spinning``: whether idle intra-op threads spin (ONNX Runtime's own default) or sleep
        (the default here: spinning threads take the cores from the runtime's torch work between the
        stages and from other processes; sleeping ran whole frames 1.07-1.23x faster on a 2-core machine).
        ``manifest``: the export's, when the caller has already read it.
        ``startup_s`` records how long reading, checking and loading the graphs took."""
        start = time.perf_counter()
        ort = _import_ort()
        self.export_dir = Path(export_dir)
        # Graphs are checked against their sha256 as they are read, below, not here.
        self.manifest = manifest or load_manifest(self.export_dir, verify=False)
        self.device = torch.device(device if device is not None else "cpu")
        self.config = config or self.manifest.hodor_config
        if precision is None:
            on_gpu = self.device.type == "cuda"
            precision = "fp16" if on_gpu and "fp16" in self.manifest.precisions else "fp32"
        self.precision = precision
        self.threads = threads or usable_cores()
        self.spinning = spinning
        self.cache_dir: Path | None = None
        if cache and self.device.type == "cpu":
            self.cache_dir = writable_cache_dir(
                Path(cache_dir) if cache_dir is not None else self.export_dir / CACHE_DIR_NAME
            )

        self.sessions: dict[str, Any] = {}
        for stage in STAGES:
            entry = self.manifest.graph(stage, precision)
            providers = _providers(ort, self.device, self.export_dir, entry)
            graph = read_graph(self.export_dir, entry)
            try:
                self.sessions[stage] = self._session(ort, entry, graph, providers)
            except Exception as exc:  # ORT raises its own exception types, one per failure kind
                raise HodorError(
                    f"ONNX Runtime {ort.__version__} cannot load {entry.file} on {self.device} "
                    f"({' '.join(str(exc).split())[:300]}); re-export with this version of hodor-export"
                ) from None
        if self.cache_dir is not None:  # graphs of other versions or CPUs, unused for a while
            prune_idle(self.cache_dir, CACHED_GRAPH_NAME)
        self.startup_s = time.perf_counter() - start

    def _options(self, ort: Any, optimise: bool, save_to: Path | None = None) -> Any:
        options = ort.SessionOptions()
        level = ort.GraphOptimizationLevel
        options.graph_optimization_level = level.ORT_ENABLE_ALL if optimise else level.ORT_DISABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: its warnings name internal nodes, not user problems
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if save_to is not None:
            options.optimized_model_filepath = str(save_to)
        return options

    def _session(self, ort: Any, entry: GraphEntry, graph: bytes, providers: list) -> Any:
        """A session for ``graph`` (already checked against ``entry``): from the cached optimised graph
        when there is one for this graph, ONNX Runtime version and CPU; else optimised now and cached."""
        if self.cache_dir is None:
            return ort.InferenceSession(graph, self._options(ort, optimise=True), providers=providers)
        key = json.dumps([entry.sha256, ort.__version__, "ORT_ENABLE_ALL", cpu_flags()])
        cached = (
            self.cache_dir / f"{Path(entry.file).stem}.{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
        )
        if cached.is_file():
            try:
                session = ort.InferenceSession(
                    str(cached), self._options(ort, optimise=False), providers=providers
                )
                mark_used(cached)
                return session
            except Exception as exc:  # a damaged cache entry is rebuilt, not fatal
                logger.warning("ignoring the damaged cached graph %s: %s", cached, " ".join(str(exc).split()))
        try:
            with atomic_write(cached) as tmp:
                session = ort.InferenceSession(
                    graph, self._options(ort, optimise=True, save_to=tmp), providers=providers
                )
        except OSError as exc:
            logger.warning("could not cache the optimised graph at %s: %s", cached, exc)
            return ort.InferenceSession(graph, self._options(ort, optimise=True), providers=providers)
        return session

    # ------------------------------------------------------------------ the seam

    def _infer(self, stage: str, feeds: dict[str, np.ndarray]) -> list[torch.Tensor]:
        return [torch.from_numpy(o) for o in self.sessions[stage].run(None, feeds)]


def open_onnxruntime_backend(
    export_dir: Path,
    device: str | None,
    overrides: ConfigOverrides | None = None,
    precision: str | None = None,
) -> OnnxRuntimeBackend:
    """``hodor.engine.backends.base.ExportOpener`` for ``onnxruntime``; ``precision`` picks the
    export's fp32 or fp16 graphs (default: as ``OnnxRuntimeBackend``)."""
    manifest = load_manifest(export_dir, verify=False)
    config = overrides.apply(manifest.hodor_config) if overrides is not None else None
    return OnnxRuntimeBackend(
        export_dir, device=device, config=config, precision=precision, manifest=manifest
    )
