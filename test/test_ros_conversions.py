"""ROS <-> numpy conversions: round trips (hypothesis) and a clear error for each bad message."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("rclpy")

import cv2  # noqa: E402
import torch  # noqa: E402
from geometry_msgs.msg import Pose, TransformStamped  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from gst_ros.geometry import look_at, make_pose, project_points, so3_exp  # noqa: E402
from gst_ros.ros.conversions import (  # noqa: E402
    ConversionError,
    K_to_camera_info,
    camera_info_image_size,
    camera_info_to_K,
    compressed_image_to_numpy,
    depth_to_numpy,
    image_to_numpy,
    numpy_to_depth,
    numpy_to_image,
    pose_to_w2c,
    stamp_from_nanoseconds,
    stamp_from_seconds,
    stamp_to_nanoseconds,
    stamp_to_seconds,
    tf_message,
    transform_stamped_to_w2c,
    transform_to_w2c,
    w2c_to_pose,
    w2c_to_transform,
    w2c_to_transform_stamped,
)

sizes = st.tuples(st.integers(1, 12), st.integers(1, 12))


def _raw(rows: np.ndarray, encoding: str, pad: int) -> Image:
    """Image with `pad` junk bytes after each row (step > width * channels)."""
    h = rows.shape[0]
    flat = rows.reshape(h, -1)
    padded = np.concatenate([flat, np.full((h, pad), 77, np.uint8)], axis=1)
    msg = Image(height=h, width=rows.shape[1], encoding=encoding, step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


@settings(max_examples=40, deadline=None)
@given(sizes, st.integers(0, 7), st.integers(0, 2**31 - 1), st.sampled_from(["rgb8", "bgr8"]))
def test_image_round_trip_with_padding(hw, pad, seed, encoding):
    rgb = np.random.default_rng(seed).integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    msg = numpy_to_image(rgb, encoding=encoding, frame_id="cam")
    assert msg.step == hw[1] * 3 and msg.header.frame_id == "cam"
    assert np.array_equal(image_to_numpy(msg), rgb)
    wire = rgb if encoding == "rgb8" else rgb[:, :, ::-1]
    assert np.array_equal(image_to_numpy(_raw(wire, encoding, pad)), rgb)


@settings(max_examples=25, deadline=None)
@given(sizes, st.integers(0, 5), st.integers(0, 2**31 - 1))
def test_alpha_and_mono_encodings(hw, pad, seed):
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, size=(*hw, 4), dtype=np.uint8)
    assert np.array_equal(image_to_numpy(_raw(rgba, "rgba8", pad)), rgba[:, :, :3])
    bgra = rgba[:, :, [2, 1, 0, 3]]
    assert np.array_equal(image_to_numpy(_raw(bgra, "bgra8", pad)), rgba[:, :, :3])
    mono = rgba[:, :, 0]
    out = image_to_numpy(_raw(mono[:, :, None], "mono8", pad))
    assert np.array_equal(out, np.repeat(mono[:, :, None], 3, axis=2))


# YUV 4:2:2 (BT.601, video range): Y 16 is black, 235 white; (Y, U, V) = (81, 90, 240) is red
YUV_BLACK_WHITE_RED = [(16, 128, 128, (0, 0, 0)), (235, 128, 128, (255, 255, 255)),
                       (81, 90, 240, (255, 0, 0))]


@pytest.mark.parametrize("encoding, order", [("yuv422", "UYVY"), ("uyvy", "UYVY"),
                                             ("yuv422_yuy2", "YUYV"), ("yuyv", "YUYV")])
@pytest.mark.parametrize("pad", [0, 3])
def test_yuv422_encodings_decode_to_rgb(encoding, order, pad):
    # one row of six pixels: a black, a white and a red pair (a pair shares its U and V)
    row = []
    for y, u, v, _ in YUV_BLACK_WHITE_RED:
        row += [u, y, v, y] if order == "UYVY" else [y, u, y, v]
    rows = np.array([row, row], dtype=np.uint8).reshape(2, 6, 2)
    out = image_to_numpy(_raw(rows, encoding, pad))
    want = np.repeat(np.array([c for *_, c in YUV_BLACK_WHITE_RED], dtype=float), 2, axis=0)
    assert out.shape == (2, 6, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(float) - want[None]).max() <= 3


def test_yuv422_odd_width_is_refused():
    msg = _raw(np.zeros((2, 3, 2), np.uint8), "yuv422", 0)
    with pytest.raises(ConversionError, match="even width"):
        image_to_numpy(msg)


def _compressed(bgr: np.ndarray, ext: str, fmt: str, params=()) -> CompressedImage:
    ok, buf = cv2.imencode(ext, bgr, list(params))
    assert ok
    return CompressedImage(format=fmt, data=buf.tobytes())


def _smooth_rgb(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 200)],
                    axis=2).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["png", "rgb8; png compressed rgb8", ""])
def test_compressed_png_is_exact_rgb(fmt):
    rgb = np.random.default_rng(0).integers(0, 256, (24, 36, 3), dtype=np.uint8)
    out = compressed_image_to_numpy(_compressed(rgb[:, :, ::-1], ".png", fmt))
    assert np.array_equal(out, rgb)
    grey = rgb[:, :, 0]
    out = compressed_image_to_numpy(_compressed(grey, ".png", fmt))
    assert np.array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


@pytest.mark.parametrize("fmt", ["jpeg", "bgr8; jpeg compressed bgr8"])
def test_compressed_jpeg_decodes_close_to_the_image_in_rgb_order(fmt):
    rgb = _smooth_rgb(48, 64)
    out = compressed_image_to_numpy(_compressed(rgb[:, :, ::-1], ".jpg", fmt, (cv2.IMWRITE_JPEG_QUALITY, 95)))
    assert out.shape == (48, 64, 3)
    mse = np.mean((out.astype(float) - rgb) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 35
    # channel order: the blue channel (constant 200) stays where RGB puts it
    assert abs(out[:, :, 2].mean() - 200) < 3 and out[:, -1, 0].mean() > 240 and out[:, 0, 0].mean() < 15


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_compressed_size_is_checked_before_decoding(ext, monkeypatch):
    msg = _compressed(np.zeros((40, 50, 3), np.uint8), ext, ext[1:])
    assert compressed_image_to_numpy(msg, max_pixels=2000).shape == (40, 50, 3)

    def no_decode(*a):
        raise AssertionError("decoded an image its header already refused")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with pytest.raises(ConversionError, match="50x40 = 2000 pixels exceeds the limit of 1000"):
        compressed_image_to_numpy(msg, max_pixels=1000)


@pytest.mark.parametrize("make, message", [
    (lambda m: setattr(m, "format", "16UC1; compressedDepth png"), "depth stream"),
    (lambda m: setattr(m, "format", "tiff"), "unsupported format 'tiff'"),
    (lambda m: setattr(m, "data", b""), "empty data"),
    (lambda m: setattr(m, "data", bytes(m.data)[:40]), "could not decode 40 bytes"),
    (lambda m: setattr(m, "data", b"not an image at all"), "could not decode"),
])
def test_bad_compressed_images_are_named(make, message):
    msg = _compressed(_smooth_rgb(16, 16), ".jpg", "jpeg")
    make(msg)
    with pytest.raises(ConversionError, match=message):
        compressed_image_to_numpy(msg)


def test_depth_round_trip():
    z = np.array([[0.5, 1.25, np.nan], [2.0, 0.0, 10.0]], dtype=np.float32)
    back = depth_to_numpy(numpy_to_depth(z, encoding="32FC1"))
    assert np.allclose(back, [[0.5, 1.25, np.nan], [2.0, np.nan, 10.0]], equal_nan=True)
    mm = depth_to_numpy(numpy_to_depth(z, encoding="16UC1"))
    assert np.allclose(mm, [[0.5, 1.25, np.nan], [2.0, np.nan, 10.0]], equal_nan=True)
    big = Image(height=1, width=2, encoding="16UC1", is_bigendian=1, step=4, data=bytes([0x03, 0xE8, 0, 0]))
    assert np.allclose(depth_to_numpy(big), [[1.0, np.nan]], equal_nan=True)


@pytest.mark.parametrize("mutate, message", [
    (lambda m: setattr(m, "encoding", "rgb16"), "unsupported encoding 'rgb16'"),
    (lambda m: setattr(m, "step", 5), "step 5 is smaller than width"),
    (lambda m: setattr(m, "data", bytes(7)), "data has 7 bytes but step*height"),
    (lambda m: setattr(m, "data", b""), "empty data"),
    (lambda m: setattr(m, "height", 0), "empty image"),
])
def test_bad_images_are_named(mutate, message):
    msg = numpy_to_image(np.zeros((4, 3, 3), np.uint8))
    mutate(msg)
    with pytest.raises(ConversionError, match=message.replace("(", r"\(").replace("*", r"\*")):
        image_to_numpy(msg)


def test_oversized_image_is_refused():
    msg = numpy_to_image(np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(ConversionError, match="2000 pixels exceeds the limit of 1000"):
        image_to_numpy(msg, max_pixels=1000)
    assert image_to_numpy(msg, max_pixels=2000).shape == (40, 50, 3)
    with pytest.raises(ConversionError, match="expected a uint8 array"):
        numpy_to_image(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ConversionError, match="unsupported encoding"):
        depth_to_numpy(msg)


@settings(max_examples=30, deadline=None)
@given(st.floats(50, 900), st.floats(0.8, 1.2), st.floats(0, 1), st.floats(0, 1), sizes)
def test_camera_info_round_trip(f, aspect, px, py, hw):
    w, h = 10 * hw[1], 10 * hw[0]
    K = np.array([[f, 0, px * w], [0, f * aspect, py * h], [0, 0, 1]])
    msg = K_to_camera_info(K, w, h, frame_id="cam")
    assert (msg.width, msg.height, msg.header.frame_id) == (w, h, "cam")
    assert np.array_equal(camera_info_to_K(msg), K)
    assert np.allclose(np.array(msg.p).reshape(3, 4)[:, :3], K)


def test_camera_info_binning_and_roi():
    K = np.array([[100.0, 0, 49.5], [0, 100.0, 39.5], [0, 0, 1]])
    msg = K_to_camera_info(K, 100, 80)
    msg.binning_x = msg.binning_y = 2
    assert camera_info_image_size(msg) == (50, 40)
    Kb = camera_info_to_K(msg)
    # a point that projects to full-res pixel centre (49.5, 39.5) = the centre of the image
    assert np.allclose(Kb, [[50, 0, 24.5], [0, 50, 19.5], [0, 0, 1]])
    msg = K_to_camera_info(K, 100, 80)
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 10, 5, 60, 50
    assert camera_info_image_size(msg) == (60, 50)
    assert np.allclose(camera_info_to_K(msg), [[100, 0, 39.5], [0, 100, 34.5], [0, 0, 1]])


@pytest.mark.parametrize("k, message", [
    ([math.nan, 0, 1, 0, 1, 1, 0, 0, 1], "NaN or inf"),
    ([math.inf, 0, 1, 0, 1, 1, 0, 0, 1], "NaN or inf"),
    ([0, 0, 1, 0, 100, 1, 0, 0, 1], "focal length must be > 0"),
    ([0.0] * 9, "all zeros"),
])
def test_bad_camera_info_is_named(k, message):
    msg = CameraInfo(width=10, height=10, k=[float(v) for v in k])
    with pytest.raises(ConversionError, match=message):
        camera_info_to_K(msg)
    with pytest.raises(ConversionError, match="image size"):
        camera_info_to_K(CameraInfo(width=0, height=10, k=[100.0, 0, 5, 0, 100, 5, 0, 0, 1]))


poses = st.tuples(*[st.floats(-3.1, 3.1)] * 3, *[st.floats(-5, 5)] * 3)


def _w2c(p):
    """Any rigid w2c: rotation vector p[:3] (radians), translation p[3:]."""
    R = so3_exp(torch.tensor(p[:3], dtype=torch.float64)).numpy()
    return make_pose(R, np.array(p[3:]))


@settings(max_examples=40, deadline=None)
@given(poses)
def test_pose_and_transform_round_trip(p):
    w2c = _w2c(p)
    assert np.allclose(pose_to_w2c(w2c_to_pose(w2c)), w2c, atol=1e-9)
    assert np.allclose(transform_to_w2c(w2c_to_transform(w2c)), w2c, atol=1e-9)
    tf = w2c_to_transform_stamped(w2c, "world", "cam_optical", stamp_from_nanoseconds(5))
    assert (tf.header.frame_id, tf.child_frame_id) == ("world", "cam_optical")
    assert np.allclose(transform_stamped_to_w2c(tf), w2c, atol=1e-9)


def test_transform_is_camera_to_parent():
    """The ROS transform world -> camera is the camera's pose: its translation is the camera
    centre and it maps the optical axis z to the viewing direction."""
    w2c = look_at([3.0, 0.0, 1.0], [0.0, 0.0, 1.0])
    tf = w2c_to_transform(w2c)
    assert np.allclose([tf.translation.x, tf.translation.y, tf.translation.z], [3, 0, 1])
    c2w = np.linalg.inv(transform_to_w2c(tf))
    assert np.allclose(c2w[:3, 2], [-1, 0, 0])  # camera z (forward) looks along world -x
    uv, z = project_points(np.eye(3), w2c, np.array([[0.0, 0.0, 1.0]]))
    assert np.allclose(uv, 0) and np.isclose(z[0], 3)


def test_bad_poses_are_named():
    w2c = np.eye(4)
    w2c[0, 0] = 2.0
    with pytest.raises(ConversionError, match="bad w2c"):
        w2c_to_pose(w2c)
    pose = Pose()
    pose.orientation.w = 0.0
    with pytest.raises(ConversionError, match="not normalised"):
        pose_to_w2c(pose)
    pose.orientation.w = math.nan
    with pytest.raises(ConversionError, match="NaN or inf"):
        pose_to_w2c(pose)
    with pytest.raises(ConversionError, match="frame ids must be non-empty"):
        w2c_to_transform_stamped(np.eye(4), "", "cam")
    with pytest.raises(ConversionError, match="both 'cam'"):
        w2c_to_transform_stamped(np.eye(4), "cam", "cam")
    with pytest.raises(ConversionError, match="not a TransformStamped"):
        tf_message([Pose()])
    assert len(tf_message([TransformStamped(), TransformStamped()]).transforms) == 2


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 * 10**9 - 10**6))
def test_stamps(ns):
    s = stamp_from_nanoseconds(ns)
    assert stamp_to_nanoseconds(s) == ns and 0 <= s.nanosec < 10**9
    assert abs(stamp_to_seconds(stamp_from_seconds(ns * 1e-9)) - ns * 1e-9) < 1e-6 * max(1, ns * 1e-9)


def test_bad_stamps():
    with pytest.raises(ConversionError, match="finite and >= 0"):
        stamp_from_seconds(-1.0)
    with pytest.raises(ConversionError, match="does not fit"):
        stamp_from_nanoseconds(2**31 * 10**9)
