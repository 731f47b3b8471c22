"""PyTorch HODOR (inference) and strict loading of official checkpoints."""

from hodor.model.checkpoint import load_hodor, read_state_dict
from hodor.model.network import HodorNet

__all__ = ["HodorNet", "load_hodor", "read_state_dict"]
