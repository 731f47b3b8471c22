"""State-dict keys and shapes equal the official ones, for every configuration.

The parity fixture lists a real checkpoint's keys (5 + 5 layers, 9 background
descriptors, post-normalisation); other configurations differ from it in known
ways: the number of layer blocks, the background embedding's rows, and the
norms that exist only with pre- or post-normalisation.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from hodor.config import SUPPORTED_BG_DESCRIPTORS, ModelConfig, load_config
from hodor.model import HodorNet
from tests.parity_fixture import CASE_A

SPEC = json.loads((CASE_A / "spec" / "spec.json").read_text())["tensors"]
BASE = load_config(CASE_A / "spec" / "config.yaml").model
_LAYER = re.compile(r"^(encoder|decoder)\.attn_layers\.(\d+)\.(.*)$")


def _official_keys(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    layers = {"encoder": cfg.encoder_layers, "decoder": cfg.decoder_layers}
    out: dict[str, tuple[int, ...]] = {}
    for key, entry in SPEC.items():
        shape = tuple(entry["shape"])
        m = _LAYER.match(key)
        if m is None:
            out[key] = shape
            continue
        part, index, rest = m.group(1), int(m.group(2)), m.group(3)
        if index != 0:
            continue
        if cfg.pre_normalize and part == "decoder" and rest.startswith("norm1."):
            continue  # pre-normalisation: the decoder's first norm is an Identity
        for i in range(layers[part]):
            out[f"{part}.attn_layers.{i}.{rest}"] = shape
    out["encoder.bg_query_embed"] = (cfg.num_bg_descriptors, 256)
    if cfg.pre_normalize:
        for name in ("encoder.norm", "decoder.norm_fmap"):
            out[f"{name}.weight"] = out[f"{name}.bias"] = (256,)
    return out


def test_parity_keys_in_order() -> None:
    """Same keys, same order, same shapes as the real checkpoint."""
    with torch.device("meta"):
        state = HodorNet(BASE).state_dict()
    assert list(state) == list(SPEC)
    for key, tensor in state.items():
        assert tuple(tensor.shape) == tuple(SPEC[key]["shape"]), key


@pytest.mark.parametrize("num_bg", SUPPORTED_BG_DESCRIPTORS)
@pytest.mark.parametrize("pre_normalize", [False, True])
def test_variant_keys(num_bg: int, pre_normalize: bool) -> None:
    cfg = replace(
        BASE, num_bg_descriptors=num_bg, pre_normalize=pre_normalize, encoder_layers=3, decoder_layers=2
    )
    with torch.device("meta"):
        state = HodorNet(cfg).state_dict()
    want = _official_keys(cfg)
    assert set(state) == set(want)
    for key, tensor in state.items():
        assert tuple(tensor.shape) == want[key], key


def test_relative_position_index_is_the_official_buffer() -> None:
    fixed = np.load(CASE_A / "spec" / "fixed.npz")  # the real checkpoint's integer buffers
    state = HodorNet(BASE).state_dict()
    keys = [k for k in state if k.endswith("relative_position_index")]
    assert len(keys) == sum((2, 2, 6, 2))
    for key in keys:
        assert state[key].dtype == torch.int64
        assert torch.equal(state[key], torch.from_numpy(fixed[key])), key
