"""Strict checkpoint loading: the official format is accepted, anything else is a clear HodorError."""

from __future__ import annotations

import collections
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hodor.config import config_beside
from hodor.errors import HodorError
from hodor.model import HodorNet, load_hodor, read_state_dict


@pytest.fixture(scope="module")
def parity_state(parity_checkpoint: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(parity_checkpoint)


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def test_loads_the_parity_checkpoint_with_extra_entries(parity_checkpoint, parity_state, tmp_path) -> None:
    cfg = config_beside(parity_checkpoint)
    ckpt = _save(
        tmp_path / "full.pth",
        {"model": parity_state, "optimizer": {"state": {}, "lr": 1e-4}, "iteration": 250000},
    )
    net = load_hodor(ckpt, cfg)
    assert isinstance(net, HodorNet) and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    assert len(parity_state) == 469
    for key, value in net.state_dict().items():
        assert value.device.type == "cpu" and value.dtype == parity_state[key].dtype
        assert torch.equal(value, parity_state[key]), key


def test_half_precision_weights_are_loaded_as_float32(parity_checkpoint, parity_state, tmp_path) -> None:
    half = {k: v.half() if v.is_floating_point() else v for k, v in parity_state.items()}
    net = load_hodor(_save(tmp_path / "half.pth", {"model": half}), config_beside(parity_checkpoint))
    assert all(p.dtype == torch.float32 for p in net.parameters())
    index = "feature_extractor.bb_fpn.0.layers.0.blocks.0.attn.relative_position_index"
    assert net.state_dict()[index].dtype == torch.int64


def test_accepts_a_model_config_and_an_ordered_dict(parity_checkpoint, parity_state, tmp_path) -> None:
    cfg = config_beside(parity_checkpoint).model
    ckpt = _save(tmp_path / "ordered.pth", {"model": collections.OrderedDict(parity_state)})
    assert isinstance(load_hodor(ckpt, cfg), HodorNet)


def test_renamed_key_is_named(parity_checkpoint, parity_state, tmp_path) -> None:
    state = dict(parity_state)
    state["encoder.attn_layers.0.cross_attn.q_proj.weigth"] = state.pop(
        "encoder.attn_layers.0.cross_attn.q_proj.weight"
    )
    ckpt = _save(tmp_path / "renamed.pth", {"model": state})
    with pytest.raises(HodorError) as err:
        load_hodor(ckpt, config_beside(parity_checkpoint))
    msg = str(err.value)
    assert "\n" not in msg
    assert "encoder.attn_layers.0.cross_attn.q_proj.weight" in msg
    assert "encoder.attn_layers.0.cross_attn.q_proj.weigth" in msg
    assert "config may not match" in msg


def test_config_mismatch_is_explained(parity_checkpoint) -> None:
    cfg = config_beside(parity_checkpoint)
    other = replace(cfg, model=replace(cfg.model, pre_normalize=True))
    with pytest.raises(HodorError, match="config may not match") as err:
        load_hodor(parity_checkpoint, other)
    assert "encoder.norm.weight" in str(err.value)


def test_shape_mismatch_is_named(parity_checkpoint, tmp_path) -> None:
    cfg = config_beside(parity_checkpoint)
    four = replace(cfg.model, num_bg_descriptors=4)
    state = HodorNet(four).state_dict()
    ckpt = _save(tmp_path / "four.pth", {"model": state})
    with pytest.raises(HodorError, match=r"encoder\.bg_query_embed has shape \[4, 256\]"):
        load_hodor(ckpt, cfg)


@pytest.mark.parametrize(
    "content",
    [b"MODEL:\n  ENCODER_LAYERS: 5\n", bytes(range(256)) * 64, b""],
    ids=["text", "random-binary", "empty"],
)
def test_not_a_checkpoint(tmp_path, content: bytes) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(HodorError, match="not a PyTorch checkpoint"):
        read_state_dict(path)


def test_damaged_checkpoint(parity_checkpoint, tmp_path) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(parity_checkpoint.read_bytes()[: 1 << 20])
    with pytest.raises(HodorError, match="PyTorch checkpoint"):
        read_state_dict(path)


def test_legacy_serialisation_is_read(tmp_path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save({"model": {"w": torch.ones(2)}}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(read_state_dict(path)["w"], torch.ones(2))


def test_missing_file(tmp_path) -> None:
    with pytest.raises(HodorError, match="checkpoint not found"):
        read_state_dict(tmp_path / "nope.pth")


def test_no_model_dict(tmp_path) -> None:
    ckpt = _save(tmp_path / "bare.pth", {"weights": {"a": torch.zeros(1)}})
    with pytest.raises(HodorError, match='no "model" dict'):
        read_state_dict(ckpt)
    with pytest.raises(HodorError, match='no "model" dict'):
        read_state_dict(_save(tmp_path / "list.pth", [torch.zeros(1)]))


class _Custom:
    pass


def test_arbitrary_objects_are_refused(tmp_path) -> None:
    ckpt = _save(tmp_path / "custom.pth", {"model": {"a": torch.zeros(1)}, "extra": _Custom()})
    with pytest.raises(HodorError, match="other than tensors.*_Custom"):
        read_state_dict(ckpt)
