"""(observation, target) view pairs for training and evaluation.

PairDataset wraps any reader (a SceneReader or anything whose __getitem__ returns a
MultiViewSample) and, for item `idx`:
1. takes scene idx // pairs_per_scene, seeds an RNG with (seed, epoch, idx): the same item is
   the same pair on every run and every worker; `set_epoch` changes the pairs;
2. picks an ordered pair of distinct views uniformly among those whose angular baseline lies in
   `baseline_deg` = (min, max) (all pairs when None). The angular baseline is the angle of the
   relative rotation between the two cameras, in degrees (gst_ros.geometry.geodesic_angle);
3. decodes both views, centre-crops and resizes them to `size` with K adjusted
   (gst_ros.preprocess.center_crop_resize);
4. expresses the target camera relative to the observation (the observation becomes the
   identity, gst_ros.geometry.normalize_scene) with the translation scale normalised:
   scale="center" (default): the observation's distance to the scene centre is 1, the centre
   being the point closest to the optical axes of all the scene's cameras (object-centric data);
   if those axes do not determine a centre the pair falls back to "baseline" (meta says so);
   scale="baseline": the distance between the two camera centres is 1 (RealEstate10K);
   scale="none": the data set's own units. Translation is only known up to this scale; meta
   holds `scale` (multiply data set units by it to get normalised units).
A scene without a usable pair (too few views, nothing within the baseline range, images that
fail to decode) is skipped, counted in `skipped`/`skip_reasons`, and the next scene is tried.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from gst_ros.geometry import (
    GeometryError,
    camera_center,
    closest_point_to_lines,
    geodesic_angle,
    normalize_scene,
    relative_pose,
)
from gst_ros.preprocess import center_crop_resize, to_model_tensor

from . import log
from .sample import MultiViewSample

SCALE_MODES = ("center", "baseline", "none")


@dataclass
class PairSample:
    """One (observation, target) pair at the model resolution S.

    obs_image, target_image: (S, S, 3) uint8 RGB. K_obs, K_target: (3, 3) float64 pixel
    intrinsics of those crops (OpenCV convention). w2c_target_rel: (4, 4) float64 target
    world-to-camera in the observation camera's frame (observation = identity; OpenCV axes;
    translation scale-normalised, see module docstring). meta: scene_id, category, group,
    obs_view, target_view, baseline_deg, scale, scale_mode."""
    obs_image: np.ndarray
    target_image: np.ndarray
    K_obs: np.ndarray
    K_target: np.ndarray
    w2c_target_rel: np.ndarray
    meta: dict = field(default_factory=dict)


@dataclass
class PairBatch:
    """A collated batch: images float32 (B, 3, S, S) in [-1, 1]; K float32 (B, 3, 3);
    w2c_target_rel float32 (B, 4, 4); meta a list of the pairs' meta dicts."""
    obs_image: torch.Tensor
    target_image: torch.Tensor
    K_obs: torch.Tensor
    K_target: torch.Tensor
    w2c_target_rel: torch.Tensor
    meta: list[dict]

    def __len__(self) -> int:
        return len(self.meta)


def collate_pairs(items: list[PairSample]) -> PairBatch:
    """torch DataLoader collate_fn for PairDataset."""
    if not items:
        raise ValueError("collate_pairs: empty batch")
    return PairBatch(
        obs_image=to_model_tensor(np.stack([p.obs_image for p in items])),
        target_image=to_model_tensor(np.stack([p.target_image for p in items])),
        K_obs=torch.as_tensor(np.stack([p.K_obs for p in items]), dtype=torch.float32),
        K_target=torch.as_tensor(np.stack([p.K_target for p in items]), dtype=torch.float32),
        w2c_target_rel=torch.as_tensor(np.stack([p.w2c_target_rel for p in items]), dtype=torch.float32),
        meta=[p.meta for p in items],
    )


def pairwise_baseline_deg(w2c: np.ndarray) -> np.ndarray:
    """(N, N) angle in degrees of the relative rotation between every two cameras of w2c (N,4,4)."""
    R = torch.as_tensor(np.asarray(w2c)[:, :3, :3], dtype=torch.float64)
    return np.degrees(geodesic_angle(R[:, None], R[None, :]).numpy())


