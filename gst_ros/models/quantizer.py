"""Vector quantizer of the VQ tokenizers (LlamaGen / GST flavour).

A feature map z (B, D, h, w) is snapped, position by position, to its nearest codebook vector.
With `l2_norm` (the default, as in LlamaGen VQ-16 and the GST camera VQ-4) both z and the
codebook are L2-normalised before the search, so "nearest" means highest cosine similarity and
the quantised output lies on the unit sphere.

Training signal (VQ-VAE, the paper's eq. 3):
    codebook loss   = mean((z_q - sg[z])^2)
    commitment loss = beta * mean((sg[z_q] - z)^2)
    entropy loss    = entropy_loss_ratio * (per-sample entropy - entropy of the batch average)
Gradients reach the encoder through the straight-through estimator z + sg[z_q - z].

`codebook_used` is a plain tensor buffer (not an nn.Parameter, which breaks in-place updates in
a train-mode forward): a rolling window of the last 65536 code indices seen in training. It is
in the state dict under the same name as LlamaGen's, so their checkpoints load key for key.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

USAGE_WINDOW = 65536  # length of the `codebook_used` buffer in LlamaGen / GST checkpoints


@dataclass
class QuantizerLosses:
    codebook: torch.Tensor
    commitment: torch.Tensor
    entropy: torch.Tensor
    usage: float  # share of the codebook seen in the rolling usage window (train mode), else in this batch

    @property
    def total(self) -> torch.Tensor:
        return self.codebook + self.commitment + self.entropy


def codebook_usage(indices: torch.Tensor, codebook_size: int) -> float:
    """Share of the `codebook_size` codes that occur in `indices` (any shape; negatives ignored)."""
    idx = indices.reshape(-1)
    idx = idx[idx >= 0]
    if idx.numel() == 0:
        return 0.0
    return float(torch.unique(idx).numel()) / float(codebook_size)


def entropy_loss(affinity: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Per-sample entropy minus entropy of the mean assignment (low when every sample picks one
    code confidently AND the batch spreads over many codes). affinity: (N, n_codes), higher =
    closer."""
    logits = affinity.reshape(-1, affinity.shape[-1]) / temperature
    probs = F.softmax(logits, dim=-1)
    log_probs = F.log_softmax(logits, dim=-1)
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    avg = probs.mean(0)
    avg_entropy = -(avg * torch.log(avg + 1e-5)).sum()
    return sample_entropy - avg_entropy


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, embed_dim: int, beta: float = 0.25,
                 entropy_loss_ratio: float = 0.0, l2_norm: bool = True):
        super().__init__()
        if codebook_size < 1 or embed_dim < 1:
            raise ValueError(f"codebook_size and embed_dim must be >= 1, got {codebook_size}, {embed_dim}")
        self.codebook_size, self.embed_dim = codebook_size, embed_dim
        self.beta, self.entropy_loss_ratio, self.l2_norm = beta, entropy_loss_ratio, l2_norm
        self.embedding = nn.Embedding(codebook_size, embed_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
            if l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        # -1 = "no index seen yet" (a LlamaGen checkpoint brings its own window of real indices)
        self.register_buffer("codebook_used", torch.full((USAGE_WINDOW,), -1.0))

    def codebook(self) -> torch.Tensor:
        """(codebook_size, embed_dim) vectors as used for the search (normalised if l2_norm)."""
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def _distances(self, z_flat: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Squared Euclidean distances (N, n_codes) between rows of z_flat and emb."""
        return (z_flat.pow(2).sum(1, keepdim=True) + emb.pow(2).sum(1)[None, :]
                - 2.0 * z_flat @ emb.t())

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code per position: z (B, D, h, w) -> (B, h, w) int64."""
        b, d, h, w = z.shape
        if d != self.embed_dim:
            raise ValueError(f"quantizer expects {self.embed_dim} channels, got {d}")
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        if self.l2_norm:
            z_flat = F.normalize(z_flat, dim=-1)
        idx = torch.argmin(self._distances(z_flat, self.codebook().float()), dim=1)
        return idx.view(b, h, w)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors of a token grid: (B, h, w) int64 -> (B, D, h, w)."""
        if indices.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"token ids must be int64/int32, got {indices.dtype}")
        return F.embedding(indices.long(), self.codebook()).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, QuantizerLosses, torch.Tensor]:
        """z (B, D, h, w) -> (z_q (B, D, h, w) with straight-through gradient, losses, indices (B, h, w))."""
        b, d, h, w = z.shape
        if d != self.embed_dim:
            raise ValueError(f"quantizer expects {self.embed_dim} channels, got {d}")
        z_hw = z.permute(0, 2, 3, 1).float()
        if self.l2_norm:
            z_hw = F.normalize(z_hw, dim=-1)
        z_flat = z_hw.reshape(-1, d)
        emb = self.codebook().float()
        dist = self._distances(z_flat, emb)
        idx = torch.argmin(dist, dim=1)
        z_q = emb[idx].view(b, h, w, d)

        if self.training:
            with torch.no_grad():
                n = min(idx.numel(), USAGE_WINDOW)
                self.codebook_used.copy_(torch.cat([self.codebook_used[n:], idx[-n:].to(self.codebook_used)]))
            usage = codebook_usage(self.codebook_used.long(), self.codebook_size)
        else:
            usage = codebook_usage(idx, self.codebook_size)
        zero = z_hw.new_zeros(())
        cb_loss = torch.mean((z_q - z_hw.detach()) ** 2)
        commit = self.beta * torch.mean((z_q.detach() - z_hw) ** 2)
        ent = self.entropy_loss_ratio * entropy_loss(-dist) if self.entropy_loss_ratio > 0 else zero
        z_st = z_hw + (z_q - z_hw).detach()
        out = z_st.permute(0, 3, 1, 2).contiguous().to(z.dtype)
        return out, QuantizerLosses(cb_loss, commit, ent, usage), idx.view(b, h, w)
