"""gst_ros.preprocess: crop/resize keeps 3D points on the same image content; tensor round trip;
image decoding (BGR -> RGB, RGBA on white, grayscale, corrupt files)."""
import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gst_ros.geometry import look_at, make_intrinsics, project_points
from gst_ros.preprocess import (
    ImageReadError,
    center_crop_resize,
    composite_on_white,
    from_model_tensor,
    load_image,
    to_model_tensor,
)


def _blob_image(width, height, uv, sigma):
    """uint8 image, black with a white Gaussian blob centred at pixel (u, v) (pixel-centre convention)."""
    u = np.arange(width)[None, :]
    v = np.arange(height)[:, None]
    g = np.exp(-((u - uv[0]) ** 2 + (v - uv[1]) ** 2) / (2 * sigma**2))
    img = np.rint(255 * g).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=-1)


def _centroid(img):
    w = img[..., 0].astype(np.float64)
    v, u = np.mgrid[: img.shape[0], : img.shape[1]]
    return np.array([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()])


@pytest.mark.parametrize("width,height,size,sigma", [(160, 120, 48, 4.0), (120, 160, 48, 4.0),
                                                     (40, 30, 96, 2.0)])
def test_crop_resize_keeps_point_on_same_content(width, height, size, sigma):
    K = make_intrinsics(90.0, 95.0, width / 2 + 3.3, height / 2 - 2.1)
    w2c = look_at([0.3, -2.0, 0.4], [0.0, 0.0, 0.0])
    X = np.array([[0.05, 0.02, 0.04]])
    uv, depth = project_points(K, w2c, X)
    assert depth[0] > 0
    img = _blob_image(width, height, uv[0], sigma)
    # the blob sits where the point projects in the original image
    np.testing.assert_allclose(_centroid(img), uv[0], atol=0.05)
    out, K2 = center_crop_resize(img, K, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    uv2, _ = project_points(K2, w2c, X)
    # after crop + resize the point projects onto the blob's new position
    np.testing.assert_allclose(_centroid(out), uv2[0], atol=0.1)
    # and not trivially: the projection moved
    assert np.linalg.norm(uv2[0] - uv[0]) > 1.0


def test_crop_resize_principal_point_and_focal():
    K = make_intrinsics(100.0, 100.0, 79.5, 59.5)  # centred 160x120
    img = np.zeros((120, 160, 3), np.uint8)
    out, K2 = center_crop_resize(img, K, 60)
    np.testing.assert_allclose(K2, [[50.0, 0, 29.5], [0, 50.0, 29.5], [0, 0, 1]], atol=1e-9)
    same, K3 = center_crop_resize(np.zeros((64, 64, 3), np.uint8), K, 64)  # no-op size
    assert same.shape == (64, 64, 3)


def test_crop_resize_rejects_bad_input():
    K = make_intrinsics(10, 10, 5, 5)
    with pytest.raises(ValueError, match="uint8"):
        center_crop_resize(np.zeros((10, 10, 3), np.float32), K, 8)
    with pytest.raises(ValueError, match="size"):
        center_crop_resize(np.zeros((10, 10, 3), np.uint8), K, 0)


@settings(max_examples=30, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.just(3))))
def test_model_tensor_round_trip(images):
    t = to_model_tensor(images)
    assert t.dtype == torch.float32 and t.shape == (images.shape[0], 3, images.shape[1], images.shape[2])
    assert float(t.min()) >= -1.0 and float(t.max()) <= 1.0
    np.testing.assert_array_equal(from_model_tensor(t), images)


def test_model_tensor_values_and_clipping():
    img = np.array([[[0, 255, 128]]], np.uint8)
    t = to_model_tensor(img)
    np.testing.assert_allclose(t[:, 0, 0].numpy(), [-1.0, 1.0, 128 / 127.5 - 1], atol=1e-6)
    out = from_model_tensor(torch.tensor([[[-3.0]], [[3.0]], [[0.0]]]))
    np.testing.assert_array_equal(out, [[[0, 255, 128]]])
    with pytest.raises(ValueError, match="uint8"):
        to_model_tensor(np.zeros((2, 2, 3), np.float32))


def test_composite_on_white():
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], np.uint8)
    out = composite_on_white(rgba)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 2], [127, 127, 127])


def test_load_image_formats(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = load_image(tmp_path / "red.png")
    assert rgb.shape == (4, 5, 3)
    np.testing.assert_array_equal(rgb[0, 0], [200, 0, 0])

    bgra = np.zeros((3, 3, 4), np.uint8)
    bgra[..., 0] = 255  # blue, fully transparent except the centre pixel
    bgra[1, 1, 3] = 255
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    out = load_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[1, 1], [0, 0, 255])

    cv2.imwrite(str(tmp_path / "gray.png"), np.full((2, 2), 77, np.uint8))
    np.testing.assert_array_equal(load_image(tmp_path / "gray.png"), np.full((2, 2, 3), 77))

    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ImageReadError, match="not found"):
        load_image(tmp_path / "missing.png")
