"""The one relative-error rule every comparison uses, and its failure convention."""

from __future__ import annotations

import math

import pytest
import torch

from hodor.accuracy import mismatch, relative_error
from hodor.kernels.testing import assert_close


def test_relative_error_is_max_difference_over_max_reference():
    ref = torch.tensor([1.0, -4.0, 2.0])
    assert relative_error(ref + torch.tensor([0.0, 0.2, -0.1]), ref) == pytest.approx(0.05)
    assert relative_error(ref, ref) == 0.0


def test_matching_infinities_are_left_out_and_others_are_an_infinite_error():
    ref = torch.tensor([1.0, -math.inf, 2.0])
    assert relative_error(torch.tensor([1.0, -math.inf, 2.2]), ref) == pytest.approx(0.1)
    assert relative_error(torch.tensor([-math.inf, -math.inf]), torch.tensor([-math.inf, -math.inf])) == 0.0
    for middle in (0.0, math.inf, math.nan):
        got = torch.tensor([1.0, middle, 2.0])
        assert relative_error(got, ref) == math.inf
        assert "non-finite entries differ" in mismatch(got, ref)


def test_other_shapes_and_an_all_zero_reference():
    assert relative_error(torch.zeros(2, 3), torch.zeros(3, 2)) == math.inf
    assert "shape (2, 3) != reference (3, 2)" == mismatch(torch.zeros(2, 3), torch.zeros(3, 2))
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0
    assert relative_error(torch.tensor([0.0, 1e-30, 0.0]), torch.zeros(3)) == math.inf


def test_assert_close_says_why():
    ref = torch.tensor([1.0, -math.inf])
    with pytest.raises(AssertionError, match="logits: non-finite entries differ"):
        assert_close(torch.tensor([1.0, 0.0]), ref, torch.float32, "logits")
    with pytest.raises(AssertionError, match="relative error 0.1 > 1e-05"):
        assert_close(torch.tensor([1.1, -math.inf]), ref, torch.float32)
    assert assert_close(ref, ref, torch.float32) == 0.0
