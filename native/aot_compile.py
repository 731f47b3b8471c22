"""Compile the Triton kernels of ``hodor/kernels`` ahead of time for the native library.

    python native/aot_compile.py --out-dir build/gen [--archs 80 90] [--jobs 2]

No GPU is needed: ``triton.compile`` is given an explicit ``GPUTarget``. For every
kernel variant below, every dtype and every architecture it writes the cubin (and,
from the sm_80 build, the PTX, which the driver can JIT for newer GPUs), then:

* ``hodor_kernels_images.S``: the binaries, embedded with ``.incbin``;
* ``hodor_kernels_images.h``: per kernel family an argument struct whose fields
  follow the kernel's runtime parameters in order (the C launchers fill them by
  name, so they cannot drift from the kernels), a packer, the variants' tile
  sizes, and the image table;
* ``kernels.json``: what was built, in the image table's order (names, tile sizes,
  runtime parameters, shared memory, warps, sizes).

Fixed shapes of the native library (C launchers enforce them): 8 heads of 32
channels (C = 256); row-contiguous tensors; pixel counts multiples of 16 (any frame
padded to /32 has this at 1/8 and 1/4); at most 64 descriptors per attention call,
32 history slots, 64 pooled masks. Masks and scales are fp32, invalid flags bytes.
The deformable convolution is 3×3, 256 -> 256 channels, with a bias. The runtime-tail
kernels are fp32 only (built once, under the f32 slot), for at most 64 channels and 16
background cells; each comes as a plain variant and one with references.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Compiled kernels are needed here, never the interpreter's stand-ins.
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from hodor.kernels.deform_conv import deform_conv_config  # noqa: E402
from hodor.kernels.mask_logits import mask_logits_config  # noqa: E402
from hodor.kernels.masked_avg_pool import masked_avg_pool_config  # noqa: E402
from hodor.kernels.pixel_descriptor_attention import pixel_descriptor_attention_config  # noqa: E402
from hodor.kernels.runtime_tail import tail_config  # noqa: E402
from hodor.kernels.soft_masked_attention import soft_masked_attention_config  # noqa: E402

HEADS, HEAD_DIM, CHANNELS = 8, 32, 256
LOG2E = math.log2(math.e)
DTYPES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}  # C enum order: HODOR_F32, HODOR_F16, HODOR_BF16
PRECISION = {"f32": "ieee", "f16": "tf32", "bf16": "tf32"}
TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Family:
    """One Triton kernel and the variants of it the library carries.

    A variant serves calls up to its size class (descriptors, history slots or masks);
    its tile sizes and launch options per dtype come from the kernel module's own
    ``*_config`` function, so the library and the Python launchers use the same tiles.
    """

    name: str  # C identifier
    module: str
    kernel: str
    fixed: dict[str, object]  # constexprs common to all variants and dtypes (unit strides included)
    size_classes: list[int]
    config: Callable[[int, torch.dtype], dict[str, int]]  # constexprs + num_warps (+ num_stages)
    pointers: dict[str, str]  # pointer parameter -> "data" (the call's dtype) or a Triton type
    aligned_ints: set[str] = field(default_factory=set)  # ints promised divisible by 16
    floats: set[str] = field(default_factory=set)  # fp32 scalar parameters (the rest are i32)
    dtypes: tuple[str, ...] = tuple(DTYPES)  # the call dtypes it is built for


def _merge_config(key: str) -> Callable[[int, torch.dtype], dict[str, int]]:
    return lambda size, dtype: {key: size, "num_warps": 4}


def _tail_config(size: int, dtype: torch.dtype) -> dict[str, int]:
    """The id-mask kernel's CUDA tiles for ``size`` channels (dtype-independent: fp32 only)."""
    return tail_config(size, torch.device("cuda"))


def _tail_encoder_config(size: int, dtype: torch.dtype) -> dict[str, int]:
    return tail_config(size, torch.device("cuda"), encoder=True)


