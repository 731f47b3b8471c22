"""The checkpoint's ``config.yaml``, read over the official defaults, as typed values.

Only the ``INPUT`` and ``MODEL`` sections matter for inference; any other section
(``TRAINING``, ``DATA``, ...) and unknown keys are accepted and ignored, because
checkpoints ship either a short recipe or the whole dumped training config.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hodor.errors import HodorError

#: Width of the backbone's feature maps and of every descriptor (C). Fixed by the architecture:
#: the same in every official checkpoint, so it is not a config value.
CHANNELS = 256
SUPPORTED_BG_DESCRIPTORS = (1, 2, 4, 9, 12, 16)
# Background descriptor grid (rows, columns) for each supported count.
BG_GRID_DIMS = {1: (1, 1), 2: (1, 2), 4: (2, 2), 9: (3, 3), 12: (3, 4), 16: (4, 4)}


@dataclass(frozen=True)
class InputConfig:
    """Pre-processing. ``mean``/``std`` are in BGR channel order, as the official code stores them."""

    mean_bgr: tuple[float, float, float]
    std_bgr: tuple[float, float, float]
    min_dim: int
    max_dim: int
    rgb_input: bool
    normalize_to_unit_scale: bool


@dataclass(frozen=True)
class ModelConfig:
    encoder_layers: int
    decoder_layers: int
    num_heads: int
    num_bg_descriptors: int
    num_catch_all_queries: int
    pos_encodings_in_encoder: bool  # POS_ENCODINGS_IN_FMQ (feature map -> query)
    pos_encodings_in_decoder: bool  # POS_ENCODINGS_IN_FQM (feature map <- query)
    pre_normalize: bool

    @property
    def bg_grid(self) -> tuple[int, int]:
        return BG_GRID_DIMS[self.num_bg_descriptors]


@dataclass(frozen=True)
class HodorConfig:
    input: InputConfig
    model: ModelConfig

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HodorConfig:
        inp = dict(d["input"])
        inp["mean_bgr"] = tuple(inp["mean_bgr"])
        inp["std_bgr"] = tuple(inp["std_bgr"])
        return cls(input=InputConfig(**inp), model=ModelConfig(**d["model"]))


def official_defaults() -> dict[str, Any]:
    """The official ``configs/default.yaml`` values, shipped with the package."""
    text = resources.files("hodor").joinpath("default_config.yaml").read_text()
    return yaml.safe_load(text)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _bool(section: dict[str, Any], key: str, where: str) -> bool:
    value = section[key]
    if not isinstance(value, bool):
        raise HodorError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _int(section: dict[str, Any], key: str, where: str, minimum: int = 0) -> int:
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise HodorError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _triple(section: dict[str, Any], key: str, where: str) -> tuple[float, float, float]:
    value = section[key]
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise HodorError(f"{where}: {key} must be a list of 3 numbers, got {value!r}")
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise HodorError(f"{where}: {key} must be a list of 3 numbers, got {value!r}") from None
    return out  # type: ignore[return-value]


def parse_config(raw: dict[str, Any], where: str = "config") -> HodorConfig:
    """Merge ``raw`` over the official defaults and validate what inference uses."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise HodorError(f"{where}: expected a YAML mapping with INPUT and MODEL sections")
    merged = _merge(official_defaults(), raw)
    inp, mdl = merged.get("INPUT"), merged.get("MODEL")
    if not isinstance(inp, dict) or not isinstance(mdl, dict):
        raise HodorError(f"{where}: INPUT and MODEL must be mappings")

    std = _triple(inp, "IMAGE_STD", where)
    if any(s == 0 for s in std):
        raise HodorError(f"{where}: IMAGE_STD must not contain zeros, got {list(std)}")
    input_cfg = InputConfig(
        mean_bgr=_triple(inp, "IMAGE_MEAN", where),
        std_bgr=std,
        min_dim=_int(inp, "MIN_DIM", where, 1),
        max_dim=_int(inp, "MAX_DIM", where, 1),
        rgb_input=_bool(inp, "RGB_INPUT", where),
        normalize_to_unit_scale=_bool(inp, "NORMALIZE_TO_UNIT_SCALE", where),
    )

    heads = _int(mdl, "NUM_ATTN_HEADS", where, 1)
    if heads != 8:
        raise HodorError(
            f"{where}: MODEL.NUM_ATTN_HEADS = {heads} is not supported "
            "(HODOR's soft-masked attention is defined for 8 heads only)"
        )
    catch_all = _int(mdl, "NUM_CATCH_ALL_QUERIES", where, 0)
    if catch_all != 1:
        raise HodorError(
            f"{where}: MODEL.NUM_CATCH_ALL_QUERIES = {catch_all} is not supported (only 1 is)"
        )
    num_bg = _int(mdl, "NUM_BG_DESCRIPTORS", where, 1)
    if num_bg not in SUPPORTED_BG_DESCRIPTORS:
        raise HodorError(
            f"{where}: MODEL.NUM_BG_DESCRIPTORS = {num_bg} is not supported "
            f"(choose one of {', '.join(map(str, SUPPORTED_BG_DESCRIPTORS))})"
        )
    model_cfg = ModelConfig(
        encoder_layers=_int(mdl, "ENCODER_LAYERS", where, 1),
        decoder_layers=_int(mdl, "DECODER_LAYERS", where, 1),
        num_heads=heads,
        num_bg_descriptors=num_bg,
        num_catch_all_queries=catch_all,
        pos_encodings_in_encoder=_bool(mdl, "POS_ENCODINGS_IN_FMQ", where),
        pos_encodings_in_decoder=_bool(mdl, "POS_ENCODINGS_IN_FQM", where),
        pre_normalize=_bool(mdl, "TRANSFORMER_PRE_NORMALIZE", where),
    )
    return HodorConfig(input=input_cfg, model=model_cfg)


