#!/usr/bin/env python
"""Times the public HODOR repository's own ``InferenceModel`` (the baseline for ``fps.py --official``).

    python benchmarks/official_baseline.py --checkout ~/src/HODOR --inputs frames.npz --out result.json \\
        --min-dims 480 720 --objects 1 2 4 8 [--window 7] [--repeats 5] [--config config.yaml]

``fps.py --official PATH`` runs this script in a subprocess and writes ``--inputs`` itself (the same
synthetic frames its own backends get); it is not meant to be called by hand, but can be.

Why a separate process: the public repository's import package is also called ``hodor``. This script
imports nothing from hodor-engine, puts the checkout first on ``sys.path``, and checks that the
``hodor`` it imported is the checkout's.

What it needs: a CUDA GPU (the public code calls ``.cuda()`` throughout) and the public code's own
dependencies (``einops``, ``timm``, ``torchvision``, ``pyyaml``; ``opencv-python`` only for its
``segmentation_mask`` module). Nothing is downloaded.

The pretrained-backbone stand-in: ``InferenceModel()`` insists on loading
``$HODOR_WORKSPACE_DIR/pretrained_backbones/swin_tiny_pretrained.pth`` (a ``{"state_dict": ...}``
with ``backbone.*`` Swin-T and ``neck.*`` FPN keys, loaded strictly). This script writes such a file
into a temporary workspace from the public code's own randomly initialised Swin-T + FPN
(``build_swin_fpn("tiny", pretrained=False)``) and points ``HODOR_WORKSPACE_DIR`` there; the rest
of the model keeps its random initialisation. Speed does not depend on weight values.

What is timed: ``InferenceModel.forward`` over the whole clip (backbone over every frame in batches
of 16, features parked on the host and brought back per frame, as the public code does; decode,
encode, the output resize and arg-max), with the clip already pre-processed by the public code's own
functions (BGR, resize to ``min_dim``, normalise, pad) outside the timed region. One warm-up pass,
then ``--repeats`` timed passes; FPS = frames / seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from measurements import summarize  # beside this script; imports nothing of hodor-engine

NEEDS = ("torch", "einops", "timm", "torchvision", "yaml", "cv2")


def fail(msg: str) -> None:
    print(f"official_baseline: error: {msg}", file=sys.stderr)
    sys.exit(2)


def host_peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def host_peak_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def import_checkout(checkout: Path) -> None:
    """Import the checkout's ``hodor`` package and make sure it is that one."""
    missing = []
    for name in NEEDS:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        pip = {"yaml": "pyyaml", "cv2": "opencv-python-headless"}
        fail(
            "the public HODOR code needs "
            + ", ".join(missing)
            + ": pip install "
            + " ".join(pip.get(m, m) for m in missing)
        )
    sys.path.insert(0, str(checkout))
    for name in [m for m in sys.modules if m == "hodor" or m.startswith("hodor.")]:
        del sys.modules[name]
    import hodor

    where = Path(hodor.__file__ or next(iter(hodor.__path__))).resolve()
    if checkout not in where.parents:
        fail(f"imported hodor from {where}, not from the checkout {checkout} (is it shadowed?)")


def write_backbone_stand_in(workspace: Path) -> Path:
    """The file ``InferenceModel()`` loads, made from the public code's own random Swin-T + FPN."""
    import torch
    from hodor.modelling.backbone.swin import build_swin_fpn

    swin, fpn = build_swin_fpn("tiny", pretrained=False)
    state = {f"backbone.{k}": v for k, v in swin.state_dict().items()}
    state.update({f"neck.{k}": v for k, v in fpn.state_dict().items()})
    path = workspace / "pretrained_backbones" / "swin_tiny_pretrained.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, path)
    return path


