"""Plücker maps and their inversion: layout, round trips (known K and the homography route),
noise, outliers, unnormalised rays, and degenerate input."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gst_ros.geometry import (
    PLUCKER_ORDER,
    GeometryError,
    camera_center,
    cameras_from_plucker,
    intrinsics_from_fov,
    join_plucker,
    look_at,
    make_intrinsics,
    make_pose,
    plucker_map,
    project_points,
    rotation_error_deg,
    so3_exp,
    split_plucker,
)

SETTINGS = settings(max_examples=20, deadline=None)


def random_cameras(rng, B, radius=2.0):
    R = so3_exp(torch.as_tensor(rng.normal(size=(B, 3)))).numpy()
    C = rng.normal(size=(B, 3)) * radius
    return np.stack([make_pose(r, -r @ c) for r, c in zip(R, C)]), R, C


def errors(fit, R, C):
    """(rotation error in radians (B,), relative centre error (B,))."""
    rot = np.radians(rotation_error_deg(fit.w2c[:, :3, :3].numpy(), R))
    cen = np.linalg.norm(camera_center(fit.w2c.numpy()) - C, axis=1) / np.linalg.norm(C, axis=1)
    return rot, cen


def test_layout_identity_camera():
    assert PLUCKER_ORDER == "md"
    K = make_intrinsics(10, 10, 2, 1)  # principal point on pixel (2, 1)
    maps = plucker_map(K, np.eye(4), 3, 5)
    assert maps.shape == (1, 6, 3, 5) and maps.dtype == torch.float32
    m, d = split_plucker(maps)
    assert torch.equal(m, torch.zeros_like(m))  # centre at the origin: zero moments
    np.testing.assert_allclose(d[0, :, 1, 2].numpy(), [0, 0, 1], atol=1e-7)  # row 1, column 2
    # channels 3..5 are d: unit; the pixel right of centre has +x, the one below has +y
    assert d[0, 0, 1, 3] > 0 and d[0, 1, 2, 2] > 0
    np.testing.assert_allclose(torch.linalg.norm(d, dim=1).numpy(), 1, atol=1e-6)
    assert torch.equal(join_plucker(m, d), maps)


def test_moments_and_projection_consistency():
    K = intrinsics_from_fov(50, 7, 5)
    w2c = look_at([1.0, -2.0, 0.7], [0.1, 0.2, 0.0])
    maps = plucker_map(K, w2c, 5, 7, dtype=torch.float64)
    m, d = (x[0].permute(1, 2, 0).reshape(-1, 3).numpy() for x in split_plucker(maps))
    o = camera_center(w2c)
    np.testing.assert_allclose(m, np.cross(o, d), atol=1e-12)
    # a point along each pixel's ray projects back onto that pixel's centre
    uv, depth = project_points(K, w2c, o + 3.0 * d)
    v, u = np.mgrid[0:5, 0:7]
    np.testing.assert_allclose(uv, np.stack([u.ravel(), v.ravel()], 1), atol=1e-9)
    assert (depth > 0).all()


def test_batch_inputs_numpy_torch_and_broadcast():
    rng = np.random.default_rng(1)
    w2c, _, _ = random_cameras(rng, 3)
    K = intrinsics_from_fov(49.1, 8, 8)
    a = plucker_map(K, w2c, 8, 8)
    b = plucker_map(torch.as_tensor(np.stack([K] * 3)), torch.as_tensor(w2c), 8, 8)
    c = torch.cat([plucker_map(K, x, 8, 8) for x in w2c])
    assert torch.allclose(a, b) and torch.allclose(a, c)
    with pytest.raises(GeometryError, match="batch sizes"):
        plucker_map(np.stack([K] * 2), w2c, 8, 8)


@SETTINGS
@given(st.integers(0, 10_000), st.floats(20, 90), st.integers(6, 20), st.integers(6, 20))
def test_round_trip_known_k(seed, fov, H, W):
    """float64 maps, no noise: rotation within 1e-5 rad, centre within 1e-5 relative."""
    w2c, R, C = random_cameras(np.random.default_rng(seed), 4)
    K = intrinsics_from_fov(fov, W, H)
    fit = cameras_from_plucker(plucker_map(K, w2c, H, W, dtype=torch.float64), K)
    rot, cen = errors(fit, R, C)
    assert rot.max() < 1e-5 and cen.max() < 1e-5
    np.testing.assert_allclose(fit.w2c.numpy(), w2c, atol=1e-8)
    assert fit.residual.max() < 1e-8 and torch.all(fit.inlier_fraction == 1)


@SETTINGS
@given(st.integers(0, 10_000), st.floats(25, 80), st.floats(-2, 2), st.floats(-2, 2))
def test_round_trip_homography_route(seed, fov, dcx, dcy):
    """Unknown K: focal length and principal point recovered (relative 1e-6 on float64 maps)."""
    w2c, R, C = random_cameras(np.random.default_rng(seed), 4)
    K0 = intrinsics_from_fov(fov, 16, 12)
    K = make_intrinsics(K0[0, 0], K0[1, 1] * 1.05, K0[0, 2] + dcx, K0[1, 2] + dcy)
    fit = cameras_from_plucker(plucker_map(K, w2c, 12, 16, dtype=torch.float64))
    rot, cen = errors(fit, R, C)
    assert rot.max() < 1e-5 and cen.max() < 1e-5
    np.testing.assert_allclose(fit.K.numpy(), np.stack([K] * 4), rtol=1e-6, atol=1e-6)


def test_round_trip_float32_maps():
    """float32 maps (what the tokenizer outputs): solved in float64, error at float32 rounding."""
    w2c, R, C = random_cameras(np.random.default_rng(7), 16)
    K = intrinsics_from_fov(49.1, 16, 16)
    maps = plucker_map(K, w2c, 16, 16)
    for k in (K, None):
        rot, cen = errors(cameras_from_plucker(maps, k), R, C)
        assert rot.max() < 1e-5 and cen.max() < 1e-5


def test_gaussian_noise_error_grows_smoothly_and_is_bounded():
    """Noise N(0, sigma^2) on each direction component (map 16x16, fov 49.1): stated bounds
    rotation <= 1.0 sigma rad (known K), <= 4 sigma rad (homography), centre <= 2 sigma
    relative, focal <= 1.5 sigma relative; mean errors grow with sigma."""
    rng = np.random.default_rng(3)
    w2c, R, C = random_cameras(rng, 16)
    K = intrinsics_from_fov(49.1, 16, 16)
    m, d = split_plucker(plucker_map(K, w2c, 16, 16, dtype=torch.float64))
    means = []
    for sigma in (1e-3, 1e-2, 5e-2):
        noisy = join_plucker(m, d + sigma * torch.as_tensor(rng.normal(size=d.shape)))
        fit = cameras_from_plucker(noisy, K)
        rot, cen = errors(fit, R, C)
        assert rot.max() < 1.0 * sigma and cen.max() < 2 * sigma
        assert sigma < fit.residual.mean() < 2 * sigma  # RMS angle ~ sqrt(2) sigma
        fit_h = cameras_from_plucker(noisy)
        rot_h, cen_h = errors(fit_h, R, C)
        assert rot_h.max() < 4 * sigma and cen_h.max() < 2 * sigma
        assert (fit_h.K[:, 0, 0] / K[0, 0] - 1).abs().max() < 1.5 * sigma
        means.append(rot.mean())
    assert means[0] < means[1] < means[2]


@pytest.mark.parametrize("use_k", [True, False])
def test_outlier_rays(use_k):
    """25 % of rays replaced by garbage: the robust fit is still exact; plain least squares is not."""
    rng = np.random.default_rng(5)
    w2c, R, C = random_cameras(rng, 8)
    K = intrinsics_from_fov(49.1, 16, 16)
    maps = plucker_map(K, w2c, 16, 16, dtype=torch.float64)
    bad = torch.as_tensor(rng.random((8, 1, 16, 16)) < 0.25)
    noisy = torch.where(bad, torch.as_tensor(rng.normal(size=(8, 6, 16, 16))), maps)
    fit = cameras_from_plucker(noisy, K if use_k else None)
    rot, cen = errors(fit, R, C)
    assert rot.max() < 1e-6 and cen.max() < 1e-6
    frac = 1 - bad.double().mean(dim=(1, 2, 3))
    assert torch.allclose(fit.inlier_fraction, frac, atol=0.02)
    rot_ls, cen_ls = errors(cameras_from_plucker(noisy, K, robust=False), R, C)
    assert max(rot_ls.max(), cen_ls.max()) > 1e-2


def test_unnormalised_rays_same_answer():
    rng = np.random.default_rng(9)
    w2c, R, C = random_cameras(rng, 4)
    K = intrinsics_from_fov(49.1, 10, 10)
    maps = plucker_map(K, w2c, 10, 10, dtype=torch.float64)
    scale = torch.as_tensor(rng.uniform(0.2, 5, size=(4, 1, 10, 10)))
    fit = cameras_from_plucker(maps * scale, K)  # d and m scaled together: the same lines
    np.testing.assert_allclose(fit.w2c.numpy(), w2c, atol=1e-9)
    # a few zero-direction rays are ignored
    maps2 = maps.clone()
    maps2[:, :, 0, :] = 0
    np.testing.assert_allclose(cameras_from_plucker(maps2, K).w2c.numpy(), w2c, atol=1e-9)


def test_degenerate_maps_raise():
    K = intrinsics_from_fov(49.1, 8, 8)
    good = plucker_map(K, look_at([2.0, 0, 0], [0, 0, 0]), 8, 8)
    with pytest.raises(GeometryError, match="NaN"):
        cameras_from_plucker(torch.where(torch.rand_like(good) < 0.1, torch.nan, good), K)
    with pytest.raises(GeometryError, match=r"\(B,6,H,W\)"):
        cameras_from_plucker(good[:, :5], K)
    with pytest.raises(GeometryError, match=r"\(B,6,H,W\)"):
        cameras_from_plucker(good[0], K)
    with pytest.raises(GeometryError, match="empty"):
        cameras_from_plucker(good[:0], K)
    parallel = good.clone()
    parallel[:] = good[:, :, :1, :1]  # every pixel carries the same ray
    with pytest.raises(GeometryError, match="parallel"):
        cameras_from_plucker(parallel, K)
    with pytest.raises(GeometryError, match="fewer than 4"):
        cameras_from_plucker(torch.zeros(1, 6, 8, 8), K)
    with pytest.raises(GeometryError, match="focal"):
        cameras_from_plucker(good, np.diag([0.0, 1.0, 1.0]))
    with pytest.raises(GeometryError, match="batch"):
        cameras_from_plucker(good, np.stack([K] * 2))
    with pytest.raises(GeometryError, match="orthonormal"):
        plucker_map(K, np.diag([1.0, 2, 1, 1]), 8, 8)
