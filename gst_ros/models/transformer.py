"""The Generative Spatial Transformer: a LlamaGen-style decoder-only GPT with GST's changes.

One model over the shared vocabulary of gst_ros.models.sequence (image codes, camera codes,
<GEN>, <EST>). Architecture (LlamaGen GPT + GST):
- pre-norm blocks, RMSNorm (eps 1e-5, computed in fp32), fused `wqkv`, SwiGLU FFN with
  hidden = find_multiple(int(2 * 4 * dim / 3), 256) (w1, w3, w2; no biases anywhere);
- QK-Norm: LayerNorm(head_dim) (weight + bias, shared by all heads) on q and k, before RoPE;
- 2D RoPE (fp32, base 10000): head_dim/2 rotated pairs, interleaved (x[2j], x[2j+1]); pairs
  0 .. head_dim/4-1 rotate by row * f, pairs head_dim/4 .. head_dim/2-1 by col * f, with
  f = 1 / base^(arange(0, half, 2) / half), half = head_dim/2. The observation and both segments
  reuse the same row-major grid positions (sequence.Layout.grid_positions). The task token:
  `task_token_rope="identity"` (default) leaves it unrotated, exactly position (0, 0);
  `"zero"` multiplies its q and k by zero, which is what LlamaGen does to its class token
  (its RoPE cache holds zeros for the condition tokens) - use it for checkpoints trained so;
- dropouts: token 0.1 (element-wise on the input embeddings), residual 0.1 (after wo),
  FFN 0.1 (after w2), attention 0;
- init: normal(0, 0.02) for every Linear and Embedding, LayerNorm/RMSNorm ones (zeros for bias),
  output head zero.
- optional (`segment_embedding=True`, off for the paper's sizes and every imported checkpoint):
  a learned embedding per sequence segment (0: observation and task token, 1: first segment,
  2: second segment) added to the token embeddings. With RoPE alone the observation and the
  target view share grid positions and the embedding table, so an image token of the target
  view is, to the first layer, indistinguishable from the observation token of the same code at
  the same place (docs/training.md, "Learning the relation on a CPU budget"; its effect on its
  own has not been measured).
- optional codebook features (`image_code_dim` / `camera_code_dim` > 0, off for the paper's sizes
  and every imported checkpoint): each image (camera) code's input embedding is its learned row
  plus a learned linear map of its frozen, L2-normalised tokenizer codebook vector, stored in the
  persistent buffers `image_codebook` (image_vocab, image_code_dim) / `camera_codebook` and set by
  `set_codebooks`. The code rows of tok_embeddings then start at zero, so a from-scratch model
  first sees what each code looks like and learns per-code corrections on top; two codes the
  tokenizer uses for nearly the same patch enter nearly the same. Only the input side changes:
  the output head still scores code ids (docs/training.md, "Learning the relation on a CPU
  budget").
- optional aligned observation (`aligned_observation=True`, needs image codebook features; off for
  the paper's sizes and every imported checkpoint): every image token of the target view (after
  the task token, in either order) also enters with a learned linear map (`aligned_proj`, zero
  at init) of the codebook vector of the observation's code at the same grid cell, so the first
  layer compares the two views cell by cell, as a convolution over the stacked grids does
  (docs/training.md, "Reading the pose"). With a KV cache the observation is remembered from the
  prefill that starts at index 0.
- optional aligned camera (`aligned_camera=True`, needs camera codebook features; off for the
  paper's sizes and every imported checkpoint): in the <GEN> order, the input that predicts each
  target-view cell (the last camera token for cell 0, then the image token before each cell)
  also enters with a learned linear map (`aligned_camera_proj`, zero at init) of the codebook
  vector of the camera code of the cell it predicts: the Plücker rays of that cell, as a
  ray-conditioned view synthesis model sees them, rather than only through attention to the
  camera segment, whose worth to the view fades over the later cells (docs/training.md, "Where
  a view follows its camera"). With a KV cache the camera codes are remembered as they enter.
- optional pose head (`pose_head=True`, off for the paper's sizes and every imported checkpoint):
  regresses the 3x3 relative rotation from the final normed hidden states of the target view in
  the <EST> order (input indices n+1 .. 2n): each cell's state is mapped to 16 features, the
  grid of them is flattened and a two-layer MLP gives the matrix (a per-cell read-out with
  position-specific weights: reading one token instead learned far slower, docs/training.md,
  "Reading the pose"). Trained by an auxiliary loss (training/train_gst.py, `pose_aux_weight`):
  a dense signal that makes every target-view cell carry the pose, which the camera tokens after
  it attend to. At inference it is also a read-out of its own: the engine's `pose_estimate`
  "head" (gst_ros.engine.generation.pose_readout) takes the rotation from it.
- optional centre head (`center_head=True`, needs the pose head): the same kind of read-out of the
  same states giving a correction to the camera centre that the pose head's rotation implies for
  an object-centric scene (optical axis through the scene centre at distance 1; it starts at
  zero) and a log-variance per axis (`center_aux_weight`; trainable alone on a frozen model,
  `train_modules`). With both heads the engine's "head" read-out is one forward pass: no camera
  tokens are sampled.
- optional view head (`view_head=True`, off for the paper's sizes and every imported checkpoint):
  the pose head's counterpart for the <GEN> order. The final state of each camera token (input
  indices n+1 .. 2n, which have seen the observation and the camera tokens up to that cell) is
  mapped linearly (zero at init) to logits over the image codes of the target view at the same
  cell. Trained by an auxiliary cross-entropy (`view_aux_weight`), it asks the states the target
  view's tokens attend to for what that view holds before any of its tokens is seen: under
  teacher forcing most image tokens are predictable from the ones before them, so the token
  loss alone barely makes the view follow its camera (docs/training.md, `view_aux_weight`).
State-dict names follow LlamaGen's (tok_embeddings, layers.{i}.attention.wqkv, ..., norm, output)
plus layers.{i}.attention.q_norm / k_norm, so imported checkpoints map nearly key for key.

Inference uses a preallocated KV cache (`setup_caches`, then forward with `input_pos`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from gst_ros.geometry.conventions import center_facing_scene
from gst_ros.geometry.rotations import rotation_from_covariance
from gst_ros.models.sequence import Layout, Vocabulary

POSE_CELL_FEATURES = 16  # pose head: features per target-view cell before the flattened MLP


class HeadReadout(NamedTuple):
    """What the read-out heads give for one teacher-forced pass (fp32). The pose fields read an
    <EST>-order sequence [o, <EST>, i, ...], the view field a <GEN>-order one [o, <GEN>, c, ...];
    a batch mixing both orders gives every field for every row, each meaningful for its own order.

    rotation: (B, 3, 3) the pose head's unconstrained estimate of the target camera's rotation in
      the observation camera's frame (w2c convention, x_target = R x_observation + t, OpenCV
      axes). Trained by squared error, it estimates the conditional mean E[R | o, i]: its nearest
      rotation is the estimate and its singular values fall below 1 as the model grows unsure.
    center: (B, 3) the target camera centre C in the observation camera's frame (unit scene
      scale: the observation camera is 1 from the scene centre): the object-centric placement of
      the pose head's rotation (optical axis through the scene centre at distance 1,
      gst_ros.geometry.center_facing_scene) plus the centre head's correction; None without a
      centre head.
    center_log_var: (B, 3) log-variances of that centre per axis, or None.
    view_logits: (B, n, image_vocab) the view head's logits of the target view's image code at
      each grid cell (row-major), read from the final state of the camera token of that cell in
      the <GEN> order, i.e. from the observation and the target camera only; None without a
      view head."""

    rotation: torch.Tensor | None
    center: torch.Tensor | None = None
    center_log_var: torch.Tensor | None = None
    view_logits: torch.Tensor | None = None


def cell_readout_head(config: GSTConfig, outputs: int) -> nn.Sequential:
    """A read-out of the target view's final states (B, n, dim) -> (B, outputs): each cell's state
    is mapped to POSE_CELL_FEATURES features, the grid of them is flattened and a two-layer MLP
    reads it (position-specific weights: reading one token instead learned far slower)."""
    return nn.Sequential(nn.Linear(config.dim, POSE_CELL_FEATURES), nn.Flatten(),
                         nn.Linear(config.layout.n * POSE_CELL_FEATURES, 256), nn.GELU(),
                         nn.Linear(256, outputs))


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of k that is >= n."""
    return n if n % k == 0 else n + k - (n % k)