_TAIL_IDS_POINTERS = {
    "logits_ptr": "fp32",
    "labels_ptr": "i32",
    "is_ref_ptr": "u8",
    "hidden_ptr": "u8",
    "ids_ptr": "u8",
    "user_ptr": "u8",
    "out_ptr": "u8",
}
_TAIL_ENC_POINTERS = {
    "logits_ptr": "fp32",
    "labels_ptr": "i32",
    "is_ref_ptr": "u8",
    "grid_ptr": "fp32",
    "fg_ptr": "fp32",
    "bg_ptr": "fp32",
}
_TAIL_SCALES = {"up_y", "up_x", "down_y", "down_x"}
TAIL_CHANNELS = [16, 32, 64]
TAIL_MAX_CELLS = 16


FAMILIES = [
    Family(
        "sma",
        "hodor.kernels.soft_masked_attention",
        "_soft_masked_attention_kernel",
        fixed={
            "H": HEADS,
            "D": HEAD_DIM,
            "QK_SCALE": LOG2E / math.sqrt(HEAD_DIM),
            "FINAL": False,
            "stride_mn": 1,
        },
        size_classes=[16, 32, 64],
        config=soft_masked_attention_config,
        pointers={
            "q_ptr": "data",
            "k_ptr": "data",
            "v_ptr": "data",
            "mask_ptr": "fp32",
            "scale_ptr": "fp32",
            "out_ptr": "data",
            "part_acc_ptr": "fp32",
            "part_stat_ptr": "fp32",
        },
        aligned_ints={
            "stride_qb",
            "stride_qq",
            "stride_kb",
            "stride_kn",
            "stride_vb",
            "stride_vn",
            "stride_mb",
            "stride_mq",
            "stride_ob",
            "stride_oq",
        },
    ),
    Family(
        "sma_merge",
        "hodor.kernels.soft_masked_attention",
        "_soft_masked_attention_merge_kernel",
        fixed={"H": HEADS, "D": HEAD_DIM},
        size_classes=[16, 32, 64],
        config=_merge_config("BLOCK_Q"),
        pointers={"out_ptr": "data", "part_acc_ptr": "fp32", "part_stat_ptr": "fp32"},
        aligned_ints={"stride_ob", "stride_oq"},
    ),
    Family(
        "pda",
        "hodor.kernels.pixel_descriptor_attention",
        "_pixel_descriptor_attention_kernel",
        fixed={"D": HEAD_DIM, "QK_SCALE": LOG2E / math.sqrt(HEAD_DIM), "stride_ik": 1},
        size_classes=[1 << 30],  # any number of keys: they are streamed in tiles
        config=lambda size, dtype: pixel_descriptor_attention_config(64, dtype),
        pointers={"q_ptr": "data", "k_ptr": "data", "v_ptr": "data", "invalid_ptr": "u8", "out_ptr": "data"},
        aligned_ints={
            "stride_qb",
            "stride_qn",
            "stride_kb",
            "stride_kk",
            "stride_vb",
            "stride_vk",
            "stride_ob",
            "stride_on",
        },
    ),
    Family(
        "ml",
        "hodor.kernels.mask_logits",
        "_mask_logits_kernel",
        fixed={"C": CHANNELS, "SCALE": 1.0 / math.sqrt(CHANNELS), "stride_it": 1},
        size_classes=[1, 8, 32],
        config=mask_logits_config,
        pointers={"f_ptr": "data", "d_ptr": "data", "invalid_ptr": "u8", "out_ptr": "data"},
        aligned_ints={
            "P",
            "stride_fb",
            "stride_fc",
            "stride_db",
            "stride_dq",
            "stride_dt",
            "stride_ob",
            "stride_oc",
        },
    ),
    Family(
        "pool",
        "hodor.kernels.masked_avg_pool",
        "_masked_avg_pool_partial_kernel",
        fixed={"C": CHANNELS, "stride_fn": 1, "stride_mn": 1},
        size_classes=[16, 64],
        config=masked_avg_pool_config,
        pointers={
            "f_ptr": "data",
            "mask_ptr": "fp32",
            "part_sum_ptr": "fp32",
            "part_stat_ptr": "fp32",
            "part_arg_ptr": "i32",
        },
        aligned_ints={"N", "stride_fb", "stride_fc", "stride_mb", "stride_mm"},
    ),
    Family(
        "pool_merge",
        "hodor.kernels.masked_avg_pool",
        "_masked_avg_pool_merge_kernel",
        fixed={"C": CHANNELS, "BLOCK_C": 64, "stride_fn": 1},
        size_classes=[16, 64],
        config=_merge_config("BLOCK_M"),
        pointers={
            "f_ptr": "data",
            "out_ptr": "data",
            "part_sum_ptr": "fp32",
            "part_stat_ptr": "fp32",
            "part_arg_ptr": "i32",
        },
        aligned_ints={"stride_fb", "stride_fc", "stride_ob", "stride_om"},
    ),
    Family(
        "dc",
        "hodor.kernels.deform_conv",
        "_deform_conv_kernel",
        fixed={"KH": 3, "KW": 3, "HAS_BIAS": True},
        size_classes=[1 << 30],  # any map: pixels are tiled
        config=lambda size, dtype: deform_conv_config(CHANNELS, dtype),
        pointers={"x_ptr": "data", "off_ptr": "data", "w_ptr": "data", "bias_ptr": "data", "out_ptr": "data"},
        aligned_ints={"C", "O", "stride_xb", "stride_xp", "stride_fb", "stride_fk", "stride_ob", "stride_oc"},
    ),
    *(
        Family(
            name,
            "hodor.kernels.runtime_tail",
            "_output_id_mask_kernel",
            fixed={"HAS_OVERRIDE": refs, "HAS_HIDDEN": refs, "HAS_USER": refs},
            size_classes=TAIL_CHANNELS,
            config=_tail_config,
            pointers=_TAIL_IDS_POINTERS,
            floats=_TAIL_SCALES,
            dtypes=("f32",),
        )
        for name, refs in (("tail_ids", False), ("tail_ids_ref", True))
    ),
    *(
        Family(
            name,
            "hodor.kernels.runtime_tail",
            "_encoder_masks_kernel",
            fixed={"HAS_OVERRIDE": refs, "QB_PAD": TAIL_MAX_CELLS},
            size_classes=TAIL_CHANNELS,
            config=_tail_encoder_config,
            pointers=_TAIL_ENC_POINTERS,
            floats=_TAIL_SCALES,
            dtypes=("f32",),
        )
        for name, refs in (("tail_enc", False), ("tail_enc_ref", True))
    ),
]

