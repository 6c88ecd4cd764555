"""Convolutional VQ autoencoder: the image tokenizer (LlamaGen VQ-16) and the camera tokenizer
(GST VQ-4) are the same family, built from one config dataclass.

Architecture (LlamaGen's VQ model, whose state-dict names we keep so its checkpoints load):
- Encoder: conv_in 3x3 -> one level per `ch_mult` entry, each with `num_res_blocks` ResNet
  blocks (attention after each block at the lowest level only) and a downsample (pad (0,1,0,1),
  stride-2 conv 3x3) except after the last level -> mid (res, attn, res) -> GroupNorm, swish,
  conv_out 3x3 to `z_channels`.
- Decoder mirrors it: conv_in -> mid -> levels from the LOWEST resolution up, each with
  `num_res_blocks + 1` ResNet blocks (attention at the lowest level) and an upsample (nearest x2,
  conv 3x3) except after the last -> GroupNorm, swish, conv_out.
- quant_conv 1x1 z_channels -> codebook_embed_dim, the quantizer, post_quant_conv back.
Downsampling factor = 2 ** (len(ch_mult) - 1); the token grid is resolution / factor.

Tensors: images are (B, 3, H, W) float RGB in [-1, 1]; Plücker maps are (B, 6, H, W) in the
channel order of gst_ros.geometry.PLUCKER_ORDER. Token grids are (B, h, w) int64, row-major.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from gst_ros.models.quantizer import QuantizerLosses, VectorQuantizer


@dataclass
class VQConfig:
    in_channels: int = 3            # 3 = RGB image, 6 = Plücker map
    out_channels: int = 3
    resolution: int = 256           # input side length the model (and its ONNX export) is built for
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2         # encoder; the decoder uses num_res_blocks + 1
    z_channels: int = 256
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    dropout: float = 0.0
    norm_groups: int = 32

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        if not self.ch_mult:
            raise ValueError("ch_mult must have at least one level")
        for c in [self.ch * m for m in self.ch_mult]:
            if c % self.norm_groups:
                raise ValueError(f"channel count {c} is not divisible by norm_groups={self.norm_groups}")
        if self.resolution % self.downsample_factor:
            raise ValueError(f"resolution {self.resolution} is not a multiple of the downsampling "
                             f"factor {self.downsample_factor}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def token_grid(self) -> int:
        return self.resolution // self.downsample_factor


# Presets. The full ones match the public checkpoints; the small ones run on a CPU.
PRESETS: dict[str, VQConfig] = {
    # LlamaGen VQ-16 (GST image-16.pt): 256x256 RGB -> 16x16 tokens, 71.88M parameters
    "image-vq16": VQConfig(),
    # GST camera VQ-4 (camera-4.pt): 64x64 Plücker map -> 16x16 tokens, ~22.9M parameters
    "camera-vq4": VQConfig(in_channels=6, out_channels=6, resolution=64, ch_mult=(1, 2, 2),
                           codebook_size=2048, codebook_embed_dim=4),
    # CPU presets: 128x128 image -> 8x8 tokens, 32x32 Plücker map -> 8x8 tokens
    "image-small": VQConfig(resolution=128, ch=32, ch_mult=(1, 1, 2, 2, 2), num_res_blocks=1,
                            z_channels=64, codebook_size=1024, codebook_embed_dim=8, norm_groups=16),
    # the shipped CPU image tokenizer: 64x64 RGB -> 8x8 tokens (ds8); 4x cheaper than image-small
    "image-small64": VQConfig(resolution=64, ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1,
                              z_channels=64, codebook_size=1024, codebook_embed_dim=8, norm_groups=16),
    "camera-small": VQConfig(in_channels=6, out_channels=6, resolution=32, ch=32, ch_mult=(1, 2, 2),
                             num_res_blocks=1, z_channels=64, codebook_size=1024, codebook_embed_dim=4,
                             norm_groups=16),
}


def preset(name: str, **overrides) -> VQConfig:
    """A copy of preset `name` with fields replaced by `overrides`."""
    if name not in PRESETS:
        raise KeyError(f"unknown VQ preset {name!r}; known: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm2 = _norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1, 1, 0)

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map (1x1 conv projections)."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = _norm(c, groups)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        hn = self.norm(x)
        q = self.q(hn).reshape(b, c, h * w).transpose(1, 2)      # (b, hw, c)
        k = self.k(hn).reshape(b, c, h * w)                      # (b, c, hw)
        v = self.v(hn).reshape(b, c, h * w)                      # (b, c, hw)
        attn = torch.softmax(torch.bmm(q, k) * (c ** -0.5), dim=2)  # (b, hw_q, hw_k)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(x.dtype))


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        g, levels = cfg.norm_groups, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, 1, 1)
        self.conv_blocks = nn.ModuleList()
        c_in = cfg.ch
        for i in range(levels):
            block = nn.Module()
            c_out = cfg.ch * cfg.ch_mult[i]
            block.res = nn.ModuleList()
            block.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                block.res.append(ResnetBlock(c_in, c_out, g, cfg.dropout))
                c_in = c_out
                if i == levels - 1:
                    block.attn.append(AttnBlock(c_in, g))
            if i != levels - 1:
                block.downsample = Downsample(c_in)
            self.conv_blocks.append(block)
        self.mid = nn.ModuleList([ResnetBlock(c_in, c_in, g, cfg.dropout), AttnBlock(c_in, g),
                                  ResnetBlock(c_in, c_in, g, cfg.dropout)])
        self.norm_out = _norm(c_in, g)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for block in self.conv_blocks:
            for j, res in enumerate(block.res):
                h = res(h)
                if len(block.attn):
                    h = block.attn[j](h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        g, levels = cfg.norm_groups, len(cfg.ch_mult)
        c_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, 1, 1)
        self.mid = nn.ModuleList([ResnetBlock(c_in, c_in, g, cfg.dropout), AttnBlock(c_in, g),
                                  ResnetBlock(c_in, c_in, g, cfg.dropout)])
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(levels)):  # conv_blocks.0 is the lowest resolution
            block = nn.Module()
            c_out = cfg.ch * cfg.ch_mult[i]
            block.res = nn.ModuleList()
            block.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                block.res.append(ResnetBlock(c_in, c_out, g, cfg.dropout))
                c_in = c_out
                if i == levels - 1:
                    block.attn.append(AttnBlock(c_in, g))
            if i != 0:
                block.upsample = Upsample(c_in)
            self.conv_blocks.append(block)
        self.norm_out = _norm(c_in, g)
        self.conv_out = nn.Conv2d(c_in, cfg.out_channels, 3, 1, 1)

    def forward(self, z):
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for block in self.conv_blocks:
            for j, res in enumerate(block.res):
                h = res(h)
                if len(block.attn):
                    h = block.attn[j](h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


@dataclass
class VQOutput:
    reconstruction: torch.Tensor        # (B, out_channels, H, W)
    losses: QuantizerLosses
    indices: torch.Tensor               # (B, h, w) int64
    extra: dict = field(default_factory=dict)


class VQModel(nn.Module):
    """Encoder + quantizer + decoder. See the module docstring for tensor conventions."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.codebook_embed_dim, cfg.commit_loss_beta,
                                        cfg.entropy_loss_ratio, cfg.codebook_l2_norm)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    def _check_input(self, x: torch.Tensor) -> None:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"expected input (B, {c.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % c.downsample_factor or x.shape[3] % c.downsample_factor:
            raise ValueError(f"input size {tuple(x.shape[2:])} is not a multiple of the downsampling "
                             f"factor {c.downsample_factor}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerLosses, torch.Tensor]:
        """x (B, C, H, W) -> (quantised latent (B, D, h, w), quantizer losses, token ids (B, h, w))."""
        self._check_input(x)
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantised latent (B, D, h, w) -> output (B, out_channels, H, W)."""
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x: torch.Tensor) -> VQOutput:
        z_q, losses, idx = self.encode(x)
        return VQOutput(self.decode(z_q), losses, idx)

    @torch.no_grad()
    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) float -> token ids (B, h, w) int64 (no losses, no usage bookkeeping)."""
        self._check_input(x)
        return self.quantize.indices(self.quant_conv(self.encoder(x)))

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Token ids (B, h, w) int64 -> output (B, out_channels, H, W)."""
        check_token_ids(indices, self.config.codebook_size)
        return self.decode(self.quantize.lookup(indices))


def check_token_ids(indices: torch.Tensor, codebook_size: int) -> None:
    """Raise a clear error unless `indices` is a (B, h, w) integer grid of valid code ids."""
    if indices.ndim != 3:
        raise ValueError(f"token ids must be a (B, h, w) grid, got shape {tuple(indices.shape)}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"token ids must be int64, got {indices.dtype}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= codebook_size):
        raise ValueError(f"token ids out of range [0, {codebook_size}): min {int(indices.min())}, "
                         f"max {int(indices.max())}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
