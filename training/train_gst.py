"""Train the GST transformer on pre-tokenised data (training/pretokenize.py).

    python -m training.train_gst --config training/configs/gst_tiny_cpu.yaml --shards DATA/train \
        --out runs/gst_tiny [--steps N] [--set key=value ...]
    torchrun --nproc_per_node 8 -m training.train_gst --config training/configs/gst_xxl.yaml ...
    python -m training.train_gst --config ... --out runs/gst_tiny --export-only

Objective: "joint" (GST eq. 5: loss on both segments, both task orders mixed in every batch;
the default) or "alternating" (the paper's Table 4 baseline: loss on the second segment only,
the whole batch on one task, alternating per step). The sequence layout, loss masks and the
masked cross-entropy are gst_ros.models.sequence's.

Optimisation (the paper / LlamaGen recipe): AdamW, betas (0.9, 0.95), weight decay 0.05 on
parameters with >= 2 dimensions only, lr decaying from `lr` (1e-4) to `min_lr` (1e-5) (cosine
or linear, optional linear warm-up), gradient clipping at 1.0, gradient accumulation over
`grad_accum` micro-steps, bf16 autocast on CUDA (CPU runs stay fp32 and say so), condition
dropout (the observation replaced by the null condition, for classifier-free guidance) plus the
model's own token / residual / FFN dropouts.

Batches: `batch_size` is the GLOBAL batch (all ranks and all accumulation micro-steps). Step s
uses positions s*B .. (s+1)*B-1 of an epoch-wise random permutation of the pairs; the tasks and
the condition-dropout draws of those B samples come from a generator seeded by (seed, step).
So the data a step sees depends only on (seed, step): a resumed run, a run with more
accumulation, or a run on more processes sees exactly the same samples (training/distributed.py).

Writes into --out: train_log.csv (step, loss, grad_norm, lr, tokens/s, and val losses), an
atomic checkpoint.pt every `ckpt_every` steps (resume is automatic: a killed run restarts from
its last checkpoint with identical model, optimizer, RNG state and data position), and
model/ = the model directory the engine loads: model/gst (this transformer, kind "gst") plus
model/image_tokenizer and model/camera_tokenizer copied from the tokenizers the shards were
made with.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from gst_ros.geometry.conventions import camera_center
from gst_ros.geometry.metrics import accuracy_at, rotation_error_deg
from gst_ros.geometry.rotations import rotation_from_covariance
from gst_ros.models.io import (
    ModelFormatError,
    config_from_dict,
    load_model_dir,
    load_state_dict_strict,
    save_model_dir,
)
from gst_ros.models.sequence import (
    OBJECTIVES,
    TASK_EST,
    TASK_GEN,
    Layout,
    camera_token_weights,
    loss_mask,
    make_batch,
    masked_cross_entropy,
    noise_second_segment,
    sample_tasks,
    sequence_nll,
)
from gst_ros.models.transformer import GST, GSTConfig, TransformerBlock, count_parameters, gst_config
from training import distributed as D
from training.checkpointing import TrainingCheckpointError, load_training_state, save_training_state
from training.config_fields import check_field_types, load_dataclass_config
from training.logging_utils import CSVLogger
from training.token_shards import ShardFormatError, TokenShardDataset, collate

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.csv"
MODEL_DIR = "model"
LR_DECAYS = ("cosine", "linear", "constant")
PRECISIONS = ("bf16", "fp32")


class TrainingInputError(ValueError):
    """What a run was given does not fit: a config value, settings that differ from those its
    checkpoint was written with, shards without a pair. The command line prints it as one line."""


@dataclass
class TrainConfig:
    model: str = "tiny"                  # gst_ros.models.transformer.PRESETS name
    model_overrides: dict = field(default_factory=dict)  # GSTConfig fields (dropouts, sizes)
    shards: str = ""                     # training token shards (training/pretokenize.py)
    val_shards: str = ""                 # optional held-out token shards
    image_tokenizer: str = ""            # model dirs copied into out/model; default: the shards'
    camera_tokenizer: str = ""           # manifest metadata (where pretokenize recorded them)
    objective: str = "joint"             # "joint" | "alternating"
    batch_size: int = 16                 # GLOBAL batch: all ranks x all accumulation micro-steps
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-4
    min_lr: float = 1e-5
    lr_decay: str = "cosine"             # "cosine" | "linear" | "constant"
    warmup_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05           # on >= 2-D parameters only
    grad_clip: float = 1.0
    cond_drop_prob: float = 0.1          # chance a sample's observation becomes the null condition
    p_gen: float = 0.5                   # joint: share of <GEN>-order samples
    camera_loss_weight: float = 1.0      # loss weight of camera-code targets (1: the paper's plain mean)
    target_token_noise: float = 0.0      # share of teacher-forced second-segment inputs randomised
    pose_aux_weight: float = 0.0         # > 0: auxiliary rotation loss through the model's pose head
    center_aux_weight: float = 0.0       # > 0: camera-centre loss through the model's centre head
    view_aux_weight: float = 0.0         # > 0: target-view code loss through the model's view head,
                                         # read before any target token is seen (view_aux_loss)
    camera_contrast_weight: float = 0.0  # > 0: each <GEN> sample's target view must be likelier
                                         # under its own camera than under another camera of the
                                         # same observation (camera_contrast_loss; single-process)
    identity_pair_prob: float = 0.0      # > 0: this share of each batch's pairs becomes an identity
                                         # pair, the observation as its own target at the identity
                                         # camera (IdentityPairs): data whose views are all >= 30 deg
                                         # apart never shows the model a view it should copy
    train_modules: list = field(default_factory=list)  # top-level GST modules to train (e.g.
                                         # [center_head]); empty: all. The rest stay frozen;
                                         # only read-out heads: the token loss is skipped (logged 0)
    module_lr_scale: dict = field(default_factory=dict)  # top-level GST module -> lr multiplier,
                                         # e.g. {aligned_camera_proj: 20} for a part added to a
                                         # trained model at zero, which lr alone moves too slowly
    precision: str = "bf16"              # "bf16" (autocast on CUDA; fp32 on CPU) | "fp32"
    strategy: str = "none"               # "none" | "ddp" | "fsdp" (training/distributed.py)
    device: str = "auto"
    seed: int = 0
    init_from: str = ""                  # GST model dir, or a LlamaGen / official GST .pt checkpoint
    init_kind: str = "auto"              # "auto" | "gst-dir" | "llamagen-gpt" | "gst-gpt"
    codebook_embedding_init: bool = False  # from scratch: seed code embeddings from the VQ codebooks
    log_every: int = 10
    ckpt_every: int = 200
    val_every: int = 0                   # 0: validate only at the end (when val_shards is set)
    val_batches: int = 4
    export_every: int = 0                # 0: export only at the end
    num_workers: int = 0
    tensorboard: bool = False            # also log to TensorBoard when it is installed

    def __post_init__(self):
        check_field_types(self, "train_gst config")   # also makes betas a tuple of two floats
        checks = [(self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}"),
                  (self.lr_decay in LR_DECAYS, f"lr_decay must be one of {LR_DECAYS}"),
                  (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
                  (self.strategy in D.STRATEGIES, f"strategy must be one of {D.STRATEGIES}"),
                  (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
                  (self.batch_size % self.grad_accum == 0, "batch_size must be divisible by grad_accum"),
                  (self.max_steps >= 1, "max_steps must be >= 1"),
                  (0 <= self.min_lr <= self.lr, "need 0 <= min_lr <= lr"),
                  (0.0 <= self.cond_drop_prob <= 1.0, "cond_drop_prob must lie in [0, 1]"),
                  (self.camera_loss_weight > 0, "camera_loss_weight must be > 0"),
                  (0.0 <= self.target_token_noise <= 1.0, "target_token_noise must lie in [0, 1]"),
                  (self.pose_aux_weight >= 0, "pose_aux_weight must be >= 0"),
                  (self.center_aux_weight >= 0, "center_aux_weight must be >= 0"),
                  (self.view_aux_weight >= 0, "view_aux_weight must be >= 0"),
                  (self.camera_contrast_weight >= 0, "camera_contrast_weight must be >= 0"),
                  (0.0 <= self.identity_pair_prob < 1.0, "identity_pair_prob must lie in [0, 1)"),
                  (self.camera_contrast_weight == 0 or self.strategy == "none",
                   "camera_contrast_weight is single-process only for now (strategy: none): a "
                   "two-process DDP run of it aborted once in CI and the cause is not found"),
                  (all(isinstance(v, (int, float)) and v > 0 for v in self.module_lr_scale.values()),
                   "module_lr_scale must map module names to multipliers > 0"),
                  (not self.module_lr_scale or self.strategy != "fsdp",
                   "module_lr_scale is not supported with strategy fsdp (flat parameters lose their names)"),
                  (self.ckpt_every >= 1 and self.log_every >= 1, "ckpt_every and log_every must be >= 1")]
        for ok, msg in checks:
            if not ok:
                raise TrainingInputError(f"train_gst config: {msg}")


def load_config(path=None, overrides: dict | None = None) -> TrainConfig:
    """TrainConfig from a YAML file (unknown keys are an error), then `overrides`."""
    try:
        return load_dataclass_config(TrainConfig, path, overrides, "train_gst config")
    except ValueError as e:
        raise TrainingInputError(str(e)) from None


def parse_set(items: list[str]) -> dict:
    """--set key=value pairs (values parsed as YAML: numbers, booleans, lists)."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise TrainingInputError(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