def prepare_clip(frames_rgb: np.ndarray, ids: np.ndarray, min_dim: int, base_dims: tuple[int, int]) -> dict:
    """The public data pipeline's steps (``VOSInferenceDataset`` + ``collate_fn_inference``) on a clip."""
    import torch
    import torch.nn.functional as F
    from hodor.data.utils.preprocessing import (
        collate_fn_inference,
        compute_resize_params,
        scale_and_normalize_images,
    )

    from hodor.config import cfg

    # Processing size as its inference script's --min_image_dim does it: MAX_DIM keeps its ratio.
    base_min, base_max = base_dims
    cfg.INPUT.update_param("MIN_DIM", min_dim)
    cfg.INPUT.update_param("MAX_DIM", int(round(min_dim * base_max / float(base_min))))

    images_bgr = np.ascontiguousarray(frames_rgb[..., ::-1])  # the public loader reads BGR (cv2)
    img_h, img_w = images_bgr.shape[1:3]
    new_w, new_h, _ = compute_resize_params(images_bgr[0], cfg.INPUT.MIN_DIM, cfg.INPUT.MAX_DIM)
    images = torch.from_numpy(images_bgr).permute(0, 3, 1, 2).float()
    images = F.interpolate(images, (new_h, new_w), mode="bilinear", align_corners=False)
    object_ids = [int(i) for i in np.unique(ids) if i != 0]
    masks = torch.stack([torch.from_numpy((ids == i).astype(np.uint8)) for i in object_ids])
    masks = F.interpolate(masks[None].float(), (new_h, new_w), mode="bilinear", align_corners=False)
    masks = (masks[0] > 0.5).byte()
    images = scale_and_normalize_images(
        images,
        cfg.INPUT.IMAGE_MEAN,
        cfg.INPUT.IMAGE_STD,
        invert_channels=cfg.INPUT.RGB_INPUT,
        normalize_to_unit_scale=cfg.INPUT.NORMALIZE_TO_UNIT_SCALE,
    )
    sample = collate_fn_inference([{"images": images, "ref_masks": masks}])
    # Bool rather than the loader's uint8: the same values, and newer PyTorch deprecates
    # uint8 conditions in torch.where, which the public code applies to these masks.
    container = {0: [(iid, m.bool()) for iid, m in zip(object_ids, sample["ref_masks"], strict=True)]}
    return {
        "images": sample["images"],
        "ref_masks": container,
        "resized_dims": (new_h, new_w),
        "orig_dims": (img_h, img_w),
    }


def main() -> None:
    p = argparse.ArgumentParser(description="Time the public HODOR InferenceModel (CUDA).")
    p.add_argument("--checkout", type=Path, required=True, help="checkout of the public HODOR repository")
    p.add_argument("--inputs", type=Path, required=True, help="frames_<dim> / ref_<dim>_<obj> arrays")
    p.add_argument("--out", type=Path, required=True, help="result JSON")
    p.add_argument("--min-dims", type=int, nargs="+", required=True)
    p.add_argument("--objects", type=int, nargs="+", required=True)
    p.add_argument("--window", type=int, default=7)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--config", type=Path, help="config.yaml merged over the checkout's configs/default.yaml")
    args = p.parse_args()
    checkout = args.checkout.expanduser().resolve()

    import torch

    if not torch.cuda.is_available():
        fail("needs a CUDA GPU: the public HODOR code calls .cuda() throughout")
    import_checkout(checkout)
    from hodor.inference.inference_model import build_inference_model

    from hodor.config import cfg

    if args.config is not None:
        cfg.merge_from_file(str(args.config))
    base_dims = (cfg.INPUT.MIN_DIM, cfg.INPUT.MAX_DIM)
    data = np.load(args.inputs)

    results = []
    with tempfile.TemporaryDirectory(prefix="hodor-official-") as ws:
        os.environ["HODOR_WORKSPACE_DIR"] = ws
        write_backbone_stand_in(Path(ws))
        torch.manual_seed(0)
        model = build_inference_model().cuda().eval()
        model.temporal_window = args.window
        for min_dim in args.min_dims:
            for objects in args.objects:
                clip = prepare_clip(
                    data[f"frames_{min_dim}"], data[f"ref_{min_dim}_{objects}"], min_dim, base_dims
                )
                num_frames = clip["images"].shape[0]

                def forward(clip: dict = clip) -> None:
                    with torch.no_grad():
                        model(
                            frames=clip["images"],
                            ref_masks_container=clip["ref_masks"],
                            resized_dims=clip["resized_dims"],
                            orig_dims=clip["orig_dims"],
                        )

                forward()  # warm-up: cuDNN algorithm choice, allocator growth
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                hwm = host_peak_reset()
                fps, event_ms = [], []
                for _ in range(args.repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    start.record()
                    forward()
                    end.record()
                    torch.cuda.synchronize()
                    fps.append(num_frames / (time.perf_counter() - t0))
                    event_ms.append(start.elapsed_time(end))
                results.append(
                    {
                        "min_dim": min_dim,
                        "objects": objects,
                        "frames": num_frames,
                        "padded_size": list(clip["images"].shape[-2:]),
                        "fps": dataclasses.asdict(summarize(fps)),
                        "clip_ms_cuda_events": dataclasses.asdict(summarize(event_ms)),
                        "memory": {
                            "gpu_torch_peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
                            "host_peak_rss_mib": host_peak_mib() if hwm else None,
                        },
                    }
                )
                print(
                    f"official: min_dim {min_dim}, {objects} obj: {statistics.median(fps):.2f} FPS",
                    flush=True,
                )

    report = {
        "what": "InferenceModel.forward of the public HODOR repository over a pre-processed clip",
        "checkout": str(checkout),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "window": args.window,
        "repeats": args.repeats,
        "weights": "random: the public code's own initialisation; backbone file written from it",
        "results": results,
    }
    # Written whole, then renamed. Not hodor.engine.io.files.atomic_write: this process has the
    # public repository's own ``hodor`` package on its path, so hodor-engine cannot be imported here.
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
