"""The GST token sequence: shared vocabulary, layout of the two task orders, training targets,
loss masks, condition dropout and the masked cross-entropy. The one place that knows where
every token sits.

Vocabulary (one embedding table for everything, GST section 3 / appendix):

    [0, image_vocab)                               image codes (observation and target view)
    [image_vocab, image_vocab + camera_vocab)      camera codes (camera code + image_vocab)
    image_vocab + camera_vocab                     <GEN>
    image_vocab + camera_vocab + 1                 <EST>

GST's numbers: 16384 image codes + 2048 camera codes + 2 task tokens = 18434.
Tokenizers produce camera codes in [0, camera_vocab); `Vocabulary.camera_to_ids` and
`Vocabulary.ids_to_camera` are the only places that add / remove the offset.

Sequence (n = grid_h * grid_w tokens per segment, row-major over the token grid):

    index:   0 .. n-1      n       n+1 .. 2n      2n+1 .. 3n
    <GEN>:   observation   <GEN>   camera c       target image i      p(c|o) p(i|c,o)
    <EST>:   observation   <EST>   target image i camera c            p(i|o) p(c|i,o)

Training uses the usual shift: input_ids = s[:-1], targets = s[1:] (length 3n), so input
position k predicts sequence token k + 1.
- "joint" objective (GST eq. 5): loss on every token of both segments, i.e. input positions
  k >= n (from the task token onward). Eq. 5 literally starts its sum at the task token, but the
  task is chosen by the caller, never sampled, so it is not a target here.
- "alternating" baseline (paper Table 4): loss on the second segment only (k >= 2n), with all
  samples of a batch on the same task and the task alternating from step to step.
Condition dropout (for classifier-free guidance): the observation of a sample is replaced by the
null condition, token 0 at every observation position (as GST does); targets are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# task codes used in (B,) task tensors
TASK_GEN = 0  # novel view order: camera then image
TASK_EST = 1  # pose estimation order: image then camera
TASK_NAMES = {"gen": TASK_GEN, "est": TASK_EST}
OBJECTIVES = ("joint", "alternating")
NULL_TOKEN = 0  # GST's null condition: the observation replaced by image code 0 everywhere


@dataclass(frozen=True)
class Vocabulary:
    """The shared token vocabulary: image codes, offset camera codes, then <GEN>, <EST>."""

    image_vocab: int
    camera_vocab: int

    def __post_init__(self):
        if self.image_vocab < 1 or self.camera_vocab < 0:
            raise ValueError(f"bad vocabulary sizes: image_vocab={self.image_vocab}, "
                             f"camera_vocab={self.camera_vocab}")

    @property
    def camera_offset(self) -> int:
        return self.image_vocab

    @property
    def gen_token(self) -> int:
        return self.image_vocab + self.camera_vocab

    @property
    def est_token(self) -> int:
        return self.image_vocab + self.camera_vocab + 1

    @property
    def size(self) -> int:
        return self.image_vocab + self.camera_vocab + 2

    def task_token(self, task: int) -> int:
        return self.gen_token if task == TASK_GEN else self.est_token

    def check_image_codes(self, codes: torch.Tensor, what: str = "image tokens") -> None:
        """Raise ValueError unless every entry is an image code in [0, image_vocab)."""
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"{what} must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.image_vocab):
            raise ValueError(f"{what} must lie in [0, {self.image_vocab}), got range "
                             f"[{int(codes.min())}, {int(codes.max())}]")

    def check_camera_codes(self, codes: torch.Tensor, what: str = "camera tokens") -> None:
        """Raise ValueError unless every entry is a raw camera code in [0, camera_vocab)."""
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"{what} must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.camera_vocab):
            raise ValueError(f"{what} must be raw camera codes in [0, {self.camera_vocab}) (without the "
                             f"vocabulary offset), got range [{int(codes.min())}, {int(codes.max())}]")

    def camera_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Raw camera codes [0, camera_vocab) -> shared-vocabulary ids (adds the offset)."""
        self.check_camera_codes(codes)
        return codes.long() + self.camera_offset

    def ids_to_camera(self, ids: torch.Tensor) -> torch.Tensor:
        """Shared-vocabulary camera ids -> raw camera codes (removes the offset)."""
        lo, hi = self.camera_offset, self.camera_offset + self.camera_vocab
        if ids.numel() and (int(ids.min()) < lo or int(ids.max()) >= hi):
            raise ValueError(f"ids are not camera ids in [{lo}, {hi}): range [{int(ids.min())}, "
                             f"{int(ids.max())}]")
        return ids.long() - self.camera_offset

    def segment_logit_mask(self, kind: str, device=None) -> torch.Tensor:
        """(size,) bool, True where a token may be drawn inside a segment of `kind`
        ("image" or "camera")."""
        allowed = torch.zeros(self.size, dtype=torch.bool, device=device)
        if kind == "image":
            allowed[: self.image_vocab] = True
        elif kind == "camera":
            allowed[self.camera_offset: self.camera_offset + self.camera_vocab] = True
        else:
            raise ValueError(f"segment kind must be 'image' or 'camera', got {kind!r}")
        return allowed