# ------------------------------------------------------------------ schedule and optimizer

def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up to lr, then decay to
    min_lr at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "constant":
        return cfg.lr
    span = max(1, cfg.max_steps - 1 - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.lr_decay == "linear":
        return cfg.lr + (cfg.min_lr - cfg.lr) * t
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D parameters (matrices, embeddings) and none on the rest.
    The first two groups (decay, no decay) hold every module at the schedule's lr; the parameters
    of the top-level modules in cfg.module_lr_scale (a DDP wrapper's "module." prefix ignored)
    follow in groups of their own whose "lr_scale" multiplies the schedule (set_lr)."""
    groups: dict[tuple[float, bool], list] = {(1.0, True): [], (1.0, False): []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            top = name.removeprefix("module.").split(".")[0]
            groups.setdefault((float(cfg.module_lr_scale.get(top, 1.0)), p.dim() >= 2), []).append(p)
    param_groups = [{"params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "lr_scale": scale}
                    for (scale, decay), params in groups.items() if params or scale == 1.0]
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda")


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's lr into every group, times the group's lr_scale (make_optimizer)."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


# ------------------------------------------------------------------ model

def build_model_config(cfg: TrainConfig, manifest: dict, init_config: dict | None = None) -> GSTConfig:
    """The transformer config: the preset (or the init checkpoint's sizes) with overrides; the
    vocabulary sizes and token grid always come from the shards' manifest (they are facts of the
    tokenizers), and a mismatch with an init checkpoint is an error. pose_aux_weight > 0 implies
    pose_head, center_aux_weight > 0 center_head (and pose_head), view_aux_weight > 0 view_head;
    a head missing from an init checkpoint starts fresh (init_state_with_new_heads)."""
    data = {"image_vocab": int(manifest["image_vocab"]), "camera_vocab": int(manifest["camera_vocab"]),
            "grid": tuple(manifest["grid"])}
    overrides = {**cfg.model_overrides, **({"pose_head": True} if cfg.pose_aux_weight > 0 else {}),
                 **({"pose_head": True, "center_head": True} if cfg.center_aux_weight > 0 else {}),
                 **({"view_head": True} if cfg.view_aux_weight > 0 else {})}
    if init_config is not None:
        base = config_from_dict(GSTConfig, init_config)
        for k, v in data.items():
            if getattr(base, k) != v:
                raise TrainingInputError(f"init checkpoint has {k}={getattr(base, k)} but the token shards "
                                         f"have {v}")
        sizes = {"dim", "n_layer", "n_head", "image_vocab", "camera_vocab", "grid", "segment_embedding",
                 "image_code_dim", "camera_code_dim"}
        # the recipe that made the checkpoint may be reused to continue it: equal sizes are fine
        bad = sorted(k for k in set(cfg.model_overrides) & sizes
                     if config_from_dict(GSTConfig, {**init_config, k: cfg.model_overrides[k]}) != base)
        if bad:
            raise TrainingInputError(f"model_overrides {bad} conflict with init_from "
                                     "(sizes come from the checkpoint)")
        return dataclasses.replace(base, **overrides)
    return gst_config(cfg.model, **{**overrides, **data})


# optional parts a trained model may gain
ADDABLE_MODULES = ("pose_head.", "center_head.", "view_head.", "aligned_proj.", "aligned_camera_proj.")
READOUT_HEADS = ("pose_head", "center_head", "view_head")  # train_modules made only of these: no token loss


def init_state_with_new_heads(model: GST, state: dict) -> dict:
    """`state` (an init checkpoint's) completed with the model's own freshly initialised tensors of
    the optional parts it lacks (the pose head, the aligned-observation map, which starts at zero
    and so changes nothing at first): they may be added to a trained model, every other tensor
    must still match (load_state_dict_strict)."""
    extra = {k: v for k, v in model.state_dict().items() if k.startswith(ADDABLE_MODULES) and k not in state}
    return {**state, **extra}


def pose_aux_loss(pose: torch.Tensor, rel_w2c: torch.Tensor, use: torch.Tensor) -> torch.Tensor:
    """Mean squared Frobenius distance between the pose head's 3x3 outputs (B, 3, 3) and the true
    relative rotations rel_w2c[:, :3, :3] (target camera in the observation's camera frame, w2c,
    OpenCV axes), over the samples where `use` (B,) bool holds (<EST> order, observation kept).
    No sample in use: a zero that still touches the head, so every rank's graph is the same."""
    if not bool(use.any()):
        return pose.sum() * 0.0
    target = rel_w2c[:, :3, :3].to(pose)
    return (pose[use] - target[use]).pow(2).sum(dim=(1, 2)).mean()


def view_aux_loss(view_logits: torch.Tensor, image: torch.Tensor, use: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per cell) of the view head's per-cell logits (B, n, image_vocab)
    against the target view's image codes (B, n), row-major over the grid, over the samples where
    `use` (B,) bool holds (<GEN> order, observation kept). No sample in use: a zero that still
    touches the head, so every rank's graph is the same."""
    if not bool(use.any()):
        return view_logits.sum() * 0.0
    logits = view_logits[use]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), image[use].reshape(-1).to(logits.device))


def center_aux_loss(center: torch.Tensor, log_var: torch.Tensor, rel_w2c: torch.Tensor,
                    use: torch.Tensor) -> torch.Tensor:
    """Camera-centre loss of the centre head over the samples where `use` (B,) bool holds.

    center, log_var: (B, 3) the head's centre of the target camera in the observation camera's
    frame (unit scene scale, OpenCV axes) and its log-variance per axis; rel_w2c (B, 4, 4) the
    true relative w2c, whose centre is C = -R^T t. The loss is the squared error of the centre
    (summed over axes) plus the Gaussian negative log-likelihood of that error under the
    predicted variances with the centre detached, so the variances learn the error's size
    without pulling the centre (the mean stays a least-squares fit). None in use: a zero that
    still touches the head."""
    if not bool(use.any()):
        return (center.sum() + log_var.sum()) * 0.0
    true_center = camera_center(rel_w2c.to(center))
    sq = (center - true_center)[use].pow(2)
    nll = 0.5 * (log_var[use] + (center.detach() - true_center)[use].pow(2) * torch.exp(-log_var[use]))
    return sq.sum(dim=1).mean() + nll.sum(dim=1).mean()


def camera_contrast_loss(model, model_cfg: GSTConfig, tokens: dict, inp: torch.Tensor, tgt: torch.Tensor,
                         logits: torch.Tensor, use: torch.Tensor, objective: str) -> torch.Tensor:
    """Contrastive view loss: for the <GEN>-order samples `use` (B,) bool (observation kept), the
    target view's NLL under its own camera (from `logits`, the batch's pass) against its NLL under
    a wrong camera (one more pass over those samples, same teacher-forced view inputs `inp`,
    noise included), as a two-way choice of camera: mean softplus(NLL(i | c, o) - NLL(i | c', o)),
    summed over the view's n tokens. The wrong camera c' is, when the batch carries siblings
    (TokenShardDataset(siblings=True)), another target camera of the same observation: the scene
    seen from another side, the confusion side retrieval measures; samples without one are left
    out. Without siblings it is another qualifying sample's camera (a roll by one). The plain
    token loss barely rewards a view for depending on its camera (the shipped model: another
    pair's camera costs 0.054-0.064 nats per image token). When no (with siblings) or fewer than
    two (without) samples qualify, the pass still runs, on the first sample, and the loss is 0, so
    every step makes the same passes (what DDP / FSDP would need; TrainConfig refuses this loss
    with them until a multi-process run of it is verified)."""
    if "sibling_camera" in tokens:
        use = use & tokens["has_sibling"].to(use.device)
    rows = torch.nonzero(use.to(inp.device)).flatten()
    enough = len(rows) >= (1 if "sibling_camera" in tokens else 2)
    if not enough:
        rows = torch.zeros(1, dtype=torch.long, device=inp.device)
    n = model_cfg.layout.n
    idx = rows.cpu()
    wrong = tokens["sibling_camera"][idx] if "sibling_camera" in tokens else tokens["camera"][idx.roll(1)]
    other = {"observation": tokens["observation"][idx], "image": tokens["image"][idx], "camera": wrong}
    tasks = torch.full((len(idx),), TASK_GEN)
    neg_inp, _, _ = batch_from_tokens(model_cfg, other, tasks, torch.zeros(len(idx), dtype=torch.bool),
                                      objective, inp.device)
    neg_inp[:, 2 * n + 1:] = inp[rows, 2 * n + 1:]  # the same (noised) teacher-forced view
    second = loss_mask(model_cfg.layout, "alternating", len(idx), inp.device)
    nll_own = sequence_nll(logits[rows], tgt[rows], second)
    nll_other = sequence_nll(model(neg_inp), tgt[rows], second)
    loss = F.softplus(nll_own - nll_other).mean()
    return loss if enough else loss * 0.0


def check_module_names(model: GST, names, setting: str) -> None:
    """ValueError naming the entries of `names` (a config `setting`'s) that are not top-level
    modules of `model`, with the list of those it has."""
    children = {n for n, c in model.named_children() if c is not None}
    unknown = sorted({str(m) for m in names} - children)
    if unknown:
        raise TrainingInputError(f"{setting} names {unknown}, which are not modules of this GST "
                                 f"(it has {sorted(children)})")


def freeze_for_training(model: GST, train_modules) -> list[str]:
    """Leave only the named top-level modules of `model` trainable (requires_grad); empty: train
    all. Returns the names of the trainable parameters. ValueError names a module the model
    lacks."""
    names = [str(m) for m in train_modules]
    if not names:
        return [n for n, _ in model.named_parameters()]
    check_module_names(model, names, "train_modules")
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] in names)
        if p.requires_grad:
            trainable.append(name)
    return trainable


