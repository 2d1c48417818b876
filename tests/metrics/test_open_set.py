"""Open-set metrics: hand-computed cases, and the rates of scikit-learn's det_curve/roc_curve."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import det_curve, roc_curve

from skretrieval.metrics import (
    detection_identification_rate,
    equal_error_rate,
    false_match_rate,
    false_non_match_rate,
    fnmr_at_fmr,
    open_set_accuracy,
)
from skretrieval.metrics._open_set import _threshold_at_rate

GENUINE = [0.9, 0.8, 0.8, 0.4]
IMPOSTOR = [0.8, 0.3, 0.2, 0.1]


def test_rates_by_hand_with_ties_accepted():
    # a score equal to the threshold is accepted: 0.8 counts as a match at t = 0.8
    assert false_match_rate(IMPOSTOR, 0.8) == 0.25
    assert false_non_match_rate(GENUINE, 0.8) == 0.25
    assert false_match_rate(IMPOSTOR, 0.81) == 0.0
    assert false_non_match_rate(GENUINE, 0.81) == 0.75
    assert false_match_rate(IMPOSTOR, -1.0) == 1.0 and false_non_match_rate(GENUINE, -1.0) == 0.0


def test_threshold_at_rate_by_hand():
    scores = [0.1, 0.5, 0.5, 0.7, 0.9]
    # 20 % of 5 = 1 impostor allowed: just above the second largest, 0.7
    assert _threshold_at_rate(scores, 0.2) == float(np.nextafter(np.float32(0.7), np.float32(1)))
    # 60 %: 3 allowed, but the third and fourth largest tie at 0.5: both are rejected
    assert _threshold_at_rate(scores, 0.6) == float(np.nextafter(np.float32(0.5), np.float32(1)))
    assert false_match_rate(scores, _threshold_at_rate(scores, 0.6)) == 0.4
    assert _threshold_at_rate(scores, 0.0) > 0.9
    assert _threshold_at_rate(scores, 1.0) == -np.inf  # every impostor may pass: no threshold at all
    # 0.29 * 100 is 28.999...: still 29 allowed
    assert false_match_rate(np.arange(100), _threshold_at_rate(np.arange(100), 0.29)) == 0.29


def test_fnmr_at_fmr_and_eer_by_hand():
    # FMR <= 25 %: one impostor (0.8) may pass, threshold just above 0.3: no genuine rejected
    assert fnmr_at_fmr(GENUINE, IMPOSTOR, 0.25) == 0.0
    # FMR 0: threshold just above 0.8, genuine 0.8, 0.8, 0.4 rejected
    assert fnmr_at_fmr(GENUINE, IMPOSTOR, 0.0) == 0.75
    # ROC points (FMR, FNMR): (0, 1), (0, .75), (.25, .25), (.25, 0): the curve meets FMR =
    # FNMR at 0.25, on the point itself
    assert equal_error_rate(GENUINE, IMPOSTOR) == pytest.approx(0.25)
    # a genuine and an impostor tied at 0.5: points (0, 0.5) then (0.5, 0); their segment
    # crosses FMR = FNMR at 0.25
    assert equal_error_rate([0.9, 0.5], [0.5, 0.1]) == pytest.approx(0.25)
    assert equal_error_rate([0.9, 0.8], [0.1, 0.2]) == 0.0
    assert equal_error_rate([0.1, 0.2], [0.9, 0.8]) == 1.0


scores = st.lists(st.integers(0, 12).map(lambda i: i / 12), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(genuine=scores, impostor=scores, fmr=st.floats(0, 1))
def test_rates_equal_det_curve(genuine, impostor, fmr):
    y_true = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
    y_score = np.float32(np.r_[genuine, impostor])
    fpr, fnr, thresholds = det_curve(y_true, y_score, drop_intermediate=False)
    for p, n, t in zip(fpr, fnr, thresholds):
        assert false_match_rate(impostor, t) == pytest.approx(p)
        assert false_non_match_rate(genuine, t) == pytest.approx(n)
    # FNMR at FMR: the lowest FNR of the ROC points (every threshold, plus "reject all") within fmr
    roc_fpr, roc_tpr, _ = roc_curve(y_true, y_score, drop_intermediate=False)
    best = (1 - roc_tpr)[roc_fpr <= fmr + 1e-12].min()
    assert fnmr_at_fmr(genuine, impostor, fmr) == pytest.approx(best)


@settings(max_examples=100, deadline=None)
@given(genuine=scores, impostor=scores)
def test_eer_is_the_crossing_of_the_roc_segments(genuine, impostor):
    y_true = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
    fpr, tpr, _ = roc_curve(y_true, np.float32(np.r_[genuine, impostor]), drop_intermediate=False)
    fnr = 1 - tpr
    eer = equal_error_rate(genuine, impostor)
    # a point (eer, eer) on one of the curve's straight segments
    on_segment = False
    for i in range(1, len(fpr)):
        (x0, y0), (x1, y1) = (fpr[i - 1], fnr[i - 1]), (fpr[i], fnr[i])
        inside = min(x0, x1) - 1e-9 <= eer <= max(x0, x1) + 1e-9 and min(y0, y1) - 1e-9 <= eer <= max(y0, y1) + 1e-9
        collinear = abs((x1 - x0) * (eer - y0) - (y1 - y0) * (eer - x0)) < 1e-9
        on_segment |= inside and collinear
    assert on_segment


def test_detection_identification_rate_by_hand():
    y_true = ["a", "a", "b", "b", "z", "z", "y", "y"]  # z, y are not in the gallery
    y_pred = ["a", "b", "b", "b", "a", "b", "a", "a"]
    y_score = [0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.2, 0.1]
    kw = {"gallery_labels": ["a", "b"]}
    # FAR 0: threshold just above 0.7; accepted and right: only the first query
    assert detection_identification_rate(y_true, y_pred, y_score, **kw, false_alarm_rate=0.0) == 0.25
    # FAR 0.25: one of 4 strangers may pass, threshold just above 0.5: queries 0 and 2 (1 is wrong)
    assert detection_identification_rate(y_true, y_pred, y_score, **kw, false_alarm_rate=0.25) == 0.5
    # FAR 1: everything accepted: the closed-set rank-1 accuracy of the known queries
    assert detection_identification_rate(y_true, y_pred, y_score, **kw, false_alarm_rate=1.0) == 0.75
    with pytest.raises(ValueError, match="needs queries of both kinds.*got 4 known and 0 unknown"):
        detection_identification_rate(y_true[:4], y_pred[:4], y_score[:4], **kw)
    with pytest.raises(ValueError, match="one entry per query; got 8, 8 and 7"):
        detection_identification_rate(y_true, y_pred, y_score[:7], **kw)


def test_open_set_accuracy_by_hand():
    y_true = [0, 1, 1, 7, 8]  # 7, 8 unknown
    y_pred = [0, 1, -1, -1, 1]
    assert open_set_accuracy(y_true, y_pred, gallery_labels=[0, 1], outlier_label=-1) == 0.6
    assert open_set_accuracy(["a", "q"], ["a", "unknown"], gallery_labels=["a"], outlier_label="unknown") == 1.0


@pytest.mark.parametrize("bad", [[np.nan, 0.1], [np.inf]])
def test_bad_scores(bad):
    with pytest.raises(ValueError, match="impostor_scores holds NaN or infinite values"):
        false_match_rate(bad, 0.5)


def test_bad_rate_and_empty():
    with pytest.raises(ValueError, match=r"rate must be a number in \[0, 1\]; got 1.5"):
        fnmr_at_fmr([0.5], [0.1], 1.5)
    with pytest.raises(ValueError, match="genuine_scores is empty"):
        false_non_match_rate([], 0.5)