@dataclass(frozen=True)
class Layout:
    """Positions of the observation, the task token and the two segments for a token grid."""

    grid_h: int
    grid_w: int

    def __post_init__(self):
        if self.grid_h < 1 or self.grid_w < 1:
            raise ValueError(f"token grid must be at least 1x1, got {self.grid_h}x{self.grid_w}")

    @property
    def n(self) -> int:
        """Tokens per segment (observation, camera, image)."""
        return self.grid_h * self.grid_w

    @property
    def task_index(self) -> int:
        return self.n

    @property
    def seq_len(self) -> int:
        """Full sequence length 3n + 1 (769 for a 16x16 grid)."""
        return 3 * self.n + 1

    @property
    def first_segment(self) -> slice:
        return slice(self.n + 1, 2 * self.n + 1)

    @property
    def second_segment(self) -> slice:
        return slice(2 * self.n + 1, 3 * self.n + 1)

    def grid_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols), each (seq_len,) long: the 2D RoPE position of every sequence index.
        The same row-major grid positions are reused for the observation and both segments; the
        task token gets (0, 0) here (what the model does with it is GSTConfig.task_token_rope)."""
        r = torch.arange(self.grid_h).repeat_interleave(self.grid_w)
        c = torch.arange(self.grid_w).repeat(self.grid_h)
        zero = torch.zeros(1, dtype=torch.long)
        return torch.cat([r, zero, r, r]), torch.cat([c, zero, c, c])

    def segment_ids(self) -> torch.Tensor:
        """(seq_len,) long: the segment of every sequence index, 0 for the observation and the
        task token, 1 for the first segment, 2 for the second."""
        n = self.n
        return torch.cat([torch.zeros(n + 1, dtype=torch.long), torch.ones(n, dtype=torch.long),
                          torch.full((n,), 2, dtype=torch.long)])


def segment_order(task: int | str) -> tuple[str, str]:
    """Kinds of the (first, second) segment for a task: <GEN> camera then image, <EST> image then
    camera."""
    task = _task_code(task)
    return ("camera", "image") if task == TASK_GEN else ("image", "camera")


def _task_code(task) -> int:
    if isinstance(task, str):
        if task not in TASK_NAMES:
            raise ValueError(f"task must be one of {sorted(TASK_NAMES)}, got {task!r}")
        return TASK_NAMES[task]
    if int(task) not in (TASK_GEN, TASK_EST):
        raise ValueError(f"task code must be TASK_GEN ({TASK_GEN}) or TASK_EST ({TASK_EST}), got {task}")
    return int(task)


def task_tensor(task, batch: int, device=None) -> torch.Tensor:
    """(B,) long tensor of task codes from a name ("gen"/"est"), a code, or a (B,) tensor."""
    if isinstance(task, torch.Tensor):
        if task.shape != (batch,):
            raise ValueError(f"task tensor must have shape ({batch},), got {tuple(task.shape)}")
        bad = (task != TASK_GEN) & (task != TASK_EST)
        if bool(bad.any()):
            raise ValueError(f"task codes must be {TASK_GEN} (gen) or {TASK_EST} (est)")
        return task.long().to(device)
    return torch.full((batch,), _task_code(task), dtype=torch.long, device=device)


def _check_grid_tokens(t: torch.Tensor, n: int, what: str) -> torch.Tensor:
    if t.ndim != 2 or t.shape[1] != n:
        raise ValueError(f"{what} must have shape (B, {n}) (a flattened token grid), got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{what} must be an integer tensor, got {t.dtype}")
    return t.long()


def build_prefix(vocab: Vocabulary, layout: Layout, observation: torch.Tensor, task,
                 given: torch.Tensor | None = None) -> torch.Tensor:
    """Inference prefix [o, task, given] (B, n+1) or (B, 2n+1) in shared-vocabulary ids.

    observation: (B, n) image codes. given: the first segment of the task's order or None
    (<GEN>: raw camera codes; <EST>: image codes). The whole batch runs one task."""
    task = _task_code(task)
    obs = _check_grid_tokens(observation, layout.n, "observation tokens")
    vocab.check_image_codes(obs, "observation tokens")
    b = obs.shape[0]
    parts = [obs, torch.full((b, 1), vocab.task_token(task), dtype=torch.long, device=obs.device)]
    if given is not None:
        g = _check_grid_tokens(given, layout.n, "given segment tokens")
        if g.shape[0] != b:
            raise ValueError(f"given segment has batch {g.shape[0]}, observation has {b}")
        if segment_order(task)[0] == "camera":
            g = vocab.camera_to_ids(g)
        else:
            vocab.check_image_codes(g, "given image tokens")
        parts.append(g)
    return torch.cat(parts, dim=1)


def null_condition(prefix: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The same sequence with the observation replaced by the null condition (token 0)."""
    out = prefix.clone()
    out[:, : layout.n] = NULL_TOKEN
    return out


