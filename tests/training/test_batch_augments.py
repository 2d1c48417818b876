"""Mixup and CutMix change a tiny batch exactly as specified."""

import numpy as np
import pytest
import torch

from skretrieval.training import CutMix, Mixup
from skretrieval.training._batch_augments import build_batch_augments


def test_mixup_known_lambda():
    x = torch.arange(6.0).reshape(3, 2)
    labels = torch.tensor([0, 1, 2])
    mixed, y_a, y_b, lam = Mixup().mix(x, labels, lam=0.25, perm=[2, 0, 1])
    expected = 0.25 * x + 0.75 * x[[2, 0, 1]]
    torch.testing.assert_close(mixed, expected)
    assert y_a.tolist() == [0, 1, 2] and y_b.tolist() == [2, 0, 1] and lam == 0.25


def test_cutmix_known_box():
    x = torch.stack([torch.full((1, 4, 4), float(i)) for i in range(2)])
    mixed, _, y_b, lam = CutMix().mix(x, torch.tensor([0, 1]), box=(1, 3, 0, 2), perm=[1, 0])
    expected = x.clone()
    expected[0, :, 1:3, 0:2], expected[1, :, 1:3, 0:2] = 1.0, 0.0
    torch.testing.assert_close(mixed, expected)
    assert lam == pytest.approx(1 - 4 / 16) and y_b.tolist() == [1, 0]


def test_cutmix_lambda_is_the_kept_area():
    x = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(4)])
    rng = np.random.default_rng(3)
    for _ in range(20):
        mixed, y_a, y_b, lam = CutMix()(x, torch.arange(4), rng)
        kept = (mixed == x).all(dim=1).float().mean(dim=(1, 2))
        changed = y_a != y_b
        assert torch.allclose(kept[changed], torch.tensor(lam), atol=1e-6)


def test_mixup_draws_lambda_and_permutation_from_rng():
    x, labels = torch.randn(8, 5), torch.arange(8)
    first = Mixup(alpha=0.4)(x, labels, np.random.default_rng(0))
    second = Mixup(alpha=0.4)(x, labels, np.random.default_rng(0))
    torch.testing.assert_close(first[0], second[0])
    assert 0 <= first[3] <= 1 and first[3] == second[3]


def test_build_batch_augments_forms_and_errors():
    augments = build_batch_augments({"mixup": 0.2, "cutmix": 0.5}, "all")
    assert [type(a) for a in augments] == [Mixup, CutMix] and augments[0].alpha == 0.2
    assert build_batch_augments(None, "head") == []
    with pytest.raises(ValueError, match="fine_tune='all'"):
        build_batch_augments(["mixup", "cutmix"], "head")
    with pytest.raises(ValueError, match=r"accepted: \['cutmix', 'mixup'\]"):
        build_batch_augments("mixip", "all")
