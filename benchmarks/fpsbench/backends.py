"""The engine's backends as the benchmark builds them: one registry entry per backend.

A new backend (OpenVINO, say) is one :class:`BackendSpec` here: a name, a line saying what it is,
and a builder that returns an object implementing ``hodor.engine.backends.base.Backend`` or raises
:class:`~fpsbench.systems.Unavailable` saying why it cannot run on this machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fpsbench.systems import Unavailable, import_or_unavailable
from fpsbench.weights import ModelStore
from hodor.engine.backends.torch_backend import open_torch_backend

REFERENCE_BACKEND = "torch"
HOST_REFERENCE_BACKEND = "onnxruntime"
"""The second reference: every backend but torch is also given as a ratio to it."""


@dataclass(frozen=True)
class BuildContext:
    """What a builder may use: the device, the cached weights and exports, and the grid's extremes
    (the exports' limits must cover them)."""

    device: torch.device
    store: ModelStore
    window: int
    max_objects: int
    max_padded_side: int
    threads: int | None  # CPU threads per backend; None: each backend's own default
    max_streams: int = 1  # the most videos batched in one call (exports must take that many)

    def export(self, precision: str, tensorrt: bool) -> Any:
        return self.store.export(precision, tensorrt=tensorrt, **self._limits())

    def export_cached(self, precision: str, tensorrt: bool) -> bool:
        return self.store.export_cached(precision, tensorrt=tensorrt, **self._limits())

    def _limits(self) -> dict[str, int]:
        return {
            "max_objects": self.max_objects,
            "window": self.window,
            "max_side": self.max_padded_side,
            "max_streams": self.max_streams,
        }


@dataclass(frozen=True)
class BackendSpec:
    name: str
    description: str
    build: Callable[[BuildContext], Any]
    cpu_prior_s: float | None = None  # rough seconds per frame at min_dim 480 on 2 CPU cores
    needs_cuda: bool = False
    precision: str = "fp32"
    # hodor-run's options that run the same model the same way (for its start-up, in a fresh process)
    run_options: Callable[[BuildContext], list[str]] | None = None


def _torch_options(kernels: str, precision: str, graphs: bool) -> Callable[[BuildContext], list[str]]:
    def options(ctx: BuildContext) -> list[str]:
        argv = ["--model", str(ctx.store.checkpoint()), "--backend", "torch"]
        argv += ["--kernels", kernels, "--precision", precision]
        return argv + ([] if graphs else ["--no-cuda-graphs"])

    return options


def _export_options(
    backend: str, precision: str, tensorrt: bool, run_precision: str | None = None
) -> Callable[[BuildContext], list[str]]:
    """``run_precision``: hodor-run's ``--precision`` when it is chosen at run time (OpenVINO)."""

    def options(ctx: BuildContext) -> list[str]:
        argv = ["--model", str(ctx.export(precision, tensorrt=tensorrt)), "--backend", backend]
        return argv + (["--precision", run_precision] if run_precision else [])

    return options


def _build_torch(dtype: str) -> Callable[[BuildContext], Any]:
    def build(ctx: BuildContext) -> Any:
        if dtype == "bf16" and ctx.device.type != "cpu":
            raise Unavailable("runs on the CPU only (on a GPU, torch-triton-bf16 is the bf16 path)")
        # The real loading path (strict keys from an official-format checkpoint), as hodor-run does
        # it. Eager: plain PyTorch operators, no fused kernels, no CUDA graphs. A CPU without bf16
        # raises HodorError, which build_backends reports as the reason it was skipped.
        return open_torch_backend(
            ctx.store.checkpoint(),
            ctx.store.config,
            ctx.device.type,
            kernels="torch",
            dtype=dtype,
            cuda_graphs=False,
        )

    return build


def _build_torch_triton(dtype: torch.dtype) -> Callable[[BuildContext], Any]:
    def build(ctx: BuildContext) -> Any:
        if ctx.device.type != "cuda":
            raise Unavailable("needs a CUDA GPU (Triton kernels and CUDA graphs run on CUDA only)")
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise Unavailable(f"{torch.cuda.get_device_name()} does not support bfloat16")
        import_or_unavailable("triton", "Triton kernels")
        return open_torch_backend(
            ctx.store.checkpoint(),
            ctx.store.config,
            ctx.device.type,
            dtype=dtype,
            kernels="triton",
            cuda_graphs=True,
        )

    return build


def _build_onnxruntime(ctx: BuildContext) -> Any:
    import_or_unavailable("onnxruntime", "ONNX Runtime")
    import_or_unavailable("onnx", "the ONNX export (pip install 'hodor-engine[export]')")
    from hodor.engine.backends import onnxruntime_backend

    export_dir = ctx.export("fp32", tensorrt=False)
    if ctx.threads is not None:
        return onnxruntime_backend.OnnxRuntimeBackend(export_dir, device=ctx.device.type, threads=ctx.threads)
    return onnxruntime_backend.open_onnxruntime_backend(export_dir, ctx.device.type)


def _build_openvino(precision: str) -> Callable[[BuildContext], Any]:
    def build(ctx: BuildContext) -> Any:
        if ctx.device.type != "cpu":
            raise Unavailable("runs on the CPU only (run the benchmark with --device cpu)")
        import_or_unavailable("openvino", "OpenVINO (pip install 'hodor-engine[openvino]')")
        import_or_unavailable("onnx", "the ONNX export (pip install 'hodor-engine[export]')")
        from hodor.engine.backends.openvino_backend import OpenVinoBackend

        # bf16 on a CPU without AVX-512 BF16 or AMX raises HodorError: build_backends reports it.
        export_dir = ctx.export("fp32", tensorrt=False)
        return OpenVinoBackend(export_dir, device="cpu", precision=precision, threads=ctx.threads)

    return build


def _build_tensorrt(ctx: BuildContext) -> Any:
    if ctx.device.type != "cuda":
        raise Unavailable("needs a CUDA GPU (TensorRT engines run on NVIDIA GPUs only)")
    from hodor.engine.backends import tensorrt_backend

    if not tensorrt_backend.installed_flavours():
        raise Unavailable("no TensorRT installed: pip install hodor-engine[tensorrt]")
    return tensorrt_backend.open_tensorrt_backend(ctx.export("fp16", tensorrt=True), "cuda")


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            "torch",
            "PyTorch eager, fp32 (the reference)",
            _build_torch("fp32"),
            cpu_prior_s=1.45,
            run_options=_torch_options("torch", "fp32", graphs=False),
        ),
        BackendSpec(
            "torch-triton-fp16",
            "PyTorch + Triton kernels + CUDA graphs, fp16",
            _build_torch_triton(torch.float16),
            needs_cuda=True,
            precision="fp16",
            run_options=_torch_options("triton", "fp16", graphs=True),
        ),
        BackendSpec(
            "torch-triton-bf16",
            "PyTorch + Triton kernels + CUDA graphs, bf16",
            _build_torch_triton(torch.bfloat16),
            needs_cuda=True,
            precision="bf16",
            run_options=_torch_options("triton", "bf16", graphs=True),
        ),
        BackendSpec(
            "onnxruntime",
            "ONNX Runtime, fp32 graphs",
            _build_onnxruntime,
            cpu_prior_s=0.92,
            run_options=_export_options("onnxruntime", "fp32", tensorrt=False),
        ),
        BackendSpec(
            "openvino",
            "OpenVINO, fp32 (CPU)",
            _build_openvino("fp32"),
            cpu_prior_s=0.85,
            run_options=_export_options("openvino", "fp32", tensorrt=False, run_precision="fp32"),
        ),
        BackendSpec(
            "openvino-bf16",
            "OpenVINO, bf16 (CPU with AVX-512 BF16 or AMX; --precision bf16)",
            _build_openvino("bf16"),
            cpu_prior_s=0.5,
            precision="bf16",
            run_options=_export_options("openvino", "fp32", tensorrt=False, run_precision="bf16"),
        ),
        BackendSpec(
            "torch-bf16",
            "PyTorch eager, bf16 (CPU with AVX-512 BF16 or AMX)",
            _build_torch("bf16"),
            cpu_prior_s=0.8,
            precision="bf16",
            run_options=_torch_options("torch", "bf16", graphs=False),
        ),
        BackendSpec(
            "tensorrt",
            "TensorRT engines",
            _build_tensorrt,
            needs_cuda=True,
            precision="fp16",
            run_options=_export_options("tensorrt", "fp16", tensorrt=True),
        ),
    )
}
ALL_BACKENDS = tuple(BACKENDS)

NEEDS_EXPORT = ("onnxruntime", "openvino", "openvino-bf16", "tensorrt")
