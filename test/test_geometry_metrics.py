"""SO(3) helpers and pose metrics: geodesic error, relative rotation accuracy (checked against the
PyTorch3D-form protocol), Umeyama, centre accuracy, rotation averaging and translation spread."""
import numpy as np
import pytest
import torch
import transforms3d
from hypothesis import given, settings
from hypothesis import strategies as st

from gst_ros.geometry import (
    GeometryError,
    accuracy_at,
    camera_center_accuracy,
    camera_center_errors,
    make_pose,
    pytorch3d_from_w2c,
    relative_rotation_errors,
    rotation_error_deg,
    rotation_mean,
    so3_exp,
    so3_log,
    translation_spread,
    umeyama,
)

SETTINGS = settings(max_examples=25, deadline=None)
axis_angle = st.tuples(*[st.floats(-1, 1) for _ in range(3)]).filter(lambda v: np.linalg.norm(v) > 1e-3)


def rot(v) -> np.ndarray:
    return so3_exp(torch.as_tensor(np.asarray(v, dtype=np.float64))).numpy()


def random_rotations(rng, n):
    return rot(rng.normal(size=(n, 3)))


@SETTINGS
@given(axis_angle, st.floats(0.0, np.pi))
def test_exp_log_match_transforms3d(axis, angle):
    axis = np.array(axis) / np.linalg.norm(axis)
    R = rot(axis * angle)
    np.testing.assert_allclose(R, transforms3d.axangles.axangle2mat(axis, angle), atol=1e-12)
    w = so3_log(torch.as_tensor(R)).numpy()
    if angle < np.pi - 1e-6:
        np.testing.assert_allclose(w, axis * angle, atol=1e-7)
    else:  # at pi the axis sign is arbitrary
        np.testing.assert_allclose(np.abs(w), np.abs(axis * angle), atol=1e-6)
    np.testing.assert_allclose(rot(w), R, atol=1e-7)


@SETTINGS
@given(axis_angle, st.floats(0.0, 179.0))
def test_rotation_error_known_angle(axis, deg):
    axis = np.array(axis) / np.linalg.norm(axis)
    R0 = rot([0.3, -0.2, 0.9])
    R1 = rot(axis * np.radians(deg)) @ R0
    np.testing.assert_allclose(rotation_error_deg(R1, R0), deg, atol=1e-6)
    np.testing.assert_allclose(rotation_error_deg(R0, R1), deg, atol=1e-6)


def test_rotation_error_small_angle_precise():
    R = rot([1e-7, 0, 0])
    np.testing.assert_allclose(rotation_error_deg(R, np.eye(3)), np.degrees(1e-7), rtol=1e-6)


def test_relative_rotation_errors_matches_pytorch3d_protocol():
    """Our w2c form R_j R_i^T gives the same errors as the protocol's R_i^T R_j on PyTorch3D
    rotations (row-vector, x-left/y-up camera axes)."""
    rng = np.random.default_rng(0)
    n = 5
    Rg, Rp = random_rotations(rng, n), random_rotations(rng, n)
    ours = relative_rotation_errors(Rp, Rg)
    p3d_g = [pytorch3d_from_w2c(make_pose(r, np.zeros(3)))[0] for r in Rg]
    p3d_p = [pytorch3d_from_w2c(make_pose(r, np.zeros(3)))[0] for r in Rp]
    expected = []
    for i in range(n):
        for j in range(n):
            if i != j:
                A = p3d_g[i].T @ p3d_g[j]
                B = p3d_p[i].T @ p3d_p[j]
                expected.append(np.degrees(np.arccos(np.clip((np.trace(A @ B.T) - 1) / 2, -1, 1))))
    assert ours.shape == (n * (n - 1),)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_relative_rotation_errors_invariant_to_global_frame():
    rng = np.random.default_rng(1)
    Rg = random_rotations(rng, 4)
    G = rot([0.4, 1.0, -2.0])
    # the same cameras in a rotated world frame (R_i G) have zero relative error
    np.testing.assert_allclose(relative_rotation_errors(Rg @ G, Rg), 0, atol=1e-6)
    # a perturbation of camera 0 by 20 deg shows up in every pair involving camera 0 only
    Rp = Rg.copy()
    Rp[0] = rot([0, np.radians(20), 0]) @ Rp[0]
    e = relative_rotation_errors(Rp, Rg).reshape(4, 3)  # row i: pairs (i, j), j != i
    np.testing.assert_allclose(e[0], 20, atol=1e-6)
    np.testing.assert_allclose(e[1:, 0], 20, atol=1e-6)
    np.testing.assert_allclose(e[1:, 1:], 0, atol=1e-6)
    acc = accuracy_at(e, (15, 30))
    assert acc == {15.0: 0.5, 30.0: 1.0}