def build_sequence(vocab: Vocabulary, layout: Layout, observation: torch.Tensor, image: torch.Tensor,
                   camera: torch.Tensor, task) -> torch.Tensor:
    """Full sequences (B, 3n+1) in shared-vocabulary ids.

    observation, image: (B, n) image codes; camera: (B, n) raw camera codes (no offset);
    task: "gen"/"est", a task code, or a (B,) tensor of codes mixing both orders."""
    obs = _check_grid_tokens(observation, layout.n, "observation tokens")
    img = _check_grid_tokens(image, layout.n, "image tokens")
    cam = _check_grid_tokens(camera, layout.n, "camera tokens")
    b = obs.shape[0]
    if img.shape[0] != b or cam.shape[0] != b:
        raise ValueError(f"batch sizes differ: observation {b}, image {img.shape[0]}, camera {cam.shape[0]}")
    vocab.check_image_codes(obs, "observation tokens")
    vocab.check_image_codes(img, "image tokens")
    cam_ids = vocab.camera_to_ids(cam)
    tasks = task_tensor(task, b, device=obs.device)
    is_gen = (tasks == TASK_GEN)[:, None]
    first = torch.where(is_gen, cam_ids, img)
    second = torch.where(is_gen, img, cam_ids)
    task_tok = torch.where(tasks == TASK_GEN, vocab.gen_token, vocab.est_token)[:, None]
    return torch.cat([obs, task_tok, first, second], dim=1)


def loss_mask(layout: Layout, objective: str, batch: int = 1, device=None) -> torch.Tensor:
    """(B, 3n) bool mask over the shifted targets: True where the loss counts.
    joint: k >= n (both segments); alternating: k >= 2n (second segment only)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    start = layout.n if objective == "joint" else 2 * layout.n
    k = torch.arange(3 * layout.n, device=device)
    return (k >= start)[None].expand(batch, -1).clone()


@dataclass
class Batch:
    """One training batch. input_ids, targets: (B, 3n) long; loss_mask: (B, 3n) bool;
    tasks: (B,) task codes; dropped: (B,) bool, True where the observation was nulled."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    tasks: torch.Tensor
    dropped: torch.Tensor


def make_batch(vocab: Vocabulary, layout: Layout, observation: torch.Tensor, image: torch.Tensor,
               camera: torch.Tensor, task, objective: str = "joint", cond_drop_prob: float = 0.0,
               generator: torch.Generator | None = None) -> Batch:
    """Training batch from token grids (see the module docstring for the layout).

    observation, image: (B, n) image codes of the observed view and the target view; camera: (B, n)
    raw camera codes of the target camera (relative to the observed one). task: per-sample codes
    (use `sample_tasks`). cond_drop_prob: chance per sample that the observation becomes the null
    condition (GST/LlamaGen use 0.1 when training for CFG)."""
    if not 0.0 <= cond_drop_prob <= 1.0:
        raise ValueError(f"cond_drop_prob must lie in [0, 1], got {cond_drop_prob}")
    seq = build_sequence(vocab, layout, observation, image, camera, task)
    b = seq.shape[0]
    tasks = task_tensor(task, b, device=seq.device)
    if cond_drop_prob > 0:
        u = torch.rand(b, generator=generator, device="cpu" if generator is None else generator.device)
        dropped = (u < cond_drop_prob).to(seq.device)
        seq[:, : layout.n] = torch.where(dropped[:, None], NULL_TOKEN, seq[:, : layout.n])
    else:
        dropped = torch.zeros(b, dtype=torch.bool, device=seq.device)
    return Batch(input_ids=seq[:, :-1].contiguous(), targets=seq[:, 1:].contiguous(),
                 loss_mask=loss_mask(layout, objective, b, seq.device), tasks=tasks, dropped=dropped)