def codebook_embedding_init(model: GST, image_codebook: torch.Tensor, camera_codebook: torch.Tensor,
                            seed: int = 0) -> None:
    """Seed the input embeddings of the image and camera codes from the tokenizers' codebooks.

    A from-scratch transformer sees code ids, not what they look like: two codes a tokenizer uses
    for nearly the same patch start as unrelated as any two. Here each code's embedding row
    becomes (random row + codebook vector @ P) / sqrt(2), P a fixed random projection
    (codebook dim -> model dim) with entries of the init std, so codes close in the codebook
    start close in the model (the codebooks are L2-normalised, so the two parts have the same
    scale). image_codebook: (image_vocab, d_i); camera_codebook: (camera_vocab, d_c)."""
    cfg = model.config
    vocab = cfg.vocabulary
    w = model.tok_embeddings.weight
    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    std = cfg.initializer_range
    with torch.no_grad():
        for book, start, size, what in ((image_codebook, 0, cfg.image_vocab, "image"),
                                        (camera_codebook, vocab.camera_offset, cfg.camera_vocab, "camera")):
            book = torch.nn.functional.normalize(book.detach().float().cpu(), dim=-1)
            if book.shape[0] != size:
                raise TrainingInputError(f"{what} codebook has {book.shape[0]} codes, the model {size}")
            proj = torch.randn(book.shape[1], cfg.dim, generator=gen) * std
            rows = slice(start, start + book.shape[0])
            w[rows] = ((w[rows].detach().cpu() + book @ proj) / math.sqrt(2.0)).to(w)


