"""Novel-view image metrics: PSNR, SSIM (Gaussian window) and, when VGG weights are given, LPIPS.

Images are compared as float in [0, 1] (uint8 inputs are divided by 255), layout (H, W, 3) or
(B, H, W, 3) numpy / torch, or (B, 3, H, W) torch when `channels_first=True`. Every metric
returns one value per image (a (B,) numpy float64 array); callers average.

SSIM follows Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03,
data range 1, computed per channel on the "valid" region and averaged over channels and pixels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_float_images(images, channels_first: bool = False) -> torch.Tensor:
    """(B, 3, H, W) float64 in [0, 1] from uint8 or float images ((H,W,C) or (B,H,W,C) unless
    channels_first). Raises ValueError on other shapes or float values outside [0, 1]."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"images must be (H,W,C) or (B,H,W,C) (or (B,C,H,W) channels first), "
                         f"got {tuple(x.shape)}")
    if not channels_first:
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        x = x.double() / 255.0
    elif x.dtype.is_floating_point:
        x = x.double()
        if x.numel() and (float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6):
            raise ValueError(f"float images must lie in [0, 1], got range "
                             f"[{float(x.min()):.3f}, {float(x.max()):.3f}]")
    else:
        raise ValueError(f"images must be uint8 or float, got {x.dtype}")
    return x


def _pair(pred, target, channels_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = to_float_images(pred, channels_first), to_float_images(target, channels_first)
    if a.shape != b.shape:
        raise ValueError(f"prediction {tuple(a.shape)} and target {tuple(b.shape)} differ in shape")
    return a, b


def psnr(pred, target, channels_first: bool = False, max_db: float = 100.0) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per image (data range 1); identical images give max_db."""
    a, b = _pair(pred, target, channels_first)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    out = 10.0 * torch.log10(1.0 / mse.clamp_min(10 ** (-max_db / 10)))
    return out.numpy()


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(size, size) float64 normalised Gaussian kernel."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred, target, channels_first: bool = False, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Structural similarity per image (data range 1), Gaussian window, valid region."""
    a, b = _pair(pred, target, channels_first)
    if min(a.shape[-2:]) < window:
        raise ValueError(f"images must be at least {window}x{window} for SSIM, got {tuple(a.shape[-2:])}")
    c = a.shape[1]
    w = gaussian_window(window, sigma)[None, None].expand(c, 1, window, window)

    def blur(x):
        return F.conv2d(x, w, groups=c)

    c1, c2 = k1 ** 2, k2 ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).numpy()


class LPIPSMetric:
    """LPIPS-VGG distance per image, using the perceptual network of training/losses.py loaded
    from a user-given VGG weights file (nothing is downloaded)."""

    def __init__(self, vgg_weights, lin_weights=None):
        from training.losses import PerceptualLoss

        self.net = PerceptualLoss.from_file(vgg_weights, lin_weights)

    @torch.no_grad()
    def __call__(self, pred, target, channels_first: bool = False) -> np.ndarray:
        a, b = _pair(pred, target, channels_first)
        # the perceptual network takes images in [-1, 1]
        return self.net(a.float() * 2 - 1, b.float() * 2 - 1).double().numpy()