def test_metrics_bad_input():
    with pytest.raises(GeometryError, match="at least 2"):
        relative_rotation_errors(np.eye(3)[None], np.eye(3)[None])
    with pytest.raises(GeometryError, match="orthonormal"):
        relative_rotation_errors(np.stack([np.eye(3), 2 * np.eye(3)]), np.stack([np.eye(3)] * 2))
    with pytest.raises(GeometryError, match="shape"):
        rotation_error_deg(np.eye(3), np.eye(4))
    with pytest.raises(GeometryError):
        accuracy_at([])


@SETTINGS
@given(st.integers(0, 10_000), st.floats(0.1, 10))
def test_umeyama_recovers_similarity(seed, s):
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(6, 3))
    R = random_rotations(rng, 1)[0]
    t = rng.normal(size=3)
    dst = s * src @ R.T + t
    s2, R2, t2 = umeyama(src, dst)
    np.testing.assert_allclose([s2], [s], rtol=1e-9)
    np.testing.assert_allclose(R2, R, atol=1e-9)
    np.testing.assert_allclose(t2, t, atol=1e-8)


def test_camera_center_accuracy():
    rng = np.random.default_rng(2)
    gt = rng.normal(size=(6, 3))
    R = random_rotations(rng, 1)[0]
    pred = 3.0 * gt @ R.T + [1, 2, 3]  # same shape, other frame and scale: perfect
    np.testing.assert_allclose(camera_center_errors(pred, gt), 0, atol=1e-9)
    assert camera_center_accuracy(pred, gt) == 1.0
    pred[0] += 10  # one camera far off
    errs = camera_center_errors(pred, gt)
    assert errs[0] > 0.1
    assert camera_center_accuracy(pred, gt, threshold=1e9) == 1.0
    with pytest.raises(GeometryError, match="coincide"):
        camera_center_errors(gt, np.zeros((6, 3)))


def test_rotation_mean_symmetric_samples():
    """Samples R_k = Exp(+-a e_k) R0 average back to R0; covariance a^2/3 on each axis."""
    R0 = rot([0.2, -0.5, 1.0])
    a = 0.1
    ws = [s * a * e for e in np.eye(3) for s in (1, -1)]
    samples = np.stack([rot(w) @ R0 for w in ws])
    spread = rotation_mean(samples)
    np.testing.assert_allclose(spread.mean, R0, atol=1e-9)
    np.testing.assert_allclose(spread.covariance, np.eye(3) * a**2 / 3, atol=1e-9)
    dev = [spread.mean_deviation_deg, spread.max_deviation_deg]
    np.testing.assert_allclose(dev, np.degrees(a), atol=1e-7)
    # body frame: the same perturbations seen in R0's own axes
    body = rotation_mean(samples, frame="body")
    np.testing.assert_allclose(body.covariance, R0.T @ spread.covariance @ R0, atol=1e-9)


def test_rotation_mean_noisy_samples_and_weights():
    rng = np.random.default_rng(4)
    R0 = rot([1.0, 0.3, -0.2])
    sig = np.array([0.02, 0.05, 0.01])
    samples = np.stack([rot(rng.normal(size=3) * sig) @ R0 for _ in range(400)])
    spread = rotation_mean(samples)
    assert rotation_error_deg(spread.mean, R0) < 0.5
    np.testing.assert_allclose(np.sqrt(np.diag(spread.covariance)), sig, rtol=0.15)
    # a zero weight removes an outlier sample
    with_outlier = np.concatenate([samples, rot([2.0, 0, 0])[None] @ R0[None]])
    w = np.ones(len(with_outlier))
    w[-1] = 0
    np.testing.assert_allclose(rotation_mean(with_outlier, weights=w).mean, spread.mean, atol=1e-12)
    with pytest.raises(GeometryError, match="frame"):
        rotation_mean(samples, frame="world")
    with pytest.raises(GeometryError, match="weights"):
        rotation_mean(samples, weights=np.zeros(len(samples)))


def test_translation_spread():
    rng = np.random.default_rng(5)
    direction = np.array([1.0, 2.0, 2.0]) / 3
    v = direction * rng.uniform(0.5, 3, size=(500, 1)) + rng.normal(size=(500, 3)) * 0.02
    sp = translation_spread(v)
    np.testing.assert_allclose(sp.direction, direction, atol=5e-3)
    np.testing.assert_allclose(sp.mean, v.mean(0))
    np.testing.assert_allclose(sp.covariance, np.cov(v.T, bias=True), atol=1e-12)
    assert sp.direction_deviation_deg < 2.0
    # spread of the direction is across it, not along it
    assert direction @ sp.direction_covariance @ direction < 1e-4 < np.trace(sp.direction_covariance)
    with pytest.raises(GeometryError, match="cancel"):
        translation_spread(np.array([[1.0, 0, 0], [-1.0, 0, 0]]))
    with pytest.raises(GeometryError, match="zero length"):
        translation_spread(np.zeros((2, 3)))