def refresh_codebooks(model: GST, manifest: dict, cfg: TrainConfig) -> list[str]:
    """After init_from: where the model has codebook features and the tokenizer the shards were
    made with is known (cfg.image_tokenizer / camera_tokenizer, else the manifest's metadata) and
    its codebook differs from the model's buffer (e.g. continuing a transformer on shards re-made
    with a fine-tuned tokenizer), copy that codebook in, so the features describe the codes the
    model is now fed. Returns the kinds ("image", "camera") replaced; an unknown tokenizer keeps
    the model's buffer."""
    replaced = []
    for kind in ("image", "camera"):
        buf = getattr(model, f"{kind}_codebook", None)
        path = getattr(cfg, f"{kind}_tokenizer") or manifest.get("metadata", {}).get(f"{kind}_tokenizer", "")
        if buf is None or not path or not Path(path).is_dir():
            continue
        book = tokenizer_codebook(kind, manifest, path)
        if not model.holds_codebook(kind, book):
            model.set_codebooks(**{f"{kind}_codebook": book})
            replaced.append(kind)
    return replaced


def tokenizer_codebook(kind: str, manifest: dict, path: str = "") -> torch.Tensor:
    """The (codebook_size, dim) codebook of the `kind` ("image" | "camera") tokenizer the shards
    were made with: the model directory `path`, else the one pre-tokenisation recorded in the
    manifest's metadata. A missing directory is a ValueError that names it."""
    from gst_ros.models.tokenizer import CameraTokenizer, ImageTokenizer

    cls = {"image": ImageTokenizer, "camera": CameraTokenizer}[kind]
    path = path or manifest.get("metadata", {}).get(f"{kind}_tokenizer", "")
    if not path or not Path(path).is_dir():
        raise TrainingInputError(f"the {kind} tokenizer's codebook is needed, but there is no model "
                                 f"directory at {path!r} (set {kind}_tokenizer)")
    return cls.from_dir(path).core.quantize.codebook().detach()


def load_init(cfg: TrainConfig, manifest: dict) -> tuple[dict | None, dict | None, str]:
    """(config dict, state dict, description) of `init_from`, or (None, None, "") when unset."""
    if not cfg.init_from:
        return None, None, ""
    path = Path(cfg.init_from)
    kind = cfg.init_kind
    if kind == "auto":
        kind = "gst-dir" if path.is_dir() else "llamagen-gpt"
    if kind == "gst-dir":
        meta, state = load_model_dir(path, "gst")
        return meta["config"], state, f"GST model directory {path}"
    from gst_ros.engine.checkpoints import read_foreign_checkpoint
    from gst_ros.engine.gpt_import import convert_gpt_state_dict, format_report

    foreign = read_foreign_checkpoint(path)
    state, config, report = convert_gpt_state_dict(kind, foreign, camera_vocab=int(manifest["camera_vocab"]),
                                                   grid=tuple(manifest["grid"]), seed=cfg.seed)
    return config, state, f"{kind} checkpoint {path}: {format_report(report)}"


# ------------------------------------------------------------------ data

class StepBatches(torch.utils.data.Sampler):
    """Index lists of this rank's micro-batches, in order, from optimizer step `start` on.

    Step s covers positions s*B .. (s+1)*B-1 of the concatenation of epoch-wise permutations of
    the N pairs (permutation of epoch e seeded by (seed, e)); the rank takes its slice, then
    splits it into grad_accum micro-batches."""

    def __init__(self, n: int, cfg: TrainConfig, info: D.DistInfo, start: int):
        if n < 1:
            raise TrainingInputError("the token shards hold no pairs")
        self.n, self.cfg, self.info, self.start = n, cfg, info, start
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.cfg.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def global_indices(self, step: int) -> np.ndarray:
        b = self.cfg.batch_size
        pos = np.arange(step * b, (step + 1) * b)
        out = np.empty(b, dtype=np.int64)
        for e in np.unique(pos // self.n):
            sel = pos // self.n == e
            out[sel] = self._perm(int(e))[pos[sel] % self.n]
        return out

    def __iter__(self):
        rs = D.rank_slice(self.cfg.batch_size, self.info)
        for step in range(self.start, self.cfg.max_steps):
            mine = self.global_indices(step)[rs]
            yield from (c.tolist() for c in np.array_split(mine, self.cfg.grad_accum))

    def __len__(self) -> int:
        return (self.cfg.max_steps - self.start) * self.cfg.grad_accum


def step_draws(cfg: TrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tasks (B,), dropped (B,) bool) of the global batch of `step`: the same on every rank."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    tasks = sample_tasks(cfg.objective, cfg.batch_size, step, gen, cfg.p_gen)
    dropped = torch.rand(cfg.batch_size, generator=gen) < cfg.cond_drop_prob
    return tasks, dropped


def identity_draws(cfg: TrainConfig, step: int) -> torch.Tensor:
    """(B,) bool: which pairs of the global batch of `step` become identity pairs (IdentityPairs);
    the same on every rank, and drawn apart from step_draws so that its draws do not move."""
    gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 7 + 5)
    return torch.rand(cfg.batch_size, generator=gen) < cfg.identity_pair_prob


