"""Pose aggregation of the engine (samples -> mean pose, covariance, confidence) on hand-made
samples, where the right answer is known."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gst_ros.engine.engine import (
    POSITION_VAR_FLOOR,
    ROTATION_VAR_FLOOR,
    PoseEstimate,
    aggregate_pose_samples,
)
from gst_ros.geometry import invert_pose, so3_exp


def rot(axis, deg):
    return so3_exp(torch.tensor(np.asarray(axis, float) * math.radians(deg))).numpy()


def w2c_from_c2w(R_c2w, C):
    """w2c of a camera with orientation R_c2w (camera-to-reference) and centre C."""
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R_c2w, C
    return invert_pose(T)


BASE_R = rot([0.2, 1.0, -0.3], 40.0)
BASE_C = np.array([0.5, -0.2, 0.3])
FLOOR = np.diag([POSITION_VAR_FLOOR] * 3 + [ROTATION_VAR_FLOOR] * 3)


def test_identical_samples_give_that_pose_and_the_floor_covariance():
    s = np.stack([w2c_from_c2w(BASE_R, BASE_C)] * 5)
    w2c, cov, conf, spread = aggregate_pose_samples(s)
    np.testing.assert_allclose(w2c, s[0], atol=1e-10)
    np.testing.assert_allclose(cov, FLOOR, atol=1e-14)
    assert spread < 1e-6
    assert conf == pytest.approx(1.0, abs=1e-6)


def test_single_sample_has_zero_confidence_and_regular_covariance():
    s = w2c_from_c2w(BASE_R, BASE_C)[None]
    w2c, cov, conf, spread = aggregate_pose_samples(s)
    np.testing.assert_allclose(w2c, s[0], atol=1e-10)
    assert conf == 0.0
    assert np.linalg.eigvalsh(cov).min() > 0


def test_rotation_spread_about_reference_x_axis_lands_in_rot_x():
    # samples R_i = Exp(+-theta x_ref) R: a spread about the REFERENCE frame's x axis
    theta = 6.0
    s = np.stack([w2c_from_c2w(rot([1, 0, 0], a) @ BASE_R, BASE_C) for a in (-theta, theta, -theta, theta)])
    w2c, cov, conf, spread = aggregate_pose_samples(s)
    np.testing.assert_allclose(invert_pose(w2c)[:3, :3], BASE_R, atol=1e-9)
    np.testing.assert_allclose(invert_pose(w2c)[:3, 3], BASE_C, atol=1e-12)
    expected = math.radians(theta) ** 2 * 4 / 3  # unbiased sample variance of +-theta
    assert cov[3, 3] == pytest.approx(expected + ROTATION_VAR_FLOOR, rel=1e-6)
    np.testing.assert_allclose(cov[4:, 4:], np.diag([ROTATION_VAR_FLOOR] * 2), atol=1e-12)
    np.testing.assert_allclose(cov[:3, :3], np.diag([POSITION_VAR_FLOOR] * 3), atol=1e-12)
    assert spread == pytest.approx(theta, rel=1e-6)
    assert conf == pytest.approx(math.exp(-theta / 10.0), rel=1e-6)


def test_centre_spread_lands_in_xyz_with_cross_terms():
    offsets = np.array([[0.1, 0.1, 0], [-0.1, -0.1, 0], [0.1, 0.1, 0], [-0.1, -0.1, 0]])
    s = np.stack([w2c_from_c2w(BASE_R, BASE_C + o) for o in offsets])
    _, cov, _, spread = aggregate_pose_samples(s)
    var = 0.01 * 4 / 3
    np.testing.assert_allclose(cov[:3, :3], np.array([[var, var, 0], [var, var, 0], [0, 0, 0]])
                               + np.diag([POSITION_VAR_FLOOR] * 3), atol=1e-12)
    assert spread < 1e-6


def test_disagreeing_samples_give_larger_covariance_and_lower_confidence():
    rng = np.random.default_rng(0)

    def samples(scale_deg, scale_c):
        out = []
        for _ in range(8):
            R = rot(rng.normal(size=3), scale_deg * rng.random()) @ BASE_R
            out.append(w2c_from_c2w(R, BASE_C + scale_c * rng.normal(size=3)))
        return np.stack(out)

    _, cov_a, conf_a, spread_a = aggregate_pose_samples(samples(2.0, 0.01))
    _, cov_b, conf_b, spread_b = aggregate_pose_samples(samples(30.0, 0.3))
    assert spread_b > spread_a
    assert conf_b < conf_a
    assert np.trace(cov_b) > 10 * np.trace(cov_a)
    assert np.linalg.eigvalsh(cov_a).min() > 0 and np.linalg.eigvalsh(cov_b).min() > 0


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.floats(0.0, 170.0), st.floats(0.0, 3.0), st.integers(0, 2**31 - 1))
def test_covariance_is_symmetric_positive_definite(n, max_deg, max_c, seed):
    rng = np.random.default_rng(seed)
    s = np.stack([w2c_from_c2w(rot(rng.normal(size=3) + 1e-3, max_deg * rng.random()),
                               max_c * rng.normal(size=3)) for _ in range(n)])
    w2c, cov, conf, spread = aggregate_pose_samples(s)
    np.testing.assert_allclose(cov, cov.T, atol=1e-15)
    assert np.linalg.eigvalsh(cov).min() >= min(POSITION_VAR_FLOOR, ROTATION_VAR_FLOOR) * (1 - 1e-9)
    assert 0.0 <= conf <= 1.0
    R = w2c[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_array_equal(w2c[3], [0, 0, 0, 1])


def test_camera_to_reference_is_the_inverse():
    w2c = w2c_from_c2w(BASE_R, BASE_C)
    est = PoseEstimate(w2c=w2c, samples_w2c=w2c[None], covariance=FLOOR, confidence=0.0,
                       rotation_spread_deg=0.0, latency_s=0.0)
    T = est.camera_to_reference()
    np.testing.assert_allclose(T[:3, 3], BASE_C, atol=1e-12)  # the camera centre in the reference frame
    np.testing.assert_allclose(T @ w2c, np.eye(4), atol=1e-12)


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((0, 4, 4)), "no samples"),
    (np.ones((2, 4, 4)), "last row"),
    (np.full((1, 4, 4), np.nan), "NaN"),
    (np.eye(4), "shape"),
])
def test_bad_samples_raise(bad, msg):
    with pytest.raises(ValueError, match=msg):
        aggregate_pose_samples(bad)


# ------------------------------------------------------------------ the read-out heads' pose

def readout(M, C, log_var):
    from gst_ros.models.transformer import HeadReadout

    return HeadReadout(torch.tensor(np.asarray(M, float))[None], torch.tensor(np.asarray(C, float))[None],
                       torch.tensor(np.asarray(log_var, float))[None])


def test_head_pose_from_an_exact_rotation_is_certain():
    """A pose head output that is a rotation (no shrinkage) means no rotation uncertainty: the
    covariance is the floor there, the centre's is exp(log_var), w2c = [R | -R C]."""
    from gst_ros.engine.engine import head_pose_estimate

    R = rot([1, 2, 3], 40.0)
    C = np.array([0.3, -0.2, 0.4])
    w2c, cov, conf, rms = head_pose_estimate(readout(R, C, np.log([0.01, 0.04, 0.09])))
    np.testing.assert_allclose(w2c[:3, :3], R, atol=1e-9)
    np.testing.assert_allclose(invert_pose(w2c)[:3, 3], C, atol=1e-9)
    np.testing.assert_allclose(cov[3:, 3:], ROTATION_VAR_FLOOR * np.eye(3), atol=1e-9)
    np.testing.assert_allclose(cov[:3, :3], np.diag([0.01, 0.04, 0.09]) + POSITION_VAR_FLOOR * np.eye(3),
                               atol=1e-9)
    assert np.all(cov[:3, 3:] == 0) and rms == pytest.approx(0.0, abs=1e-3)
    assert conf == pytest.approx(math.exp(-math.sqrt(0.14) / 0.2), rel=1e-3)
    with pytest.raises(ValueError, match="non-finite"):
        head_pose_estimate(readout(R * np.nan, C, np.zeros(3)))
    from gst_ros.models.transformer import HeadReadout

    with pytest.raises(ValueError, match="centre head"):
        head_pose_estimate(HeadReadout(torch.tensor(R)[None]))


