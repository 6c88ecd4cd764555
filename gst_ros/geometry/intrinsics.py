"""Pinhole intrinsics K (3x3, pixels) and how they change under crop and resize.

Pixel convention (OpenCV / ROS CameraInfo): pixel (u, v) = (column, row); the CENTRE of the
top-left pixel is (0, 0), so a W x H image spans [-0.5, W-0.5] x [-0.5, H-0.5] and its
geometric centre is ((W-1)/2, (H-1)/2). Conventions whose origin is the top-left image
CORNER (normalised/NDC intrinsics: RealEstate10K, CO3D/PyTorch3D NDC) are shifted by -0.5 px
on conversion; each converter says so.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import GeometryError, as_array, check_intrinsics, check_pose


def _positive(value, name: str) -> float:
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise GeometryError(f"{name} must be a finite number > 0, got {value}")
    return v


def _size(width, height) -> tuple[int, int]:
    if int(width) != width or int(height) != height or width < 1 or height < 1:
        raise GeometryError(f"image size must be positive integers, got {width}x{height}")
    return int(width), int(height)


def make_intrinsics(fx, fy, cx, cy) -> np.ndarray:
    """K (3,3) float64 = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]; focal lengths must be > 0."""
    fx, fy = _positive(fx, "fx"), _positive(fy, "fy")
    cx, cy = float(cx), float(cy)
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise GeometryError(f"principal point must be finite, got ({cx}, {cy})")
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def intrinsics_from_fov(fov_deg, width, height, axis: str = "y") -> np.ndarray:
    """K for a centred pinhole camera with field of view `fov_deg` (degrees, edge to edge)
    along `axis` ("x": across the width, "y": across the height), square pixels, principal
    point at the image centre ((W-1)/2, (H-1)/2). GST's Objaverse renders: fov 49.1 deg, "y"."""
    width, height = _size(width, height)
    fov = _positive(fov_deg, "fov_deg")
    if fov >= 180:
        raise GeometryError(f"fov_deg must be < 180, got {fov}")
    if axis not in ("x", "y"):
        raise GeometryError(f"axis must be 'x' or 'y', got {axis!r}")
    span = width if axis == "x" else height
    f = 0.5 * span / math.tan(math.radians(fov) / 2)
    return make_intrinsics(f, f, (width - 1) / 2, (height - 1) / 2)


def fov_from_intrinsics(K, width, height) -> tuple[float, float]:
    """(horizontal, vertical) field of view in degrees, edge to edge, of K for a W x H image."""
    K = as_array(K, "K", (3, 3))
    check_intrinsics(K)
    width, height = _size(width, height)
    return (math.degrees(2 * math.atan(0.5 * width / K[0, 0])),
            math.degrees(2 * math.atan(0.5 * height / K[1, 1])))


def intrinsics_from_camera_info(k) -> np.ndarray:
    """K (3,3) from a sensor_msgs/CameraInfo `k` field: 9 numbers, row-major (same pixel
    convention as ours, no shift)."""
    K = as_array(k, "CameraInfo k", (9,)).reshape(3, 3)
    check_intrinsics(K, "CameraInfo k")
    return K


def intrinsics_from_normalized(fx, fy, cx, cy, width, height) -> np.ndarray:
    """K in pixels from intrinsics normalised by image size (RealEstate10K): fx, cx divided by
    the width and fy, cy by the height, with the origin at the image's top-left CORNER
    (cx = 0.5 is the image centre). Pixel centre convention: cx_px = cx * W - 0.5."""
    width, height = _size(width, height)
    return make_intrinsics(_positive(fx, "fx") * width, _positive(fy, "fy") * height,
                           cx * width - 0.5, cy * height - 0.5)


CO3D_FORMATS = ("ndc_isotropic", "ndc_norm_image_bounds")


def intrinsics_from_co3d(focal_length, principal_point, height, width,
                         intrinsics_format: str = "ndc_isotropic") -> np.ndarray:
    """K in pixels from CO3D's `viewpoint.focal_length` (2,), `viewpoint.principal_point` (2,)
    and `viewpoint.intrinsics_format`, for an image of `height` x `width` (CO3D's image.size
    order is (H, W)).

    PyTorch3D NDC: +x left, +y up, NDC +-1 on the image EDGES. With s = (min(H, W)/2,)*2 for
    `ndc_isotropic` and s = (W/2, H/2) for `ndc_norm_image_bounds`:
        f_px = f * s;   pp_px = (W/2, H/2) - pp * s - 0.5
    The -0.5 moves the origin from the image corner to the centre of the top-left pixel (our
    convention); PyTorch3D's own `opencv_from_cameras_projection` omits it (corner origin)."""
    f = as_array(focal_length, "focal_length", (2,))
    pp = as_array(principal_point, "principal_point", (2,))
    width, height = _size(width, height)
    if intrinsics_format == "ndc_isotropic":
        s = np.full(2, min(width, height) / 2)
    elif intrinsics_format == "ndc_norm_image_bounds":
        s = np.array([width / 2, height / 2])
    else:
        raise GeometryError(f"unknown CO3D intrinsics_format {intrinsics_format!r}; expected {CO3D_FORMATS}")
    fpx = f * s
    ppx = np.array([width / 2, height / 2]) - pp * s - 0.5
    return make_intrinsics(fpx[0], fpx[1], ppx[0], ppx[1])


def center_square_box(width, height) -> tuple[int, int, int, int]:
    """(x0, y0, side, side): the largest centred square crop of a W x H image, in whole pixels
    (x0 = first kept column, y0 = first kept row)."""
    width, height = _size(width, height)
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side, side


def crop_resize_intrinsics(K, box, out_size) -> np.ndarray:
    """K of the image obtained by cropping `box` = (x0, y0, w, h) (pixels: x0, y0 the first
    kept column/row, w, h the crop size) and resizing the crop to `out_size` = (out_w, out_h).

    Pixel-centre convention, as cv2.resize uses it: u_out = (u - x0 + 0.5) * out_w / w - 0.5,
    so f' = f * out_w / w and c' = (c - x0 + 0.5) * out_w / w - 0.5 (same for y)."""
    K = as_array(K, "K", (3, 3))
    check_intrinsics(K)
    x0, y0, w, h = (float(v) for v in as_array(box, "box", (4,)))
    w, h = _positive(w, "box width"), _positive(h, "box height")
    out_w, out_h = (_positive(v, "out_size") for v in as_array(out_size, "out_size", (2,)))
    sx, sy = out_w / w, out_h / h
    K2 = K.copy()
    K2[0, :] = [K[0, 0] * sx, K[0, 1] * sx, (K[0, 2] - x0 + 0.5) * sx - 0.5]
    K2[1, 1:] = [K[1, 1] * sy, (K[1, 2] - y0 + 0.5) * sy - 0.5]
    return K2


def project_points(K, w2c, points_world) -> tuple[np.ndarray, np.ndarray]:
    """(uv (N,2) pixels, depth (N,)) of world points (N,3) seen by camera (K, w2c).

    w2c: world-to-camera, OpenCV axes; depth = camera z (positive in front). Points with
    depth <= 0 are behind the camera: their uv is returned as computed (meaningless) and the
    caller should mask them with depth > 0."""
    K = as_array(K, "K", (3, 3))
    check_intrinsics(K)
    w2c = as_array(w2c, "w2c", (4, 4))
    check_pose(w2c)
    P = as_array(points_world, "points_world", (None, 3))
    X = P @ w2c[:3, :3].T + w2c[:3, 3]
    depth = X[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = X @ K.T
        uv = uvw[:, :2] / uvw[:, 2:3]
    return uv, depth
