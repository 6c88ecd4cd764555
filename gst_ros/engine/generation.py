"""Sampling from the GST and the four tasks, on token tensors.

Every task builds a prefix [observation, task token, (given segment)] with
gst_ros.models.sequence, prefills it in one forward pass into a preallocated KV cache, then
decodes one token per step. Inside a camera segment only camera codes can be drawn, inside an
image segment only image codes (the other logits are masked to -inf before top-k / top-p).

Tokens in and out are token grids flattened row-major, (B, n) with n = grid_h * grid_w:
image codes in [0, image_vocab), camera codes in [0, camera_vocab) WITHOUT the vocabulary offset.

    estimate_pose(model, obs, image)        [o, <EST>, i] -> c      p(c | i, o)
    novel_view(model, obs, camera)          [o, <GEN>, c] -> i      p(i | c, o)
    propose_cameras(model, obs)             [o, <GEN>]    -> c (, i) p(c | o) (then p(i | c, o))
    unconditional_view(model, obs)          [o, <EST>]    -> i      p(i | o)
    pose_readout(model, obs, image)         [o, <EST>, i] -> R, C   the read-out heads (no sampling)

Classifier-free guidance (LlamaGen style): the batch is doubled as [cond; null] with the null
condition = the observation replaced by token 0; logits = u + s (c - u), computed as
s c + (1 - s) u so that s = 1 gives the conditional logits exactly; the token drawn is fed to both
halves. cfg_scale=None (GST's default) runs the plain conditional batch.
Sampling is reproducible: pass a seeded torch.Generator (on the model's device).
To draw several samples per observation, repeat the observation rows (repeat_interleave).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gst_ros.geometry.conventions import center_facing_scene
from gst_ros.geometry.rotations import rotation_from_covariance
from gst_ros.models.sequence import TASK_EST, TASK_GEN, build_prefix, null_condition
from gst_ros.models.transformer import GST, HeadReadout


@dataclass
class SamplingConfig:
    temperature: float = 1.0   # 0 = greedy (argmax over the legal codes)
    top_k: int | None = 100    # GST default 100; None or 0 = off
    top_p: float | None = None  # nucleus sampling; None or 1.0 = off
    cfg_scale: float | None = None  # classifier-free guidance scale; None = off (GST default)

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 or None, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")


def sample_logits(logits: torch.Tensor, allowed: torch.Tensor, sampling: SamplingConfig,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one id per row. logits (B, V), allowed (V,) bool: ids that may be drawn.
    Order: restrict to allowed ids, temperature, top-k, top-p, multinomial."""
    logits = logits.float().masked_fill(~allowed, float("-inf"))
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    if sampling.top_k:
        k = min(int(sampling.top_k), int(allowed.sum()))
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = (torch.cumsum(probs, dim=-1) - probs) > sampling.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def generate_segments(model: GST, prefix: torch.Tensor, kinds: Sequence[str],
                      sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
                      use_kv_cache: bool = True, progress: bool = False) -> torch.Tensor:
    """Sample len(kinds) segments of n tokens after `prefix`.

    prefix: (B, P) shared-vocabulary ids starting with the observation (sequence index 0);
    kinds: the kind ("image" / "camera") of each segment to generate, in order.
    Returns (B, len(kinds) * n) shared-vocabulary ids (camera ids still carry the offset).
    use_kv_cache=False recomputes the whole prefix every step (reference / benchmark path).
    When every row's prefix is the same (several samples of one query), the prefix is prefilled
    once and its KV cache repeated to the B rows."""
    cfg = model.config
    vocab, layout = cfg.vocabulary, cfg.layout
    sampling = sampling or SamplingConfig()
    if prefix.ndim != 2:
        raise ValueError(f"prefix must be (B, P) ids, got shape {tuple(prefix.shape)}")
    b, p = prefix.shape
    total = layout.n * len(kinds)
    if p < layout.n + 1 or p + total > layout.seq_len:
        raise ValueError(f"prefix of {p} tokens + {total} to generate does not fit the layout "
                         f"(observation {layout.n} + task token, at most {layout.seq_len} tokens)")
    device = model.output.weight.device
    allowed = [vocab.segment_logit_mask(k, device) for k in kinds]
    use_cfg = sampling.cfg_scale is not None
    rows = torch.cat([prefix, null_condition(prefix, layout)]) if use_cfg else prefix
    shared = use_kv_cache and not use_cfg and b > 1 and bool((prefix == prefix[:1]).all())
    seq = torch.empty(rows.shape[0], p + total, dtype=torch.long, device=device)
    seq[:, :p] = rows.to(device)
    out = torch.empty(b, total, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    steps = range(total)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="sampling", unit="tok")
    try:
        with torch.inference_mode():
            if use_kv_cache:
                # the last draw is never fed
                model.setup_caches(1 if shared else rows.shape[0], max_seq_len=p + total - 1)
            for step in steps:
                pos = p + step  # sequence index of the token drawn now
                if not use_kv_cache:
                    logits = model(seq[:, :pos])[:, -1]
                elif step == 0:
                    first = seq[:1, :p] if shared else seq[:, :p]
                    logits = model(first, input_pos=torch.arange(p, device=device))[:, -1]
                    if shared:
                        model.repeat_caches(b)
                        logits = logits.expand(b, -1)
                else:
                    last = torch.tensor([pos - 1], device=device)
                    logits = model(seq[:, pos - 1: pos], input_pos=last)[:, 0]
                if use_cfg:
                    cond, uncond = logits.chunk(2)
                    s = float(sampling.cfg_scale)
                    logits = s * cond + (1.0 - s) * uncond
                tok = sample_logits(logits, allowed[step // layout.n], sampling, generator)
                out[:, step] = tok
                seq[:, pos] = torch.cat([tok, tok]) if use_cfg else tok
    finally:
        model.clear_caches()
        model.train(was_training)
    return out


def segment_log_likelihood(model: GST, prefix: torch.Tensor, segment: torch.Tensor,
                           kind: str) -> torch.Tensor:
    """(B,) log p(segment | prefix) in nats under the model: one teacher-forced pass over
    [prefix, segment], each token's probability taken among the codes legal in a segment of
    `kind` ("image" / "camera"), as in sampling, at temperature 1 with no top-k / top-p.
    prefix: (B, P) shared-vocabulary ids from sequence index 0; segment: (B, n) shared-vocabulary
    ids (camera ids with the offset)."""
    if segment.ndim != 2 or segment.shape[0] != prefix.shape[0]:
        raise ValueError(f"segment must be (B, n) with the prefix's batch {prefix.shape[0]}, got "
                         f"{tuple(segment.shape)}")
    device = model.output.weight.device
    seq = torch.cat([prefix, segment], dim=1).to(device)
    allowed = model.config.vocabulary.segment_logit_mask(kind, device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(seq[:, :-1])[:, prefix.shape[1] - 1:]
    finally:
        model.train(was_training)
    logp = logits.float().masked_fill(~allowed, float("-inf")).log_softmax(dim=-1)
    return logp.gather(-1, seq[:, prefix.shape[1]:, None])[..., 0].sum(dim=-1)


def pose_log_likelihood(model: GST, observation: torch.Tensor, image: torch.Tensor,
                        camera: torch.Tensor) -> torch.Tensor:
    """(B,) log p(c | i, o) of raw camera codes `camera` (B, n) given the observation and target
    image codes (B, n each): how likely the model finds that camera for the target view."""
    vocab, layout = model.config.vocabulary, model.config.layout
    prefix = build_prefix(vocab, layout, observation, TASK_EST, given=image)
    return segment_log_likelihood(model, prefix, vocab.camera_to_ids(camera.to(prefix.device)), "camera")


def estimate_pose(model: GST, observation: torch.Tensor, image: torch.Tensor,
                  sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
                  **kw) -> torch.Tensor:
    """Pose estimation [o, <EST>, i] -> camera codes (B, n) in [0, camera_vocab) of the target
    camera expressed relative to the observed camera. observation, image: (B, n) image codes."""
    vocab, layout = model.config.vocabulary, model.config.layout
    prefix = build_prefix(vocab, layout, observation, TASK_EST, given=image)
    ids = generate_segments(model, prefix, ["camera"], sampling, generator, **kw)
    return vocab.ids_to_camera(ids)


def pose_readout(model: GST, observation: torch.Tensor, image: torch.Tensor,
                 symmetric: bool = False) -> HeadReadout:
    """The read-out heads' outputs (HeadReadout, fp32 on the CPU) for one teacher-forced pass over
    [o, <EST>, i]: the pose head's unconstrained 3x3 estimate of the target camera's rotation in
    the observation's camera frame (w2c convention, x_target = R x_observation + t, OpenCV axes;
    its nearest rotation, gst_ros.geometry.rotations.rotation_from_covariance, is the estimate)
    and, for a model with a centre head, the target camera's centre in that frame (unit scene
    scale) with its log-variances. Deterministic: no sampling. observation, image: (B, n) image
    codes. ValueError for a model without a pose head.

    symmetric: also read the swapped pair [i, <EST>, o] in the same batch, which estimates the
    inverse rotation, and average the two estimates of E[R]: rotation = (M + M_swapped^T) / 2
    (where the two disagree, the average shrinks, so the predicted spread grows). The centre
    keeps the forward pass's correction on the object-centric placement of the averaged
    rotation (gst_ros.geometry.center_facing_scene) and its log-variances."""
    if model.pose_head is None:
        raise ValueError("this GST has no pose head (GSTConfig.pose_head=False): read the pose from "
                         "sampled camera tokens instead")
    vocab, layout = model.config.vocabulary, model.config.layout
    if symmetric:
        both = pose_readout(model, torch.cat([observation, image]), torch.cat([image, observation]))
        b = observation.shape[0]
        forward, swapped = (HeadReadout(*(None if t is None else t[sl] for t in both))
                            for sl in (slice(0, b), slice(b, None)))
        rotation = 0.5 * (forward.rotation + swapped.rotation.transpose(1, 2))
        if forward.center is None:
            return HeadReadout(rotation)
        correction = forward.center - center_facing_scene(rotation_from_covariance(forward.rotation))
        return HeadReadout(rotation, center_facing_scene(rotation_from_covariance(rotation)) + correction,
                           forward.center_log_var)
    prefix = build_prefix(vocab, layout, observation, TASK_EST, given=image)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            readout = model.read_heads(prefix.to(model.output.weight.device), with_view_head=False)
    finally:
        model.train(was_training)
    return HeadReadout(*(None if t is None else t.float().cpu() for t in readout))


# x -> -x in a camera's optical frame: what flipping an image left-right does to the scene it shows
MIRROR_X = (-1.0, 1.0, 1.0)


def mirror_readout(readout: HeadReadout) -> HeadReadout:
    """A read-out of a left-right mirrored pair (both images flipped) mapped back to the pair
    itself. Flipping an image left-right shows the scene reflected by F = diag(-1, 1, 1) in the
    camera's optical frame (OpenCV axes); for the pair, world = the observation camera's frame, so
    a target camera (R, C) (w2c rotation, centre) becomes (F R F, F C). F is its own inverse, so
    the same map takes the mirrored estimate back: rotation F M F, centre F C; the per-axis
    log-variances are unchanged (F only flips x's sign)."""
    f = torch.tensor(MIRROR_X, dtype=readout.rotation.dtype, device=readout.rotation.device)
    rotation = readout.rotation * f[:, None] * f[None, :]
    center = None if readout.center is None else readout.center * f
    return HeadReadout(rotation, center, readout.center_log_var)


def mirror_averaged_readout(model: GST, observation: torch.Tensor, image: torch.Tensor,
                            observation_mirrored: torch.Tensor, image_mirrored: torch.Tensor,
                            symmetric: bool = False) -> HeadReadout:
    """pose_readout of the pair (observation, image) averaged with that of its left-right mirror
    image (the codes of both images flipped left-right), read in one batch and mapped back with
    mirror_readout. Conventions as pose_readout: rotation = the mean of the two estimates of E[R]
    (w2c, observation camera frame, OpenCV axes); the centre = the object-centric placement of
    that mean rotation plus the mean of the two centre heads' corrections (unit scene scale);
    log-variances = the log of the two variances' mean. Averaging over the mirror cancels a
    model's left-right bias; where the two disagree the mean rotation shrinks, so the predicted
    spread grows. All tensors (B, n) image codes."""
    b = observation.shape[0]
    both = pose_readout(model, torch.cat([observation, observation_mirrored]),
                        torch.cat([image, image_mirrored]), symmetric)
    direct = HeadReadout(*(None if t is None else t[:b] for t in both))
    mirrored = mirror_readout(HeadReadout(*(None if t is None else t[b:] for t in both)))
    rotation = 0.5 * (direct.rotation + mirrored.rotation)
    if direct.center is None:
        return HeadReadout(rotation)
    correction = 0.5 * sum(r.center - center_facing_scene(rotation_from_covariance(r.rotation))
                           for r in (direct, mirrored))
    log_var = torch.logaddexp(direct.center_log_var, mirrored.center_log_var) - math.log(2.0)
    center = center_facing_scene(rotation_from_covariance(rotation)) + correction
    return HeadReadout(rotation, center, log_var)


def novel_view(model: GST, observation: torch.Tensor, camera: torch.Tensor,
               sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
               **kw) -> torch.Tensor:
    """Novel view synthesis [o, <GEN>, c] -> image codes (B, n) of the view from camera c.
    observation: (B, n) image codes; camera: (B, n) raw camera codes (no offset)."""
    vocab, layout = model.config.vocabulary, model.config.layout
    prefix = build_prefix(vocab, layout, observation, TASK_GEN, given=camera)
    return generate_segments(model, prefix, ["image"], sampling, generator, **kw)


def propose_cameras(model: GST, observation: torch.Tensor, sampling: SamplingConfig | None = None,
                    generator: torch.Generator | None = None, with_views: bool = False,
                    **kw) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Camera proposals [o, <GEN>] -> camera codes (B, n) drawn from p(c|o), and with
    with_views=True also the image codes (B, n) of each proposed view (same pass, p(i|c,o));
    otherwise None for the views."""
    vocab, layout = model.config.vocabulary, model.config.layout
    prefix = build_prefix(vocab, layout, observation, TASK_GEN)
    kinds = ["camera", "image"] if with_views else ["camera"]
    ids = generate_segments(model, prefix, kinds, sampling, generator, **kw)
    cams = vocab.ids_to_camera(ids[:, : layout.n])
    return cams, (ids[:, layout.n:] if with_views else None)


def unconditional_view(model: GST, observation: torch.Tensor, sampling: SamplingConfig | None = None,
                       generator: torch.Generator | None = None, **kw) -> torch.Tensor:
    """Unconditional view [o, <EST>] -> image codes (B, n) drawn from p(i|o) (no camera given)."""
    vocab, layout = model.config.vocabulary, model.config.layout
    prefix = build_prefix(vocab, layout, observation, TASK_EST)
    return generate_segments(model, prefix, ["image"], sampling, generator, **kw)
