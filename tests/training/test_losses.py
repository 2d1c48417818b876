"""Each loss against hand-computed values, and decreasing on a separable toy problem."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from skretrieval.heads import CosineClassifier, Projection, build_head
from skretrieval.losses import ArcFaceLoss, SoftmaxLoss, SupConLoss, TripletLoss


def _unit(degrees):
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in degrees])


def test_softmax_loss_hand_computed():
    loss = SoftmaxLoss(2, 2)
    with torch.no_grad():
        loss.classifier.weight.copy_(torch.eye(2))
        loss.classifier.bias.zero_()
    value = loss(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]))
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 2
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_softmax_mixed_labels_equal_soft_target_cross_entropy():
    torch.manual_seed(0)
    loss, embeddings = SoftmaxLoss(3, 4), torch.randn(5, 3)
    y_a, y_b, lam = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([1, 1, 0, 2, 3]), 0.3
    soft = lam * F.one_hot(y_a, 4).float() + (1 - lam) * F.one_hot(y_b, 4).float()
    expected = F.cross_entropy(loss.classifier(embeddings), soft)
    assert loss(embeddings, y_a, mixed=(y_b, lam)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_arcface_hand_computed():
    loss = ArcFaceLoss(2, 2, margin=0.5, scale=2.0)
    with torch.no_grad():
        loss.classifier.weight.copy_(torch.eye(2))
    # 60 degrees from class 0 (the label), 30 degrees from class 1.
    value = loss(_unit([60]) * 3.0, torch.tensor([0]))  # the norm of the embedding is irrelevant
    target, other = 2.0 * math.cos(math.pi / 3 + 0.5), 2.0 * math.cos(math.pi / 6)
    expected = -target + math.log(math.exp(target) + math.exp(other))
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_arcface_fallback_past_pi():
    """When theta + m passes pi the target logit is s * (cos(theta) - m sin(m))."""
    loss = ArcFaceLoss(2, 2, margin=0.5, scale=1.0)
    with torch.no_grad():
        loss.classifier.weight.copy_(torch.eye(2))
    logits = loss.logits(_unit([170]), torch.tensor([0]))
    expected = math.cos(math.radians(170)) - 0.5 * math.sin(0.5)
    assert logits[0, 0].item() == pytest.approx(expected, rel=1e-5)
    assert logits[0, 1].item() == pytest.approx(math.cos(math.radians(80)), rel=1e-5)


def test_arcface_zero_margin_is_scaled_cosine_softmax():
    torch.manual_seed(0)
    loss, embeddings, labels = ArcFaceLoss(3, 4, margin=0.0, scale=5.0), torch.randn(6, 3), torch.arange(6) % 4
    expected = F.cross_entropy(5.0 * loss.classifier(embeddings), labels)
    assert loss(embeddings, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_cosine_classifier_subcenters_take_the_closest():
    head = CosineClassifier(2, 2, subcenters=2)
    with torch.no_grad():  # class 0: 0 and 90 degrees; class 1: 180 and 270 degrees
        head.weight.copy_(_unit([0, 90, 180, 270]))
    cosine = head(_unit([80]))
    assert cosine[0, 0].item() == pytest.approx(math.cos(math.radians(10)), rel=1e-6)
    assert cosine[0, 1].item() == pytest.approx(math.cos(math.radians(100)), rel=1e-5)


def test_triplet_batch_hard_hand_computed():
    # Unit vectors at 0, 90 (class 0), 180, 45 degrees (class 1); chord length 2 sin(delta / 2).
    chord = lambda delta: 2 * math.sin(math.radians(delta) / 2)  # noqa: E731
    embeddings, labels = _unit([0, 90, 180, 45]), torch.tensor([0, 0, 1, 1])
    expected = np.mean([
        chord(90) - chord(45) + 0.2,   # anchor 0: hardest positive 90, hardest negative 45
        chord(90) - chord(45) + 0.2,   # anchor 90
        chord(135) - chord(90) + 0.2,  # anchor 180: positive 45, negative 90
        chord(135) - chord(45) + 0.2,  # anchor 45: positive 180, negative 0 or 90
    ])
    assert TripletLoss(margin=0.2)(embeddings, labels).item() == pytest.approx(expected, rel=1e-5)


def test_triplet_skips_anchors_without_positive():
    embeddings, labels = _unit([0, 10, 90]), torch.tensor([0, 0, 1])
    value = TripletLoss(margin=0.0)(embeddings, labels)
    assert value.item() == 0.0  # anchors 0 and 10 are satisfied; 90 has no positive


def test_supcon_hand_computed():
    embeddings, labels = _unit([0, 90, 0]), torch.tensor([0, 0, 1])
    # anchor 0: positive at 90 (logit 0), other at 0 degrees (logit 1 / 0.5 = 2);
    # anchor 1: positive and other both orthogonal; anchor 2 has no positive.
    expected = (math.log(1 + math.exp(2)) + math.log(2)) / 2
    assert SupConLoss(temperature=0.5)(embeddings, labels).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss", [TripletLoss(), SupConLoss()])
def test_pair_losses_refuse_mixed_labels(loss):
    with pytest.raises(ValueError, match="cannot take mixed labels"):
        loss(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), mixed=(torch.tensor([1, 1, 0, 0]), 0.5))


@pytest.mark.parametrize("head", ["linear", "arcface", "triplet", "supcon"])
def test_loss_decreases_on_separable_toy_problem(head):
    torch.manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    labels = torch.arange(60) % 3
    points = centres[labels] + 0.5 * torch.randn(60, 2)
    projection = Projection(2, 8)
    loss = build_head(head, None, embedding_dim=8, n_classes=3)
    optimizer = torch.optim.Adam([*projection.parameters(), *loss.parameters()], lr=0.05)
    values = []
    for _ in range(60):
        value = loss(projection(points), labels)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        values.append(value.item())
    # SupCon cannot go below log(19): each anchor's 19 positives share the softmax mass.
    floor = math.log(19) if head == "supcon" else 0.0
    assert values[-1] - floor < 0.5 * (values[0] - floor)


def test_build_head_rejects_unknown_options():
    with pytest.raises(ValueError, match=r"accepted: \['margin', 'scale', 'subcenters'\]"):
        build_head("arcface", {"margn": 0.3}, embedding_dim=4, n_classes=2)
