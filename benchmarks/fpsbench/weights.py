"""The engine's random weights and their exports, cached between runs.

Weights are random (a fixed seed): speed does not depend on weight values. They are saved once as an
official-format checkpoint and loaded through the engine's own loading path; the export backends run
an export of that checkpoint made by ``hodor-export``'s own code.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

import hodor
from fpsbench.machine import distribution_version
from hodor.config import HodorConfig
from hodor.engine.io.files import atomic_write
from hodor.model import HodorNet

WEIGHT_SEED = 0
# Export limits for the benchmark's own ONNX/TensorRT exports: enough for the grid, small enough
# that the graphs' dynamic ranges stay modest.
EXPORT_MAX_OBJECTS = 8
EXPORT_MAX_WINDOW = 16
EXPORT_MIN_SIZE = 64
EXPORT_MAX_SIZE = 1280  # the long side of a 16:9 frame at min_dim 720
EXPORT_MAX_STREAMS = 16  # hodor-export's default; more when --batch-streams asks for more


@dataclass
class ModelStore:
    """The benchmark's random ``HodorNet``, its checkpoint and its exports, under ``cache_dir``."""

    config: HodorConfig
    cache_dir: Path
    log: Callable[[str], None]
    setup_s: dict[str, float] = field(default_factory=dict)
    _checkpoint: Path | None = None

    def cache_key(self, *extra: Any) -> str:
        payload = json.dumps(
            [self.config.model.__dict__, WEIGHT_SEED, hodor.__version__, torch.__version__, *extra],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def checkpoint(self) -> Path:
        """The random weights as an official-format checkpoint (``model.pth`` + ``config.yaml``), cached."""
        if self._checkpoint is None:
            out = self.cache_dir / f"weights-{self.cache_key(source_digest('hodor.model'))}"
            ckpt = out / "model.pth"
            if not ckpt.is_file():
                out.mkdir(parents=True, exist_ok=True)
                torch.manual_seed(WEIGHT_SEED)
                model = HodorNet(self.config.model).eval()
                with atomic_write(out / "config.yaml") as tmp:
                    tmp.write_text(config_yaml(self.config))
                with atomic_write(ckpt) as tmp:
                    torch.save({"model": model.state_dict()}, tmp)
                prune_cache(self.cache_dir, "weights-")
            self._checkpoint = ckpt
        return self._checkpoint

    def _export_target(
        self, precision: str, tensorrt: bool, max_objects: int, window: int, max_side: int, max_streams: int
    ) -> tuple[list[str], Path]:
        argv = [
            "--precision",
            precision,
            "--max-objects",
            str(max(EXPORT_MAX_OBJECTS, max_objects)),
            "--max-window",
            str(max(EXPORT_MAX_WINDOW, window)),
            "--min-size",
            str(EXPORT_MIN_SIZE),
            "--max-size",
            str(max(EXPORT_MAX_SIZE, max_side)),
            "--max-streams",
            str(max(EXPORT_MAX_STREAMS, max_streams)),
            "--tensorrt",
            "on" if tensorrt else "off",
        ]
        versions = [distribution_version(d) for d in ("onnx", "onnxscript", "onnxruntime", "tensorrt")]
        if tensorrt:
            versions.append(torch.cuda.get_device_name())
        # The export traces hodor.kernels' references too.
        sources = source_digest("hodor.model", "hodor.kernels", "hodor.export")
        key = self.cache_key("export", argv, versions, sources)
        return argv, self.cache_dir / f"export-{key}.hodor"

    def export_cached(
        self,
        precision: str,
        *,
        tensorrt: bool,
        max_objects: int,
        window: int,
        max_side: int,
        max_streams: int,
    ) -> bool:
        _, out = self._export_target(precision, tensorrt, max_objects, window, max_side, max_streams)
        return (out / "manifest.json").is_file()

    def export(
        self,
        precision: str,
        *,
        tensorrt: bool,
        max_objects: int,
        window: int,
        max_side: int,
        max_streams: int,
    ) -> Path:
        """An export through ``hodor-export``'s own code, cached by config, weights, versions and
        export arguments (exporting takes longer than a quick run)."""
        argv, out = self._export_target(precision, tensorrt, max_objects, window, max_side, max_streams)
        if (out / "manifest.json").is_file():
            self.log(f"  cached export: {out}")
            return out
        from hodor.export import cli as export_cli  # needs the export extra (onnx, onnxscript)

        ckpt = self.checkpoint()
        self.log(f"  exporting ({' '.join(argv)}) into {out}; cached for later runs")
        start = time.perf_counter()
        args = export_cli.build_parser().parse_args([str(ckpt), "--out", str(out), *argv])
        export_cli.run_export(args, say=lambda line: self.log("    " + line))
        prune_cache(self.cache_dir, "export-")
        self.setup_s[f"export_{precision}{'_tensorrt' if tensorrt else ''}"] = time.perf_counter() - start
        return out


def config_yaml(cfg: HodorConfig) -> str:
    """The config in the official ``config.yaml`` layout (so the export reads what the model used)."""
    i, m = cfg.input, cfg.model
    raw = {
        "INPUT": {
            "IMAGE_MEAN": list(i.mean_bgr),
            "IMAGE_STD": list(i.std_bgr),
            "MIN_DIM": i.min_dim,
            "MAX_DIM": i.max_dim,
            "RGB_INPUT": i.rgb_input,
            "NORMALIZE_TO_UNIT_SCALE": i.normalize_to_unit_scale,
        },
        "MODEL": {
            "TRANSFORMER_PRE_NORMALIZE": m.pre_normalize,
            "ENCODER_LAYERS": m.encoder_layers,
            "DECODER_LAYERS": m.decoder_layers,
            "NUM_ATTN_HEADS": m.num_heads,
            "NUM_BG_DESCRIPTORS": m.num_bg_descriptors,
            "NUM_CATCH_ALL_QUERIES": m.num_catch_all_queries,
            "POS_ENCODINGS_IN_FMQ": m.pos_encodings_in_encoder,
            "POS_ENCODINGS_IN_FQM": m.pos_encodings_in_decoder,
        },
    }
    return yaml.safe_dump(raw, sort_keys=False)


def prune_cache(cache_dir: Path, prefix: str, keep: int = 2) -> None:
    """Remove all but the ``keep`` most recently written entries named ``prefix*``: each is about
    160 MB, and a change to the model or exporter sources makes a new one."""
    entries = sorted(cache_dir.glob(f"{prefix}*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def source_digest(*packages: str) -> str:
    """A digest of the packages' Python sources: an export made by other code is not reused."""
    h = hashlib.sha256()
    for package in packages:
        root = Path(importlib.import_module(package).__file__ or "").parent
        for path in sorted(root.rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]