LAUNCH_OPTIONS = ("num_warps", "num_stages")


def constexprs_of(family: Family, variant: int, dt: str) -> tuple[dict[str, object], dict[str, int]]:
    """(constexprs, launch options) of one variant in one dtype."""
    cfg = family.config(family.size_classes[variant], TORCH_DTYPES[dt])
    options = {k: v for k, v in cfg.items() if k in LAUNCH_OPTIONS}
    tiles = {k: v for k, v in cfg.items() if k not in LAUNCH_OPTIONS}
    return {**family.fixed, **tiles}, options


def load_kernel(family: Family):
    import importlib

    return getattr(importlib.import_module(family.module), family.kernel)


def runtime_params(family: Family) -> list[tuple[str, str]]:
    """(name, "ptr" | "i32" | "f32") for each parameter left after the constexprs, in kernel order."""
    kernel = load_kernel(family)
    fixed = set(constexprs_of(family, 0, "f16")[0]) | {"PRECISION"}
    out = []
    for i, name in enumerate(kernel.arg_names):
        if name in fixed:
            continue
        if kernel.params[i].is_constexpr:
            raise SystemExit(f"{family.kernel}: constexpr {name} has no value in the native build")
        kind = "ptr" if name in family.pointers else "f32" if name in family.floats else "i32"
        out.append((name, kind))
    return out


