"""Engine files into engines, and TensorRT for RTX's runtime cache.

Each engine file is checked against the manifest's record and this GPU before it is
deserialised, so that a mismatch reads as a sentence (built for another GPU, by another
version) rather than as TensorRT's log. TensorRT for RTX compiles kernels just in time on first
use; its runtime cache keeps them in the export directory between runs, one file per compute
capability so that machines sharing an export do not overwrite each other's kernels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hodor.engine.backends.manifest import TensorRTRecord
from hodor.engine.backends.tensorrt.flavours import CapturingLogger, Flavour
from hodor.engine.backends.tensorrt.validity import GpuInfo, check_engine_header
from hodor.engine.io.files import atomic_write
from hodor.errors import HodorError

logger = logging.getLogger(__name__)

REEXPORT_HINT = "Re-export with hodor-export CKPT --tensorrt on, or use --backend onnxruntime"


class EngineLoader:
    """Deserialises an export's engines with one TensorRT runtime.

    Keep the loader as long as its engines: TensorRT's Python engines need their runtime alive.
    """

    def __init__(self, flavour: Flavour, export_dir: Path, record: TensorRTRecord, gpu: GpuInfo) -> None:
        self.flavour = flavour
        self.export_dir = Path(export_dir)
        self.record = record
        self.gpu = gpu
        self._log = CapturingLogger(flavour)
        self._runtime = flavour.module.Runtime(self._log)

    def load(self, stage: str) -> Any:
        """Check that ``stage``'s engine file fits this GPU and version (clear message), then load it."""
        entry = self.record.engines.get(stage)
        if entry is None:
            raise HodorError(f"{self.export_dir}/manifest.json lists no {stage} engine: re-export")
        path = self.export_dir / entry.file
        verdict = check_engine_header(self.flavour, path, self.record, self.gpu)
        if not verdict.ok:
            raise HodorError(
                f"{verdict.problem}. Re-export with hodor-export CKPT --tensorrt on (on or for this GPU), "
                "or use --backend onnxruntime"
            )
        if verdict.suboptimal:
            logger.warning("%s runs on %s but may be slow: re-export for this GPU", path.name, self.gpu.name)
        self._log.errors.clear()
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            why = "; ".join(self._log.errors[-3:]) or "no reason given"
            raise HodorError(
                f"{self.flavour.label} {self.flavour.version} could not load {path}: {why}. {REEXPORT_HINT}"
            )
        return engine


class RuntimeCache:
    """TensorRT for RTX's runtime cache (kernels compiled just in time), read from and saved to ``path``.

    ``handle`` is the TensorRT object that execution contexts are configured with; one cache
    serves every engine of an export. A file that does not fit this GPU or driver is ignored
    (the kernels are compiled afresh), and saving into an unwritable export directory only costs
    a warning: the cache is an optimisation.
    """

    def __init__(self, engine: Any, path: Path) -> None:
        self.path = Path(path)
        self.handle = engine.create_runtime_config().create_runtime_cache()
        if self.path.is_file() and not self.handle.deserialize(self.path.read_bytes()):
            logger.info("%s does not fit this GPU or driver; starting afresh", self.path.name)

    @staticmethod
    def path_for(export_dir: Path, gpu: GpuInfo) -> Path:
        return Path(export_dir) / f"runtime-cache.{gpu.compute_capability}.bin"

    def save(self) -> None:
        """Write the cache whole (temporary name, then rename)."""
        try:
            blob = bytes(memoryview(self.handle.serialize()))
            with atomic_write(self.path) as tmp:
                tmp.write_bytes(blob)
        except OSError as e:
            logger.warning("could not save the TensorRT runtime cache to %s: %s", self.path, e)
