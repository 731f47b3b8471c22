"""What the README and docs/design.md promise: the Python API snippet runs as written, the code's
citations of the design document point at sections that exist, and `make demo` installs only
what the demo needs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from hodor.engine.backends import registry
from hodor.engine.backends.base import ConfigOverrides
from tests.engine_fake_backend import FakeBackend, small_config

REPO = Path(__file__).resolve().parents[1]
H, W = 48, 64


def readme_block(heading: str, index: int = 0) -> str:
    """The ``index``-th ```python block under the README's ``## heading``."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[index]


def write_clip(path: str, frames: int) -> None:
    """An H.264 clip of a red box moving right over grey."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width, stream.pix_fmt = H, W, "yuv420p"
        for t in range(frames):
            image = np.full((H, W, 3), 60, np.uint8)
            image[10:30, 5 + 3 * t : 25 + 3 * t] = (230, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_the_python_api_snippet_runs_and_writes_palette_masks(tmp_path, monkeypatch):
    opened = []

    def open_fake(path, backend="auto", device=None, overrides=None, torch_options=None):
        opened.append((Path(path), device, overrides))
        return FakeBackend(
            config=(overrides or ConfigOverrides()).apply(small_config(min_dim=48, max_dim=96))
        )

    monkeypatch.setattr(registry, "open_backend", open_fake)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pth").write_bytes(b"stands in for a checkpoint")
    write_clip("video.mp4", 4)
    palette = [(7 * i) % 256 for i in range(768)]
    ids = np.zeros((H, W), np.uint8)
    ids[10:30, 5:25] = 1
    first = Image.fromarray(ids, mode="P")
    first.putpalette(palette)
    first.save("first_frame.png")

    namespace: dict = {}
    exec(compile(readme_block("Python API"), "README.md (Python API)", "exec"), namespace)

    assert opened[0][2].min_dim is not None, "the snippet shows the size option"
    written = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert written == [f"{t:05d}.png" for t in range(4)]
    mask = Image.open(tmp_path / "masks" / "00000.png")
    assert mask.mode == "P" and mask.getpalette()[:768] == palette, "masks keep the reference's palette"
    assert np.array_equal(np.asarray(mask), ids)

    # The batch snippet follows on from the first one.
    exec(compile(readme_block("Python API", 1), "README.md (Python API, many videos)", "exec"), namespace)
    for name, first_reference in (("a", 0), ("b", 2)):
        written = sorted(p.name for p in (tmp_path / "masks" / name).iterdir())
        assert written == [f"{t:05d}.png" for t in range(4)], name
        shown = np.asarray(Image.open(tmp_path / "masks" / name / f"{first_reference:05d}.png"))
        assert np.array_equal(shown, ids), name  # a reference frame shows its reference
    assert not np.asarray(Image.open(tmp_path / "masks" / "b" / "00000.png")).any()  # before b's first one
    assert namespace["batch"].names == ("cam1",) and namespace["batch"].video("cam1").frame_index == 4


def test_the_python_api_pipeline_snippet_runs_after_the_first(tmp_path, monkeypatch):
    """The README's Python API block for the pipeline runs in the first block's namespace."""
    monkeypatch.setattr(
        registry,
        "open_backend",
        lambda *args, overrides=None, **kwargs: FakeBackend(
            config=(overrides or ConfigOverrides()).apply(small_config(min_dim=48, max_dim=96))
        ),
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pth").write_bytes(b"stands in for a checkpoint")
    write_clip("video.mp4", 5)
    ids = np.zeros((H, W), np.uint8)
    ids[10:30, 5:25] = 1
    Image.fromarray(ids, mode="L").save("first_frame.png")
    text = (REPO / "README.md").read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    # The session, then the pipeline (the batch block between them is run by the test above).
    blocks = [blocks[0]] + [b for b in blocks[1:] if "run_pipeline" in b]
    assert len(blocks) == 2
    namespace: dict = {}
    for k, block in enumerate(blocks):
        exec(compile(block, f"README.md (Python API, block {k + 1})", "exec"), namespace)
    assert namespace["result"].frames == 5
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == [
        f"{t:05d}.png" for t in range(5)
    ]
    for t in range(5):
        assert (tmp_path / "out" / "masks" / f"{t:05d}.png").read_bytes() == (
            tmp_path / "masks" / f"{t:05d}.png"
        ).read_bytes()
    with av.open(str(tmp_path / "out" / "overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 5


def test_design_citations_name_sections_of_docs_design_md():
    headings = set(re.findall(r"^## (.+)$", (REPO / "docs" / "design.md").read_text(), re.M))
    cited = []
    for path in sorted((REPO / "hodor").rglob("*.py")):
        text = path.read_text()
        assert "DESIGN.md" not in text, f"{path} cites DESIGN.md, which this repository does not have"
        cited += [(path, section) for section in re.findall(r'docs/design\.md, "([^"]+)"', text)]
    assert len(cited) >= 5
    for path, section in cited:
        assert section in headings, (
            f"{path.relative_to(REPO)} cites a section docs/design.md lacks: {section}"
        )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_installs_the_runtime_only(tmp_path):
    def planned(target: str) -> list[str]:
        # -n: print the commands only; a venv path that does not exist makes every install step show.
        out = subprocess.run(
            ["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return [line for line in out.stdout.splitlines() if "pip install" in line]

    demo = planned("demo")
    assert any(line.rstrip().endswith("pip install -e .") for line in demo), demo
    assert not any("[" in line for line in demo), f"make demo installs extras: {demo}"
    assert any("'.[test]'" in line for line in planned("test"))
    cpu = subprocess.run(
        [
            "make",
            "-n",
            "demo",
            f"VENV={tmp_path / 'venv'}",
            "TORCH_INDEX=https://download.pytorch.org/whl/cpu",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout
    assert 'pip install "torch==2.13.0" --index-url "https://download.pytorch.org/whl/cpu"' in cpu