class IdentityPairs:
    """Makes identity pairs out of a batch's pairs: the target view becomes the observation itself
    and its camera the observation's own, rel_w2c = I (world = the observation's optical frame,
    so the camera sits at the origin looking down +z, unit scale unchanged), whose camera tokens
    are the camera tokenizer's codes of that identity camera's Plücker map with the pair's K
    (pixels, at the shards' model image size; cached per K). The shards keep the target view's K
    only, so that is the K used: exact where a data set's views share one K (the renders), an
    approximation where the observation's differs. The pose head's target is then the
    identity rotation and the centre head's the origin. A sibling camera (another target of the
    same observation) stays a valid wrong camera for the contrastive loss."""

    def __init__(self, camera_tokenizer, image_size: int):
        self.tokenizer, self.image_size = camera_tokenizer, int(image_size)
        self._codes: dict[bytes, torch.Tensor] = {}

    def codes(self, K: torch.Tensor) -> torch.Tensor:
        """(B, n) int64 camera codes of the identity camera for intrinsics K (B, 3, 3)."""
        out = []
        for k in K.double():
            key = k.numpy().tobytes()
            if key not in self._codes:
                grid = self.tokenizer.encode(k[None], torch.eye(4, dtype=torch.float64)[None],
                                             image_size=self.image_size)
                self._codes[key] = grid.reshape(-1).long()
            out.append(self._codes[key])
        return torch.stack(out)

    def apply(self, tokens: dict, rows: torch.Tensor) -> dict:
        """A copy of the collated batch `tokens` with the pairs where `rows` (B,) bool is set
        made identity pairs."""
        if not bool(rows.any()):
            return tokens
        out = dict(tokens)
        idx = torch.nonzero(rows).flatten()
        out["image"] = tokens["image"].clone()
        out["image"][idx] = tokens["observation"][idx]
        out["camera"] = tokens["camera"].clone()
        out["camera"][idx] = self.codes(tokens["K"][idx]).to(tokens["camera"].dtype)
        out["rel_w2c"] = tokens["rel_w2c"].clone()
        out["rel_w2c"][idx] = torch.eye(4, dtype=tokens["rel_w2c"].dtype)
        return out


def batch_from_tokens(model_cfg: GSTConfig, tokens: dict, tasks: torch.Tensor, dropped: torch.Tensor,
                      objective: str, device: torch.device):
    """sequence.Batch on `device` from collated shard items, with the given per-sample tasks and
    condition dropout (dropped observations become the null condition, token 0)."""
    obs = torch.where(dropped[:, None], 0, tokens["observation"])
    b = make_batch(model_cfg.vocabulary, model_cfg.layout, obs, tokens["image"], tokens["camera"], tasks,
                   objective=objective)
    return [t.to(device, non_blocking=True) for t in (b.input_ids, b.targets, b.loss_mask)]


def autocast_for(device: torch.device, cfg: TrainConfig):
    if cfg.precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def validation_losses(model: torch.nn.Module, model_cfg: GSTConfig, data: TokenShardDataset, cfg: TrainConfig,
                      device: torch.device, batch: int) -> dict:
    """Held-out losses on the first val_batches*batch pairs, each pair in both orders, no dropout:
    val_loss (joint objective), val_nll_image (p(i|c,o): <GEN> second segment), val_nll_camera
    (p(c|i,o): <EST> second segment), and the two conditioning checks, in nats per token:
    val_camera_gain_image = NLL of the camera segment when each pair's target image is swapped
    for another pair's (a roll by one within the batch) minus val_nll_camera, i.e. what the target
    image is worth to the pose estimate; val_image_gain_camera = the same for the image segment
    of <GEN> with the camera swapped, what the camera is worth to the novel view. Both are ~0
    while the model ignores that condition (it has then learned only the marginal). A model with
    a pose head adds val_pose_head_rra15: the share of <EST> pairs whose head rotation (projected
    onto SO(3)) is within 15 degrees of the truth. Data with siblings (TokenShardDataset(siblings=
    True)) adds val_image_gain_sibling_camera: the image NLL increase when the camera is another
    target camera of the same observation (the scene from another side; pairs with one are
    counted), the harder version of val_image_gain_camera that side retrieval asks for. A model
    with a view head adds val_view_head_nll: its cross-entropy per cell on the <GEN> pairs (the
    target view predicted from the observation and camera alone; ln(image_vocab) at init)."""
    was = model.training
    model.eval()
    n = min(len(data), cfg.val_batches * batch)
    layout: Layout = model_cfg.layout
    keys = ("val_loss", "val_nll_image", "val_nll_camera", "val_camera_gain_image", "val_image_gain_camera")
    sums = dict.fromkeys(keys, 0.0)
    count = swapped_count = sibling_count = 0
    sibling_sum = view_nll = 0.0
    errors, center_errors = [], []
    no_drop = torch.zeros(batch, dtype=torch.bool)
    for start in range(0, n, batch):
        tokens = collate([data[i] for i in range(start, min(n, start + batch))])
        b = len(tokens["observation"])
        second = loss_mask(layout, "alternating", b, device)
        swapped = torch.roll(torch.arange(b), 1)
        for task, key, swap_key, gain_key in ((TASK_GEN, "val_nll_image", "camera", "val_image_gain_camera"),
                                              (TASK_EST, "val_nll_camera", "image", "val_camera_gain_image")):
            tasks = torch.full((b,), task)
            inp, tgt, mask = batch_from_tokens(model_cfg, tokens, tasks, no_drop[:b], "joint", device)
            with autocast_for(device, cfg):
                if task == TASK_EST and model_cfg.pose_head:
                    logits, readout = model(inp, return_heads=True)
                    rel = tokens["rel_w2c"].double()
                    errors.append(rotation_error_deg(rotation_from_covariance(readout.rotation.double().cpu()),
                                                     rel[:, :3, :3]))
                    if readout.center is not None:
                        miss = readout.center.double().cpu() - camera_center(rel)
                        center_errors.append(miss.norm(dim=1).numpy())
                elif task == TASK_GEN and model_cfg.view_head:
                    logits, readout = model(inp, return_heads=True)
                    view_nll += float(view_aux_loss(readout.view_logits, tokens["image"],
                                                    torch.ones(b, dtype=torch.bool))) * b
                else:
                    logits = model(inp)
            own_logits, own_tgt = logits, tgt
            sums["val_loss"] += 0.5 * float(masked_cross_entropy(logits, tgt, mask)) * b
            nll = float(masked_cross_entropy(logits, tgt, second))
            sums[key] += nll * b
            if b > 1:  # the condition of another pair: a single-pair batch has none to swap in
                other = {**tokens, swap_key: tokens[swap_key][swapped]}
                inp, tgt, _ = batch_from_tokens(model_cfg, other, tasks, no_drop[:b], "joint", device)
                with autocast_for(device, cfg):
                    logits = model(inp)
                sums[gain_key] += (float(masked_cross_entropy(logits, tgt, second)) - nll) * b
            if task == TASK_GEN and "sibling_camera" in tokens and bool(tokens["has_sibling"].any()):
                rows = torch.nonzero(tokens["has_sibling"]).flatten()
                k = len(rows)
                own = float(masked_cross_entropy(own_logits[rows.to(device)], own_tgt[rows.to(device)],
                                                 second[:k]))
                sib = {"observation": tokens["observation"][rows], "image": tokens["image"][rows],
                       "camera": tokens["sibling_camera"][rows]}
                inp, tgt, _ = batch_from_tokens(model_cfg, sib, tasks[:k], no_drop[:k], "joint", device)
                with autocast_for(device, cfg):
                    logits = model(inp)
                sibling_sum += (float(masked_cross_entropy(logits, tgt, second[:k])) - own) * k
                sibling_count += k
        count += b
        swapped_count += b if b > 1 else 0
    model.train(was)
    out = {k: v / max(swapped_count if "gain" in k else count, 1) for k, v in sums.items()}
    if sibling_count:
        out["val_image_gain_sibling_camera"] = sibling_sum / sibling_count
    if errors:
        out["val_pose_head_rra15"] = accuracy_at(np.concatenate(errors), (15.0,))[15.0]
    if model_cfg.view_head:
        out["val_view_head_nll"] = view_nll / max(count, 1)
    if center_errors:
        out["val_center_head_err"] = float(np.mean(np.concatenate(center_errors)))
    return out