def noise_second_segment(vocab: Vocabulary, layout: Layout, input_ids: torch.Tensor, tasks: torch.Tensor,
                         rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Input ids with teacher-forced tokens of the second segment replaced, each with probability
    `rate`, by a uniformly random code of the same kind (camera codes in <EST> order, image codes
    in <GEN> order); targets are untouched, so the returned ids pair with the same targets.

    input_ids: (B, 3n) shifted inputs (`Batch.input_ids`); tasks: (B,) task codes. The inputs at
    indices 2n+1 .. 3n-1 are the second segment's tokens fed back while it is predicted. Why: with
    clean teacher forcing a camera token is mostly predictable from the camera tokens before it,
    so only the first few need the target image; noise on those inputs makes every camera (and
    image) token lean on the conditions, which is what pose estimation (and novel view synthesis)
    depends on. Inference is unchanged."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must lie in [0, 1], got {rate}")
    if rate == 0.0:
        return input_ids
    n = layout.n
    b = input_ids.shape[0]
    cpu = "cpu" if generator is None else generator.device
    span = slice(2 * n + 1, 3 * n)
    width = n - 1
    hit = (torch.rand(b, width, generator=generator, device=cpu) < rate).to(input_ids.device)
    u = torch.rand(b, width, generator=generator, device=cpu).to(input_ids.device)
    is_est = (tasks.to(input_ids.device) == TASK_EST)[:, None]
    random_camera = vocab.camera_offset + (u * vocab.camera_vocab).long().clamp(max=vocab.camera_vocab - 1)
    random_image = (u * vocab.image_vocab).long().clamp(max=vocab.image_vocab - 1)
    out = input_ids.clone()
    out[:, span] = torch.where(hit, torch.where(is_est, random_camera, random_image), input_ids[:, span])
    return out


def sample_tasks(objective: str, batch: int, step: int = 0, generator: torch.Generator | None = None,
                 p_gen: float = 0.5) -> torch.Tensor:
    """(B,) task codes for one training step.
    joint: both orders mixed in every batch (each sample <GEN> with probability p_gen);
    alternating: the whole batch on one task, <GEN> on even steps and <EST> on odd ones."""
    if objective == "joint":
        u = torch.rand(batch, generator=generator)
        return torch.where(u < p_gen, TASK_GEN, TASK_EST).long()
    if objective == "alternating":
        return torch.full((batch,), TASK_GEN if step % 2 == 0 else TASK_EST, dtype=torch.long)
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def camera_token_weights(vocab: Vocabulary, targets: torch.Tensor, camera_weight: float) -> torch.Tensor:
    """(B, T) float per-target loss weights: `camera_weight` where the target is a camera code, 1
    elsewhere. camera_weight 1 is the paper's plain mean; > 1 gives the camera segment (the pose)
    a larger share of the gradient, which the image segment's much larger NLL otherwise dominates."""
    if not camera_weight > 0:
        raise ValueError(f"camera_weight must be > 0, got {camera_weight}")
    is_camera = (targets >= vocab.camera_offset) & (targets < vocab.gen_token)
    return torch.where(is_camera, float(camera_weight), 1.0)


def sequence_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) fp32 summed next-token cross-entropy (nats) of each sequence over the positions where
    `mask` is True: minus the log-likelihood of that part of the sequence.
    logits: (B, T, V); targets: (B, T) ids; mask: (B, T) bool."""
    if logits.shape[:2] != targets.shape or mask.shape != targets.shape:
        raise ValueError(f"shape mismatch: logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, "
                         f"mask {tuple(mask.shape)}")
    ce = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    return (ce * mask).sum(dim=1)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions where `mask` is True; with `weights`
    (B, T) float, the weighted mean sum(w * ce) / sum(w) over those positions.

    logits: (B, T, V); targets: (B, T) ids; mask: (B, T) bool. Computed in fp32."""
    if logits.shape[:2] != targets.shape or mask.shape != targets.shape:
        raise ValueError(f"shape mismatch: logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, "
                         f"mask {tuple(mask.shape)}")
    m = mask.reshape(-1)
    if not bool(m.any()):
        raise ValueError("loss mask selects no token")
    flat = logits.reshape(-1, logits.shape[-1])[m].float()
    if weights is None:
        return F.cross_entropy(flat, targets.reshape(-1)[m])
    if weights.shape != targets.shape:
        raise ValueError(f"weights must have shape {tuple(targets.shape)}, got {tuple(weights.shape)}")
    w = weights.reshape(-1)[m].float()
    return (F.cross_entropy(flat, targets.reshape(-1)[m], reduction="none") * w).sum() / w.sum()