def load_config(path: str | Path) -> HodorConfig:
    """Read a ``config.yaml`` file (a recipe or a full dumped config)."""
    path = Path(path)
    if not path.is_file():
        raise HodorError(
            f"config file not found: {path} (pass --config PATH, or put config.yaml beside the checkpoint)"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise HodorError(f"{path}: not a readable YAML file ({exc.__class__.__name__})") from None
    return parse_config(raw, where=str(path))


def config_beside(checkpoint: str | Path, config: str | Path | None = None) -> HodorConfig:
    """The config for ``checkpoint``: ``config`` if given, else ``config.yaml`` in its directory."""
    if config is not None:
        return load_config(config)
    return load_config(Path(checkpoint).parent / "config.yaml")


def with_dims(cfg: HodorConfig, min_dim: int | None, max_dim: int | None) -> HodorConfig:
    """Override the processing size as the official inference script does.

    ``min_dim`` alone scales ``max_dim`` by the config's MAX_DIM/MIN_DIM ratio, rounded.
    """
    inp = cfg.input
    new_min, new_max = inp.min_dim, inp.max_dim
    if min_dim is not None:
        if min_dim < 1:
            raise HodorError(f"--min-dim must be positive, got {min_dim}")
        new_min = min_dim
        new_max = int(round(min_dim * inp.max_dim / float(inp.min_dim)))
    if max_dim is not None:
        if max_dim < 1:
            raise HodorError(f"--max-dim must be positive, got {max_dim}")
        new_max = max_dim
    new_input = InputConfig(
        mean_bgr=inp.mean_bgr,
        std_bgr=inp.std_bgr,
        min_dim=new_min,
        max_dim=new_max,
        rgb_input=inp.rgb_input,
        normalize_to_unit_scale=inp.normalize_to_unit_scale,
    )
    return HodorConfig(input=new_input, model=cfg.model)