def compile_one(job: tuple[int, int, str, int]) -> dict:
    """Compile family ``fi``, variant ``vi``, dtype ``dt`` for sm_``arch``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fi, vi, dt, arch = job
    family = FAMILIES[fi]
    kernel = load_kernel(family)
    constexprs, options = constexprs_of(family, vi, dt)
    if "PRECISION" in kernel.arg_names:
        constexprs["PRECISION"] = PRECISION[dt]
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in family.pointers:
            kind = family.pointers[name]
            signature[name] = "*" + (DTYPES[dt] if kind == "data" else kind)
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in family.floats:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name in family.aligned_ints:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    md = compiled.metadata
    # The C launcher passes no scratch buffers, no clusters, no cooperative or PDL launch.
    if md.global_scratch_size or md.profile_scratch_size or md.num_ctas != 1:
        raise SystemExit(
            f"{family.kernel}: needs scratch memory or clusters, which the C launcher does not provide"
        )
    if getattr(md, "launch_cooperative_grid", False) or getattr(md, "launch_pdl", False):
        raise SystemExit(f"{family.kernel}: needs a cooperative/PDL launch, which the C launcher does not do")
    return {
        "family": family.name,
        "variant": vi,
        "dtype": dt,
        "constexprs": {k: v for k, v in constexprs.items() if type(v) in (int, bool, str)},
        "params": runtime_params(family),
        "arch": arch,
        "name": md.name,
        "num_warps": md.num_warps,
        "shared": md.shared,
        "cubin": compiled.asm["cubin"],
        "ptx": compiled.asm["ptx"] if arch == 80 else None,
    }


def c_header(images: list[dict]) -> str:
    """The generated header: families, argument structs and packers, tile tables, image table."""
    lines = [
        "/* Generated by native/aot_compile.py: the AOT-compiled Triton kernels. Do not edit. */",
        "#ifndef HODOR_KERNELS_IMAGES_H",
        "#define HODOR_KERNELS_IMAGES_H",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "#include <cuda.h>",
        "",
        f"#define HK_HEADS {HEADS}",
        f"#define HK_HEAD_DIM {HEAD_DIM}",
        f"#define HK_CHANNELS {CHANNELS}",
        f"#define HK_NUM_DTYPES {len(DTYPES)}",
        f"#define HK_MAX_VARIANTS {max(len(f.size_classes) for f in FAMILIES)}",
        "",
        "enum hk_family {",
        *[f"    HK_{f.name.upper()} = {i}," for i, f in enumerate(FAMILIES)],
        f"    HK_NUM_FAMILIES = {len(FAMILIES)}",
        "};",
        "",
    ]
    for f in FAMILIES:
        params = runtime_params(f)
        lines.append(f"/* {f.module}.{f.kernel}: runtime parameters in kernel order. */")
        lines.append(f"typedef struct hk_{f.name}_args {{")
        c_types = {"ptr": "CUdeviceptr", "i32": "int32_t", "f32": "float"}
        lines += [f"    {c_types[kind]} {name};" for name, kind in params]
        lines.append(f"}} hk_{f.name}_args;")
        lines.append(f"#define HK_{f.name.upper()}_NUM_PARAMS {len(params) + 2}")
        lines.append(
            f"/* Fills params[0 .. {len(params) + 1}]: the fields, then Triton's two scratch pointers. */"
        )
        signature = f"hk_{f.name}_args *a, CUdeviceptr *scratch, void **params"
        lines.append(f"static inline void hk_{f.name}_pack({signature}) {{")
        lines += [f"    params[{i}] = &a->{name};" for i, (name, _) in enumerate(params)]
        lines.append(f"    params[{len(params)}] = scratch;")
        lines.append(f"    params[{len(params) + 1}] = scratch;")
        lines.append("}")
        nv = len(f.size_classes)
        lines.append(f"#define HK_{f.name.upper()}_VARIANTS {nv}")
        lines.append(f"/* Variant v serves sizes up to hk_{f.name}_SIZE[v]; tiles per [variant][dtype]. */")
        lines.append(f"static const int hk_{f.name}_SIZE[{nv}] = {{{', '.join(map(str, f.size_classes))}}};")
        per = [[constexprs_of(f, v, dt)[0] for dt in DTYPES] for v in range(nv)]
        varying = [k for k, v in per[0][0].items() if type(v) is int and k not in f.fixed]
        for key in varying:
            rows = ", ".join("{" + ", ".join(str(c[key]) for c in row) + "}" for row in per)
            lines.append(f"static const int hk_{f.name}_{key}[{nv}][HK_NUM_DTYPES] = {{{rows}}};")
        for key, value in f.fixed.items():
            if type(value) is int and not key.startswith("stride"):
                lines.append(f"#define HK_{f.name.upper()}_{key} {value}")
        lines.append("")
    lines += [
        "typedef struct hk_image {",
        "    int family, variant, dtype;",
        "    int arch;  /* 80, 90: cubin for that architecture; 0: PTX for the driver to JIT */",
        "    const char *name;",
        "    int num_warps, shared;",
        "    const unsigned char *data;",
        "    size_t size;",
        "} hk_image;",
        "",
        *[f"extern const unsigned char hk_image_{i}[];" for i in range(len(images))],
        "",
        f"#define HK_NUM_IMAGES {len(images)}",
        "static const hk_image hk_images[HK_NUM_IMAGES] = {",
    ]
    family_index = {f.name: i for i, f in enumerate(FAMILIES)}
    dtype_index = {d: i for i, d in enumerate(DTYPES)}
    for i, im in enumerate(images):
        lines.append(
            f"    {{{family_index[im['family']]}, {im['variant']}, {dtype_index[im['dtype']]}, {im['arch']}, "
            f'"{im["name"]}", {im["num_warps"]}, {im["shared"]}, hk_image_{i}, {im["size"]}}},'
        )
    lines += ["};", "", "#endif", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--archs", nargs="+", type=int, default=[80, 90], help="SM versions (default: 80 90)")
    p.add_argument("--no-ptx", action="store_true", help="embed cubins only (no PTX fallback for newer GPUs)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    out: Path = args.out_dir
    (out / "images").mkdir(parents=True, exist_ok=True)

    jobs = [
        (fi, vi, dt, arch)
        for fi, f in enumerate(FAMILIES)
        for vi in range(len(f.size_classes))
        for dt in f.dtypes
        for arch in args.archs
    ]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(compile_one, jobs))
    else:
        results = [compile_one(j) for j in jobs]

    images = []
    for r in results:
        kinds = [("cubin", r["arch"], r["cubin"])]
        if r["ptx"] is not None and not args.no_ptx:
            kinds.append(("ptx", 0, r["ptx"].encode() + b"\0"))  # the driver wants PTX NUL-terminated
        for kind, arch, blob in kinds:
            path = out / "images" / f"{r['family']}.{r['variant']}.{r['dtype']}.{kind}{arch or ''}"
            path.write_bytes(blob)
            keep = ("family", "variant", "dtype", "name", "num_warps", "shared", "constexprs", "params")
            images.append({**{k: r[k] for k in keep},
                           "arch": arch, "path": path.resolve(), "size": len(blob)})  # fmt: skip

    asm = ["/* Generated by native/aot_compile.py. Do not edit. */", '.section .rodata, "a"']
    for i, im in enumerate(images):
        asm += [
            f".globl hk_image_{i}",
            f".hidden hk_image_{i}",
            ".balign 16",
            f"hk_image_{i}:",
            f'.incbin "{im["path"]}"',
        ]
    asm.append('.section .note.GNU-stack, "", @progbits')
    (out / "hodor_kernels_images.S").write_text("\n".join(asm) + "\n")
    (out / "hodor_kernels_images.h").write_text(c_header(images))
    manifest = [{k: (str(v) if isinstance(v, Path) else v) for k, v in im.items()} for im in images]
    (out / "kernels.json").write_text(json.dumps(manifest, indent=1) + "\n")
    archs = ", ".join(f"sm_{a}" for a in args.archs)
    print(f"{len(results)} kernels compiled for {archs}: {len(images)} images in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
