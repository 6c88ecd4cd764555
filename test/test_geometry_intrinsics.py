"""Intrinsics: FOV, CameraInfo, CO3D NDC and RealEstate10K formats, crop/resize (checked against
cv2.resize on a real image), projection, and their validation."""
import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gst_ros.geometry import (
    GeometryError,
    center_square_box,
    crop_resize_intrinsics,
    fov_from_intrinsics,
    intrinsics_from_camera_info,
    intrinsics_from_co3d,
    intrinsics_from_fov,
    intrinsics_from_normalized,
    make_intrinsics,
    project_points,
)

SETTINGS = settings(max_examples=25, deadline=None)


def test_fov_objaverse_numbers():
    K = intrinsics_from_fov(49.1, 256, 256)
    f = 128 / math.tan(math.radians(49.1 / 2))
    np.testing.assert_allclose(K, [[f, 0, 127.5], [0, f, 127.5], [0, 0, 1]])
    assert abs(f - 280.5) < 0.5
    fx_deg, fy_deg = fov_from_intrinsics(K, 256, 256)
    assert abs(fx_deg - 49.1) < 1e-9 and abs(fy_deg - 49.1) < 1e-9


def test_fov_spans_image_edges():
    # a point at half the vertical FOV above the axis lands on the top image EDGE, v = -0.5
    K = intrinsics_from_fov(60, 40, 30, axis="y")
    a = math.radians(30)
    uv, _ = project_points(K, np.eye(4), np.array([[0.0, -math.tan(a), 1.0]]))
    np.testing.assert_allclose(uv[0], [19.5, -0.5], atol=1e-9)
    Kx = intrinsics_from_fov(60, 40, 30, axis="x")
    uv, _ = project_points(Kx, np.eye(4), np.array([[math.tan(a), 0.0, 1.0]]))
    np.testing.assert_allclose(uv[0], [39.5, 14.5], atol=1e-9)


def test_camera_info_k():
    K = intrinsics_from_camera_info([500, 0, 319.5, 0, 501, 239.5, 0, 0, 1])
    np.testing.assert_allclose(K, [[500, 0, 319.5], [0, 501, 239.5], [0, 0, 1]])
    with pytest.raises(GeometryError, match="focal"):
        intrinsics_from_camera_info([0, 0, 319.5, 0, 501, 239.5, 0, 0, 1])
    with pytest.raises(GeometryError, match="shape"):
        intrinsics_from_camera_info([1, 2, 3])


@pytest.mark.parametrize("bad", [0.0, -3.0, float("nan"), float("inf")])
def test_bad_focal_raises(bad):
    with pytest.raises(GeometryError):
        make_intrinsics(bad, 100, 10, 10)
    with pytest.raises(GeometryError):
        intrinsics_from_normalized(bad, 0.5, 0.5, 0.5, 64, 64)
    with pytest.raises(GeometryError):
        intrinsics_from_fov(bad, 64, 64)


def test_fov_bad_args():
    with pytest.raises(GeometryError, match="< 180"):
        intrinsics_from_fov(180, 64, 64)
    with pytest.raises(GeometryError, match="axis"):
        intrinsics_from_fov(50, 64, 64, axis="z")
    with pytest.raises(GeometryError, match="image size"):
        intrinsics_from_fov(50, 0, 64)


def test_normalized_realestate_intrinsics():
    K = intrinsics_from_normalized(0.5, 0.9, 0.5, 0.5, 640, 360)
    np.testing.assert_allclose(K, [[320, 0, 319.5], [0, 324, 179.5], [0, 0, 1]])


def test_co3d_centered_principal_point():
    K = intrinsics_from_co3d([2.0, 2.0], [0.0, 0.0], height=300, width=400)
    np.testing.assert_allclose(K, [[300, 0, 199.5], [0, 300, 149.5], [0, 0, 1]])
    K = intrinsics_from_co3d([2.0, 2.0], [0.0, 0.0], 300, 400, "ndc_norm_image_bounds")
    np.testing.assert_allclose(K, [[400, 0, 199.5], [0, 300, 149.5], [0, 0, 1]])
    with pytest.raises(GeometryError, match="intrinsics_format"):
        intrinsics_from_co3d([2.0, 2.0], [0.0, 0.0], 300, 400, "screen")


@SETTINGS
@given(st.floats(0.5, 4), st.floats(0.5, 4), st.floats(-0.3, 0.3), st.floats(-0.3, 0.3),
       st.sampled_from(["ndc_isotropic", "ndc_norm_image_bounds"]),
       st.tuples(st.floats(-1, 1), st.floats(-1, 1), st.floats(1, 5)))