@dataclass
class GSTConfig:
    dim: int = 1536
    n_layer: int = 48
    n_head: int = 24
    image_vocab: int = 16384
    camera_vocab: int = 2048
    grid: tuple[int, int] = field(default=(16, 16))  # token grid (rows, cols) of every segment
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    qk_norm: bool = True
    task_token_rope: str = "identity"  # "identity" (position (0,0)) or "zero" (LlamaGen's cls token)
    initializer_range: float = 0.02
    token_dropout: float = 0.1
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    attn_dropout: float = 0.0
    segment_embedding: bool = False  # learned observation / first / second segment embedding
    image_code_dim: int = 0   # > 0: image codes also enter as their (frozen) tokenizer codebook vector
    camera_code_dim: int = 0  # > 0: the same for camera codes (the camera tokenizer's codebook)
    pose_head: bool = False   # auxiliary rotation head on the <EST> target-view states
    center_head: bool = False  # camera-centre head (centre + its log-variance) on the same states
    aligned_observation: bool = False  # target-view image tokens also get the observation code of their cell
    aligned_camera: bool = False  # <GEN> order: the input predicting a target-view cell gets its camera code
    view_head: bool = False   # auxiliary target-view head on the <GEN> camera-token states

    def __post_init__(self):
        self.grid = tuple(int(g) for g in self.grid)
        if len(self.grid) != 2:
            raise ValueError(f"grid must be (rows, cols), got {self.grid}")
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.head_dim % 4:
            raise ValueError(f"head_dim {self.head_dim} must be a multiple of 4 for 2D RoPE")
        if self.aligned_observation and self.image_code_dim < 1:
            raise ValueError("aligned_observation uses the image codebook features: set image_code_dim")
        if self.aligned_camera and self.camera_code_dim < 1:
            raise ValueError("aligned_camera uses the camera codebook features: set camera_code_dim")
        if self.image_code_dim < 0 or self.camera_code_dim < 0:
            raise ValueError(f"code dims must be >= 0, got {self.image_code_dim}, {self.camera_code_dim}")
        if self.center_head and not self.pose_head:
            raise ValueError("center_head reads the pose head's target-view states: set pose_head too")
        if self.task_token_rope not in ("identity", "zero"):
            raise ValueError(f"task_token_rope must be 'identity' or 'zero', got {self.task_token_rope!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.image_vocab, self.camera_vocab)

    @property
    def layout(self) -> Layout:
        return Layout(*self.grid)

    @property
    def vocab_size(self) -> int:
        return self.vocabulary.size

    @property
    def max_seq_len(self) -> int:
        return self.layout.seq_len


# Sizes of the paper / LlamaGen (head_dim 64), GST vocabulary; small presets for CPU.
PRESETS: dict[str, dict] = {
    "tiny": dict(dim=128, n_layer=2, n_head=2, image_vocab=512, camera_vocab=256, grid=(8, 8)),
    "small": dict(dim=384, n_layer=6, n_head=6, image_vocab=1024, camera_vocab=512, grid=(8, 8)),
    "B": dict(dim=768, n_layer=12, n_head=12),
    "L": dict(dim=1024, n_layer=24, n_head=16),
    "XL": dict(dim=1280, n_layer=36, n_head=20),
    "XXL": dict(dim=1536, n_layer=48, n_head=24),
}


def gst_config(name: str, **overrides) -> GSTConfig:
    """Config of preset `name` (PRESETS) with fields overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unknown GST preset {name!r}; expected one of {sorted(PRESETS)}")
    return replace(GSTConfig(**PRESETS[name]), **overrides)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_table(rows: torch.Tensor, cols: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """(L, head_dim/2, 2) fp32 [cos, sin] of the 2D RoPE angles for grid positions (rows, cols),
    each (L,). Pairs 0..head_dim/4-1 encode the row, the rest the column."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2, dtype=torch.float32)[: half // 2] / half))
    ang = torch.cat([rows.float()[:, None] * freqs, cols.float()[:, None] * freqs], dim=-1)
    return torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[..., 2j], x[..., 2j+1]) of x (B, T, H, head_dim) by the angles of
    table (T, head_dim/2, 2) [cos, sin]; computed in fp32, returned in x's dtype."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    cos = table[None, :, None, :, 0]
    sin = table[None, :, None, :, 1]
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(-2).type_as(x)


