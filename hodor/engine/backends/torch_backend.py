"""The PyTorch backend: the plain model behind the three-stage seam, on the CPU or a CUDA GPU.

On CUDA it can run the fused Triton kernels for the descriptor computations and the
deformable convolutions (``kernels``), the network in half precision (``dtype``), the
per-frame encode and decode as CUDA graphs (``cuda_graphs``, see
:mod:`hodor.engine.backends.cuda_graphs`), and the backbone (``backbone``) eagerly, as
CUDA graphs per batch size and frame size, or compiled by ``torch.compile`` (see
:mod:`hodor.engine.backends.compiled_stage`).
Whatever the compute dtype, descriptors and logits leave the backend as float32, so the
runtime's resampling, softmax and reference override always run in float32; backbone
features stay in the compute dtype, since the runtime only hands them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hodor.config import HodorConfig
from hodor.engine.backends.compiled_stage import CompiledStage, Compiler, inductor_compiler
from hodor.engine.backends.cuda_graphs import CudaGraphRunner
from hodor.errors import HodorError

KERNEL_CHOICES = ("torch", "triton")
BACKBONE_MODES = ("eager", "graphs", "compile")
BACKBONE_GRAPHS = 2
"""Backbone graphs kept (the chunk's batch size and one other): each holds the memory of a
whole backbone pass."""
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class TorchOptions:
    """How the torch backend runs a checkpoint (``hodor-run --kernels/--precision/--no-cuda-graphs/
    --backbone``).

    ``None`` means the default: ``kernels`` triton on CUDA where Triton imports, else torch;
    ``precision`` fp32; ``cuda_graphs`` on for CUDA; ``backbone`` ``"graphs"`` on CUDA with
    CUDA graphs on, else ``"eager"`` (see :func:`resolve_backbone`).
    """

    kernels: str | None = None
    precision: str | None = None
    cuda_graphs: bool | None = None
    backbone: str | None = None

    def given(self) -> list[str]:
        """The command-line options that were set, for messages."""
        flags = []
        if self.kernels is not None:
            flags.append(f"--kernels {self.kernels}")
        if self.precision is not None:
            flags.append(f"--precision {self.precision}")
        if self.cuda_graphs is False:
            flags.append("--no-cuda-graphs")
        if self.backbone is not None:
            flags.append(f"--backbone {self.backbone}")
        return flags


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else the CPU; ``"cpu"``; ``"cuda"`` (must exist)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise HodorError(
                f"--device cuda: no CUDA GPU is usable here (torch {torch.__version__}); use --device cpu"
            )
        return torch.device("cuda")
    raise HodorError(f"unknown device {device!r}: choose cpu or cuda")


def resolve_kernels(kernels: str | None, device: torch.device) -> str:
    """``"torch"`` or ``"triton"`` for ``device``; ``None`` picks triton on CUDA where Triton imports.

    Raises ``HodorError`` when ``"triton"`` cannot run here (not installed, or the CPU
    without ``TRITON_INTERPRET=1``).
    """
    from hodor.model.kernel_choice import triton_unavailable_reason  # the model only loads for this backend

    if kernels is None:
        if device.type == "cuda" and triton_unavailable_reason(device) is None:
            return "triton"
        return "torch"
    if kernels not in KERNEL_CHOICES:
        raise HodorError(f"unknown kernels {kernels!r}: choose one of {', '.join(KERNEL_CHOICES)}")
    if kernels == "triton" and (reason := triton_unavailable_reason(device)) is not None:
        raise HodorError(f"--kernels triton: {reason}; use --kernels torch")
    return kernels


def resolve_backbone(backbone: str | None, device: torch.device, cuda_graphs: bool | None) -> str:
    """How the backbone runs: ``"eager"``, ``"graphs"`` (CUDA graphs per batch size and frame
    size) or ``"compile"`` (``torch.compile``). ``None``: graphs on CUDA unless CUDA graphs are
    switched off, else eager. The default on CUDA is the CUDA-graph path: which of graphs and
    compile is faster has not been measured on this project's GPUs yet.

    Raises ``HodorError`` for graphs off CUDA, or with CUDA graphs switched off.
    """
    if backbone is None:
        return "graphs" if device.type == "cuda" and cuda_graphs is not False else "eager"
    if backbone not in BACKBONE_MODES:
        raise HodorError(f"unknown backbone mode {backbone!r}: choose one of {', '.join(BACKBONE_MODES)}")
    if backbone == "graphs":
        if device.type != "cuda":
            raise HodorError(
                f"--backbone graphs captures CUDA graphs, which need --device cuda (not {device.type}): "
                "use --backbone eager or compile"
            )
        if cuda_graphs is False:
            raise HodorError("--backbone graphs and --no-cuda-graphs contradict each other: choose one")
    return backbone


def cpu_supports_bf16() -> bool:
    """Whether oneDNN computes bf16 natively on this CPU (AVX-512 BF16 or AMX); without it bf16 is
    emulated, slower than fp32."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and torch.backends.mkldnn.is_available() and check())


def resolve_dtype(precision: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype for ``precision`` (``fp32``, ``fp16``, ``bf16`` or a torch dtype; None: fp32).

    Raises ``HodorError`` for fp16 off CUDA, and for bf16 on a GPU or CPU without it.
    """
    if precision is None:
        return torch.float32
    if isinstance(precision, torch.dtype):
        names = {dtype: name for name, dtype in PRECISIONS.items()}
        if precision not in names:
            raise HodorError(f"unsupported dtype {precision}: choose one of {', '.join(PRECISIONS)}")
        precision = names[precision]
    if precision not in PRECISIONS:
        raise HodorError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if device.type == "cpu" and dtype == torch.bfloat16:
        if not cpu_supports_bf16():
            raise HodorError(
                "--precision bf16 on the CPU needs AVX-512 BF16 or AMX, which this CPU lacks: "
                "use --precision fp32, or --device cuda"
            )
        return dtype
    if dtype != torch.float32 and device.type != "cuda":
        raise HodorError(
            f"--precision {precision} runs on CUDA GPUs only (--device cuda); "
            f"on the {device.type} the torch backend computes in fp32 (or bf16 where the CPU has it): "
            "use --precision fp32"
        )
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise HodorError(
            f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
            "use --precision fp16"
        )
    return dtype


class TorchBackend:
    """Runs ``hodor.model.HodorNet`` eagerly, or through CUDA graphs. No limits beyond memory
    (any number of streams), except the fused mask-logits kernel's history length.

    ``net`` (a ``HodorNet``) is converted in place when ``kernels`` or ``dtype`` is given:
    its kernels set to ``kernels``, its weights cast to ``dtype``; None keeps what it has.
    ``graphs`` runs the per-frame encode and decode; None runs them eagerly.
    ``backbone``: ``"eager"``, ``"graphs"`` (through ``backbone_graphs``, by default a runner of
    its own keeping :data:`BACKBONE_GRAPHS` graphs) or ``"compile"`` (through ``compiler``,
    ``torch.compile`` with Inductor by default). ``deform_sampling``: how the torch kernels
    sample in the deformable convolutions, ``"grid"`` or ``"gather"``
    (:func:`hodor.model.deform_conv.deform_conv2d_gathered`, the same function); default
    ``"gather"`` on the CPU, where it is faster, else ``"grid"``.
    """

    name = "torch"

    def __init__(
        self,
        net: torch.nn.Module,
        config: HodorConfig,
        device: torch.device,
        *,
        kernels: str | None = None,
        dtype: torch.dtype | None = None,
        graphs: CudaGraphRunner | None = None,
        backbone: str = "eager",
        backbone_graphs: CudaGraphRunner | None = None,
        compiler: Compiler | None = None,
        deform_sampling: str | None = None,
    ) -> None:
        if backbone not in BACKBONE_MODES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONE_MODES)}, got {backbone!r}")
        self.net = net.eval()
        self.config = config
        self.device = device
        if kernels is not None:
            net.set_kernels(kernels)
        if dtype is not None:
            net.to(dtype)
        self.kernels: str = net.kernels
        self.deform_sampling: str = deform_sampling or ("gather" if device.type == "cpu" else "grid")
        net.set_deform_sampling(self.deform_sampling)
        # The post-decode follows the kernels on CUDA (hodor.engine.loop.post_decode.post_decode_for);
        # in Triton's CPU interpreter its kernels would cost seconds a frame, so the CPU takes the
        # compiled pass of hodor.engine.loop.native_tail (torch's where that cannot be built).
        self.runtime_tail: str = (
            "triton"
            if self.kernels == "triton" and device.type == "cuda"
            else "native"
            if device.type == "cpu"
            else "torch"
        )
        self.dtype: torch.dtype = next(net.parameters()).dtype
        self.graphs = graphs if graphs is not None else CudaGraphRunner(enabled=False)
        self.backbone_mode = backbone
        self.backbone_graphs = backbone_graphs or CudaGraphRunner(
            enabled=backbone == "graphs", max_graphs=BACKBONE_GRAPHS
        )
        if backbone == "graphs" and self.graphs.feeds_from is None:
            # encode and decode read the backbone graph's outputs in place (backbone_transient).
            self.graphs.feeds_from = self.backbone_graphs
        self.compiled_backbone: CompiledStage | None = None
        if backbone == "compile":
            self.compiled_backbone = CompiledStage("backbone", self._backbone, compiler or inductor_compiler)
        self._max_history: int | None = None
        if self.kernels == "triton":
            from hodor.kernels.mask_logits import MAX_HISTORY  # the fused mask logits take a bounded history

            self._max_history = MAX_HISTORY

    def backbone(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [B,3,H,W]`` float32 -> ``f4``, ``f8`` in the compute dtype."""
        return self._features(images, clone=True)

    def backbone_transient(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`backbone`, with features valid only until this backend's next backbone call
        (``hodor.engine.backends.base.Backend``): with the backbone in CUDA graphs, the graph's own
        output buffers, which the encode and decode graphs then read without a copy."""
        return self._features(images, clone=False)

    @torch.inference_mode()
    def _features(self, images: torch.Tensor, clone: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone as configured; ``clone=False`` hands out a CUDA graph's static outputs."""
        if self.compiled_backbone is not None:
            f4, f8 = self.compiled_backbone(images)
        elif self.backbone_mode == "graphs":
            f4, f8 = self.backbone_graphs("backbone", self._backbone, images, clone_outputs=clone)
        else:
            f4, f8 = self._backbone(images)
        return f4, f8

    @property
    def backbone_compile_seconds(self) -> float | None:
        """Seconds the compiled backbone spent in calls that compiled (or loaded from the
        cache), or None when it is not compiled or compiling failed."""
        stage = self.compiled_backbone
        if stage is None or stage.stats.failure is not None:
            return None
        return stage.stats.seconds

    @torch.inference_mode()
    def encode(
        self,
        f8: torch.Tensor,
        fg_masks: torch.Tensor,
        bg_masks: torch.Tensor,
        fg_invalid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Descriptors as float32 ``[B,I,256]``, ``[B,Qb,256]``; ``fg_invalid [B,I]`` marks padding."""
        if fg_invalid is None:
            # One graph per shape either way: "no padding" is a mask of zeros, not another graph.
            fg_invalid = torch.zeros(fg_masks.shape[:2], dtype=torch.bool, device=fg_masks.device)
        fg_desc, bg_desc = self.graphs("encode", self._encode, f8, fg_masks, bg_masks, fg_invalid)
        return fg_desc, bg_desc

    @torch.inference_mode()
    def decode(
        self,
        f4: torch.Tensor,
        f8: torch.Tensor,
        fg_hist: torch.Tensor,
        bg_hist: torch.Tensor,
        fg_invalid: torch.Tensor,
        bg_invalid: torch.Tensor,
    ) -> torch.Tensor:
        """Logits as float32 ``[B,1+Qb+I,2h,2w]``."""
        (logits,) = self.graphs("decode", self._decode, f4, f8, fg_hist, bg_hist, fg_invalid, bg_invalid)
        return logits

    def check_limits(self, num_objects: int, history: int, height: int, width: int, streams: int = 1) -> None:
        if self._max_history is not None and history > self._max_history:
            raise HodorError(
                f"the Triton kernels take at most {self._max_history - 1} past frames, but this frame "
                f"attends to {history - 1}: lower --temporal-window, or use --kernels torch"
            )

    # The stages as graphed: inputs converted to the compute dtype on the way in, outputs to
    # float32 on the way out, so that the conversions are captured too.

    def _backbone(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.backbone(images.to(self.dtype))

    def _encode(
        self, f8: torch.Tensor, fg_masks: torch.Tensor, bg_masks: torch.Tensor, fg_invalid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fg_desc, bg_desc = self.net.encode(f8.to(self.dtype), fg_masks, bg_masks, fg_invalid)
        return fg_desc.float(), bg_desc.float()

    def _decode(
        self,
        f4: torch.Tensor,
        f8: torch.Tensor,
        fg_hist: torch.Tensor,
        bg_hist: torch.Tensor,
        fg_invalid: torch.Tensor,
        bg_invalid: torch.Tensor,
    ) -> tuple[torch.Tensor]:
        logits = self.net.decode(
            f4.to(self.dtype), f8.to(self.dtype), fg_hist, bg_hist, fg_invalid, bg_invalid
        )
        return (logits.float(),)


def open_torch_backend(
    checkpoint: str | Path,
    config: HodorConfig,
    device: str | None = None,
    *,
    kernels: str | None = None,
    dtype: str | torch.dtype | None = None,
    cuda_graphs: bool | None = None,
    backbone: str | None = None,
    deform_sampling: str | None = None,
) -> TorchBackend:
    """Load an official ``.pth`` checkpoint (strict keys) for ``config`` on ``device``.

    ``kernels``: ``"torch"`` or ``"triton"`` (default: triton on CUDA where Triton imports);
    ``dtype``: ``"fp32"``, ``"fp16"``, ``"bf16"`` or a torch dtype (default fp32; half
    precision on CUDA only); ``cuda_graphs``: replay the per-frame stages as CUDA graphs
    (default: on CUDA); ``backbone``: ``"eager"``, ``"graphs"`` or ``"compile"`` (default:
    graphs on CUDA with CUDA graphs on, else eager; see :func:`resolve_backbone`);
    ``deform_sampling``: see :class:`TorchBackend`. Options that cannot run here raise
    ``HodorError`` before the checkpoint is read.
    """
    from hodor.model import load_hodor  # the model is only needed by this backend

    dev = resolve_device(device)
    impl = resolve_kernels(kernels, dev)
    compute_dtype = resolve_dtype(dtype, dev)
    backbone_mode = resolve_backbone(backbone, dev, cuda_graphs)
    if dev.type == "cuda":
        # TF32 convolutions would drift from the fp32 reference the masks are checked against.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    net = load_hodor(checkpoint, config, device=str(dev))
    graphs = CudaGraphRunner(enabled=dev.type == "cuda" and cuda_graphs is not False)
    return TorchBackend(
        net,
        config,
        dev,
        kernels=impl,
        dtype=compute_dtype,
        graphs=graphs,
        backbone=backbone_mode,
        deform_sampling=deform_sampling,
    )