class PairDataset(torch.utils.data.Dataset):
    """(observation, target) pairs from `reader` (see module docstring)."""

    def __init__(self, reader, size: int = 256, seed: int = 0, baseline_deg=None, pairs_per_scene: int = 1,
                 scale: str = "center", max_scene_attempts: int = 16):
        if scale not in SCALE_MODES:
            raise ValueError(f"scale must be one of {SCALE_MODES}, got {scale!r}")
        if baseline_deg is not None:
            lo, hi = (float(x) for x in baseline_deg)
            if not (0 <= lo <= hi) or math.isnan(hi):
                raise ValueError(f"baseline_deg must be (min, max) with 0 <= min <= max, got {baseline_deg}")
            baseline_deg = (lo, hi)
        if int(size) != size or size <= 0 or pairs_per_scene < 1:
            raise ValueError(f"size and pairs_per_scene must be positive integers, "
                             f"got {size}, {pairs_per_scene}")
        self.reader, self.size, self.seed = reader, int(size), int(seed)
        self.baseline_deg, self.pairs_per_scene, self.scale = baseline_deg, int(pairs_per_scene), scale
        self.max_scene_attempts = max_scene_attempts
        self.epoch = 0
        self.skipped = 0
        self.skip_reasons: Counter = Counter()

    def set_epoch(self, epoch: int) -> None:
        """Draw different pairs (deterministically) for another epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.reader) * self.pairs_per_scene

    def _skip(self, reason: str, scene: str) -> None:
        self.skipped += 1
        self.skip_reasons[reason] += 1
        if self.skip_reasons[reason] <= 20:
            log.warning("PairDataset: skipping scene %s: %s", scene, reason)

    def _choose(self, w2c: np.ndarray, rng: np.random.Generator):
        """(a, b, baseline_deg) of a random ordered pair within the baseline range, or None."""
        n = len(w2c)
        if n < 2:
            return None
        ang = pairwise_baseline_deg(w2c)
        ok = ~np.eye(n, dtype=bool)
        if self.baseline_deg is not None:
            ok &= (ang >= self.baseline_deg[0]) & (ang <= self.baseline_deg[1])
        cand = np.argwhere(ok)
        if len(cand) == 0:
            return None
        a, b = cand[rng.integers(len(cand))]
        return int(a), int(b), float(ang[a, b])

    def _normalise(self, all_w2c: np.ndarray, w2c_obs: np.ndarray, w2c_tgt: np.ndarray):
        """(w2c_target_rel, scale, mode) with the observation as identity."""
        pair = np.stack([w2c_obs, w2c_tgt])
        if self.scale == "none":
            return relative_pose(w2c_obs, w2c_tgt), 1.0, "none"
        if self.scale == "center":
            try:
                center = closest_point_to_lines(camera_center(all_w2c), all_w2c[:, 2, :3])
                rel, s = normalize_scene(pair, mode="center", scene_center=center)
                return rel[1], s, "center"
            except GeometryError:
                pass  # axes do not determine a centre: fall back to the pair's baseline
        rel, s = normalize_scene(pair, mode="baseline")
        return rel[1], s, "baseline"

    def _pair_from_scene(self, i: int, rng: np.random.Generator) -> PairSample | str:
        """A PairSample from scene i, or the reason (str) why the scene gave none."""
        fast = hasattr(self.reader, "scene_views") and hasattr(self.reader, "load")
        if fast:
            all_w2c = self.reader.view_poses(i)
            sample = None
        else:
            sample = self.reader[i]
            if not isinstance(sample, MultiViewSample):
                raise TypeError(f"PairDataset: reader returned {type(sample).__name__}, "
                                "expected MultiViewSample")
            all_w2c = sample.w2c
        chosen = self._choose(all_w2c, rng)
        if chosen is None:
            return "no view pair within the baseline range" if len(all_w2c) >= 2 else "fewer than 2 views"
        a, b, baseline = chosen
        if fast:
            sample = self.reader.load(i, [a, b], size=self.size)
            if sample is None or len(sample) < 2:
                return "a view of the chosen pair failed to load"
            (img_o, img_t), (K_o, K_t) = sample.images, sample.K
        else:
            img_o, K_o = center_crop_resize(sample.images[a], sample.K[a], self.size)
            img_t, K_t = center_crop_resize(sample.images[b], sample.K[b], self.size)
        try:
            rel, scale, mode = self._normalise(all_w2c, all_w2c[a], all_w2c[b])
        except GeometryError as e:
            return f"degenerate pair ({e})"
        ids = sample.view_ids if fast else [sample.view_ids[k] if sample.view_ids else str(k) for k in (a, b)]
        group = self.reader.category_group(sample.category) if hasattr(self.reader, "category_group") else ""
        meta = {"scene_id": sample.scene_id, "category": sample.category, "group": group,
                "obs_view": ids[0], "target_view": ids[1], "baseline_deg": baseline,
                "scale": float(scale), "scale_mode": mode}
        return PairSample(img_o, img_t, np.asarray(K_o, np.float64), np.asarray(K_t, np.float64),
                          np.asarray(rel, np.float64), meta)

    def __getitem__(self, idx: int) -> PairSample:
        n = len(self.reader)
        if not 0 <= idx < len(self):
            raise IndexError(f"pair index {idx} out of range for {len(self)} pairs")
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        start = idx // self.pairs_per_scene
        for k in range(min(self.max_scene_attempts, n)):
            i = (start + k) % n
            out = self._pair_from_scene(i, rng)
            if isinstance(out, PairSample):
                return out
            scenes = getattr(self.reader, "scenes", None)
            self._skip(out, scenes[i].scene_id if scenes is not None else f"#{i}")
        raise RuntimeError(f"PairDataset: no usable pair in {min(self.max_scene_attempts, n)} scenes from "
                           f"scene {start} (skip reasons: {dict(self.skip_reasons)})")