class KVCache:
    """Preallocated keys/values (B, H, max_len, head_dim) of one attention layer. A plain object,
    not a module, so caches never enter the state dict."""

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, n_head, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, H, T, hd) at positions input_pos (T,); return the cache up to the last
        written position."""
        if k.shape[0] != self.k.shape[0]:
            raise ValueError(f"KV cache was set up for batch {self.k.shape[0]}, got {k.shape[0]}")
        # under autocast (bf16 on CUDA) k and v arrive in the compute dtype: store in the cache's
        self.k[:, :, input_pos] = k.to(self.k.dtype)
        self.v[:, :, input_pos] = v.to(self.v.dtype)
        end = int(input_pos[-1]) + 1
        return self.k[:, :, :end], self.v[:, :, :end]

    def repeat_rows(self, batch: int) -> None:
        """Copy the cache of one sequence into `batch` independent rows (a shared prefix,
        prefilled once, from which the rows then decode apart)."""
        if self.k.shape[0] != 1:
            raise ValueError(f"only a batch-1 cache can be repeated, this one has {self.k.shape[0]} rows")
        self.k = self.k.expand(batch, -1, -1, -1).clone()
        self.v = self.v.expand(batch, -1, -1, -1).clone()


class Attention(nn.Module):
    def __init__(self, cfg: GSTConfig):
        super().__init__()
        self.n_head, self.head_dim, self.dim = cfg.n_head, cfg.head_dim, cfg.dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        if cfg.qk_norm:
            self.q_norm = nn.LayerNorm(cfg.head_dim)
            self.k_norm = nn.LayerNorm(cfg.head_dim)
        else:
            self.q_norm = self.k_norm = None
        self.attn_dropout = cfg.attn_dropout
        self.resid_dropout = nn.Dropout(cfg.resid_dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x, rope, input_pos=None, mask=None):
        b, t, _ = x.shape
        q, k, v = self.wqkv(x).split(self.dim, dim=-1)
        q = q.view(b, t, self.n_head, self.head_dim)
        k = k.view(b, t, self.n_head, self.head_dim)
        v = v.view(b, t, self.n_head, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        if input_pos is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, : k.shape[2]])
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, t, self.dim)
        return self.resid_dropout(self.wo(y))


class FeedForward(nn.Module):
    def __init__(self, cfg: GSTConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout)

    def forward(self, x):
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GSTConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, rope, input_pos=None, mask=None):
        h = x + self.attention(self.attention_norm(x), rope, input_pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class GST(nn.Module):
    """The Generative Spatial Transformer. forward(idx (B, T) ids[, input_pos]) -> logits (B, T, V)."""

    def __init__(self, config: GSTConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.seg_embeddings = nn.Embedding(3, config.dim) if config.segment_embedding else None
        self.image_code_proj = self.camera_code_proj = None
        if config.image_code_dim:
            self.register_buffer("image_codebook", torch.zeros(config.image_vocab, config.image_code_dim))
            self.image_code_proj = nn.Linear(config.image_code_dim, config.dim, bias=False)
        if config.camera_code_dim:
            self.register_buffer("camera_codebook", torch.zeros(config.camera_vocab, config.camera_code_dim))
            self.camera_code_proj = nn.Linear(config.camera_code_dim, config.dim, bias=False)
        self.aligned_proj = None
        if config.aligned_observation:
            self.aligned_proj = nn.Linear(config.image_code_dim, config.dim, bias=False)
        self.aligned_camera_proj = None
        if config.aligned_camera:
            self.aligned_camera_proj = nn.Linear(config.camera_code_dim, config.dim, bias=False)
        # ids of the sequence the KV cache holds (B, cache length), for the aligned inputs, and
        # whether they were written from index 0 (a prefill) since setup_caches
        self._cached_ids: torch.Tensor | None = None
        self._prefilled = False
        self.tok_dropout = nn.Dropout(config.token_dropout)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.pose_head = None
        if config.pose_head:
            self.pose_head = cell_readout_head(config, 9)
        self.center_head = cell_readout_head(config, 6) if config.center_head else None
        self.view_head = nn.Linear(config.dim, config.image_vocab, bias=False) if config.view_head else None
        layout = config.layout
        rows, cols = layout.grid_positions()
        table = rope_table(rows, cols, config.head_dim, config.rope_base)
        if config.task_token_rope == "zero":
            table[layout.task_index] = 0.0
        self.register_buffer("rope", table, persistent=False)
        if config.segment_embedding:
            self.register_buffer("segment_ids", layout.segment_ids(), persistent=False)
        if config.aligned_observation:
            self.register_buffer("cell_ids", rows * config.grid[1] + cols, persistent=False)
        self.register_buffer("causal_mask", torch.ones(0, 0, dtype=torch.bool), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LlamaGen init: normal(0, initializer_range) for Linear/Embedding, zero output head."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        nn.init.zeros_(self.output.weight)
        if self.view_head is not None:  # starts uniform over the codes, so it pulls on nothing at first
            nn.init.zeros_(self.view_head.weight)
        for proj in (self.aligned_proj, self.aligned_camera_proj):
            if proj is not None:
                nn.init.zeros_(proj.weight)
        if self.center_head is not None:  # starts at the object-centric placement, variance 1
            nn.init.zeros_(self.center_head[-1].weight)
            nn.init.zeros_(self.center_head[-1].bias)
        vocab = self.config.vocabulary
        with torch.no_grad():
            if self.image_code_proj is not None:
                self.tok_embeddings.weight[:vocab.image_vocab] = 0.0
            if self.camera_code_proj is not None:
                self.tok_embeddings.weight[vocab.camera_offset:vocab.camera_offset + vocab.camera_vocab] = 0.0

    def holds_codebook(self, kind: str, codebook: torch.Tensor) -> bool:
        """Whether the `kind` ("image" | "camera") codebook features are `codebook` ((vocab, dim),
        code i is row i) as set_codebooks stores it (L2-normalised). False for a model without
        those features."""
        buf = getattr(self, f"{kind}_codebook", None)
        if buf is None:
            return False
        book = F.normalize(codebook.detach().float(), dim=-1).to(buf.device)
        return book.shape == buf.shape and torch.allclose(book, buf.float(), atol=1e-5)

    def set_codebooks(self, image_codebook: torch.Tensor | None = None,
                      camera_codebook: torch.Tensor | None = None) -> None:
        """Copy the tokenizers' codebooks ((image_vocab, image_code_dim), (camera_vocab,
        camera_code_dim); code i is row i) into the codebook-feature buffers, L2-normalised as the
        tokenizers' quantisers compare them. A codebook the model has no features for must be None."""
        for book, buf, what in ((image_codebook, "image_codebook", "image"),
                                (camera_codebook, "camera_codebook", "camera")):
            if book is None:
                continue
            if not hasattr(self, buf):
                raise ValueError(f"this GST has no {what} codebook features ({what}_code_dim = 0)")
            target = getattr(self, buf)
            if tuple(book.shape) != tuple(target.shape):
                raise ValueError(f"{what} codebook has shape {tuple(book.shape)}, the model expects "
                                 f"{tuple(target.shape)}")
            if not torch.isfinite(book).all():
                raise ValueError(f"{what} codebook holds non-finite values")
            with torch.no_grad():
                target.copy_(F.normalize(book.detach().float(), dim=-1).to(target))

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Input embeddings (B, T, dim) of shared-vocabulary ids, codebook features included."""
        h = self.tok_embeddings(idx)
        vocab = self.config.vocabulary
        if self.image_code_proj is not None:
            is_image = (idx < vocab.image_vocab).unsqueeze(-1)
            feats = self.image_codebook[idx.clamp(max=vocab.image_vocab - 1)]
            h = h + self.image_code_proj(feats.to(h.dtype)) * is_image
        if self.camera_code_proj is not None:
            code = idx - vocab.camera_offset
            is_camera = ((code >= 0) & (code < vocab.camera_vocab)).unsqueeze(-1)
            feats = self.camera_codebook[code.clamp(0, vocab.camera_vocab - 1)]
            h = h + self.camera_code_proj(feats.to(h.dtype)) * is_camera
        return h

    def aligned_observation(self, idx: torch.Tensor, positions: torch.Tensor,
                            observation: torch.Tensor) -> torch.Tensor:
        """(B, T, dim): for each image token of the target view in idx (B, T) at sequence indices
        `positions` (T,), aligned_proj of the codebook vector of the observation's code
        (observation (B, n) image codes, row-major over the grid) at the same grid cell; zero
        for the observation, the task token and camera codes."""
        n = self.config.layout.n
        feats = self.aligned_proj(self.image_codebook[observation].to(self.aligned_proj.weight.dtype))
        per_token = feats[:, self.cell_ids[positions]]
        use = (positions > n)[None, :, None] & (idx < self.config.image_vocab)[..., None]
        return per_token * use

    def aligned_camera(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, T, dim): for the inputs at sequence indices `positions` (T,) of sequences `ids`
        (B, L) from index 0 (all of the sequence up to positions[-1]), aligned_camera_proj of the
        codebook vector of the camera code of the target-view cell each input predicts, where the
        sequence is in the <GEN> order ([o, <GEN>, c, i]: the input at index 2n + j predicts
        cell j, whose camera code sits at index n + 1 + j; cells row-major over the grid); zero
        for every other input and every <EST>-order sequence."""
        n, vocab = self.config.layout.n, self.config.vocabulary
        weight = self.aligned_camera_proj.weight
        if ids.shape[1] <= 2 * n:  # the camera segment is not complete: no target cell is predicted yet
            return torch.zeros((), dtype=weight.dtype, device=ids.device)
        cell = positions - 2 * n
        codes = ids[:, n + 1 + cell.clamp(0, n - 1)] - vocab.camera_offset  # (B, T)
        book = self.camera_codebook[codes.clamp(0, vocab.camera_vocab - 1)]
        feats = self.aligned_camera_proj(book.to(weight.dtype))
        use = ((cell >= 0) & (cell < n))[None, :, None] & (ids[:, n] == vocab.gen_token)[:, None, None]
        return feats * use

    def _aligned_terms(self, idx: torch.Tensor, input_pos: torch.Tensor | None) -> torch.Tensor:
        """The aligned input terms of forward (observation and camera). Without input_pos idx is
        the whole prefix; with it, idx's ids are written into the cached ids, so a decode step
        sees the observation and camera codes of the prefill and the steps before it."""
        n, t = self.config.layout.n, idx.shape[1]
        if input_pos is None:
            ids, positions = idx, torch.arange(t, device=idx.device)
        else:
            if int(input_pos[0]) == 0:
                if t < n:
                    raise ValueError(f"a cache prefill must hold the whole observation ({n} tokens), got {t}")
                self._prefilled = True
            if not self._prefilled:
                raise RuntimeError("the aligned inputs need the observation: prefill the cache from index 0")
            self._cached_ids[:, input_pos] = idx
            ids, positions = self._cached_ids, input_pos
        term = torch.zeros((), dtype=self.output.weight.dtype, device=idx.device)
        if self.aligned_proj is not None and ids.shape[1] > n + 1:
            term = term + self.aligned_observation(idx, positions, ids[:, :n])
        if self.aligned_camera_proj is not None:
            term = term + self.aligned_camera(ids, positions)
        return term

    def setup_caches(self, batch: int, max_seq_len: int | None = None, dtype=None, device=None) -> None:
        """Preallocate a KV cache for `batch` sequences of up to max_seq_len (default: the full
        3n+1) tokens in every layer."""
        max_len = max_seq_len or self.config.max_seq_len
        if max_len > self.config.max_seq_len:
            raise ValueError(f"max_seq_len {max_len} exceeds the model's sequence length "
                             f"{self.config.max_seq_len}")
        w = self.output.weight
        dtype, device = dtype or w.dtype, device or w.device
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(batch, self.config.n_head, max_len, self.config.head_dim,
                                               dtype, device)
        self.causal_mask = torch.tril(torch.ones(max_len, max_len, dtype=torch.bool, device=device))
        self._cached_ids = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self._prefilled = False

    def repeat_caches(self, batch: int) -> None:
        """After a batch-1 prefill, give every layer's KV cache (and the cached ids of the aligned
        inputs) `batch` rows, so one shared prefix is computed once for many samples."""
        for layer in self.layers:
            if layer.attention.kv_cache is None:
                raise RuntimeError("repeat_caches needs a KV cache: call setup_caches and prefill first")
            layer.attention.kv_cache.repeat_rows(batch)
        if self._cached_ids is not None:
            self._cached_ids = self._cached_ids.expand(batch, -1).clone()

    def clear_caches(self) -> None:
        for layer in self.layers:
            layer.attention.kv_cache = None
        self.causal_mask = torch.ones(0, 0, dtype=torch.bool, device=self.output.weight.device)
        self._cached_ids, self._prefilled = None, False

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None, return_heads: bool = False):
        """Logits (B, T, vocab_size) in fp32; with return_heads, (logits, HeadReadout).

        idx: (B, T) shared-vocabulary ids. Without input_pos, idx is a sequence prefix starting at
        sequence index 0 (training, or recomputation) under a causal mask. With input_pos (T,)
        long, the sequence indices of idx (increasing, contiguous with what the cache holds),
        the keys/values go to the KV cache set up by setup_caches and attention covers the cache.
        return_heads (no input_pos, a model with a pose or view head, T > 2n): also the read-out
        heads' outputs from the final states of input indices n+1 .. 2n (HeadReadout): the pose
        head's unconstrained 3x3 rotation and the centre head's centre and log-variances, which
        estimate the target camera in the observation camera's frame for an <EST>-order
        sequence, and the view head's per-cell logits of the target view's codes, which predict
        the target view of a <GEN>-order sequence from its observation and camera. Each means
        nothing for the other order; a head the model lacks gives None."""
        if return_heads and input_pos is not None:
            raise ValueError("return_heads needs a full training prefix, not a cached decoding step")
        h = self._final_states(idx, input_pos)
        logits = self.output(h).float()
        if not return_heads:
            return logits
        return logits, self._read_heads(h, with_view_head=True)

    def read_heads(self, idx: torch.Tensor, with_view_head: bool = True) -> HeadReadout:
        """The read-out heads alone (HeadReadout, fp32) for a full prefix idx (B, T > 2n) of
        shared-vocabulary ids from sequence index 0, without the token logits: the pose read-out's
        pass, which needs no (B, T, vocab_size) projection. For an <EST>-order prefix [o, <EST>, i]
        the rotation is the pose head's unconstrained estimate of the target camera's rotation in
        the observation camera's frame (w2c convention, x_target = R x_observation + t, OpenCV
        axes) and the centre the target camera's centre in that frame (unit scene scale), as in
        HeadReadout. with_view_head=False leaves the view head out (view_logits None), for such a
        pose reading, where it means nothing; it then needs a pose head."""
        return self._read_heads(self._final_states(idx, None), with_view_head)

    def _final_states(self, idx: torch.Tensor, input_pos: torch.Tensor | None) -> torch.Tensor:
        """(B, T, dim) normalised final hidden states of idx (forward's arguments and checks)."""
        if idx.ndim != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        t = idx.shape[1]
        if input_pos is None:
            if t > self.config.max_seq_len:
                raise ValueError(f"sequence of {t} tokens exceeds max_seq_len {self.config.max_seq_len}")
            rope, mask = self.rope[:t], None
        else:
            if self.layers[0].attention.kv_cache is None:
                raise RuntimeError("forward with input_pos needs a KV cache: call setup_caches first")
            if input_pos.shape != (t,):
                raise ValueError(f"input_pos must have shape ({t},), got {tuple(input_pos.shape)}")
            if int(input_pos[-1]) >= self.causal_mask.shape[0]:
                raise ValueError(f"position {int(input_pos[-1])} is beyond the KV cache "
                                 f"({self.causal_mask.shape[0]} tokens)")
            rope, mask = self.rope[input_pos], self.causal_mask[input_pos]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got range "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        h = self.embed(idx)
        if self.aligned_proj is not None or self.aligned_camera_proj is not None:
            h = h + self._aligned_terms(idx, input_pos)
        if self.seg_embeddings is not None:
            seg = self.segment_ids[:t] if input_pos is None else self.segment_ids[input_pos]
            h = h + self.seg_embeddings(seg)[None]
        h = self.tok_dropout(h)
        for layer in self.layers:
            h = layer(h, rope, input_pos, mask)
        return self.norm(h)

    def _read_heads(self, h: torch.Tensor, with_view_head: bool) -> HeadReadout:
        """HeadReadout from final states h (B, T, dim) of a full prefix (see forward)."""
        if self.pose_head is None and self.view_head is None:
            raise ValueError("reading the heads needs a GST with a pose head or a view head")
        if self.pose_head is None and not with_view_head:
            raise ValueError("reading the heads without the view head needs a GST with a pose head")
        n = self.config.layout.n
        if h.shape[1] <= 2 * n:
            raise ValueError(f"reading the heads needs a full training prefix of more than {2 * n} tokens")
        first_segment = h[:, n + 1: 2 * n + 1]
        view_logits = (None if self.view_head is None or not with_view_head
                       else self.view_head(first_segment).float())
        if self.pose_head is None:
            return HeadReadout(None, view_logits=view_logits)
        rotation = self.pose_head(first_segment).float().view(-1, 3, 3)
        if self.center_head is None:
            return HeadReadout(rotation, view_logits=view_logits)
        out = self.center_head(first_segment).float()
        placement = center_facing_scene(rotation_from_covariance(rotation.detach()))
        return HeadReadout(rotation, placement + out[:, :3], out[:, 3:], view_logits)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
