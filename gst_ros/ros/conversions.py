"""ROS message <-> numpy conversions (no cv_bridge: plain numpy).

Conventions (those of gst_ros.geometry):
- Colour images in numpy are (H, W, 3) uint8 RGB, row-major, top-left pixel first.
- Depth images in numpy are (H, W) float32 metres along the optical axis (z), NaN where unknown.
  On the wire, 32FC1 is metres and 16UC1 is millimetres (REP 118); 0 means "no reading".
- Intrinsics K are 3x3 pixels, OpenCV / CameraInfo convention (the centre of the top-left pixel
  is (0, 0)); CameraInfo.k is K row-major.
- Poses are 4x4 world-to-camera matrices `w2c` (X_cam = R X_world + t), optical axes
  x right, y down, z forward (REP 103 optical frame).
- A ROS transform parent -> child (TransformStamped with header.frame_id = parent,
  child_frame_id = child) is the child frame's pose in the parent frame: it maps child
  coordinates to parent coordinates. For a camera, camera-to-parent = inv(w2c) when `w2c` maps
  parent (world) coordinates to the camera. A geometry_msgs/Pose of a camera is the same thing.
- ROS quaternions are (x, y, z, w).

Every function raises ConversionError (a ValueError) naming the problem for bad input.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, Transform, TransformStamped
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from gst_ros.geometry import (
    GeometryError,
    check_intrinsics,
    crop_resize_intrinsics,
    ros_camera_pose_from_w2c,
    w2c_from_ros_camera_pose,
)

# 4096 x 4096: larger frames are refused unless the caller raises the limit
DEFAULT_MAX_PIXELS = 4096 * 4096

# encoding -> channels, for the 8-bit colour encodings we read
COLOR_ENCODINGS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}
# YUV 4:2:2, two bytes per pixel (sensor_msgs image_encodings: "yuv422" = UYVY byte order,
# "yuv422_yuy2" = YUYV; newer distributions also name them "uyvy" / "yuyv") -> OpenCV conversion
YUV422_ENCODINGS = {"yuv422": cv2.COLOR_YUV2RGB_UYVY, "uyvy": cv2.COLOR_YUV2RGB_UYVY,
                    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV, "yuyv": cv2.COLOR_YUV2RGB_YUYV}
DEPTH_ENCODINGS = {"16UC1": np.dtype(np.uint16), "32FC1": np.dtype(np.float32)}


class ConversionError(ValueError):
    """A ROS message (or array) cannot be converted; the message names the problem."""


# ------------------------------------------------------------------------------------------
# stamps


def stamp_from_seconds(seconds: float) -> Time:
    """builtin_interfaces/Time from seconds since the epoch (or since the clock's origin)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ConversionError(f"stamp: seconds must be finite and >= 0, got {seconds}")
    return stamp_from_nanoseconds(int(round(seconds * 1e9)))


def stamp_from_nanoseconds(nanoseconds: int) -> Time:
    """builtin_interfaces/Time from integer nanoseconds (exact)."""
    nanoseconds = int(nanoseconds)
    if nanoseconds < 0:
        raise ConversionError(f"stamp: nanoseconds must be >= 0, got {nanoseconds}")
    sec, nsec = divmod(nanoseconds, 1_000_000_000)
    if sec >= 2**31:
        raise ConversionError(f"stamp: {sec} s does not fit builtin_interfaces/Time (int32 seconds)")
    return Time(sec=sec, nanosec=nsec)


def stamp_to_nanoseconds(stamp: Time) -> int:
    """Integer nanoseconds of a builtin_interfaces/Time."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stamp_to_seconds(stamp: Time) -> float:
    """Seconds (float) of a builtin_interfaces/Time."""
    return stamp_to_nanoseconds(stamp) * 1e-9


def make_header(stamp: Time | None = None, frame_id: str = "") -> Header:
    """std_msgs/Header with `stamp` (zero time if None) and `frame_id`."""
    return Header(stamp=stamp if stamp is not None else Time(), frame_id=frame_id)


# ------------------------------------------------------------------------------------------
# images


def _check_pixel_count(w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise ConversionError(
            f"image: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels (max_pixels)")


def _check_image_header(msg: Image, max_pixels: int) -> tuple[int, int]:
    h, w = int(msg.height), int(msg.width)
    if h == 0 or w == 0:
        raise ConversionError(f"image: empty image ({w}x{h})")
    _check_pixel_count(w, h, max_pixels)
    if len(msg.data) == 0:
        raise ConversionError(f"image: empty data for a {w}x{h} {msg.encoding!r} image")
    return h, w


def _rows(msg: Image, h: int, w: int, bytes_per_pixel: int) -> np.ndarray:
    """(h, w * bytes_per_pixel) uint8 view of the pixel bytes, honouring `step` (row padding)."""
    step = int(msg.step)
    row_bytes = w * bytes_per_pixel
    if step < row_bytes:
        raise ConversionError(
            f"image: step {step} is smaller than width*bytes_per_pixel = {w}*{bytes_per_pixel} = {row_bytes} "
            f"for encoding {msg.encoding!r}")
    if len(msg.data) != step * h:
        raise ConversionError(
            f"image: data has {len(msg.data)} bytes but step*height = {step}*{h} = {step * h}")
    buf = np.frombuffer(memoryview(msg.data), dtype=np.uint8).reshape(h, step)
    return buf[:, :row_bytes]


def image_to_numpy(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, mono8, rgba8, bgra8, or YUV 4:2:2 as yuv422 / uyvy or
    yuv422_yuy2 / yuyv) -> (H, W, 3) uint8 RGB (a copy).

    Alpha is dropped; mono8 is replicated to three channels; YUV is converted with OpenCV's
    BT.601 video-range coefficients. Row padding (`step` larger than width * bytes per pixel)
    is honoured."""
    enc = msg.encoding
    if enc in YUV422_ENCODINGS:
        h, w = _check_image_header(msg, max_pixels)
        if w % 2:
            raise ConversionError(f"image: a {enc!r} image needs an even width (two pixels share U and V), "
                                  f"got {w}")
        return cv2.cvtColor(_rows(msg, h, w, 2).reshape(h, w, 2), YUV422_ENCODINGS[enc])
    if enc not in COLOR_ENCODINGS:
        raise ConversionError(f"image: unsupported encoding {enc!r}; expected one of "
                              f"{sorted(COLOR_ENCODINGS) + sorted(YUV422_ENCODINGS)}")
    h, w = _check_image_header(msg, max_pixels)
    c = COLOR_ENCODINGS[enc]
    px = _rows(msg, h, w, c).reshape(h, w, c)
    if enc == "rgb8":
        out = px.copy()
    elif enc == "bgr8":
        out = px[:, :, ::-1].copy()
    elif enc == "rgba8":
        out = px[:, :, :3].copy()
    elif enc == "bgra8":
        out = px[:, :, 2::-1].copy()
    else:  # mono8
        out = np.repeat(px, 3, axis=2)
    return out


def _compressed_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) read from a PNG or JPEG header without decoding, or None when the header
    is not one of those (the decoder then decides)."""
    b = data[:65536].tobytes()   # the header only, not a copy of the whole frame
    if b[:8] == b"\x89PNG\r\n\x1a\n" and len(b) >= 24:
        return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")
    if b[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(b):  # JPEG markers up to the start of frame, which holds the size
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(b[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and i + 9 <= len(b):
            return int.from_bytes(b[i + 7:i + 9], "big"), int.from_bytes(b[i + 5:i + 7], "big")
        i += 2 + length
    return None


def compressed_image_to_numpy(msg: CompressedImage, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/CompressedImage as image_transport's `compressed` plugin publishes it (JPEG or
    PNG; `format` e.g. "jpeg", "png" or "bgr8; jpeg compressed bgr8") -> (H, W, 3) uint8 RGB.

    Grey images are replicated to three channels and alpha is dropped. The size is read from the
    header and checked against `max_pixels` before anything is decoded. A `compressedDepth`
    stream, an unknown format, empty or undecodable data are refused by name."""
    fmt = str(msg.format)
    low = fmt.lower()
    if "compresseddepth" in low:
        raise ConversionError(f"compressed image: format {fmt!r} is a depth stream (compressedDepth), "
                              "not a colour image")
    if low and not any(k in low for k in ("jpeg", "jpg", "png")):
        raise ConversionError(f"compressed image: unsupported format {fmt!r}; expected JPEG or PNG")
    if len(msg.data) == 0:
        raise ConversionError(f"compressed image: empty data (format {fmt!r})")
    buf = np.frombuffer(memoryview(msg.data), dtype=np.uint8)
    size = _compressed_size(buf)
    if size is not None:
        _check_pixel_count(*size, max_pixels)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConversionError(f"compressed image: could not decode {len(buf)} bytes of format {fmt!r} "
                              "(corrupt or truncated data)")
    _check_pixel_count(bgr.shape[1], bgr.shape[0], max_pixels)  # a header the scan could not read
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def numpy_to_image(rgb: np.ndarray, stamp: Time | None = None, frame_id: str = "",
                   encoding: str = "rgb8") -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image with `encoding` rgb8 or bgr8 (packed rows);
    (H, W) uint8 -> mono8."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise ConversionError(f"image: expected a uint8 array, got {rgb.dtype}")
    if rgb.ndim == 2:
        if encoding != "mono8":
            raise ConversionError(f"image: a (H, W) array can only be sent as mono8, not {encoding!r}")
        px = rgb
    elif rgb.ndim == 3 and rgb.shape[2] == 3:
        if encoding == "rgb8":
            px = rgb
        elif encoding == "bgr8":
            px = rgb[:, :, ::-1]
        else:
            raise ConversionError(
                f"image: an (H, W, 3) RGB array can be sent as rgb8 or bgr8, not {encoding!r}")
    else:
        raise ConversionError(f"image: expected (H, W, 3) RGB or (H, W) mono, got shape {rgb.shape}")
    h, w = px.shape[:2]
    if h == 0 or w == 0:
        raise ConversionError(f"image: empty array of shape {rgb.shape}")
    msg = Image(header=make_header(stamp, frame_id), height=h, width=w, encoding=encoding,
                is_bigendian=0, step=w * (1 if px.ndim == 2 else 3))
    msg.data = np.ascontiguousarray(px).tobytes()
    return msg


