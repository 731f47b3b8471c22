"""The native kernel library: configured and built with CMake here (no GPU needed), then
checked three ways on this machine:

* what went in: every cubin is free of register spills and fits the shared memory of an
  A100 (sm_80) or H100 (sm_90);
* its C launchers against the Python ones: with a stand-in ``libcuda.so.1`` that records
  launches (native/tests/fake_libcuda.c), each C API call must launch the same kernel
  variant with the same grid, block, tile sizes and integer arguments, and the right
  buffers in the right parameters, as the Python launcher for the same shapes;
* the C test program: it runs the kernels against a float64 reference where a GPU exists
  and exits 77 ("skipped") where none does.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import re
import shutil
import struct
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def cuda_include_dir() -> Path | None:
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda.h").exists():
            return Path(root) / "include"
    return None


def _missing() -> str | None:
    if shutil.which("cmake") is None:
        return "cmake is not installed"
    if shutil.which("cc") is None:
        return "no C compiler (cc) is installed"
    if cuda_include_dir() is None:
        return "the CUDA headers (cuda.h) are not installed; set CUDA_HOME"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install hodor-engine[triton])"
    return None


pytestmark = pytest.mark.skipif(
    _missing() is not None, reason=f"cannot build the native library: {_missing()}"
)

API = [
    "hodor_kernels_create",
    "hodor_kernels_destroy",
    "hodor_status_string",
    "hodor_kernels_last_error",
    "hodor_kernels_loaded_arch",
    "hodor_kernels_version",
    "hodor_soft_masked_attention_workspace_size",
    "hodor_soft_masked_attention",
    "hodor_pixel_descriptor_attention",
    "hodor_mask_logits",
    "hodor_masked_avg_pool_workspace_size",
    "hodor_masked_avg_pool",
    "hodor_deform_conv3x3",
    "hodor_output_id_mask",
    "hodor_encoder_masks",
]
A100_SHARED, H100_SHARED = 163 * 1024, 227 * 1024  # opt-in shared memory per block
DTYPES = {"f32": (0, torch.float32), "f16": (1, torch.float16), "bf16": (2, torch.bfloat16)}
TAIL_FAMILIES = {"tail_ids", "tail_ids_ref", "tail_enc", "tail_enc_ref"}  # fp32 only


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    build_dir = tmp_path_factory.mktemp("native-build")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    configure = subprocess.run(
        ["cmake", "-S", str(REPO), "-B", str(build_dir), *generator, f"-DHODOR_PYTHON={sys.executable}",
         f"-DHODOR_CUDA_INCLUDE_DIR={cuda_include_dir()}", "-DCMAKE_BUILD_TYPE=Release"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert configure.returncode == 0, configure.stdout + configure.stderr
    built = subprocess.run(["cmake", "--build", str(build_dir)], capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    return build_dir


@pytest.fixture(scope="module")
def fake_driver(build, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fake-driver") / "libcuda.so.1"
    source = REPO / "native" / "tests" / "fake_libcuda.c"
    flags = [
        "-shared",
        "-fPIC",
        "-O1",
        "-Wall",
        "-Werror",
        "-Wl,-soname,libcuda.so.1",
        f"-I{cuda_include_dir()}",
    ]
    cc = subprocess.run(["cc", *flags, str(source), "-o", str(out)], capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    return out


def library(build: Path) -> Path:
    return build / "libhodor_kernels.so"


def test_library_exports_the_c_api(build):
    lib = ctypes.CDLL(str(library(build)))
    for name in API:
        assert hasattr(lib, name), name
    lib.hodor_kernels_version.restype = ctypes.c_char_p
    assert lib.hodor_kernels_version() == b"0.1.0"
    exported = subprocess.run(
        ["nm", "-D", "--defined-only", str(library(build))], capture_output=True, text=True
    )
    if exported.returncode == 0:  # nothing but the API leaks out (images and helpers are hidden)
        symbols = {
            line.split()[-1] for line in exported.stdout.splitlines() if " T " in line or " D " in line
        }
        assert symbols <= set(API), symbols - set(API)


def test_every_kernel_built_for_both_architectures(build):
    images = json.loads((build / "gen" / "kernels.json").read_text())
    built = {(im["family"], im["variant"], im["dtype"], im["arch"]) for im in images}
    families = {(im["family"], im["variant"]) for im in images}
    expected = {"sma", "sma_merge", "pda", "ml", "pool", "pool_merge", "dc"} | TAIL_FAMILIES
    assert {f for f, _ in families} == expected
    for family, variant in families:
        for dt in ("f32",) if family in TAIL_FAMILIES else DTYPES:
            for arch in (80, 90, 0):  # 0: the PTX fallback
                assert (family, variant, dt, arch) in built, (family, variant, dt, arch)


def test_cubins_have_no_spills_and_fit_shared_memory(build):
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip("triton's bundled cuobjdump is missing: cannot read register use")
    for im in json.loads((build / "gen" / "kernels.json").read_text()):
        if im["arch"] == 0:
            continue
        limit = A100_SHARED if im["arch"] == 80 else H100_SHARED
        assert im["shared"] <= limit, f"{im['path']}: {im['shared']} bytes of shared memory > {limit}"
        usage = subprocess.run(
            [str(cuobjdump), "--dump-resource-usage", im["path"]], capture_output=True, text=True
        )
        m = re.search(r"REG:(\d+) STACK:(\d+).*LOCAL:(\d+)", usage.stdout)
        assert m, usage.stdout + usage.stderr
        assert m.group(2) == "0" and m.group(3) == "0", f"{im['path']} spills: {m.group(0)}"


def test_c_test_program(build):
    run = subprocess.run([str(build / "hodor_kernels_test")], capture_output=True, text=True, timeout=600)
    if torch.cuda.is_available():
        assert run.returncode == 0, run.stdout + run.stderr
        assert "PASSED" in run.stdout
    else:
        # Without a GPU the program must say so and exit with the skip code, not fail or pass.
        assert run.returncode == 77, run.stdout + run.stderr
        assert run.stdout.startswith("SKIP: no CUDA")
    ctest = subprocess.run(["ctest", "--test-dir", str(build)], capture_output=True, text=True)
    assert ctest.returncode == 0, ctest.stdout


def test_c_test_program_fails_when_kernels_compute_nothing(build, fake_driver):
    # With the stand-in driver the whole harness runs but no kernel computes anything: every
    # numerical check must fail, and only the argument-rejection check pass.
    env = {**os.environ, "LD_LIBRARY_PATH": f"{fake_driver.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    run = subprocess.run(
        [str(build / "hodor_kernels_test")], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert "loaded sm_90 cubins" in lines[0]
    checks = [line for line in lines if line.startswith(("ok ", "FAIL "))]
    assert len(checks) == 27 and all(line.startswith("FAIL ") for line in checks), run.stdout
    assert lines[-1] == "FAILED: 27 check(s) failed"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a CUDA driver")
def test_create_without_a_driver_says_so(build):
    code = (
        f"import ctypes; lib = ctypes.CDLL({str(library(build))!r}); h = ctypes.c_void_p(); "
        "lib.hodor_status_string.restype = ctypes.c_char_p; st = lib.hodor_kernels_create(ctypes.byref(h)); "
        "print(st, lib.hodor_status_string(st).decode())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if "libcuda" in out.stdout and out.stdout.startswith("1 "):
        return
    pytest.fail(f"expected HODOR_ERROR_NO_DRIVER (1), got {out.stdout!r} {out.stderr!r}")


@pytest.mark.parametrize("arch", [80, 90])
def test_c_launchers_match_python_launchers(build, fake_driver, arch):
    # A fresh process: the stand-in driver must be the first libcuda.so.1 loaded there.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        problems = pool.apply(
            compare_launchers, (str(library(build)), str(fake_driver), str(build / "gen"), arch)
        )
    assert not problems, "\n".join(problems)


# ---- the comparison, run in a child process ---------------------------------------------------

ADDR = {
    name: (i + 1) << 28
    for i, name in enumerate(
        ("q", "k", "v", "mask", "scale", "out", "invalid", "ws")
        + ("labels", "hidden", "user", "ids", "grid", "bg")  # the runtime tail's inputs and outputs
    )
}
SMS = {80: 108, 90: 132}


class FakeLaunch(ctypes.Structure):
    _fields_ = [
        ("module", ctypes.c_int),
        ("grid", ctypes.c_uint * 3),
        ("block", ctypes.c_uint * 3),
        ("shared", ctypes.c_uint),
        ("num_params", ctypes.c_int),
        ("params", ctypes.c_uint64 * 64),
    ]


class Recorder:
    """Stands in for a Triton kernel in the Python launchers: records each launch."""

    def __init__(self, kernel, log):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append((self.kernel, tuple(grid) + (1,) * (3 - len(grid)), args, kwargs))

        return launch


def python_launches(module_name: str, call, inputs: dict[str, torch.Tensor], arch: int, out_roles=("out",)):
    """Run a Python launcher with recording kernels; returns the launches, each with its
    pointer arguments replaced by the roles the C call uses (input names, ``("ws", offset)``;
    the launcher's outputs, one tensor or a tuple, take ``out_roles``)."""
    import importlib

    module = importlib.import_module(module_name)
    log: list = []
    module.launchable = lambda kernel, device: Recorder(kernel, log)
    module.sm_count = lambda device: SMS[arch]
    out = call()
    roles = {t.data_ptr(): name for name, t in inputs.items()}
    for role, tensor in zip(out_roles, out if isinstance(out, tuple) else (out,), strict=True):
        roles[tensor.data_ptr()] = role
    workspace: dict[int, int] = {}
    offset = 0
    launches = []
    for kernel, grid, args, kwargs in log:
        named = {}
        for name, value in zip(kernel.arg_names, args, strict=False):
            if isinstance(value, torch.Tensor):
                ptr = value.data_ptr()
                if ptr not in roles and ptr not in workspace:
                    workspace[ptr] = offset  # the C launchers lay scratch tensors out in this order
                    offset += (value.numel() * value.element_size() + 15) // 16 * 16
                named[name] = roles.get(ptr, ("ws", workspace.get(ptr)))
            else:
                named[name] = value
        launches.append((kernel.fn.__name__, grid, named, kwargs))
    return launches


def compare_launchers(lib_path: str, fake_path: str, gen_dir: str, arch: int) -> list[str]:
    fake = ctypes.CDLL(fake_path, mode=ctypes.RTLD_GLOBAL)
    fake.fake_get_launch.restype = ctypes.POINTER(FakeLaunch)
    optin = A100_SHARED if arch == 80 else H100_SHARED
    fake.fake_set_device(arch // 10, 0, SMS[arch], optin)
    lib = ctypes.CDLL(lib_path)
    lib.hodor_kernels_last_error.restype = ctypes.c_char_p
    for name in ("hodor_soft_masked_attention_workspace_size", "hodor_masked_avg_pool_workspace_size"):
        getattr(lib, name).restype = ctypes.c_size_t
    images = [im for im in json.loads((Path(gen_dir) / "kernels.json").read_text()) if im["arch"] == arch]
    handle = ctypes.c_void_p()
    problems: list[str] = []
    status = lib.hodor_kernels_create(ctypes.byref(handle))
    if status != 0:
        return [f"hodor_kernels_create -> {status}: {lib.hodor_kernels_last_error(handle)}"]
    if lib.hodor_kernels_loaded_arch(handle) != arch:
        problems.append(f"loaded arch {lib.hodor_kernels_loaded_arch(handle)}, want {arch}")
    if fake.fake_num_modules() != len(images):
        return problems + [f"{fake.fake_num_modules()} modules loaded, {len(images)} images for sm_{arch}"]
    for i, im in enumerate(images):
        fake.fake_set_kinds(i, "".join("p" if kind == "ptr" else "i" for _, kind in im["params"]).encode())
        want = im["shared"] if im["shared"] > 48 * 1024 else 0
        if fake.fake_dynamic_shared(i) != want:
            problems.append(
                f"{im['name']} v{im['variant']} {im['dtype']}: dynamic shared memory not set to {want}"
            )

    u64, i32 = ctypes.c_uint64, ctypes.c_int

    def c_launches(fn, *args):
        fake.fake_clear_launches()
        st = getattr(lib, fn)(handle, None, *args)
        if st != 0:
            problems.append(f"{fn} -> {st}: {lib.hodor_kernels_last_error(handle).decode()}")
        out = []
        for j in range(fake.fake_num_launches()):
            rec = fake.fake_get_launch(j).contents
            im = images[rec.module]
            named = {}
            for (name, kind), raw in zip(im["params"], rec.params[: rec.num_params], strict=True):
                if kind == "ptr":
                    base = max((a for a in ADDR.values() if a <= raw), default=0)
                    role = next(k for k, a in ADDR.items() if a == base) if base else raw
                    named[name] = ("ws", raw - base) if role == "ws" else role
                elif kind == "f32":
                    named[name] = struct.unpack("<f", struct.pack("<I", raw & 0xFFFFFFFF))[0]
                else:
                    named[name] = ctypes.c_int32(raw & 0xFFFFFFFF).value
            out.append((im, tuple(rec.grid), tuple(rec.block), rec.shared, named))
        return out

    def compare(what, c, py, ignore=()):
        if len(c) != len(py):
            problems.append(f"{what}: {len(c)} C launches, {len(py)} Python launches")
            return
        for (im, grid, block, shared, named), (pname, pgrid, pnamed, kwargs) in zip(c, py, strict=True):
            tag = f"{what} {im['name']}"
            if im["name"] != pname:
                problems.append(f"{tag}: C launched {im['name']}, Python {pname}")
            if grid != pgrid:
                problems.append(f"{tag}: grid {grid} != {pgrid}")
            if block != (32 * im["num_warps"], 1, 1) or shared != im["shared"]:
                problems.append(f"{tag}: block {block}, shared {shared} disagree with the image")
            if kwargs.get("num_warps", 4) != im["num_warps"]:
                problems.append(f"{tag}: {im['num_warps']} warps, Python {kwargs.get('num_warps')}")
            for key, value in im["constexprs"].items():
                if key in kwargs and kwargs[key] != value:
                    problems.append(f"{tag}: {key} = {value}, Python {kwargs[key]}")
                if key in pnamed and pnamed[key] != value:  # unit strides: constexpr in C, runtime in Python
                    problems.append(f"{tag}: {key} = {value}, Python passes {pnamed[key]}")
            for key, value in named.items():
                if key in ignore:  # a pointer its variant never reads: C passes 0, Python a placeholder
                    continue
                if pnamed.get(key) != value:
                    problems.append(f"{tag}: {key} = {value}, Python {pnamed.get(key)}")

    import importlib

    # By module path: the package re-exports functions under the modules' names.
    sma, pda, ml, mp = (
        importlib.import_module(f"hodor.kernels.{name}")
        for name in ("soft_masked_attention", "pixel_descriptor_attention", "mask_logits", "masked_avg_pool")
    )

    def ptrs(*roles: str) -> list[ctypes.c_uint64]:
        return [u64(ADDR[r]) for r in roles]

    size = ctypes.c_size_t
    c = 256
    for dt, (code, dtype) in DTYPES.items():

        def zeros(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype)

        for b, nq, n in ((1, 13, 6480), (1, 40, 6480), (2, 13, 1344)):
            t = {"q": zeros(b, nq, c), "k": zeros(b, n, c), "v": zeros(b, n, c)}
            t |= {"mask": zeros(b, nq, n, dtype=torch.float32), "scale": zeros(8, dtype=torch.float32)}
            call = partial(sma.soft_masked_attention_triton, t["q"], t["k"], t["v"], t["mask"], t["scale"])
            ws = lib.hodor_soft_masked_attention_workspace_size(handle, b, nq, n, code)
            args = ptrs("q", "k", "v", "mask", "scale", "out", "ws") + [size(ws), i32(b), i32(nq), i32(n)]
            compare(
                f"soft_masked_attention {dt} B={b} Q={nq} N={n}",
                c_launches("hodor_soft_masked_attention", i32(code), *args),
                python_launches(sma.__name__, call, t, arch),
            )
        for b, n, nk in ((1, 6480, 104), (1, 6480, 200), (2, 1344, 64)):
            t = {"q": zeros(b, n, c), "k": zeros(b, nk, c), "v": zeros(b, nk, c)}
            t["invalid"] = zeros(b, nk, dtype=torch.bool)
            call = partial(pda.pixel_descriptor_attention_triton, t["q"], t["k"], t["v"], t["invalid"])
            args = ptrs("q", "k", "v", "invalid", "out") + [i32(b), i32(n), i32(nk)]
            compare(
                f"pixel_descriptor_attention {dt} B={b} N={n} K={nk}",
                c_launches("hodor_pixel_descriptor_attention", i32(code), *args),
                python_launches(pda.__name__, call, t, arch),
            )
        for b, qd, hist, hw in ((1, 13, 1, (120, 216)), (1, 25, 8, (120, 216)), (2, 13, 17, (32, 48))):
            # Roles: features travel as "q", descriptors as "k".
            t = {
                "q": zeros(b, c, *hw),
                "k": zeros(b, qd, hist, c),
                "invalid": zeros(b, qd, hist, dtype=torch.bool),
            }
            call = partial(ml.mask_logits_triton, t["q"], t["k"], t["invalid"], zeros(b, 1, *hw))
            args = ptrs("q", "k", "invalid", "out") + [i32(b), i32(qd), i32(hist), i32(hw[0] * hw[1])]
            compare(
                f"mask_logits {dt} B={b} Qd={qd} T={hist}",
                c_launches("hodor_mask_logits", i32(code), *args, i32(1 + qd), i32(1)),
                python_launches(ml.__name__, call, t, arch),
            )
        for b, m, n in ((1, 13, 6480), (1, 41, 6480), (2, 10, 1344)):
            t = {"q": zeros(b, c, n), "mask": zeros(b, m, n, dtype=torch.float32)}
            call = partial(mp.masked_avg_pool_triton, t["q"], t["mask"], 9)
            ws = lib.hodor_masked_avg_pool_workspace_size(handle, b, m, n, code)
            args = ptrs("q", "mask", "out", "ws") + [size(ws), i32(b), i32(m), i32(n), i32(9)]
            compare(
                f"masked_avg_pool {dt} B={b} M={m} N={n}",
                c_launches("hodor_masked_avg_pool", i32(code), *args),
                python_launches(mp.__name__, call, t, arch),
            )

    dc, rt = (importlib.import_module(f"hodor.kernels.{name}") for name in ("deform_conv", "runtime_tail"))
    # CPU tensors stand in for CUDA ones here: take the tiles the launchers pick on CUDA.
    dc.launch_config = lambda o, dtype, device: dc.deform_conv_config(o, dtype)
    cuda_tail_config = rt.tail_config
    rt.tail_config = lambda q, device, encoder=False: cuda_tail_config(q, torch.device("cuda"), encoder)
    for dt, (code, dtype) in DTYPES.items():
        for b, h, w in ((1, 60, 108), (2, 16, 24)):
            t = {
                "q": torch.zeros(b, h, w, c, dtype=dtype).permute(0, 3, 1, 2),  # channels last
                "k": torch.zeros(b, 18, h, w, dtype=dtype),
                "v": torch.zeros(9 * c, c, dtype=dtype),
                "scale": torch.zeros(c, dtype=dtype),
            }
            weight = torch.zeros(c, c, 3, 3, dtype=dtype)
            call = partial(dc.deform_conv2d_triton, t["q"], t["k"], weight, t["scale"], packed_weight=t["v"])
            compare(
                f"deform_conv3x3 {dt} B={b} {h}x{w}",
                c_launches("hodor_deform_conv3x3", i32(code), *ptrs("q", "k", "v", "scale", "out"), b, h, w),
                python_launches(dc.__name__, call, t, arch),
            )
    reference_inputs = ("labels_ptr", "is_ref_ptr", "hidden_ptr", "user_ptr")
    for q, (h4, w4), (rh, rw), (fh, fw) in (
        (14, (120, 216), (480, 854), (480, 854)),
        (26, (32, 48), (128, 180), (360, 507)),
        (60, (20, 24), (72, 96), (50, 61)),
    ):
        hp, wp, h8, w8 = 4 * h4, 4 * w4, h4 // 2, w4 // 2
        for refs in (False, True):
            t = {
                "q": torch.zeros(1, q, h4, w4),
                "labels": torch.zeros(hp, wp, dtype=torch.int32),
                "mask": torch.zeros(q, dtype=torch.uint8),
                "hidden": torch.zeros(q, dtype=torch.uint8),
                "user": torch.zeros(fh, fw, dtype=torch.uint8),
                "ids": torch.zeros(q, dtype=torch.uint8),
                "grid": torch.zeros(9, h8, w8),
            }
            override = rt.ReferenceOverride(t["labels"], t["mask"]) if refs else None
            call = partial(
                rt.output_id_mask, t["q"], (hp, wp), (rh, rw), (fh, fw), t["ids"], override,
                t["hidden"] if refs else None, t["user"] if refs else None,
            )  # fmt: skip
            given = [u64(ADDR[r]) if refs else u64(0) for r in ("labels", "mask", "hidden", "user")]
            args = [u64(ADDR["q"]), *given, *ptrs("ids", "out"), q, h4, w4, hp, wp, rh, rw, fh, fw]
            compare(
                f"output_id_mask Q={q} refs={refs}",
                c_launches("hodor_output_id_mask", *args),
                python_launches(rt.__name__, call, t, arch),
                ignore=() if refs else reference_inputs,
            )
            call = partial(rt.encoder_masks, t["q"], (hp, wp), 10, t["grid"], override)
            args = [u64(ADDR["q"]), *given[:2], *ptrs("grid", "out", "bg"), q, 10, 9, h4, w4, hp, wp, h8, w8]
            compare(
                f"encoder_masks Q={q} refs={refs}",
                c_launches("hodor_encoder_masks", *args),
                python_launches(rt.__name__, call, t, arch, out_roles=("out", "bg")),
                ignore=() if refs else reference_inputs[:2],
            )

    # Broken rules come back as errors, with a message, and launch nothing.
    fake.fake_clear_launches()
    big, q = size(1 << 30), u64(ADDR["q"])
    tail_sizes = (8, 8, 32, 32, 32, 32, 32, 32)
    bad = [
        ("65 descriptors", lib.hodor_soft_masked_attention(handle, None, 0, *[q] * 7, big, 1, 65, 6480)),
        ("pixels not /16", lib.hodor_masked_avg_pool(handle, None, 1, *[q] * 4, big, 1, 13, 6481, 9)),
        (
            "misaligned",
            lib.hodor_pixel_descriptor_attention(handle, None, 1, u64(ADDR["q"] + 2), *[q] * 4, 1, 64, 64),
        ),
        (
            "small workspace",
            lib.hodor_soft_masked_attention(handle, None, 1, *[q] * 7, size(16), 1, 13, 6480),
        ),
        ("history 33", lib.hodor_mask_logits(handle, None, 1, *[q] * 4, 1, 13, 33, 6480, 14, 1)),
        ("unknown dtype", lib.hodor_pixel_descriptor_attention(handle, None, 7, *[q] * 5, 1, 64, 64)),
        ("deform map not /16", lib.hodor_deform_conv3x3(handle, None, 1, *[q] * 5, 1, 15, 15)),
        ("65 tail channels", lib.hodor_output_id_mask(handle, None, *[q] * 7, 65, *tail_sizes)),
        ("labels alone", lib.hodor_output_id_mask(handle, None, q, q, u64(0), *[q] * 4, 14, *tail_sizes)),
        ("17 grid cells", lib.hodor_encoder_masks(handle, None, *[q] * 6, 30, 18, 17, 8, 8, 32, 32, 4, 4)),
    ]
    for what, st in bad:
        if st != 5:
            problems.append(f"{what}: status {st}, want HODOR_ERROR_INVALID_ARGUMENT (5)")
    if fake.fake_num_launches():
        problems.append(f"rejected calls launched {fake.fake_num_launches()} kernels")
    lib.hodor_kernels_destroy(handle)
    return problems