# ------------------------------------------------------------------ export

def export_model_dir(out: Path, model: torch.nn.Module, model_cfg: GSTConfig, cfg: TrainConfig,
                     manifest: dict, step: int) -> Path:
    """Write the engine's model directory: out/gst (this transformer) and the two tokenizers
    copied from cfg.image_tokenizer / cfg.camera_tokenizer (default: the shards' manifest)."""
    out = Path(out)
    save_model_dir(out / "gst", "gst", model_cfg, model.state_dict(),
                   extra={"trained_steps": int(step), "objective": cfg.objective, "shards": cfg.shards})
    meta = manifest.get("metadata", {})
    copied = []
    for sub, path in (("image_tokenizer", cfg.image_tokenizer or meta.get("image_tokenizer", "")),
                      ("camera_tokenizer", cfg.camera_tokenizer or meta.get("camera_tokenizer", ""))):
        if path and Path(path).is_dir():
            if Path(path).resolve() != (out / sub).resolve():
                shutil.copytree(path, out / sub, dirs_exist_ok=True)
            copied.append(sub)
    card = [f"# GST model ({model_cfg.dim}-dim, {model_cfg.n_layer} layers)", "",
            f"- trained steps: {step}, objective: {cfg.objective}, global batch {cfg.batch_size}",
            f"- token grid {model_cfg.grid[0]}x{model_cfg.grid[1]}, image vocab {model_cfg.image_vocab}, "
            f"camera vocab {model_cfg.camera_vocab}", f"- training shards: {cfg.shards}",
            f"- tokenizers included: {', '.join(copied) or 'none (copy them in before use)'}"]
    (out / "model_card.md").write_text("\n".join(card) + "\n")
    return out


# ------------------------------------------------------------------ training

def train(cfg: TrainConfig, out, progress: bool = True, export: bool = True) -> dict:
    """Train (or resume) into `out`. Returns {"step", "loss", "grad_norm", "out", "model_dir", ...}."""
    out = Path(out)
    info = D.init_distributed()
    try:
        return _train(cfg, out, info, progress, export)
    finally:
        D.cleanup(info)


def _say(info: D.DistInfo, msg: str) -> None:
    if info.is_main:
        print(msg, file=sys.stderr, flush=True)