def test_head_pose_recovers_the_total_spread_of_the_rotations_it_averages():
    """If the pose head outputs E[R] over rotations Q = Exp(w) Q0 (c2w, w ~ N(0, S) about the
    reference axes), the covariance it implies is isotropic with the total variance tr(S)
    (second-order accurate for small spreads): checked by Monte Carlo with an anisotropic,
    rotated S; rotation_var_scale multiplies it."""
    from gst_ros.engine.engine import head_pose_estimate

    rng = np.random.default_rng(0)
    axes = rot([0.3, -1.0, 0.5], 50.0)
    S = axes @ np.diag([0.004, 0.012, 0.002]) @ axes.T
    w = rng.multivariate_normal(np.zeros(3), S, size=40000)
    Q0 = rot([1.0, 0.2, -0.4], 70.0)  # c2w of the mean camera
    Q = so3_exp(torch.from_numpy(w)).numpy() @ Q0
    M = Q.mean(axis=0).T  # E[R_w2c]
    w2c, cov, conf, rms = head_pose_estimate(readout(M, np.zeros(3), np.full(3, -20.0)))
    np.testing.assert_allclose(w2c[:3, :3], Q0.T, atol=5e-3)
    rot_cov = cov[3:, 3:] - ROTATION_VAR_FLOOR * np.eye(3)
    np.testing.assert_allclose(rot_cov, np.trace(S) / 3 * np.eye(3), atol=4e-4)
    assert rms == pytest.approx(math.degrees(math.sqrt(np.trace(S))), rel=0.05)
    _, cov2, conf2, _ = head_pose_estimate(readout(M, np.zeros(3), np.full(3, -20.0)), rotation_var_scale=2.0)
    np.testing.assert_allclose(cov2[3:, 3:] - ROTATION_VAR_FLOOR * np.eye(3), 2.0 * rot_cov, atol=1e-12)
    assert conf2 < conf


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=3, max_size=3), st.floats(0, 179), st.floats(0.6, 1.0))
def test_a_shrunk_rotation_means_isotropic_uncertainty(axis, deg, s):
    """M = s R (every direction equally unsure) gives the rotation R and covariance (1 - s) I
    (+ the floor), whatever R is."""
    from gst_ros.engine.engine import head_pose_estimate

    if np.linalg.norm(axis) < 1e-3:
        axis = [0.0, 0.0, 1.0]
    R = rot(axis, deg)
    w2c, cov, _, _ = head_pose_estimate(readout(s * R, np.zeros(3), np.zeros(3)))
    np.testing.assert_allclose(w2c[:3, :3], R, atol=1e-8)
    np.testing.assert_allclose(cov[3:, 3:], ((1 - s) + ROTATION_VAR_FLOOR) * np.eye(3), atol=1e-8)
