"""Frames, masks and outputs: readers, writers and the mask-to-frame binding rules."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from hodor.engine.io import (
    OverlayWriter,
    default_palette,
    index_stems,
    open_frames,
    read_image_rgb,
    read_mask,
    rotate_to_display,
    write_mask,
)
from hodor.engine.io.binding import MaskArgument, bind_frame, load_references, parse_mask_argument
from hodor.errors import HodorError


def write_video(
    path: Path,
    frames: list[np.ndarray],
    fps: int = 10,
    rotation: int | None = None,
    codec: str = "libx264",
    fmt: str | None = None,
) -> None:
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p" if codec != "ffv1" else "yuv444p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def marker_frame(h: int = 32, w: int = 64) -> np.ndarray:
    """Grey, with a white block in the top-left corner: shows which way a frame is turned."""
    f = np.full((h, w, 3), 60, np.uint8)
    f[:8, :16] = 255
    return f


def palette_png(path: Path, ids: np.ndarray, palette: list[int]) -> Path:
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(palette)
    img.save(path)
    return path


def test_default_palette_is_the_davis_palette():
    p = np.asarray(default_palette()).reshape(256, 3)
    assert p[:6].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128]]
    assert p[255].tolist() == [224, 224, 192]


def test_mask_round_trip_keeps_ids_and_palette(tmp_path):
    ids = np.zeros((20, 30), np.uint8)
    ids[2:8, 3:9] = 5
    ids[10:, 20:] = 200
    palette = list(np.random.default_rng(0).integers(0, 256, 768))
    src = palette_png(tmp_path / "in.png", ids, palette)
    mask = read_mask(src)
    assert np.array_equal(mask.ids, ids) and mask.palette == palette
    write_mask(tmp_path / "out.png", mask.ids, mask.palette)
    back = Image.open(tmp_path / "out.png")
    assert back.mode == "P" and np.array_equal(np.asarray(back), ids)
    assert back.getpalette()[:768] == palette
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]  # no temporary left


def test_greyscale_masks_are_ids_and_rgb_masks_are_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 3, np.uint8), mode="L").save(tmp_path / "l.png")
    assert read_mask(tmp_path / "l.png").ids.max() == 3 and read_mask(tmp_path / "l.png").palette is None
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(HodorError, match="palette PNG"):
        read_mask(tmp_path / "rgb.png")


def test_write_mask_failure_leaves_nothing(tmp_path):
    with pytest.raises(HodorError, match="cannot write"):
        write_mask(tmp_path / "missing-dir" / "a.png", np.zeros((2, 2), np.uint8), default_palette())
    assert list(tmp_path.iterdir()) == []


def test_frame_directory_sorted_by_name(tmp_path):
    for name, value in [("b.png", 20), ("a.jpg", 10), ("c.PNG", 30), ("notes.txt", 0)]:
        if name.endswith("txt"):
            (tmp_path / name).write_text("x")
        else:
            Image.fromarray(np.full((8, 12, 3), value, np.uint8)).save(tmp_path / name, quality=100)
    src = open_frames(tmp_path)
    assert src.kind == "directory" and src.stems == ("a", "b", "c") and src.size == (8, 12)
    means = [round(float(f.mean())) for f in src]
    assert means == [10, 20, 30]


def test_video_frames_count_fps_and_names(tmp_path):
    frames = [np.full((32, 48, 3), 10 * i, np.uint8) for i in range(7)]
    write_video(tmp_path / "clip.mp4", frames, fps=12)
    src = open_frames(tmp_path / "clip.mp4")
    assert src.kind == "video" and len(src) == 7 and src.fps == Fraction(12)
    assert src.stems[0] == "00000" and src.stems[-1] == "00006" and src.stem(12) == "00012"
    decoded = list(src)
    assert len(decoded) == 7 and decoded[3].shape == (32, 48, 3) and decoded[3].dtype == np.uint8
    assert [round(float(f.mean()) / 10) for f in decoded] == list(range(7))


def test_video_without_a_frame_count_in_the_container(tmp_path):
    frames = [marker_frame() for _ in range(5)]
    write_video(tmp_path / "clip.mkv", frames, codec="ffv1")
    src = open_frames(tmp_path / "clip.mkv")
    assert len(src) == 5 and len(list(src)) == 5


@pytest.mark.parametrize("rotation, turns", [(90, 1), (-90, 3), (180, 2)])
def test_video_rotation_metadata_is_applied(tmp_path, rotation, turns):
    raw = marker_frame()
    write_video(tmp_path / "rot.mp4", [raw] * 2, rotation=rotation)
    src = open_frames(tmp_path / "rot.mp4")
    upright = np.rot90(raw, turns)
    assert src.size == upright.shape[:2]
    frame = next(iter(src))
    assert np.abs(frame.astype(int) - upright.astype(int)).mean() < 4


def test_rotation_helper_turns_counter_clockwise():
    a = np.arange(6).reshape(2, 3)
    assert rotate_to_display(a, 0) is a
    assert rotate_to_display(a, 90).tolist() == [[2, 5], [1, 4], [0, 3]]
    assert rotate_to_display(a, -90).tolist() == np.rot90(a, -1).tolist()
    assert rotate_to_display(a, 180).tolist() == [[5, 4, 3], [2, 1, 0]]


def test_unreadable_missing_and_empty_inputs(tmp_path):
    with pytest.raises(HodorError, match="not found"):
        open_frames(tmp_path / "nope.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video" * 50)
    with pytest.raises(HodorError, match="not a readable video"):
        open_frames(tmp_path / "junk.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HodorError, match="no frames"):
        open_frames(tmp_path / "empty")


def test_index_stems_have_at_least_five_digits():
    assert index_stems(3) == ("00000", "00001", "00002")
    assert index_stems(123457)[-1] == "123456"


def test_mask_argument_parsing_and_binding(tmp_path):
    assert parse_mask_argument("m.png@12") == MaskArgument(Path("m.png"), 12)
    assert parse_mask_argument("m.png") == MaskArgument(Path("m.png"), None)
    odd = tmp_path / "odd@3"
    odd.write_bytes(b"")
    assert parse_mask_argument(str(odd)) == MaskArgument(odd, None)  # an existing file is taken as it is
    stems = ["00000", "00001", "frame_x"]
    assert bind_frame(MaskArgument(Path("a/00001.png")), stems) == 1
    assert bind_frame(MaskArgument(Path("frame_x.png")), stems) == 2
    assert bind_frame(MaskArgument(Path("other.png")), stems) == 0
    assert bind_frame(MaskArgument(Path("00001.png"), 2), stems) == 2  # @K wins over the stem


def test_load_references_binds_merges_and_takes_the_first_palette(tmp_path):
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(frames_dir / f"{i:05d}.png")
    src = open_frames(frames_dir)
    pal_a = [7] * 768
    pal_b = [9] * 768
    a = np.zeros((10, 12), np.uint8)
    a[:3, :3] = 1
    b = np.zeros((10, 12), np.uint8)
    b[5:, 5:] = 4
    palette_png(tmp_path / "00002.png", b, pal_b)
    palette_png(tmp_path / "first.png", a, pal_a)
    palette_png(tmp_path / "extra.png", b, pal_b)
    refs = load_references(
        [str(tmp_path / "00002.png"), str(tmp_path / "first.png"), f"{tmp_path / 'extra.png'}@0"], src
    )
    assert sorted(refs.masks) == [0, 2]
    assert np.array_equal(refs.masks[0], np.where(b > 0, b, a))  # two masks on frame 0, merged
    assert refs.palette == pal_a  # frame 0's palette, though given second
    assert refs.object_ids == [1, 4]

    with pytest.raises(HodorError, match="disagree"):
        clash = a.copy()
        clash[:3, :3] = 2
        palette_png(tmp_path / "clash.png", clash, pal_a)
        load_references([str(tmp_path / "first.png"), str(tmp_path / "clash.png")], src)


@pytest.mark.parametrize("threads", [0, 1])
def test_overlay_is_a_video_at_the_source_rate(tmp_path, threads):
    writer = OverlayWriter(
        tmp_path / "overlay.mp4", Fraction(30000, 1001), 31, 45, default_palette(), threads=threads
    )
    assert writer._stream.codec_context.thread_count == threads  # 0: FFmpeg's choice
    ids = np.zeros((31, 45), np.uint8)
    ids[5:20, 5:20] = 1
    for _ in range(5):
        writer.write(np.full((31, 45, 3), 100, np.uint8), ids)
    writer.close()
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.mp4"]
    with av.open(str(tmp_path / "overlay.mp4")) as c:
        stream = c.streams.video[0]
        assert stream.average_rate == Fraction(30000, 1001)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    assert len(frames) == 5 and frames[0].shape == (32, 46, 3)  # even sizes for 4:2:0
    assert frames[0][10, 10, 0] > 100 and abs(int(frames[0][28, 40, 0]) - 100) < 6  # object 1 is red


def test_a_video_that_fails_to_decode_mid_stream_ends_there_and_says_so(tmp_path, monkeypatch):
    """Decoding raises at packet 4: the three frames before are given, then the reader stops."""
    from hodor.engine.io import frames as frames_module

    write_video(tmp_path / "clip.mp4", [marker_frame() for _ in range(6)])
    src = open_frames(tmp_path / "clip.mp4")

    class Packet:
        def __init__(self, index: int) -> None:
            self.index, self.size = index, 100

        def decode(self):
            if self.index == 3:
                raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
            return [av.VideoFrame.from_ndarray(marker_frame(), format="rgb24")]

    class Container:
        streams = type(
            "Streams", (), {"video": [type("Stream", (), {"metadata": {}, "thread_type": None})()]}
        )

        def demux(self, stream):
            return (Packet(i) for i in range(6))

        def close(self):
            pass

    monkeypatch.setattr(frames_module, "_open_container", lambda path: Container())
    reader = src.read()
    assert len(list(reader)) == 3
    short = reader.shortfall()
    assert (short.frames_written, short.frames_expected) == (3, 6)
    assert (
        short.reason == "clip.mp4 cannot be decoded after frame 3 (Invalid data found when processing input)"
    )


def test_a_whole_video_and_a_frame_directory_fall_short_of_nothing(tmp_path):
    write_video(tmp_path / "clip.mp4", [marker_frame() for _ in range(5)])
    reader = open_frames(tmp_path / "clip.mp4").read()
    assert len(list(reader)) == 5 and reader.count == 5 and reader.shortfall() is None
    (tmp_path / "frames").mkdir()
    Image.fromarray(marker_frame()).save(tmp_path / "frames" / "a.png")
    reader = open_frames(tmp_path / "frames").read()
    assert len(list(reader)) == 1 and reader.shortfall() is None


def test_masks_bind_by_number_and_a_frame_like_name_matching_none_is_an_error():
    video = index_stems(12)
    assert bind_frame(MaskArgument(Path("4.png")), video) == 4  # a number names the frame numbered so
    assert bind_frame(MaskArgument(Path("00050.png")), video) == 50  # past the end: the caller says so
    sparse = ["00000", "00005", "00010"]  # every fifth frame, as YouTube-VOS has them
    assert bind_frame(MaskArgument(Path("5.png")), sparse) == 1
    with pytest.raises(HodorError, match=r"named like a frame.*00000 \.\.\. 00010.*00007.png@K"):
        bind_frame(MaskArgument(Path("00007.png")), sparse)
    with pytest.raises(HodorError, match="named like a frame"):
        bind_frame(MaskArgument(Path("f050.png")), ["f000", "f001"])
    assert bind_frame(MaskArgument(Path("mask1.png")), ["f000", "f001"]) == 0  # not like the frames
    assert bind_frame(MaskArgument(Path("first_frame.png")), video) == 0


def test_load_references_refuses_a_numbered_mask_past_the_end(tmp_path):
    write_video(tmp_path / "clip.mp4", [marker_frame() for _ in range(12)])
    ids = np.zeros((32, 64), np.uint8)
    ids[:8, :8] = 1
    palette_png(tmp_path / "00050.png", ids, default_palette())
    with pytest.raises(HodorError, match=r"00050.png is bound to frame 50, but .* has only 12 frames"):
        load_references([str(tmp_path / "00050.png")], open_frames(tmp_path / "clip.mp4"))


def test_images_over_the_pixel_limit_are_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the limit is twice Pillow's, read at each call
    Image.fromarray(np.zeros((20, 11, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(
        HodorError, match=r"big.png: the frame is too large \(220 pixels\); at most 200 pixels"
    ):
        read_image_rgb(tmp_path / "big.png")
    Image.fromarray(np.zeros((20, 11), np.uint8), mode="L").save(tmp_path / "mask.png")
    with pytest.raises(HodorError, match="mask.png: the mask is too large"):
        read_mask(tmp_path / "mask.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "ok.png")
    assert read_image_rgb(tmp_path / "ok.png").shape == (10, 10, 3)