def _train(cfg: TrainConfig, out: Path, info: D.DistInfo, progress: bool, export: bool) -> dict:
    if not cfg.shards:
        raise TrainingInputError("train_gst: no training shards given (config `shards` or --shards)")
    if cfg.batch_size % (info.world_size * cfg.grad_accum):
        raise TrainingInputError(f"global batch {cfg.batch_size} must divide by world size x grad_accum "
                                 f"({info.world_size} x {cfg.grad_accum})")
    device = D.device_for(info, cfg.device)
    data = TokenShardDataset(cfg.shards, siblings=cfg.camera_contrast_weight > 0)
    manifest = data.manifest
    init_config, init_state, init_desc = load_init(cfg, manifest)
    model_cfg = build_model_config(cfg, manifest, init_config)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every run
    model = GST(model_cfg)
    if init_state is not None:
        load_state_dict_strict(model, init_state_with_new_heads(model, init_state), cfg.init_from)
        _say(info, f"initialised from {init_desc}")
        for kind in refresh_codebooks(model, manifest, cfg):
            _say(info, f"{kind} codebook features replaced by the codebook of the tokenizer the shards were "
                       f"made with (it differs from the one {cfg.init_from} was trained with)")
    elif not (out / CHECKPOINT).is_file():
        features = (model_cfg.image_code_dim > 0, model_cfg.camera_code_dim > 0)
        if cfg.codebook_embedding_init and any(features):
            raise TrainingInputError("codebook_embedding_init and codebook features (image_code_dim / "
                                     "camera_code_dim) both give the model the tokenizers' codebooks: "
                                     "use one")
        wanted = features if any(features) else (cfg.codebook_embedding_init,) * 2
        image_book = tokenizer_codebook("image", manifest, cfg.image_tokenizer) if wanted[0] else None
        camera_book = tokenizer_codebook("camera", manifest, cfg.camera_tokenizer) if wanted[1] else None
        if any(features):
            model.set_codebooks(image_book, camera_book)
            _say(info, "codebook features set from the tokenizers' codebooks")
        elif cfg.codebook_embedding_init:
            codebook_embedding_init(model, image_book, camera_book, seed=cfg.seed)
            _say(info, "code embeddings seeded from the tokenizers' codebooks")
    trainable = freeze_for_training(model, cfg.train_modules)
    check_module_names(model, cfg.module_lr_scale, "module_lr_scale")
    heads_only = bool(cfg.train_modules) and set(cfg.train_modules) <= set(READOUT_HEADS)
    prefix_len = 2 * model_cfg.layout.n + 1  # [o, task, first segment]: what the heads read
    if cfg.train_modules:
        if cfg.strategy == "fsdp":
            raise TrainingInputError("train_modules (a partly frozen model) is not supported with strategy "
                                     "fsdp")
        _say(info, f"training only {cfg.train_modules} ({len(trainable)} tensors); the rest is frozen")
    model.to(device)
    if cfg.precision == "bf16" and device.type != "cuda":
        _say(info, "precision bf16 needs CUDA: this CPU run trains in fp32")
    wrapped = D.wrap_model(model, cfg.strategy, info, device, TransformerBlock,
                           bf16=cfg.precision == "bf16" and device.type == "cuda")
    opt = make_optimizer(wrapped, cfg, device)
    views = {"gst": D.FullStateView(wrapped, "model")}
    opt_views = {"adamw": D.FullStateView(wrapped, "optim", opt)}
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    start = 0
    if ckpt.is_file():
        same_run = lambda extra: check_resumable(extra.get("config"), cfg, ckpt)
        start, _ = load_training_state(ckpt, views, opt_views, check_extra=same_run)
        _say(info, f"resumed from {ckpt} at step {start}")
        if start >= cfg.max_steps:
            _say(info, f"{ckpt} is at step {start} and max_steps is {cfg.max_steps}: nothing left to train "
                       f"(raise max_steps, or --steps, to continue)")
    log = CSVLogger(out / LOG) if info.is_main else None
    if log is not None:
        log.truncate_after(start)
    tb = None
    if cfg.tensorboard and info.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            _say(info, "tensorboard is not installed: logging to CSV only")
    val = TokenShardDataset(cfg.val_shards, siblings=True) if cfg.val_shards else None
    if val is not None and len(val) == 0:   # its losses would be logged as 0: a perfect model
        raise TrainingInputError(f"the validation shards {cfg.val_shards} hold no pairs (an empty held-out "
                                 f"split?): give other val_shards, or none")
    _say(info, f"GST {count_parameters(model) / 1e6:.2f}M parameters, {len(data)} training pairs, "
               f"objective {cfg.objective}, global batch {cfg.batch_size} = {info.world_size} rank(s) x "
               f"{cfg.grad_accum} micro-steps, device {device}")

    identity = None
    if cfg.identity_pair_prob > 0:
        from gst_ros.models.tokenizer import CameraTokenizer

        meta = manifest.get("metadata", {})
        path = cfg.camera_tokenizer or meta.get("camera_tokenizer", "")
        if not path or not Path(path).is_dir() or "image_size" not in meta:
            raise TrainingInputError(f"identity_pair_prob needs the camera tokenizer the shards were made "
                                     f"with (no model directory at {path!r}; set camera_tokenizer) and the "
                                     f"shards' image_size (manifest metadata)")
        identity = IdentityPairs(CameraTokenizer.from_dir(path), meta["image_size"])
    sampler = StepBatches(len(data), cfg, info, start)
    # own generator: starting a DataLoader iterator must not draw from the global RNG that the
    # dropouts use (else a resumed run's dropout masks would shift by one draw)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=cfg.num_workers, generator=torch.Generator())
    micro = cfg.batch_size // (info.world_size * cfg.grad_accum)
    rs = D.rank_slice(cfg.batch_size, info)
    tokens_per_step = cfg.batch_size * (model_cfg.layout.seq_len - 1)
    wrapped.train()
    it = iter(loader)
    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, desc="train gst",
               disable=not (progress and info.is_main), dynamic_ncols=True)
    result = {"step": start, "loss": float("nan"), "grad_norm": float("nan")}
    t_last, steps_since = time.perf_counter(), 0
    for step in bar:
        lr = lr_at(step, cfg)
        set_lr(opt, lr)
        tasks, dropped = step_draws(cfg, step)
        noise_gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 1024 + info.rank)
        tasks, dropped = tasks[rs], dropped[rs]
        copies = identity_draws(cfg, step)[rs] if identity is not None else None
        loss_sum = torch.zeros((), device=device)
        aux_sum = torch.zeros((), device=device)
        center_sum = torch.zeros((), device=device)
        view_sum = torch.zeros((), device=device)
        contrast_sum = torch.zeros((), device=device)
        for k in range(cfg.grad_accum):
            tokens = next(it)
            sl = slice(k * micro, (k + 1) * micro)
            if copies is not None:
                tokens = identity.apply(tokens, copies[sl])
            inp, tgt, mask = batch_from_tokens(model_cfg, tokens, tasks[sl], dropped[sl], cfg.objective,
                                               device)
            inp = noise_second_segment(model_cfg.vocabulary, model_cfg.layout, inp, tasks[sl],
                                       cfg.target_token_noise, noise_gen)
            with D.no_sync(wrapped, skip=k < cfg.grad_accum - 1):
                weights = (None if cfg.camera_loss_weight == 1.0 else
                           camera_token_weights(model_cfg.vocabulary, tgt, cfg.camera_loss_weight))
                with autocast_for(device, cfg):
                    if cfg.pose_aux_weight > 0 or cfg.center_aux_weight > 0 or cfg.view_aux_weight > 0:
                        # training only read-out heads: no token loss, the pass stops at the first segment
                        seq = inp[:, :prefix_len] if heads_only else inp
                        logits, readout = wrapped(seq, return_heads=True)
                        use = ((tasks[sl] == TASK_EST) & ~dropped[sl]).to(device)
                        rel_w2c = tokens["rel_w2c"].to(device)
                        aux = torch.zeros((), device=device)  # every head present is touched (DDP)
                        if readout.rotation is not None:
                            p_aux = cfg.pose_aux_weight * pose_aux_loss(readout.rotation, rel_w2c, use)
                            aux_sum += p_aux.detach() / cfg.grad_accum
                            aux = aux + p_aux
                        if cfg.center_aux_weight > 0:
                            c_aux = cfg.center_aux_weight * center_aux_loss(
                                readout.center, readout.center_log_var, rel_w2c, use)
                            center_sum += c_aux.detach() / cfg.grad_accum
                            aux = aux + c_aux
                        if readout.view_logits is not None:
                            gen = ((tasks[sl] == TASK_GEN) & ~dropped[sl]).to(device)
                            v_aux = cfg.view_aux_weight * view_aux_loss(readout.view_logits,
                                                                        tokens["image"], gen)
                            view_sum += v_aux.detach() / cfg.grad_accum
                            aux = aux + v_aux
                    else:
                        logits, aux = wrapped(inp), 0.0
                    ce = (torch.zeros((), device=device) if heads_only
                          else masked_cross_entropy(logits, tgt, mask, weights))
                    if cfg.camera_contrast_weight > 0 and not heads_only:
                        ctr = camera_contrast_loss(wrapped, model_cfg, tokens, inp, tgt, logits,
                                                   (tasks[sl] == TASK_GEN) & ~dropped[sl], cfg.objective)
                        contrast_sum += ctr.detach() / cfg.grad_accum
                        aux = aux + cfg.camera_contrast_weight * ctr
                    loss = (ce + aux) / cfg.grad_accum
                loss.backward()
            loss_sum += ce.detach() / cfg.grad_accum
        grad_norm = D.clip_grad_norm(wrapped, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps_since += 1
        done = step + 1
        loss_v = float(D.mean_over_ranks(loss_sum, info))
        result.update(step=done, loss=loss_v, grad_norm=float(grad_norm))
        if not math.isfinite(loss_v):
            raise FloatingPointError(f"loss became {loss_v} at step {done}; lower lr or check the data")
        row = None
        if done % cfg.log_every == 0 or done == cfg.max_steps or done == start + 1:
            now = time.perf_counter()
            row = {"step": done, "loss": loss_v, "grad_norm": float(grad_norm), "lr": lr,
                   "tokens_per_s": tokens_per_step * steps_since / max(now - t_last, 1e-9)}
            if cfg.pose_aux_weight > 0:
                row["pose_aux"] = float(D.mean_over_ranks(aux_sum, info)) / cfg.pose_aux_weight
            if cfg.center_aux_weight > 0:
                row["center_aux"] = float(D.mean_over_ranks(center_sum, info)) / cfg.center_aux_weight
            if cfg.view_aux_weight > 0:
                row["view_aux"] = float(D.mean_over_ranks(view_sum, info)) / cfg.view_aux_weight
            if cfg.camera_contrast_weight > 0:
                row["camera_contrast"] = float(D.mean_over_ranks(contrast_sum, info))
            t_last, steps_since = now, 0
            bar.set_postfix(loss=f"{loss_v:.4f}", gnorm=f"{float(grad_norm):.3f}", lr=f"{lr:.2e}")
        if val is not None and ((cfg.val_every and done % cfg.val_every == 0) or done == cfg.max_steps):
            vals = validation_losses(wrapped, model_cfg, val, cfg, device, max(micro, 1))
            result.update(vals)
            row = {**(row or {"step": done}), **vals}
        if row is not None and log is not None:
            log.log(**row)
            if tb is not None:
                for k, v in row.items():
                    if k != "step":
                        tb.add_scalar(k, v, done)
        if done % cfg.ckpt_every == 0 or done == cfg.max_steps:
            _checkpoint(ckpt, done, views, opt_views, cfg, model_cfg, info)
        if export and cfg.export_every and done % cfg.export_every == 0 and done != cfg.max_steps:
            _export(out / MODEL_DIR, wrapped, views["gst"], model_cfg, cfg, manifest, done, info)
    bar.close()
    if export:
        _export(out / MODEL_DIR, wrapped, views["gst"], model_cfg, cfg, manifest, result["step"], info)
        result["model_dir"] = str(out / MODEL_DIR)
    D.barrier(info)
    if tb is not None:
        tb.close()
    result["out"] = str(out)
    return result


def _export(directory: Path, wrapped, view, model_cfg: GSTConfig, cfg: TrainConfig, manifest: dict, step: int,
            info: D.DistInfo) -> None:
    """Export the model directory from rank 0 (under FSDP all ranks gather the full state first)."""
    full = view.state_dict() if D.is_fsdp(wrapped) else None
    if info.is_main:
        plain = D.unwrap(wrapped)
        if full is not None:  # the sharded module cannot be saved as is: a plain copy can
            plain = GST(model_cfg)
            plain.load_state_dict(full)
        export_model_dir(directory, plain, model_cfg, cfg, manifest, step)


def _checkpoint(path: Path, step: int, views: dict, opt_views: dict, cfg: TrainConfig, model_cfg: GSTConfig,
                info: D.DistInfo) -> None:
    """Atomic checkpoint by rank 0 (FSDP: every rank takes part in gathering the full state)."""
    if info.is_main:
        save_training_state(path, step, views, opt_views,
                            extra={"config": _jsonable(dataclasses.asdict(cfg)),
                                   "gst_config": _jsonable(dataclasses.asdict(model_cfg))})
    elif D.is_fsdp(views["gst"].model):
        views["gst"].state_dict()
        opt_views["adamw"].state_dict()
    D.barrier(info)


# settings a resumed run may change: how long it runs, what it logs, where and on what it runs;
# not what each step computes
RESUME_MAY_CHANGE = frozenset({
    "max_steps", "log_every", "ckpt_every", "val_every", "val_batches", "val_shards", "export_every",
    "num_workers", "tensorboard", "device", "strategy", "precision", "init_from", "init_kind",
    "codebook_embedding_init", "image_tokenizer", "camera_tokenizer"})


def check_resumable(stored: dict | None, cfg: TrainConfig, ckpt: Path) -> None:
    """ValueError listing every setting that differs between the run that wrote `ckpt` (its stored
    config; None for a checkpoint from before configs were stored: not checked) and `cfg`, other
    than RESUME_MAY_CHANGE: a resumed run must draw the same batches and take the same steps as
    one that was never interrupted. The shards are compared as resolved paths. A longer max_steps
    stretches the learning-rate schedule from the resumed step on."""
    if not stored:
        return
    now = _jsonable(dataclasses.asdict(cfg))
    same_path = lambda a, b: bool(a) == bool(b) and (not a or Path(a).resolve() == Path(b).resolve())
    changed = [f"{k} {stored[k]!r} -> {v!r}" for k, v in now.items()
               if k in stored and k not in RESUME_MAY_CHANGE
               and not (same_path(stored[k], v) if k == "shards" else stored[k] == v)]
    if changed:
        raise TrainingInputError(f"{ckpt} was written by a run with other settings ({'; '.join(changed)}): "
                                 f"resume it with the same ones, or train into a new --out (--init-from "
                                 f"{ckpt.parent / MODEL_DIR / 'gst'} starts from its weights under new "
                                 f"settings)")


def _jsonable(d: dict) -> dict:
    """Config values as plain str/int/float/bool/list (torch.load(weights_only=True) reads them)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _jsonable(v)
        elif isinstance(v, tuple):
            out[k] = list(v)
        else:
            out[k] = v
    return out


def export_from_checkpoint(cfg: TrainConfig, out) -> Path:
    """Export out/model from out/checkpoint.pt without training (the --export-only path)."""
    out = Path(out)
    payload = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
    manifest = TokenShardDataset(cfg.shards).manifest if cfg.shards else {"metadata": {}}
    model_cfg = config_from_dict(GSTConfig, payload["extra"]["gst_config"])
    model = GST(model_cfg)
    load_state_dict_strict(model, payload["modules"]["gst"], str(out / CHECKPOINT))
    return export_model_dir(out / MODEL_DIR, model, model_cfg, cfg, manifest, int(payload["step"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.train_gst", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML file of TrainConfig fields")
    ap.add_argument("--out", required=True, help="run directory (resumes when it holds a checkpoint)")
    ap.add_argument("--shards", default=None, help="training token shards (overrides the config)")
    ap.add_argument("--val-shards", default=None, help="held-out token shards")
    ap.add_argument("--steps", type=int, default=None, help="max_steps override")
    ap.add_argument("--init-from", default=None, help="GST model dir or LlamaGen/GST .pt to start from")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config field")
    ap.add_argument("--export-only", action="store_true",
                    help="export out/model from the checkpoint and exit")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        over = {"shards": args.shards, "val_shards": args.val_shards, "max_steps": args.steps,
                "init_from": args.init_from, **parse_set(args.set)}
        cfg = load_config(args.config, over)
        if args.export_only:
            print(export_from_checkpoint(cfg, args.out))
            return 0
        res = train(cfg, args.out, progress=not args.no_progress)
    except (TrainingInputError, ShardFormatError, ModelFormatError, TrainingCheckpointError, OSError) as e:
        print(f"train_gst: {e}", file=sys.stderr)
        return 2
    if "model_dir" in res:
        loss = f"loss {res['loss']:.4f}; " if math.isfinite(res["loss"]) else ""
        print(f"step {res['step']}: {loss}model directory {res['model_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