def test_co3d_matches_pytorch3d_ndc_projection(fx, fy, px, py, fmt, X):
    """Project a point the PyTorch3D way (camera x left, y up; NDC +x left, +y up, +-1 on the
    image edges) and with our K on the OpenCV-axes point: same pixel."""
    H, W = 300, 400
    s = np.full(2, min(H, W) / 2) if fmt == "ndc_isotropic" else np.array([W / 2, H / 2])
    x_ndc = fx * X[0] / X[2] + px
    y_ndc = fy * X[1] / X[2] + py
    # NDC -> pixel with corner origin (x left/up positive), then shift to pixel centres
    u_expected = W / 2 - x_ndc * s[0] - 0.5
    v_expected = H / 2 - y_ndc * s[1] - 0.5
    K = intrinsics_from_co3d([fx, fy], [px, py], H, W, fmt)
    uv, _ = project_points(K, np.eye(4), np.array([[-X[0], -X[1], X[2]]]))
    np.testing.assert_allclose(uv[0], [u_expected, v_expected], atol=1e-9)


def test_center_square_box():
    assert center_square_box(640, 480) == (80, 0, 480, 480)
    assert center_square_box(480, 641) == (0, 80, 480, 480)
    assert center_square_box(5, 5) == (0, 0, 5, 5)


def test_crop_resize_formula():
    K = make_intrinsics(500, 510, 320, 240)
    K2 = crop_resize_intrinsics(K, (80, 0, 480, 480), (256, 256))
    s = 256 / 480
    np.testing.assert_allclose(K2, [[500 * s, 0, (320 - 80 + 0.5) * s - 0.5],
                                    [0, 510 * s, (240 + 0.5) * s - 0.5], [0, 0, 1]])
    # identity crop/resize leaves K unchanged
    np.testing.assert_allclose(crop_resize_intrinsics(K, (0, 0, 640, 480), (640, 480)), K)
    with pytest.raises(GeometryError):
        crop_resize_intrinsics(K, (0, 0, 0, 480), (256, 256))


@pytest.mark.parametrize("interp", [cv2.INTER_AREA, cv2.INTER_LINEAR])
def test_crop_resize_agrees_with_cv2(interp):
    """Render a smooth blob at the projection of a 3D point, crop + resize with cv2: the blob's
    centroid lands where the new K projects the point."""
    W, H = 160, 120
    K = make_intrinsics(150, 150, 81.3, 57.9)
    point = np.array([[0.21, -0.12, 1.7]])
    (u, v), = project_points(K, np.eye(4), point)[0]
    vv, uu = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.exp(-((uu - u) ** 2 + (vv - v) ** 2) / (2 * 6.0**2))
    box = center_square_box(W, H)
    x0, y0, side, _ = box
    out = cv2.resize(img[y0:y0 + side, x0:x0 + side], (40, 40), interpolation=interp)
    vv, uu = np.mgrid[0:40, 0:40].astype(np.float64)
    centroid = np.array([(out * uu).sum(), (out * vv).sum()]) / out.sum()
    uv2, _ = project_points(crop_resize_intrinsics(K, box, (40, 40)), np.eye(4), point)
    np.testing.assert_allclose(centroid, uv2[0], atol=0.02)
    # the naive formula without the half-pixel terms is off by ~0.5 * (1 - 40/120) px
    naive = (u - x0) * 40 / side
    assert abs(naive - centroid[0]) > 0.2


@SETTINGS
@given(st.lists(st.tuples(st.floats(-2, 2), st.floats(-2, 2), st.floats(0.5, 5)), min_size=1, max_size=8))
def test_project_points_matches_pinhole(pts):
    P = np.array(pts)
    K = make_intrinsics(200, 180, 60, 50)
    uv, depth = project_points(K, np.eye(4), P)
    np.testing.assert_allclose(depth, P[:, 2])
    np.testing.assert_allclose(uv, np.stack([200 * P[:, 0] / P[:, 2] + 60, 180 * P[:, 1] / P[:, 2] + 50], 1))


def test_project_points_bad_input():
    K = make_intrinsics(200, 180, 60, 50)
    with pytest.raises(GeometryError, match="shape"):
        project_points(K, np.eye(4), np.zeros((3, 2)))
    with pytest.raises(GeometryError, match="NaN"):
        project_points(K, np.eye(4), np.array([[0, np.nan, 1.0]]))
    with pytest.raises(GeometryError, match="orthonormal"):
        project_points(K, np.diag([2.0, 1, 1, 1]), np.zeros((1, 3)))


@SETTINGS
@given(st.integers(0, 60), st.integers(0, 40), st.integers(20, 100), st.integers(8, 300),
       st.tuples(st.floats(-0.5, 0.5), st.floats(-0.5, 0.5), st.floats(1, 4)))
def test_crop_resize_moves_projections_consistently(x0, y0, side, out, X):
    """Any crop + resize: the new K projects a point where the pixel mapping u -> (u - x0 + 0.5)
    * out / side - 0.5 sends its old projection."""
    K = make_intrinsics(120, 125, 70.2, 50.7)
    P = np.array([X])
    uv, _ = project_points(K, np.eye(4), P)
    K2 = crop_resize_intrinsics(K, (x0, y0, side, side), (out, out))
    uv2, _ = project_points(K2, np.eye(4), P)
    np.testing.assert_allclose(uv2[0], (uv[0] - [x0, y0] + 0.5) * out / side - 0.5, atol=1e-9)
