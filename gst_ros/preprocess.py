"""Runtime image preprocessing shared by training and the inference engine.

The model runs on square RGB crops (256x256 for GST). Every image, from a dataset or from a
ROS topic, goes through the same steps so training and inference see the same pixels:

    load_image(path)                      file -> (H, W, 3) uint8 RGB (RGBA composited on white)
    center_crop_resize(image, K, size)    square centre crop, resize to size x size, K adjusted
    to_model_tensor(images)               uint8 (..., H, W, 3) -> float32 torch (..., 3, H, W) in [-1, 1]
    from_model_tensor(tensor)             the inverse (rounded, clipped) for saving PNGs
    psnr_uint8(a, b)                      PSNR in dB of two uint8 images of one shape

Intrinsics follow gst_ros.geometry: K is 3x3 in pixels, OpenCV / ROS CameraInfo convention,
pixel (u, v) = (column, row) and the centre of the top-left pixel is (0, 0). The crop/resize K
update is gst_ros.geometry.crop_resize_intrinsics; this module only moves pixels consistently
with it (cv2.resize maps pixel centres as u' = (u + 0.5) * s - 0.5, the same affine map).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from gst_ros.geometry import center_square_box, crop_resize_intrinsics


class ImageReadError(ValueError):
    """An image file is missing, unreadable, or not an 8-bit image."""


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA -> (H, W, 3) uint8 RGB over a white background (alpha blending:
    out = a * rgb + (1 - a) * 255 with a = alpha / 255, rounded)."""
    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[-1] != 4 or rgba.dtype != np.uint8:
        raise ValueError(f"composite_on_white: expected (H,W,4) uint8 RGBA, got {rgba.shape} {rgba.dtype}")
    a = rgba[..., 3:].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32)
    out = rgb * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def load_image(path) -> np.ndarray:
    """Decode an image file (PNG, JPEG, ...) to (H, W, 3) uint8 RGB.

    Grayscale is replicated to 3 channels; an alpha channel is composited on white (the
    Zero-1-to-3 Objaverse renders have transparent backgrounds). Raises ImageReadError naming
    the file when it is missing, cannot be decoded, or is not 8-bit."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ImageReadError(f"{path}: cannot decode image (corrupt or unsupported format)")
    if img.dtype != np.uint8:
        raise ImageReadError(f"{path}: expected an 8-bit image, got {img.dtype}")
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[..., None], 3, axis=-1))
    if img.shape[-1] == 4:
        return composite_on_white(cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA))
    if img.shape[-1] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ImageReadError(f"{path}: unsupported channel count {img.shape[-1]}")


def center_crop_resize(image: np.ndarray, K, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Square centre crop of `image`, resized to size x size, and the matching intrinsics.

    image: (H, W, 3) uint8 RGB. K: (3, 3) pixel intrinsics of that image (OpenCV convention,
    top-left pixel centre at (0, 0)). Returns (image (size, size, 3) uint8, K' (3, 3) float64)
    such that a 3D point projects onto the same image content before and after. Shrinking uses
    cv2.INTER_AREA (anti-aliased), growing cv2.INTER_LINEAR."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"center_crop_resize: expected (H,W,3) uint8 image, got {image.shape} {image.dtype}")
    if int(size) != size or size <= 0:
        raise ValueError(f"center_crop_resize: size must be a positive integer, got {size!r}")
    size = int(size)
    h, w = image.shape[:2]
    x0, y0, side, _ = (int(v) for v in center_square_box(w, h))
    crop = image[y0:y0 + side, x0:x0 + side]
    K_new = np.asarray(crop_resize_intrinsics(K, box=(x0, y0, side, side), out_size=(size, size)),
                       dtype=np.float64)
    if side == size:
        return np.ascontiguousarray(crop), K_new
    interp = cv2.INTER_AREA if size < side else cv2.INTER_LINEAR
    out = cv2.resize(crop, (size, size), interpolation=interp)
    return out, K_new


def to_model_tensor(images) -> torch.Tensor:
    """uint8 RGB images (..., H, W, 3) (numpy or torch) -> float32 torch (..., 3, H, W) with
    values x / 127.5 - 1 in [-1, 1] (the tokenizers' input range)."""
    t = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    if t.dtype != torch.uint8 or t.ndim < 3 or t.shape[-1] != 3:
        raise ValueError(f"to_model_tensor: expected uint8 (...,H,W,3), got {tuple(t.shape)} {t.dtype}")
    return t.movedim(-1, -3).to(torch.float32) / 127.5 - 1.0


def from_model_tensor(tensor: torch.Tensor) -> np.ndarray:
    """float torch (..., 3, H, W) in [-1, 1] -> uint8 numpy (..., H, W, 3); values outside the
    range are clipped. Inverse of to_model_tensor (exact on its outputs)."""
    if not isinstance(tensor, torch.Tensor) or tensor.ndim < 3 or tensor.shape[-3] != 3:
        shape = tuple(tensor.shape) if hasattr(tensor, "shape") else type(tensor).__name__
        raise ValueError(f"from_model_tensor: expected a torch tensor (...,3,H,W), got {shape}")
    x = (tensor.detach().to("cpu", torch.float32) + 1.0) * 127.5
    return x.round().clamp(0, 255).to(torch.uint8).movedim(-3, -1).numpy()


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of one shape (data range 255; inf when equal). The
    training evaluation's batched metric is training.image_metrics.psnr."""
    if a.shape != b.shape:
        raise ValueError(f"psnr_uint8: shapes differ, {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0 ** 2 / mse))
