"""What the benchmark ran on: hardware, load, library versions, commit."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

import hodor
from fpsbench.results import CudaDevice, Machine

REPO_ROOT = Path(__file__).resolve().parents[2]
# Distributions whose versions go into the report when installed (read from their metadata,
# without importing them).
OPTIONAL_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "triton",
    "tensorrt",
    "tensorrt-rtx-cu13",
    "rf-cutie",
    "sam2",
    "hydra-core",
    "torchvision",
)


def _cpuinfo_field(name: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    return None


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "fma")
    have = set((_cpuinfo_field("flags") or "").split())
    return [f for f in wanted if f in have]


def distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def describe_machine(device: torch.device) -> Machine:
    mem_kib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    cuda = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        cuda = CudaDevice(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 2),
            multiprocessors=props.multi_processor_count,
            cuda_runtime=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return Machine(
        hostname_hash=hashlib.sha256(platform.node().encode()).hexdigest()[:12],
        platform=platform.platform(),
        python=platform.python_version(),
        cpu_model=_cpuinfo_field("model name") or platform.processor() or platform.machine(),
        cpu_flags=_cpu_flags(),
        cpu_count=os.cpu_count(),
        cpus_usable=usable_cpus(),
        load_average_at_start=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        memory_total_gib=None if mem_kib is None else round(mem_kib / 2**20, 2),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        versions={name: distribution_version(name) for name in OPTIONAL_DISTRIBUTIONS},
        hodor_engine=hodor.__version__,
        git_commit=commit or None,
        device=str(device),
        cuda=cuda,
    )


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