def depth_to_numpy(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/Image 32FC1 (metres) or 16UC1 (millimetres) -> (H, W) float32 metres,
    NaN where the sensor has no reading (0, or non-finite). Honours `step` and `is_bigendian`."""
    enc = msg.encoding
    if enc not in DEPTH_ENCODINGS:
        raise ConversionError(
            f"depth image: unsupported encoding {enc!r}; expected one of {sorted(DEPTH_ENCODINGS)}")
    h, w = _check_image_header(msg, max_pixels)
    dt = DEPTH_ENCODINGS[enc].newbyteorder(">" if msg.is_bigendian else "<")
    rows = np.ascontiguousarray(_rows(msg, h, w, dt.itemsize))
    z = rows.view(dt).reshape(h, w).astype(np.float32)
    if enc == "16UC1":
        z *= np.float32(0.001)
    z[~np.isfinite(z) | (z <= 0)] = np.nan
    return z


def numpy_to_depth(depth_m: np.ndarray, stamp: Time | None = None, frame_id: str = "",
                   encoding: str = "32FC1") -> Image:
    """(H, W) depth in metres -> sensor_msgs/Image 32FC1 (metres, NaN kept) or 16UC1
    (millimetres, rounded; NaN/inf/<=0 -> 0, values above 65.535 m refused)."""
    z = np.asarray(depth_m, dtype=np.float64)
    if z.ndim != 2 or z.size == 0:
        raise ConversionError(f"depth image: expected a non-empty (H, W) array, got shape {z.shape}")
    h, w = z.shape
    if encoding == "32FC1":
        px = z.astype("<f4")
    elif encoding == "16UC1":
        mm = np.where(np.isfinite(z) & (z > 0), np.round(z * 1000.0), 0.0)
        if mm.max() > 65535:
            raise ConversionError(f"depth image: {mm.max() / 1000:.3f} m does not fit 16UC1 millimetres")
        px = mm.astype("<u2")
    else:
        raise ConversionError(f"depth image: unsupported encoding {encoding!r}; expected 32FC1 or 16UC1")
    msg = Image(header=make_header(stamp, frame_id), height=h, width=w, encoding=encoding,
                is_bigendian=0, step=w * px.itemsize)
    msg.data = np.ascontiguousarray(px).tobytes()
    return msg


# ------------------------------------------------------------------------------------------
# intrinsics


def _check_K(K, where: str) -> np.ndarray:
    try:
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ConversionError(f"{where}: K must be 3x3, got shape {K.shape}")
        if np.all(K == 0):
            raise ConversionError(f"{where}: K is all zeros (uncalibrated camera)")
        check_intrinsics(K)
    except GeometryError as e:
        raise ConversionError(f"{where}: {e}") from e
    return K


def camera_info_image_size(msg: CameraInfo) -> tuple[int, int]:
    """(width, height) of the images the camera publishes: the calibrated size, cut to the
    region of interest when one is set, divided by the binning."""
    bx, by = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    roi = msg.roi
    w = int(roi.width) if roi.width else int(msg.width)
    h = int(roi.height) if roi.height else int(msg.height)
    return w // bx, h // by


def camera_info_to_K(msg: CameraInfo) -> np.ndarray:
    """sensor_msgs/CameraInfo -> K (3, 3) float64 pixels of the published image (size given by
    camera_info_image_size; the plain case is msg.width x msg.height).

    A region of interest and binning (both in calibration-resolution pixels) are applied with
    gst_ros.geometry.crop_resize_intrinsics (pixel-centre convention). Rejects an all-zero K
    (uncalibrated), NaN/inf, and non-positive focal lengths."""
    if int(msg.width) == 0 or int(msg.height) == 0:
        raise ConversionError(f"camera_info: image size is {msg.width}x{msg.height}")
    K = _check_K(np.array(msg.k, dtype=np.float64).reshape(3, 3), "camera_info")
    bx, by = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    roi = msg.roi
    if bx != 1 or by != 1 or roi.x_offset or roi.y_offset or roi.width or roi.height:
        w = int(roi.width) if roi.width else int(msg.width)
        h = int(roi.height) if roi.height else int(msg.height)
        K = crop_resize_intrinsics(K, (roi.x_offset, roi.y_offset, w, h), (w / bx, h / by))
    return K


def K_to_camera_info(K: np.ndarray, width: int, height: int, stamp: Time | None = None,
                     frame_id: str = "") -> CameraInfo:
    """K (3, 3) pixels of a width x height image -> sensor_msgs/CameraInfo of an ideal pinhole
    camera (plumb_bob model with zero distortion, R = identity, P = [K | 0])."""
    K = _check_K(K, "K_to_camera_info")
    if int(width) <= 0 or int(height) <= 0:
        raise ConversionError(f"K_to_camera_info: image size must be positive, got {width}x{height}")
    P = np.zeros((3, 4))
    P[:, :3] = K
    return CameraInfo(header=make_header(stamp, frame_id), width=int(width), height=int(height),
                      distortion_model="plumb_bob", d=[0.0] * 5, k=K.reshape(-1).tolist(),
                      r=np.eye(3).reshape(-1).tolist(), p=P.reshape(-1).tolist())


# ------------------------------------------------------------------------------------------
# poses (the maths lives in gst_ros.geometry; these only move numbers in and out of messages)


def _pose_numbers(w2c, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return ros_camera_pose_from_w2c(w2c)
    except GeometryError as e:
        raise ConversionError(f"{where}: bad w2c: {e}") from e


def _w2c_from_numbers(position, quat_xyzw, where: str) -> np.ndarray:
    try:
        q = np.asarray(quat_xyzw, dtype=np.float64)
        if not np.isfinite(q).all():
            raise ConversionError(f"{where}: quaternion has NaN or inf entries: {q.tolist()}")
        n = float(np.linalg.norm(q))
        if abs(n - 1.0) > 1e-3:
            raise ConversionError(f"{where}: quaternion is not normalised (norm {n:.6g})")
        return w2c_from_ros_camera_pose(position, q / n)
    except GeometryError as e:
        raise ConversionError(f"{where}: {e}") from e


def w2c_to_pose(w2c: np.ndarray) -> Pose:
    """World-to-camera 4x4 -> geometry_msgs/Pose of the camera (optical frame) in the world,
    i.e. camera-to-world = inv(w2c)."""
    pos, q = _pose_numbers(w2c, "w2c_to_pose")
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in pos)
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (float(v) for v in q)
    return pose


def pose_to_w2c(pose: Pose) -> np.ndarray:
    """geometry_msgs/Pose of a camera optical frame in the world -> world-to-camera 4x4."""
    p, o = pose.position, pose.orientation
    return _w2c_from_numbers([p.x, p.y, p.z], [o.x, o.y, o.z, o.w], "pose_to_w2c")


def w2c_to_transform(w2c: np.ndarray) -> Transform:
    """World-to-camera 4x4 -> geometry_msgs/Transform parent(world) -> child(camera optical
    frame), i.e. the camera-to-world matrix inv(w2c)."""
    pos, q = _pose_numbers(w2c, "w2c_to_transform")
    tf = Transform()
    tf.translation.x, tf.translation.y, tf.translation.z = (float(v) for v in pos)
    tf.rotation.x, tf.rotation.y, tf.rotation.z, tf.rotation.w = (float(v) for v in q)
    return tf


def transform_to_w2c(transform: Transform) -> np.ndarray:
    """geometry_msgs/Transform parent -> child(camera optical frame) -> parent-to-camera 4x4."""
    t, r = transform.translation, transform.rotation
    return _w2c_from_numbers([t.x, t.y, t.z], [r.x, r.y, r.z, r.w], "transform_to_w2c")


def w2c_to_transform_stamped(w2c: np.ndarray, parent_frame: str, child_frame: str,
                             stamp: Time | None = None) -> TransformStamped:
    """TransformStamped parent_frame -> child_frame (the camera) from world(parent)-to-camera."""
    if not parent_frame or not child_frame:
        raise ConversionError(
            f"transform: frame ids must be non-empty, got parent {parent_frame!r}, child {child_frame!r}")
    if parent_frame == child_frame:
        raise ConversionError(f"transform: parent and child frame are both {parent_frame!r}")
    return TransformStamped(header=make_header(stamp, parent_frame), child_frame_id=child_frame,
                            transform=w2c_to_transform(w2c))


def transform_stamped_to_w2c(msg: TransformStamped) -> np.ndarray:
    """TransformStamped parent -> child(camera) -> parent-to-camera 4x4 float64."""
    return transform_to_w2c(msg.transform)


def tf_message(transforms) -> TFMessage:
    """tf2_msgs/TFMessage holding the given TransformStamped messages (for /tf or /tf_static)."""
    transforms = list(transforms)
    for i, t in enumerate(transforms):
        if not isinstance(t, TransformStamped):
            raise ConversionError(f"tf_message: item {i} is a {type(t).__name__}, not a TransformStamped")
    return TFMessage(transforms=transforms)
