"""Whether an export's engines can run here, judged before anything is deserialised.

TensorRT (data-centre) has no header API: a plan runs only with the TensorRT version and the
GPU model that built it, which the manifest's record names. TensorRT for RTX reads an engine's
header and says whether it fits this GPU and driver, and why not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hodor.engine.backends.manifest import STAGES, Manifest, TensorRTRecord
from hodor.engine.backends.tensorrt.flavours import FLAVOUR_LABELS, CapturingLogger, Flavour, load_flavour
from hodor.errors import HodorError


@dataclass(frozen=True)
class GpuInfo:
    """The CUDA device an engine would run on."""

    name: str
    compute_capability: str  # "sm_86"

    @classmethod
    def of(cls, device: torch.device) -> GpuInfo:
        major, minor = torch.cuda.get_device_capability(device)
        return cls(name=torch.cuda.get_device_name(device), compute_capability=f"sm_{major}{minor}")


@dataclass(frozen=True)
class EngineCheck:
    """Verdict on one engine file. ``problem`` is a sentence when it cannot run here."""

    ok: bool
    problem: str | None = None
    suboptimal: bool = False


_DIAGNOSTIC_WORDS = {
    "VERSION_MISMATCH": "it was built by another version",
    "UNSUPPORTED_CC": "this GPU's compute capability is not among its targets",
    "OLD_CUDA_DRIVER": "the NVIDIA driver is too old (update it)",
    "OLD_CUDA_RUNTIME": "the CUDA runtime is too old",
    "INSUFFICIENT_GPU_MEMORY": "the GPU has too little memory for it",
    "MALFORMED_ENGINE": "the file is damaged or not an engine",
    "CUDA_ERROR": "CUDA reported an error while checking it",
}


def header_diagnostics(flavour: Flavour, diagnostics: int) -> list[str]:
    """Names of the bits set in an ``EngineInvalidityDiagnostics`` mask."""
    members = flavour.module.EngineInvalidityDiagnostics.__members__
    return [name for name, bit in members.items() if diagnostics & int(bit)]


def check_engine_header(
    flavour: Flavour, path: Path, record: TensorRTRecord, gpu: GpuInfo | None
) -> EngineCheck:
    """Whether the engine at ``path`` fits this machine, judged before deserialising it.

    With no GPU (``gpu is None``) only the file's form can be judged: TensorRT for RTX's
    header check still tells a malformed file, but whether it fits a GPU needs one.
    """
    if not path.is_file():
        return EngineCheck(False, f"{path.name} is missing")
    if record.flavour != flavour.name:
        return EngineCheck(False, f"{path.name} was built by {FLAVOUR_LABELS[record.flavour]}")
    if flavour.name == "tensorrt":
        # No header API: a plan runs only with the same TensorRT version on the same GPU model.
        if record.version != flavour.version:
            return EngineCheck(
                False,
                f"{path.name} was built by TensorRT {record.version}, this is TensorRT {flavour.version}",
            )
        if gpu is not None and gpu.compute_capability not in record.targets:
            return EngineCheck(
                False,
                f"{path.name} was built on {record.gpu} ({', '.join(record.targets)}), "
                f"this GPU is {gpu.name} ({gpu.compute_capability})",
            )
        return EngineCheck(True)

    trt = flavour.module
    runtime = trt.Runtime(CapturingLogger(flavour, quiet=("Error reading CUDA GPU properties",)))
    with open(path, "rb") as f:
        header = f.read(int(runtime.engine_header_size))
    validity, diagnostics = runtime.get_engine_validity(header)
    names = header_diagnostics(flavour, int(diagnostics))
    if "MALFORMED_ENGINE" in names:
        return EngineCheck(False, f"{path.name}: {_DIAGNOSTIC_WORDS['MALFORMED_ENGINE']}")
    if gpu is None:
        # Without a CUDA device the header check reports INVALID with no reason set.
        return EngineCheck(True)
    if validity == trt.EngineValidity.INVALID:
        reasons = "; ".join(_DIAGNOSTIC_WORDS.get(n, n.lower()) for n in names) or "no reason given"
        return EngineCheck(
            False,
            f"{path.name} (TensorRT for RTX {record.version}, targets {', '.join(record.targets)}) does not "
            f"fit {gpu.name} ({gpu.compute_capability}) with TensorRT for RTX {flavour.version}: {reasons}",
        )
    return EngineCheck(True, suboptimal=validity == trt.EngineValidity.SUBOPTIMAL)


def probe_engines(export_dir: Path, manifest: Manifest, device: torch.device | None = None) -> str | None:
    """``None`` when this export's engines can run here, else a sentence saying why not.

    Cheap (imports the flavour and reads engine headers, deserialises nothing): for
    ``--backend auto`` to decide between TensorRT and ONNX Runtime.
    """
    record = manifest.tensorrt
    if record is None:
        return "the export has no TensorRT engines (hodor-export --tensorrt on builds them)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is available"
    try:
        flavour = load_flavour(record.flavour)
    except HodorError as e:
        return str(e)
    device = device or torch.device("cuda")
    gpu = GpuInfo.of(device)
    with torch.cuda.device(device):  # the header check judges the current device
        for stage in STAGES:
            entry = record.engines.get(stage)
            if entry is None:
                return f"the manifest lists no {stage} engine"
            verdict = check_engine_header(flavour, Path(export_dir) / entry.file, record, gpu)
            if not verdict.ok:
                return verdict.problem
    return None
