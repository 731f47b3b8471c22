"""TensorRT backend: runs the three stage engines that ``hodor-export --tensorrt`` built.

Two flavours sit behind one adapter (docs/design.md, "Stages"): ``tensorrt`` for data-centre GPUs
(engines built on the GPU that runs them) and ``rtx``, TensorRT for RTX (built ahead of time,
kernels compiled just in time and kept in a runtime cache). The parts, one job each, are in
:mod:`hodor.engine.backends.tensorrt`; this module puts them behind the seam. It is the runtime
half and needs neither ONNX nor the exporter.

Device memory and streams belong to PyTorch: inputs and outputs are CUDA tensors bound by
address, and engines run on the current torch stream, each stream with its own execution
context.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch

from hodor.config import HodorConfig
from hodor.engine.backends.base import ConfigOverrides
from hodor.engine.backends.manifest import STAGES, Manifest, load_manifest
from hodor.engine.backends.tensorrt.flavours import installed_flavours, load_flavour
from hodor.engine.backends.tensorrt.loading import EngineLoader, RuntimeCache
from hodor.engine.backends.tensorrt.stage_engine import StageEngine
from hodor.engine.backends.tensorrt.validity import GpuInfo, probe_engines
from hodor.errors import HodorError

__all__ = ["TensorRTBackend", "installed_flavours", "open_tensorrt_backend", "probe_engines"]


class TensorRTBackend:
    """The seam (``hodor.engine.backends.base.Backend``) on the TensorRT engines of an export.

    Inputs are CUDA tensors, cast to each engine's input types; outputs come back in the
    engine's types (float32: every graph casts at its edges). Output lifetimes: the
    decoder's logits are a buffer reused by the next decode call at the same shapes (the
    session consumes them at once); backbone features and descriptors are fresh tensors,
    because the session holds a chunk's features across calls and the descriptor ring
    keeps views of the encoder's output. Several threads may drive one backend, each on its
    own CUDA stream: every stream has its own execution contexts, output buffers and graphs.
    """

    name = "tensorrt"

    def __init__(
        self,
        export_dir: Path,
        manifest: Manifest,
        device: torch.device | str | None = None,
        *,
        config: HodorConfig | None = None,
        cuda_graphs: bool = True,
        runtime_cache: bool = True,
    ) -> None:
        self.export_dir = Path(export_dir)
        self.device = torch.device(device or "cuda")
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise HodorError(
                "the tensorrt backend needs an NVIDIA GPU (--device cuda): use --backend onnxruntime here"
            )
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        record = manifest.tensorrt
        if record is None:
            raise HodorError(
                f"{self.export_dir} has no TensorRT engines: re-export with hodor-export CKPT --tensorrt on, "
                "or use --backend onnxruntime"
            )
        self.record = record
        self.manifest = manifest
        self.config = config or manifest.hodor_config
        self.flavour = load_flavour(record.flavour)
        self.gpu = GpuInfo.of(self.device)

        with torch.cuda.device(self.device):
            # TensorRT works in the current CUDA context (the runtime cache refuses to load
            # without one): make sure torch has created the device's primary context.
            torch.zeros(1, device=self.device)
            self._loader = EngineLoader(self.flavour, self.export_dir, record, self.gpu)
            engines = {stage: self._loader.load(stage) for stage in STAGES}
            self.runtime_cache: RuntimeCache | None = None
            if runtime_cache and self.flavour.name == "rtx":
                path = RuntimeCache.path_for(self.export_dir, self.gpu)
                self.runtime_cache = RuntimeCache(engines[STAGES[0]], path)
            self.stages = {
                stage: StageEngine(
                    self.flavour,
                    engine,
                    record.engines[stage].file,
                    self.device,
                    runtime_cache=self.runtime_cache.handle if self.runtime_cache is not None else None,
                    cuda_graphs=cuda_graphs,
                    reuse_outputs=stage == "decoder",
                )
                for stage, engine in engines.items()
            }
        # Kernels compiled just in time during this run are kept for the next one.
        self._finalizer = (
            weakref.finalize(self, self.runtime_cache.save) if self.runtime_cache is not None else None
        )

    def close(self) -> None:
        """Save the runtime cache (TensorRT for RTX) now rather than at exit."""
        if self._finalizer is not None:
            self._finalizer()

    # ---------------------------------------------------------------- the seam

    def check_limits(
        self, num_objects: int, history: int, height: int, width: int, streams: int = 1
    ) -> None:
        """``height``, ``width``: the padded frame; ``streams``: videos per encode or decode call.
        The engines' profiles span the manifest's limits."""
        self.manifest.limits.check(num_objects, history, height, width, streams)

    def backbone(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [B,3,H,W]`` -> ``f4 [B,256,H/4,W/4]``, ``f8 [B,256,H/8,W/8]``.

        A batch larger than the engine's profile runs in pieces: a frame's features do not
        depend on the others in its batch.
        """
        engine = self.stages["backbone"]
        step = self.manifest.limits.max_batch
        pieces = [
            self._named(engine, engine(images=images[i : i + step]), ("f4", "f8"))
            for i in range(0, images.shape[0], step)
        ]
        if len(pieces) == 1:
            return pieces[0][0], pieces[0][1]
        return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])

    def encode(
        self,
        f8: torch.Tensor,
        fg_masks: torch.Tensor,
        bg_masks: torch.Tensor,
        fg_invalid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame of each of B streams (``hodor.engine.backends.base.Backend.encode``)."""
        engine = self.stages["encoder"]
        if fg_invalid is None:
            fg_invalid = torch.zeros(fg_masks.shape[:2], dtype=torch.bool, device=fg_masks.device)
        outputs = engine(f8=f8, fg_masks=fg_masks, bg_masks=bg_masks, fg_invalid=fg_invalid)
        fg_desc, bg_desc = self._named(engine, outputs, ("fg_desc", "bg_desc"))
        return fg_desc, bg_desc

    def decode(
        self,
        f4: torch.Tensor,
        f8: torch.Tensor,
        fg_hist: torch.Tensor,
        bg_hist: torch.Tensor,
        fg_invalid: torch.Tensor,
        bg_invalid: torch.Tensor,
    ) -> torch.Tensor:
        engine = self.stages["decoder"]
        outputs = engine(
            f4=f4, f8=f8, fg_hist=fg_hist, bg_hist=bg_hist, fg_invalid=fg_invalid, bg_invalid=bg_invalid
        )
        (logits,) = self._named(engine, outputs, ("logits",))
        return logits

    @staticmethod
    def _named(
        engine: StageEngine, outputs: list[torch.Tensor], names: tuple[str, ...]
    ) -> list[torch.Tensor]:
        """The outputs in the seam's order, whatever order the engine lists them in."""
        by_name = dict(zip(engine.output_names, outputs, strict=True))
        return [by_name[n] for n in names]


def open_tensorrt_backend(
    export_dir: Path, device: str | None, overrides: ConfigOverrides | None = None
) -> TensorRTBackend:
    """``hodor.engine.backends.base.ExportOpener`` for ``tensorrt``: raises ``HodorError`` when the
    export's engines cannot run here (so ``--backend auto`` falls back to ONNX Runtime)."""
    manifest = load_manifest(export_dir)
    config = overrides.apply(manifest.hodor_config) if overrides is not None else None
    if device not in (None, "cuda") and not str(device).startswith("cuda"):
        raise HodorError(f"the tensorrt backend runs on a GPU, not on --device {device}")
    return TensorRTBackend(Path(export_dir), manifest, device, config=config)


