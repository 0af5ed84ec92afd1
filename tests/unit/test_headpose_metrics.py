"""Head-pose metrics on hand-made predictions: wrap-around, invalid answers, MAEV and geodesic."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.headpose import headpose_metrics, mae_by_bin, wrapped_abs_error


def test_wraps_around_180():
    assert wrapped_abs_error(179.0, -179.0) == pytest.approx(2.0)
    assert wrapped_abs_error(-170.0, 170.0) == pytest.approx(20.0)
    assert wrapped_abs_error(10.0, 10.0) == 0.0


def test_known_errors_and_invalid_answers():
    true = [(10.0, 0.0, 0.0), (0.0, 20.0, -5.0), (30.0, 0.0, 0.0)]
    pred = [(13.0, 1.0, -2.0), None, (30.0, 0.0, 0.0)]
    m = headpose_metrics(pred, true)
    assert m["n"] == 3 and m["n_valid"] == 2 and m["invalid_rate"] == pytest.approx(1 / 3)
    assert m["mae_yaw"] == pytest.approx(1.5) and m["mae_pitch"] == pytest.approx(0.5)
    assert m["mae_roll"] == pytest.approx(1.0) and m["mae"] == pytest.approx(1.0)


def test_pure_yaw_error_gives_known_vector_errors():
    m = headpose_metrics([(12.0, 0.0, 0.0)], [(2.0, 0.0, 0.0)])
    assert m["geodesic"] == pytest.approx(10.0)
    # A rotation about y moves the x and z columns by 10° and leaves the y column: mean 20/3.
    assert m["maev"] == pytest.approx(20.0 / 3.0)


def test_perfect_and_no_valid():
    true = [(5.0, -3.0, 2.0)] * 4
    m = headpose_metrics(true, true)
    assert m["mae"] == 0.0 and m["geodesic"] == pytest.approx(0.0, abs=1e-5)
    none = headpose_metrics([None, None], true[:2])
    assert none["invalid_rate"] == 1.0 and none["mae"] is None


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="predictions for"):
        headpose_metrics([(0, 0, 0)], [])
    with pytest.raises(ValueError, match="three finite"):
        headpose_metrics([(0, np.nan, 0)], [(0, 0, 0)])


def test_bins_by_true_yaw():
    true = [(5.0, 0, 0), (50.0, 0, 0), (80.0, 0, 0)]
    pred = [(8.0, 0, 0), (50.0, 0, 0), None]
    rows = {r["bin"]: r for r in mae_by_bin(pred, true)}
    assert rows["0-15"]["mae"] == pytest.approx(1.0) and rows["45-60"]["mae"] == 0.0
    assert rows["75-90"]["n"] == 1 and rows["75-90"]["mae"] is None and rows["15-30"]["n"] == 0
