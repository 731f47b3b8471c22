"""How the torch backend runs its backbone (``hodor-run --backbone eager|graphs|compile``).

On the CPU: the choice and its errors, the backbone through the CUDA-graph runner (with the
stand-in capture of ``test_engine_cuda_graphs``), the compiled path's bookkeeping and its
eager fallback with stand-in compilers, ``hodor-run`` end to end with both, and (slow) a
real Inductor compile of a tiny stage with its on-disk cache. On a GPU: graphs and compile
against eager on the parity model.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from hodor.config import config_beside
from hodor.engine import cli
from hodor.engine.backends import torch_backend
from hodor.engine.backends.compiled_stage import (
    CACHE_ENV,
    CompiledStage,
    CompileWarning,
    default_cache_dir,
    inductor_compiler,
)
from hodor.engine.backends.cuda_graphs import CudaGraphRunner
from hodor.engine.backends.torch_backend import (
    TorchBackend,
    TorchOptions,
    open_torch_backend,
    resolve_backbone,
)
from hodor.engine.loop.session import VideoSession
from hodor.errors import HodorError
from hodor.model import HodorNet
from tests.engine_fake_backend import FakeBackend, small_config
from tests.test_engine_cuda_graphs import FakeCapture
from tests.test_engine_cuda_graphs import clip as graph_clip
from tests.test_engine_torch_kernels import assert_user_error, clip, run_cli  # noqa: F401 (fixture)

NO_CUDA = "needs an NVIDIA GPU (torch.cuda.is_available() is False here)"
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def stage(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x * 2 + 1, x.sum(1, keepdim=True)


class CountingCompiler:
    """Stands in for ``torch.compile``: "compiles" lazily at the first call, as it does;
    ``fail`` makes compiling raise, at wrapping (``"wrap"``) or at a call (``"call"``, with
    ``fail_on_call`` the 1-based call that fails)."""

    def __init__(self, fail: str | None = None, fail_on_call: int = 1) -> None:
        self.fail, self.fail_on_call = fail, fail_on_call
        self.wrapped = self.calls = 0

    def __call__(self, fn):
        self.wrapped += 1
        if self.fail == "wrap":
            raise RuntimeError("torch.compile is not supported on Python 3.99")

        def compiled(*args):
            self.calls += 1
            if self.fail == "call" and self.calls == self.fail_on_call:
                raise RuntimeError("InductorError: CppCompileError: C++ compile error\nmany lines\nof log")
            return fn(*args)

        return compiled


def tiny_backend(**kwargs) -> TorchBackend:
    cfg = small_config(min_dim=32, max_dim=64)
    cfg = type(cfg)(
        input=cfg.input,
        model=type(cfg.model)(**{**cfg.model.__dict__, "encoder_layers": 1, "decoder_layers": 1}),
    )
    torch.manual_seed(0)
    return TorchBackend(HodorNet(cfg.model), cfg, CPU, **kwargs)


# ------------------------------------------------------------------------------- the choice


def test_default_and_explicit_modes():
    assert resolve_backbone(None, CPU, None) == "eager"
    assert resolve_backbone(None, CUDA, None) == "graphs"  # the default on CUDA (unmeasured choice)
    assert resolve_backbone(None, CUDA, True) == "graphs"
    assert resolve_backbone(None, CUDA, False) == "eager"  # --no-cuda-graphs covers the backbone too
    assert resolve_backbone("compile", CPU, None) == "compile"
    assert resolve_backbone("compile", CUDA, False) == "compile"
    assert resolve_backbone("eager", CUDA, None) == "eager"
    assert resolve_backbone("graphs", CUDA, True) == "graphs"


def test_modes_that_cannot_run_are_user_errors():
    with pytest.raises(HodorError, match="need --device cuda"):
        resolve_backbone("graphs", CPU, None)
    with pytest.raises(HodorError, match="contradict"):
        resolve_backbone("graphs", CUDA, False)
    with pytest.raises(HodorError, match="unknown backbone mode 'jit'"):
        resolve_backbone("jit", CPU, None)
    with pytest.raises(ValueError, match="backbone must be one of"):
        tiny_backend(backbone="jit")


def test_option_reaches_the_backend_opener(tmp_path, clip, capsys, monkeypatch):  # noqa: F811
    seen = []

    def open_fake(model_path, backend, device, overrides, torch_options=None):
        seen.append(torch_options)
        return FakeBackend(config=overrides.apply(small_config(min_dim=48, max_dim=96)))

    monkeypatch.setattr(cli, "open_backend", open_fake)
    (tmp_path / "m.pth").write_bytes(b"x")
    frames, mask = clip
    base = [frames, "--masks", mask, "--model", tmp_path / "m.pth", "--no-overlay", "--out", tmp_path / "o"]
    assert run_cli([*base, "--backbone", "compile"], capsys)[0] == 0
    assert seen == [TorchOptions(backbone="compile")]
    assert TorchOptions(backbone="eager").given() == ["--backbone eager"]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["in.mp4", "--masks", "m.png", "--backbone", "jit"])
    assert "--backbone" in capsys.readouterr().err


def test_graphs_on_the_cpu_is_one_line_error(tmp_path, clip, capsys, parity_checkpoint):  # noqa: F811
    frames, mask = clip
    code, err = run_cli(
        [frames, "--masks", mask, "--model", parity_checkpoint, "--device", "cpu", "--backbone", "graphs",
         "--out", tmp_path / "o"],
        capsys,
    )  # fmt: skip
    assert_user_error(code, err, "--backbone graphs", "--device cuda")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------- CUDA graphs


def test_backbone_through_the_graph_runner_matches_eager():
    """Per batch size: the first call eager, the second captured, later ones replayed; every
    result equal to eager, earlier results untouched by later replays."""
    runner = CudaGraphRunner(enabled=True, capture=FakeCapture(), max_graphs=2)
    graphed = tiny_backend(backbone="graphs", backbone_graphs=runner)
    eager = tiny_backend()
    g = torch.Generator().manual_seed(1)
    images = [torch.randn(b, 3, 32, 64, generator=g) for b in (1, 1, 1, 2)]
    outs = [graphed.backbone(x) for x in images]
    for i, (x, out) in enumerate(zip(images, outs, strict=True)):
        for got, want in zip(out, eager.backbone(x), strict=True):
            assert torch.equal(got, want), f"call {i}"
    assert (runner.stats.eager, runner.stats.captures, runner.stats.replays) == (2, 1, 2)
    assert graphed.graphs.stats.captures == 0  # encode/decode keep their own runner


def test_video_with_graphed_backbone_matches_eager():
    frames, masks = graph_clip(5)
    eager = list(VideoSession(tiny_backend(), chunk=2).run(frames, masks))
    runner = CudaGraphRunner(enabled=True, capture=FakeCapture(), max_graphs=2)
    backend = tiny_backend(backbone="graphs", backbone_graphs=runner)
    graphed = list(VideoSession(backend, chunk=2).run(frames, masks))
    for t, (a, b) in enumerate(zip(eager, graphed, strict=True)):
        assert np.array_equal(a, b), f"frame {t}"
    assert runner.stats.replays == 1  # chunks of 2, 2, 1 frames: the second chunk replays


# ------------------------------------------------------------------------------- torch.compile


def test_compiled_stage_compiles_once_per_shape_and_times_it():
    compiler = CountingCompiler()
    compiled = CompiledStage("stage", stage, compiler)
    for shape in ((2, 3), (2, 3), (4, 3), (2, 3)):
        x = torch.randn(*shape)
        for got, want in zip(compiled(x), stage(x), strict=True):
            assert torch.equal(got, want)
    assert compiler.wrapped == 1 and compiler.calls == 4
    assert compiled.stats.compiles == 2 and compiled.stats.seconds > 0 and compiled.stats.failure is None


@pytest.mark.parametrize(("fail", "fail_on_call"), [("wrap", 1), ("call", 1), ("call", 2)])
def test_compile_failure_warns_once_and_runs_eagerly(fail, fail_on_call):
    compiler = CountingCompiler(fail=fail, fail_on_call=fail_on_call)
    compiled = CompiledStage("backbone", stage, compiler)
    xs = [torch.randn(2, 3), torch.randn(3, 3), torch.randn(3, 3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [compiled(x) for x in xs]
    for x, out in zip(xs, outs, strict=True):
        for got, want in zip(out, stage(x), strict=True):
            assert torch.equal(got, want)
    assert [w.category for w in caught] == [CompileWarning]
    message = str(caught[0].message)
    assert "compiling the backbone with torch.compile failed" in message and "eagerly" in message
    assert "\n" not in message  # the first line of a long compiler log
    assert compiled.stats.failure is not None
    assert compiler.calls == (0 if fail == "wrap" else fail_on_call)  # nothing compiled is called again


def test_torch_backend_compile_mode():
    compiler = CountingCompiler()
    backend = tiny_backend(backbone="compile", compiler=compiler)
    eager = tiny_backend()
    x = torch.randn(1, 3, 32, 64)
    for got, want in zip(backend.backbone(x), eager.backbone(x), strict=True):
        assert torch.equal(got, want)
    assert backend.backbone_compile_seconds is not None and backend.backbone_compile_seconds > 0
    assert eager.backbone_compile_seconds is None

    failing = tiny_backend(backbone="compile", compiler=CountingCompiler(fail="call"))
    with pytest.warns(CompileWarning):
        out = failing.backbone(x)
    assert all(torch.equal(a, b) for a, b in zip(out, eager.backbone(x), strict=True))
    assert failing.backbone_compile_seconds is None


def test_hodor_run_with_compile_reports_or_falls_back(tmp_path, clip, capsys, parity_checkpoint, monkeypatch):  # noqa: F811
    """Through ``hodor-run``: a compile that works is reported in the summary; one that fails is
    a warning line, and the run goes on eagerly. Both give the same masks (the stand-in compiles
    to the eager function; the fallback is the eager function)."""
    frames, mask = clip
    base = [frames, "--masks", mask, "--model", parity_checkpoint, "--device", "cpu", "--no-overlay"]
    monkeypatch.setattr(torch_backend, "inductor_compiler", CountingCompiler())
    code = cli.main([str(a) for a in [*base, "--backbone", "compile", "--out", tmp_path / "compiled"]])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "the backbone compiles" in err and "backbone compiled in" in out

    monkeypatch.setattr(torch_backend, "inductor_compiler", CountingCompiler(fail="call"))
    code = cli.main([str(a) for a in [*base, "--backbone", "compile", "--out", tmp_path / "fallback"]])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "warning: compiling the backbone with torch.compile failed" in err and "compiled in" not in out
    pngs = sorted((tmp_path / "compiled" / "masks").iterdir())
    assert len(pngs) == 3
    for png in pngs:
        want = np.asarray(Image.open(png))
        got = np.asarray(Image.open(tmp_path / "fallback" / "masks" / png.name))
        assert np.array_equal(got, want), png.name


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "hodor-engine" / "inductor"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir().parts[-3:] == (".cache", "hodor-engine", "inductor")


@pytest.mark.slow
def test_inductor_compiles_on_the_cpu_into_the_persistent_cache(monkeypatch, tmp_path):
    """A real ``torch.compile`` (Inductor, C++ on the CPU) of a tiny stage: same results as
    eager, timed, and the FX graph cache written under the cache directory. About a minute
    on a 2-core machine, all of it compiling."""
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    torch._dynamo.reset()
    compiled = CompiledStage("tiny stage", stage, inductor_compiler)
    x = torch.randn(4, 8)
    with torch.inference_mode():
        out = compiled(x)
    assert compiled.stats.failure is None, compiled.stats.failure
    for got, want in zip(out, stage(x), strict=True):
        torch.testing.assert_close(got, want)
    assert compiled.stats.compiles == 1 and compiled.stats.seconds > 0
    cache = tmp_path / "hodor-engine" / "inductor"
    assert any((cache / "fxgraph").rglob("*")), f"nothing cached under {cache}"


# ------------------------------------------------------------------------------- on a GPU


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("mode", ["graphs", "compile"])
def test_backbone_modes_match_eager_on_cuda(parity_checkpoint, mode):
    """The parity model's backbone at batch 2 and 1 (a 128×224 frame), four calls per batch size,
    fp32: graphs replay the same kernels (relative error 1e-6, as for encode and decode); Inductor
    fuses and orders reductions its own way (1e-4, the model's per-stage limit for fp32)."""
    from hodor.kernels.testing import relative_error

    cfg = config_beside(parity_checkpoint)
    eager = open_torch_backend(parity_checkpoint, cfg, "cuda", kernels="torch", backbone="eager")
    other = open_torch_backend(parity_checkpoint, cfg, "cuda", kernels="torch", backbone=mode)
    g = torch.Generator().manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileWarning)
        for batch in (2, 1):
            for call in range(4):
                x = torch.randn(batch, 3, 128, 224, generator=g).cuda()
                for got, want in zip(other.backbone(x), eager.backbone(x), strict=True):
                    err = relative_error(got, want)
                    limit = 1e-6 if mode == "graphs" else 1e-4
                    assert err <= limit, f"{mode}, batch {batch}, call {call}: {err:.3g}"
    if mode == "graphs":
        assert other.backbone_graphs.failure is None
        assert other.backbone_graphs.stats.captures == 2 and other.backbone_graphs.stats.replays == 6
    else:
        assert other.backbone_compile_seconds is not None
