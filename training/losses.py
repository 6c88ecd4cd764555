"""Tokenizer training losses: LPIPS-style VGG16 perceptual loss, PatchGAN discriminator, hinge.

The VGG16 weights cannot be downloaded here: `PerceptualLoss.from_file(path)` reads them from a
file the user provides (safetensors, or a torch state dict loaded with weights_only=True), with
torchvision's VGG16 names ("features.{i}.weight"/"bias", any prefix before "features." is ignored).
If the file (or a second one) also holds LPIPS's per-channel layer weights ("lin{k}.model.1.weight",
k = 0..4) they weight the feature differences as in LPIPS; otherwise every channel weighs the same.
Inputs are RGB (B, 3, H, W) in [-1, 1].
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# VGG16 "features": conv widths, "M" = 2x2 max-pool; LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
LPIPS_TAPS = (3, 8, 15, 22, 29)  # indices (in torchvision's features) of the ReLUs whose outputs are compared
# LPIPS input scaling: x' = (x - shift) / scale, x in [-1, 1]
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def _vgg16_features() -> nn.Sequential:
    layers, c_in = [], 3
    for v in VGG16_LAYOUT:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=False)]
            c_in = v
    return nn.Sequential(*layers)


def _read_tensors(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"perceptual-loss weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


class PerceptualLoss(nn.Module):
    """LPIPS-style distance on frozen VGG16 features. forward(x, y, reduction="mean"): x, y RGB
    (B, 3, H, W) in [-1, 1]; reduction "mean" -> scalar, "none" -> (B,) per-image distances."""

    def __init__(self):
        super().__init__()
        self.has_lpips_weights = False
        self.features = _vgg16_features()
        widths = [64, 128, 256, 512, 512]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in widths)
        for lin, c in zip(self.lins, widths):
            nn.init.constant_(lin.weight, 1.0 / c)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, vgg_path, lin_path=None) -> PerceptualLoss:
        loss = cls()
        tensors = _read_tensors(vgg_path)
        if lin_path:
            tensors = {**tensors, **_read_tensors(lin_path)}
        feats, lins = {}, {}
        for k, v in tensors.items():
            if m := re.search(r"(?:^|\.)features\.(\d+\.(?:weight|bias))$", k):
                feats[m.group(1)] = v
            elif m := re.search(r"(?:^|\.)lin(\d)\.model\.1\.weight$", k):
                lins[f"{m.group(1)}.weight"] = v
        own = loss.features.state_dict()
        missing = [k for k in own if k not in feats]
        if missing:
            raise ValueError(f"{vgg_path}: not VGG16 weights, missing 'features.{missing[0]}' "
                             f"({len(missing)} of {len(own)} tensors missing)")
        for k, v in own.items():
            if tuple(feats[k].shape) != tuple(v.shape):
                raise ValueError(f"{vgg_path}: shape mismatch for 'features.{k}': "
                                 f"file {tuple(feats[k].shape)} "
                                 f"vs VGG16 {tuple(v.shape)}")
        loss.features.load_state_dict({k: feats[k].float() for k in own})
        if lins:
            loss.lins.load_state_dict({k: v.float() for k, v in lins.items()}, strict=True)
        loss.has_lpips_weights = bool(lins)
        return loss

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen, always eval

    def forward(self, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"perceptual loss takes two (B, 3, H, W) images, "
                             f"got {tuple(x.shape)}, {tuple(y.shape)}")
        h_x, h_y = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total = x.new_zeros(x.shape[0])
        tap = 0
        for i, layer in enumerate(self.features):
            h_x, h_y = layer(h_x), layer(h_y)
            if i == LPIPS_TAPS[tap]:
                nx = h_x / (h_x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                ny = h_y / (h_y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + self.lins[tap]((nx - ny) ** 2).mean(dim=(1, 2, 3))
                tap += 1
                if tap == len(LPIPS_TAPS):
                    break
        return total.mean() if reduction == "mean" else total


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix): conv 4x4 stride 2 + LeakyReLU(0.2), then (n_layers - 1) more stride-2 and
    one stride-1 conv+BatchNorm+LeakyReLU, then a 1-channel conv: a grid of real/fake logits."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: 0.5 * (E[relu(1 - D(real))] + E[relu(1 + D(fake))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator adversarial loss for the hinge GAN: -E[D(fake)]."""
    return -logits_fake.mean()
