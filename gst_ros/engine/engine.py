"""The inference engine: one object that loads a GST model and runs its four tasks on images.

    engine = GSTEngine(EngineConfig(model_dir="models/gst_small"))
    est = engine.estimate_pose(observation, target, K_obs=K, K_target=K, samples=4)
    view = engine.predict_view(observation, w2c_target, K_obs=K)
    views = engine.propose_views(observation, n=4, K_obs=K)
    view = engine.unconditional_view(observation, K_obs=K)

A GST model directory holds three model directories (gst_ros.models.io format):

    <model_dir>/image_tokenizer/   image VQ (kind image_tokenizer)
    <model_dir>/camera_tokenizer/  camera VQ on Plücker maps (kind camera_tokenizer)
    <model_dir>/gst/               the transformer (kind gst)
    <model_dir>/model_card.md      optional

Conventions (those of gst_ros.geometry):
- Images: (H, W, 3) uint8 RGB numpy arrays of any size. Each is centre-cropped to a square and
  resized to `image_size` (gst_ros.preprocess.center_crop_resize), its K adjusted the same way.
- K: (3, 3) pixel intrinsics of the image AS GIVEN (OpenCV / ROS CameraInfo: pixel (u, v) =
  (column, row), top-left pixel centre at (0, 0)). When K is None, `EngineConfig.default_fov_deg`
  is taken as the field of view across the image's SHORTER side (the side the square crop
  keeps; for GST's square 49.1 deg renders that is their FOV), principal point at the centre.
- Poses: 4x4 world-to-camera matrices (X_cam = R X_world + t), OpenCV optical axes (x right,
  y down, z forward), where "world" is the OBSERVATION camera's optical frame: the observation
  camera is the identity. Translations are in the model's normalised scene scale (unit scale,
  see PoseEstimate); a robot must scale them itself.

Rays: the camera tokens of a camera are the camera tokenizer's codes of its Plücker map
(gst_ros.geometry.plucker_map, order PLUCKER_ORDER) at the camera tokenizer's map resolution,
built from K scaled from the model image size to the map size. Sampled camera tokens are
decoded to a Plücker map and turned back into a camera by gst_ros.geometry.cameras_from_plucker.

Randomness: every task draws from a torch.Generator. With `seed=None` a call uses the engine's
own generator (seeded once from EngineConfig.seed at construction), so a fresh engine replays the
same sequence of calls exactly and successive calls give fresh samples; an explicit `seed`
makes that one call reproducible on its own.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gst_ros.engine import generation
from gst_ros.engine.generation import SamplingConfig
from gst_ros.engine.onnx_tokenizer import BACKENDS, load_tokenizer
from gst_ros.geometry import (
    SCENE_CENTER_REF,
    GeometryError,
    center_facing_scene,
    check_intrinsics,
    check_pose,
    intrinsics_from_fov,
    invert_pose,
    rotation_error_deg,
    rotation_mean,
    so3_log,
)
from gst_ros.geometry.errors import as_array
from gst_ros.geometry.rotations import rotation_from_covariance
from gst_ros.models.io import (
    ModelFormatError,
    config_from_dict,
    load_model_dir,
    load_state_dict_strict,
    load_tensor,
)
from gst_ros.models.sequence import TASK_EST, build_prefix
from gst_ros.models.tokenizer import CameraTokenizer, ImageTokenizer
from gst_ros.models.transformer import GST, GSTConfig, HeadReadout
from gst_ros.preprocess import center_crop_resize, from_model_tensor

MODEL_NAME = "gst_small"
SUBDIRS = ("image_tokenizer", "camera_tokenizer", "gst")
MAX_IMAGE_SIDE = 16384  # larger images are rejected (a corrupt size, not a camera)
IMAGE_CODE_CACHE = 16   # model-resolution images whose codes the engine keeps (GSTEngine.image_codes)

# Covariance floor (variances added to the sample covariance, so it is never singular):
POSITION_VAR_FLOOR = 1e-4                  # (unit scale)^2: 1 cm at a 1 m scene scale
ROTATION_VAR_FLOOR = math.radians(0.5) ** 2  # rad^2: half a degree
# Confidence = exp(-rotation_spread / CONF_ROT_DEG) * exp(-position_spread / CONF_POS)
CONF_ROT_DEG = 10.0
CONF_POS = 0.2


class ModelNotFoundError(FileNotFoundError):
    """The GST model directory (or one of its three parts) does not exist."""


def default_model_dir() -> Path:
    """Directory of the shipped small model: `<repo>/models/gst_small` in a source tree, else
    `<prefix>/share/gst_ros/models/gst_small` of an install (AMENT_PREFIX_PATH prefixes, the
    prefix above this package, sys.prefix). Returns the source-tree path when none exists, so the
    error message names where the model is expected."""
    here = Path(__file__).resolve()
    source = here.parents[2] / "models" / MODEL_NAME
    candidates = [source]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    # installed package: <prefix>/lib/pythonX.Y/site-packages/gst_ros/engine/engine.py
    prefixes += [str(here.parents[5]) if len(here.parents) > 5 else "", sys.prefix]
    for p in prefixes:
        if p:
            candidates.append(Path(p) / "share" / "gst_ros" / "models" / MODEL_NAME)
    for c in candidates:
        if c.is_dir():
            return c
    return source


def check_model_dir(model_dir) -> Path:
    """Raise ModelNotFoundError (saying how to get a model) unless `model_dir` holds the three
    parts of a GST model."""
    d = Path(model_dir)
    missing = [s for s in SUBDIRS if not (d / s).is_dir()]
    if not d.is_dir() or missing:
        what = "does not exist" if not d.is_dir() else f"lacks {', '.join(s + '/' for s in missing)}"
        raise ModelNotFoundError(
            f"GST model directory {d} {what}. A model directory holds image_tokenizer/, "
            f"camera_tokenizer/ and gst/ (gst_ros.models.io format). Train one with "
            f"`python -m training.pipeline --out DIR` (see docs/training.md), convert official "
            f"checkpoints with `gst convert-checkpoint`, or point to an existing one with "
            f"EngineConfig(model_dir=...) / `--model DIR`.")
    return d


@dataclass
class PoseEstimate:
    w2c: np.ndarray            # (4,4) float64: the TARGET camera's world-to-camera matrix, world =
                               # the observation camera's optical frame (OpenCV axes); translation
                               # only up to scale (unit = the model's normalised scene scale)
    samples_w2c: np.ndarray    # (S,4,4) every sampled pose (same convention)
    covariance: np.ndarray     # (6,6) pose covariance in the reference frame, ROS order
                               # [x, y, z, rot_x, rot_y, rot_z] (rad, fixed-axis tangent space)
    confidence: float          # in [0, 1], from the agreement of the samples (0 with one sample),
                               # or from the heads' predicted spread (uncertainty_from "heads")
    rotation_spread_deg: float # mean geodesic deviation of the samples from the mean rotation, or
                               # the heads' predicted RMS rotation deviation
    latency_s: float
    uncertainty_from: str = "samples"  # "samples" (their spread) or "heads" (head_pose_estimate)
    keyframe: int = 0          # 0 = read directly against the reference; k > 0 = chained through
                               # keyframe k of a KeyframeTracker (gst_ros.engine.tracking)

    def camera_to_reference(self) -> np.ndarray:
        """(4,4) = inv(w2c): the camera's pose in the reference (observation) frame, i.e. the TF
        transform parent=reference, child=camera (X_ref = T @ X_cam)."""
        return invert_pose(self.w2c)


@dataclass
class PredictedView:
    image: np.ndarray          # (S,S,3) uint8 RGB at the model's resolution: one sampled view, or
                               # with several samples the pixel mean of the `kept` of them the model
                               # places closest to the requested camera (the expected view)
    K: np.ndarray              # (3,3) intrinsics of that image (pixels, OpenCV convention)
    w2c: np.ndarray            # (4,4) the view's camera, world = observation camera frame (OpenCV axes)
    spread: np.ndarray | None = None   # (S,S) float32: per pixel, the standard deviation of all
                                       # the sampled views (mean over R, G, B; 0-255 intensity
                                       # units): where the model is unsure; None for a single sample
    samples: int = 1                   # how many views were sampled
    kept: int = 1                      # how many of them `image` averages (the most consistent)
    consistent_sample: np.ndarray | None = None  # (S,S,3) uint8 RGB: of those sampled views, the
                                       # one the model places closest to the requested camera
                                       # (GSTEngine.view_consistency): a sharp view from the
                                       # requested side; None for a single sample
    consistency: np.ndarray | None = None  # (k,) float64 per sampled view, higher = closer to the
                                       # requested camera (view_consistency); None for one sample
    sample_views: np.ndarray | None = None  # (k,S,S,3) uint8 RGB: every sampled view in draw order
                                       # (consistency[i] scores sample_views[i]); None for one sample

    def spread_image(self) -> np.ndarray | None:
        """`spread` as an (S,S) uint8 grey image (value = standard deviation in 0-255 intensity
        units, rounded), or None for a single sample."""
        if self.spread is None:
            return None
        return np.clip(np.rint(self.spread), 0, 255).astype(np.uint8)


POSE_ESTIMATES = ("auto", "mean", "mode", "head")


@dataclass
class EngineConfig:
    model_dir: str = field(default_factory=lambda: str(default_model_dir()))
    device: str = "auto"               # "auto" = cuda when available else cpu; bf16 autocast on cuda
    tokenizer_backend: str = "torch"   # or "onnx" (ONNX Runtime)
    temperature: float = 1.0
    top_k: int = 100
    top_p: float = 1.0
    cfg_scale: float = 1.0
    default_fov_deg: float = 49.1      # used only when no K is known
    seed: int = 0
    pose_estimate: str = "auto"        # "mean" of the sampled poses; the "mode": the sample the
                                       # model finds most likely, max log p(c | i, o); "head": the
                                       # rotation read by the model's pose head (models trained with
                                       # one); "auto" = "head" when the model has a pose head, else
                                       # "mean"
    pose_symmetric: bool = True        # head read-outs: also read the swapped pair (target as the
                                       # observation) and average the two rotation estimates
    pose_mirror: bool = True           # head read-outs with a centre head: also read the pair
                                       # mirrored left-right (both images flipped) and average the
                                       # estimate mapped back (generation.mirror_averaged_readout)
    view_samples: int = 16             # predict_view: views sampled from p(i | c, o) in one batch
                                       # (their spread is returned); 1 = a single sample, as the paper
    view_keep: int = 4                 # the returned image is the per-pixel mean of the view_keep
                                       # samples the model places closest to the requested camera
                                       # (view_consistency); 0 = of all of them

    def __post_init__(self):
        if self.pose_estimate not in POSE_ESTIMATES:
            raise ValueError(f"pose_estimate must be one of {POSE_ESTIMATES}, got {self.pose_estimate!r}")
        _check_count(self.view_samples, "view_samples")
        _check_count(self.view_keep, "view_keep", minimum=0)


def aggregate_pose_samples(samples_w2c) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Average sampled target cameras into one pose with a covariance.

    samples_w2c: (S,4,4) world-to-camera matrices (world = reference frame, OpenCV axes).
    In the reference frame each sample is a camera orientation R_i (camera-to-reference
    rotation) and a centre C_i. The mean orientation is the chordal L2 mean (projected onto
    SO(3)); the mean centre is the arithmetic mean. Per sample the deviation is
    [C_i - C_mean, log(R_i R_mean^T)] (translation, then a rotation vector about the reference
    frame's fixed axes: the ROS PoseWithCovariance order [x, y, z, rot_x, rot_y, rot_z]).

    Returns (w2c (4,4) of the mean camera, covariance (6,6), confidence in [0,1],
    rotation_spread_deg). The covariance is the unbiased sample covariance plus a diagonal floor
    (POSITION_VAR_FLOOR, ROTATION_VAR_FLOOR), so it is symmetric positive definite. Confidence is
    exp(-spread_deg / CONF_ROT_DEG) * exp(-mean centre deviation / CONF_POS); one sample gives
    confidence 0 (its agreement cannot be measured)."""
    w2c = as_array(samples_w2c, "samples_w2c", (None, 4, 4))
    if len(w2c) == 0:
        raise ValueError("aggregate_pose_samples: no samples")
    check_pose(w2c, "samples_w2c")
    c2w = invert_pose(w2c)
    R = c2w[:, :3, :3]
    C = c2w[:, :3, 3]
    spread = rotation_mean(R, frame="parent")  # chordal L2 mean, deviations about the reference axes
    R_mean, C_mean = spread.mean, C.mean(axis=0)
    rot_dev = so3_log(torch.from_numpy(R @ R_mean.T)).numpy()  # R_i = Exp(w_i) R_mean
    dev = np.concatenate([C - C_mean, rot_dev], axis=1)  # (S, 6)
    s = len(dev)
    cov = dev.T @ dev / (s - 1) if s > 1 else np.zeros((6, 6))
    cov = 0.5 * (cov + cov.T) + np.diag([POSITION_VAR_FLOOR] * 3 + [ROTATION_VAR_FLOOR] * 3)
    spread_deg = spread.mean_deviation_deg
    pos_spread = float(np.linalg.norm(C - C_mean, axis=1).mean())
    confidence = 0.0 if s == 1 else math.exp(-spread_deg / CONF_ROT_DEG) * math.exp(-pos_spread / CONF_POS)
    mean_c2w = np.eye(4)
    mean_c2w[:3, :3], mean_c2w[:3, 3] = R_mean, C_mean
    return invert_pose(mean_c2w), cov, float(confidence), spread_deg


def pose_facing_scene_center(R_w2c, distance: float) -> np.ndarray:
    """(4,4) float64 world-to-camera matrix of a camera with rotation R_w2c (3,3) (world = the
    reference camera's optical frame, OpenCV axes) whose optical axis (+z) passes through the
    scene centre SCENE_CENTER_REF = (0, 0, 1), at `distance` (unit scene scale) from it: its
    centre is C = SCENE_CENTER_REF - distance * (optical axis in the reference frame = third row
    of R_w2c) and t = -R_w2c C. The translation a rotation-only read-out implies for an
    object-centric scene, where every camera looks at the scene centre."""
    R = as_array(R_w2c, "R_w2c", (3, 3))
    if not (math.isfinite(distance) and distance > 0):
        raise ValueError(f"distance must be a finite positive number, got {distance}")
    C = center_facing_scene(R, distance)
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ C
    return w2c


def head_pose_estimate(readout: HeadReadout, rotation_var_scale: float = 1.0,
                       center_var_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, float, float]:
    """One pose with its covariance from the read-out heads of one query (a HeadReadout of batch 1:
    the pose head's unconstrained 3x3 `rotation` M and the centre head's `center`, `center_log_var`).

    Frames: world = the observation camera's optical frame (OpenCV axes), unit scene scale.
    The rotation is the nearest rotation R (w2c) to M. M was trained by squared error, so it
    estimates E[R | o, i], which shrinks as the model grows unsure: for c2w rotations
    Q = Exp(w) Q_mean with small deviations w of covariance S (rotation vectors about the
    reference frame's fixed axes, as aggregate_pose_samples), E[Q] Q_mean^T ~ I - (tr(S) I - S) / 2,
    so tr(S) ~ 3 - tr(M^T R) = sum_i (1 - l_i), l_i the eigenvalues of sym(R^T M) (M's singular
    values with R's sign). The rotation covariance is isotropic with total sum_i |1 - l_i|: a
    head that overshoots (l_i > 1, which no average of rotations does) is unsure too. Per axis
    that is sum_i |1 - l_i| / 3, at most pi^2 (the direction-wise split of S the same expansion
    gives is degenerate for the shipped head: docs/engine.md), times rotation_var_scale (a
    calibration factor fitted on held-out pairs, training/calibrate_pose.py). The centre's covariance is
    diag(exp(center_log_var)) * center_var_scale. Both get the floors of the sample path.

    Returns (w2c (4,4), covariance (6,6) ROS order [x, y, z, rot_x, rot_y, rot_z], confidence in
    [0, 1], rms_rotation_deg): confidence = exp(-rms_rotation_deg / CONF_ROT_DEG) *
    exp(-rms_position / CONF_POS), the sample path's formula with the predicted RMS deviations
    (sqrt of the covariance traces) in place of the samples' spreads."""
    if readout.center is None or readout.center_log_var is None:
        raise ValueError("head_pose_estimate needs a centre head's output (GSTConfig.center_head)")
    M = np.asarray(readout.rotation, dtype=np.float64).reshape(3, 3)
    C = np.asarray(readout.center, dtype=np.float64).reshape(3)
    log_var = np.asarray(readout.center_log_var, dtype=np.float64).reshape(3)
    if not (np.isfinite(M).all() and np.isfinite(C).all() and np.isfinite(log_var).all()):
        raise ValueError("the read-out heads gave non-finite values")
    R = rotation_from_covariance(torch.from_numpy(M)[None])[0].numpy()
    shrink = np.linalg.eigvalsh(0.5 * (R.T @ M + M.T @ R))  # M's singular values, signed as in R
    per_axis = min(float(np.abs(1.0 - shrink).sum()) / 3.0, math.pi ** 2)
    S = per_axis * rotation_var_scale * np.eye(3)
    P = np.diag(np.exp(np.clip(log_var, -30.0, 10.0))) * center_var_scale
    cov = _blocks(P + POSITION_VAR_FLOOR * np.eye(3), S + ROTATION_VAR_FLOOR * np.eye(3))
    confidence, rms_rot_deg = confidence_from_covariance(_blocks(P, S))  # without the floors
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ C
    return w2c, cov, confidence, rms_rot_deg


def _blocks(P: np.ndarray, S: np.ndarray) -> np.ndarray:
    """(6,6) block-diagonal covariance of a (3,3) centre block P and a (3,3) rotation block S."""
    cov = np.zeros((6, 6))
    cov[:3, :3], cov[3:, 3:] = P, S
    return cov


def confidence_from_covariance(covariance: np.ndarray) -> tuple[float, float]:
    """(confidence in [0, 1], RMS rotation deviation in degrees) of a pose covariance (6,6), ROS
    order [x, y, z, rot_x, rot_y, rot_z]: rms_rot_deg = sqrt(trace of the rotation block) in
    degrees, rms_pos = sqrt(trace of the centre block) (unit scene scale), confidence =
    exp(-rms_rot_deg / CONF_ROT_DEG) * exp(-rms_pos / CONF_POS) (the sample path's formula with
    predicted deviations in place of the samples' spreads)."""
    cov = np.asarray(covariance, dtype=np.float64)
    rms_rot_deg = math.degrees(math.sqrt(max(float(np.trace(cov[3:, 3:])), 0.0)))
    rms_pos = math.sqrt(max(float(np.trace(cov[:3, :3])), 0.0))
    return float(math.exp(-rms_rot_deg / CONF_ROT_DEG) * math.exp(-rms_pos / CONF_POS)), rms_rot_deg


POSE_CALIBRATION_KEYS = ("rotation_var_scale", "center_var_scale")


def pose_calibration_from(meta: dict, where) -> dict:
    """{"rotation_var_scale", "center_var_scale"} for head_pose_estimate from a transformer's
    config.json (`pose_calibration`, written by training/calibrate_pose.py); 1.0 where absent.
    ModelFormatError (naming `where`) for a value that is not a finite positive number."""
    cal = meta.get("pose_calibration") or {}
    if not isinstance(cal, dict):
        raise ModelFormatError(f"{where}: pose_calibration must be a mapping, got {type(cal).__name__}")
    out = {}
    for key in POSE_CALIBRATION_KEYS:
        value = cal.get(key, 1.0)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and value > 0):
            raise ModelFormatError(f"{where}: pose_calibration.{key} must be a finite positive number, "
                                   f"got {value!r}")
        out[key] = float(value)
    return out


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"EngineConfig.device: not a torch device: {name!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"EngineConfig.device={name!r} but CUDA is not available (use 'auto' or 'cpu')")
    return dev


def _check_config(cfg: EngineConfig) -> None:
    if cfg.tokenizer_backend not in BACKENDS:
        raise ValueError(f"EngineConfig.tokenizer_backend must be one of {BACKENDS}, "
                         f"got {cfg.tokenizer_backend!r}")
    if not (math.isfinite(cfg.temperature) and cfg.temperature >= 0):
        raise ValueError(f"EngineConfig.temperature must be >= 0, got {cfg.temperature}")
    if int(cfg.top_k) != cfg.top_k or cfg.top_k < 0:
        raise ValueError(f"EngineConfig.top_k must be an integer >= 0 (0 = off), got {cfg.top_k}")
    if not 0.0 < cfg.top_p <= 1.0:
        raise ValueError(f"EngineConfig.top_p must lie in (0, 1], got {cfg.top_p}")
    if not (math.isfinite(cfg.cfg_scale) and cfg.cfg_scale > 0):
        raise ValueError(f"EngineConfig.cfg_scale must be > 0 (1 = no guidance), got {cfg.cfg_scale}")
    if not (math.isfinite(cfg.default_fov_deg) and 0.0 < cfg.default_fov_deg < 180.0):
        raise ValueError(f"EngineConfig.default_fov_deg must lie in (0, 180), got {cfg.default_fov_deg}")


CODEBOOK_KEY = "quantize.embedding.weight"  # a tokenizer's codebook in its state dict (VQModel)


class GSTEngine:
    """Loads the tokenizers and the transformer of a GST model directory and runs the four tasks
    on images (see the module docstring for every convention). Thread-compatible: one call at a
    time."""

    def __init__(self, config: EngineConfig | None = None):
        self.config = cfg = config if config is not None else EngineConfig()
        _check_config(cfg)
        self.model_dir = check_model_dir(cfg.model_dir)
        self.device = resolve_device(cfg.device)
        backend = cfg.tokenizer_backend
        self.image_tokenizer = load_tokenizer(self.model_dir / "image_tokenizer", backend, self.device)
        self.camera_tokenizer = load_tokenizer(self.model_dir / "camera_tokenizer", backend, self.device)
        if not isinstance(self.image_tokenizer, ImageTokenizer):
            raise ModelFormatError(f"{self.model_dir / 'image_tokenizer'} does not hold an image tokenizer")
        if not isinstance(self.camera_tokenizer, CameraTokenizer):
            raise ModelFormatError(f"{self.model_dir / 'camera_tokenizer'} does not hold a camera tokenizer")
        meta, state = load_model_dir(self.model_dir / "gst", "gst")
        gcfg = config_from_dict(GSTConfig, meta["config"])
        self.model = GST(gcfg)
        load_state_dict_strict(self.model, state, str(self.model_dir / "gst"))
        self.model.to(self.device).eval()
        self._check_compatible(gcfg)
        self.pose_calibration = pose_calibration_from(meta, self.model_dir / "gst")
        self.pose_estimate = self._resolve_pose_estimate(cfg.pose_estimate)
        self.image_size: int = self.image_tokenizer.resolution
        self.grid: int = self.image_tokenizer.grid
        self.sampling = SamplingConfig(
            temperature=cfg.temperature, top_k=int(cfg.top_k) or None,
            top_p=cfg.top_p if cfg.top_p < 1.0 else None,
            cfg_scale=cfg.cfg_scale if cfg.cfg_scale != 1.0 else None)  # s = 1 is exactly no guidance
        self._generator = torch.Generator(device=self.device).manual_seed(int(cfg.seed))
        self._code_cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._code_lock = threading.Lock()

    def _check_compatible(self, g: GSTConfig) -> None:
        it, ct = self.image_tokenizer, self.camera_tokenizer
        problems = []
        if it.codebook_size != g.image_vocab:
            problems.append(f"image tokenizer has {it.codebook_size} codes, transformer image_vocab "
                            f"{g.image_vocab}")
        if ct.codebook_size != g.camera_vocab:
            problems.append(f"camera tokenizer has {ct.codebook_size} codes, transformer camera_vocab "
                            f"{g.camera_vocab}")
        if (it.grid, it.grid) != tuple(g.grid) or (ct.grid, ct.grid) != tuple(g.grid):
            problems.append(f"token grids differ: image {it.grid}x{it.grid}, camera {ct.grid}x{ct.grid}, "
                            f"transformer {g.grid[0]}x{g.grid[1]}")
        problems += self._codebook_mismatches()
        if problems:
            raise ModelFormatError(f"{self.model_dir}: parts do not fit together: " + "; ".join(problems))

    def _codebook_mismatches(self) -> list[str]:
        """Where the transformer has codebook features (GSTConfig.image_code_dim / camera_code_dim,
        set from its tokenizers' codebooks when it was trained), each must equal its tokenizer's
        L2-normalised codebook: a tokenizer from another training (e.g. a fine-tune whose token ids
        changed) feeds the transformer codes it does not know. All-zero features (never set) are
        not checked."""
        found = []
        for kind in ("image", "camera"):
            feats = getattr(self.model, f"{kind}_codebook", None)
            if feats is None or not bool(feats.abs().sum() > 0):
                continue
            book = load_tensor(self.model_dir / f"{kind}_tokenizer", CODEBOOK_KEY)  # either backend
            if not self.model.holds_codebook(kind, book):
                found.append(f"the {kind} tokenizer's codebook is not the one the transformer was trained "
                             f"with (its {kind} codebook features): use the {kind}_tokenizer/ that came "
                             f"with gst/")
        return found

    def _resolve_pose_estimate(self, estimate: str) -> str:
        """The pose read-out a call uses: "auto" resolved against the loaded model ("head" when
        it has a pose head, else "mean"); "head" on a model without one is an error."""
        if estimate not in POSE_ESTIMATES:
            raise ValueError(f"pose_estimate must be one of {POSE_ESTIMATES}, got {estimate!r}")
        has_head = self.model.pose_head is not None
        if estimate == "auto":
            return "head" if has_head else "mean"
        if estimate == "head" and not has_head:
            raise ValueError(f"pose_estimate 'head': the transformer in {self.model_dir / 'gst'} has no pose "
                             f"head (use 'mean' or 'mode')")
        return estimate

    # ------------------------------------------------------------------ inputs

    def intrinsics_or_default(self, image: np.ndarray, K=None) -> np.ndarray:
        """K (3,3) float64 of `image` as given: the validated K, or when K is None the default
        (EngineConfig.default_fov_deg across the image's shorter side, centred principal point).
        A K whose principal point lies more than the image's own width (height) beyond its edge is
        refused: it belongs to another image size or is not in pixels. Nearer, it may be off the
        image (an ROI crop away from the optical centre) and is used as given."""
        h, w = _check_image(image, "image")
        if K is None:
            return intrinsics_from_fov(self.config.default_fov_deg, w, h, axis="x" if w < h else "y")
        K = as_array(K, "K", (3, 3))
        check_intrinsics(K, "K")
        cx, cy = float(K[0, 2]), float(K[1, 2])
        if not (-w <= cx <= 2 * w and -h <= cy <= 2 * h):
            raise ValueError(f"K: principal point ({cx:g}, {cy:g}) lies far outside the {w}x{h} image "
                             f"(K must be in pixels of the image as given)")
        return K

    def prepare(self, image: np.ndarray, K=None, name: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """(image (S,S,3) uint8, K (3,3)) at the model resolution S = image_size: the centre square
        crop of `image` resized to S, with its intrinsics (K of the image as given, or the default
        when None) transformed the same way."""
        try:
            K = self.intrinsics_or_default(image, K)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        return center_crop_resize(image, K, self.image_size)

    def _generator_for(self, seed) -> torch.Generator:
        if seed is None:
            return self._generator
        if int(seed) != seed:
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def image_tokens(self, image_sq: np.ndarray) -> torch.Tensor:
        """(1, n) image codes (row-major token grid) of a model-resolution image, on the model device."""
        return self.image_codes(image_sq[None])

    def image_codes(self, images_sq: np.ndarray) -> torch.Tensor:
        """(B, n) image codes (row-major token grid, on the model device) of B model-resolution
        images ((B,S,S,3) uint8 RGB, as from `prepare`), tokenised in one batch. The codes of the
        last IMAGE_CODE_CACHE distinct images are kept, keyed by their pixels, so an image read
        again (the reference against every new frame, a keyframe, an observation asked for
        several views) is not tokenised again; the tokenizer is deterministic, so the codes are
        those a fresh encode gives."""
        images_sq = np.ascontiguousarray(images_sq)
        keys = [hashlib.blake2b(repr(im.shape).encode() + im.tobytes(), digest_size=16).digest()
                for im in images_sq]
        with self._code_lock:
            found = {k: self._code_cache[k] for k in keys if k in self._code_cache}
        todo = [i for i, k in enumerate(keys) if k not in found and keys.index(k) == i]
        if todo:
            codes = self.image_tokenizer.encode(images_sq[todo]).reshape(len(todo), -1).to(self.device)
            found.update((keys[i], c) for i, c in zip(todo, codes))
        with self._code_lock:
            for k in keys:
                self._code_cache[k] = found[k]
                self._code_cache.move_to_end(k)
            while len(self._code_cache) > IMAGE_CODE_CACHE:
                self._code_cache.popitem(last=False)
        return torch.stack([found[k] for k in keys])

    def camera_tokens(self, K_sq, w2c) -> torch.Tensor:
        """(B, n) raw camera codes of cameras w2c ((4,4) or (B,4,4); world = observation camera
        frame, OpenCV axes, unit scene scale) with intrinsics K_sq of a model-resolution image."""
        codes = self.camera_tokenizer.encode(K_sq, w2c, image_size=self.image_size)
        return codes.reshape(codes.shape[0], -1).to(self.device)

    def _cameras(self, codes: torch.Tensor, K_sq) -> tuple[np.ndarray, list[int]]:
        """(w2c (k,4,4) float64, indices of the k samples it holds) from sampled camera codes
        (B, n): decode to Plücker maps, then cameras_from_plucker with the known K_sq (model
        resolution), or estimating K when None. A sample whose decoded rays are degenerate (e.g.
        all parallel: no camera centre) is left out; RuntimeError when none is usable."""
        g = self.grid
        size = self.image_size if K_sq is not None else None
        grids = codes.reshape(-1, g, g).cpu()
        try:
            fit = self.camera_tokenizer.decode(grids, K=K_sq, image_size=size)
            return fit.w2c.detach().cpu().numpy().astype(np.float64), list(range(len(grids)))
        except GeometryError:
            pass
        kept, w2c = [], []
        for i in range(len(grids)):
            try:
                fit = self.camera_tokenizer.decode(grids[i:i + 1], K=K_sq, image_size=size)
            except GeometryError:
                continue
            kept.append(i)
            w2c.append(fit.w2c[0].detach().cpu().numpy().astype(np.float64))
        if not kept:
            raise RuntimeError(f"the model's sampled camera rays are degenerate in all {len(grids)} samples "
                               f"(no camera can be fitted): is the model trained?")
        return np.stack(w2c), kept

    def _images(self, codes: torch.Tensor) -> np.ndarray:
        """(B, S, S, 3) uint8 RGB from image codes (B, n)."""
        g = self.grid
        return from_model_tensor(self.image_tokenizer.decode(codes.reshape(-1, g, g).cpu()))

    def head_readout(self, obs_sq: np.ndarray, tgt_sq: np.ndarray) -> HeadReadout:
        """The read-out heads' HeadReadout (batch 1) for two model-resolution images (observation,
        target; (S,S,3) uint8 RGB as from `prepare`), read as EngineConfig asks: both ways
        (pose_symmetric) and averaged with the left-right mirrored pair (pose_mirror); the
        frames are pose_readout's (observation camera frame, OpenCV axes, unit scene scale)."""
        if not self.config.pose_mirror:
            codes = self.image_codes(np.stack([obs_sq, tgt_sq]))
            return generation.pose_readout(self.model, codes[0:1], codes[1:2], self.config.pose_symmetric)
        codes = self.image_codes(np.stack([obs_sq, tgt_sq, obs_sq[:, ::-1], tgt_sq[:, ::-1]]))
        return generation.mirror_averaged_readout(self.model, codes[0:1], codes[1:2], codes[2:3], codes[3:4],
                                                  self.config.pose_symmetric)

    # ------------------------------------------------------------------ the four tasks

    def estimate_pose(self, observation, target, K_obs=None, K_target=None, samples: int = 4,
                      seed=None, estimate: str | None = None) -> PoseEstimate:
        """Pose of the camera that took `target`, relative to the camera of `observation`.

        The read-out `estimate` (None = EngineConfig.pose_estimate; "auto" as there):
        - "head" with a model that has pose and centre heads: one forward pass over [o, <EST>, i]
          (generation.pose_readout; with EngineConfig.pose_symmetric, the default, batched with
          the swapped pair [i, <EST>, o] whose inverse rotation is averaged in; with
          EngineConfig.pose_mirror, the default, also with both pairs mirrored left-right, mapped
          back and averaged in: head_readout), no sampling:
          the pose head's rotation, the centre head's camera centre, the covariance and
          confidence the heads predict (head_pose_estimate, scaled by the model's calibration);
          `samples` is not used and samples_w2c holds the one estimate.
        Otherwise `samples` camera-token grids are sampled from p(c | target, observation)
        ([o, <EST>, i] -> c) and decoded to Plücker maps and cameras (with K_target when known,
        else the homography route that also estimates the focal length); covariance and
        confidence come from their spread, and the pose is
        - "mean": the average of the samples (aggregate_pose_samples);
        - "mode": the sample of highest log p(c | i, o);
        - "head" (a pose head without a centre head): the pose head's rotation (symmetric as
          above when EngineConfig.pose_symmetric), with the camera
          placed on its optical axis through the scene centre at the samples' median distance
          from it (pose_facing_scene_center).
        K_obs / K_target: intrinsics of the images as given, or None. A sample whose decoded rays
        are degenerate (no camera fits) is left out of samples_w2c; RuntimeError if none fits."""
        t0 = time.perf_counter()
        _check_count(samples, "samples")
        estimate = self.pose_estimate if estimate is None else self._resolve_pose_estimate(estimate)
        obs_sq, _ = self.prepare(observation, K_obs, "observation")
        tgt_sq, K_tgt = self.prepare(target, K_target, "target")
        gen = self._generator_for(seed)
        if estimate == "head" and self.model.center_head is not None:
            with self._autocast():
                readout = self.head_readout(obs_sq, tgt_sq)
            w2c, cov, conf, spread = head_pose_estimate(readout, **self.pose_calibration)
            return PoseEstimate(w2c=w2c, samples_w2c=w2c[None], covariance=cov, confidence=conf,
                                rotation_spread_deg=spread, latency_s=time.perf_counter() - t0,
                                uncertainty_from="heads")
        with self._autocast():
            obs_tok, tgt_tok = self.image_codes(np.stack([obs_sq, tgt_sq])).split(1)
            codes = generation.estimate_pose(self.model, obs_tok.expand(samples, -1),
                                             tgt_tok.expand(samples, -1), self.sampling, gen)
        samples_w2c, kept = self._cameras(codes, K_tgt if K_target is not None else None)
        w2c, cov, conf, spread = aggregate_pose_samples(samples_w2c)
        if estimate == "mode" and len(kept) > 1:
            with self._autocast():
                loglik = generation.pose_log_likelihood(self.model, obs_tok.expand(samples, -1),
                                                        tgt_tok.expand(samples, -1), codes)
            w2c = samples_w2c[int(torch.argmax(loglik[kept].float()))]
        elif estimate == "head":
            with self._autocast():
                M = generation.pose_readout(self.model, obs_tok, tgt_tok, self.config.pose_symmetric).rotation
            R = rotation_from_covariance(M.double())[0].numpy()
            distance = float(np.median(np.linalg.norm(invert_pose(samples_w2c)[:, :3, 3] - SCENE_CENTER_REF,
                                                      axis=1)))
            w2c = pose_facing_scene_center(R, max(distance, 1e-3))
        return PoseEstimate(w2c=w2c, samples_w2c=samples_w2c, covariance=cov, confidence=conf,
                            rotation_spread_deg=spread, latency_s=time.perf_counter() - t0)

    def prior_pose(self, observation, K_obs=None, K_target=None, samples: int = 4, seed=None) -> PoseEstimate:
        """The target camera the model expects before it sees the target image: `samples` draws
        from p(c | o) ([o, <GEN>] -> c), decoded and averaged exactly like estimate_pose (same
        frames and conventions: w2c of the target camera, world = the observation camera's
        optical frame, unit scene scale). It is the model's pose prior given the observation;
        what estimate_pose gains over it is what the target image told the model. K_target: the
        target image's intrinsics when known (as estimate_pose), else the homography route."""
        t0 = time.perf_counter()
        _check_count(samples, "samples")
        obs_sq, _ = self.prepare(observation, K_obs, "observation")
        K_tgt = None
        if K_target is not None:
            _, K_tgt = self.prepare(observation, K_target, "K_target")
        gen = self._generator_for(seed)
        with self._autocast():
            obs_tok = self.image_tokens(obs_sq)
            codes, _ = generation.propose_cameras(self.model, obs_tok.expand(samples, -1), self.sampling, gen)
        samples_w2c, _ = self._cameras(codes, K_tgt)
        w2c, cov, conf, spread = aggregate_pose_samples(samples_w2c)
        return PoseEstimate(w2c=w2c, samples_w2c=samples_w2c, covariance=cov, confidence=conf,
                            rotation_spread_deg=spread, latency_s=time.perf_counter() - t0)

    def predict_view(self, observation, w2c_target, K_obs=None, K_target=None, seed=None,
                     samples: int | None = None, keep: int | None = None) -> PredictedView:
        """The view from camera `w2c_target` (world = observation camera frame, OpenCV axes, unit
        scene scale): [o, <GEN>, c] -> i. K_target: the target camera's intrinsics for an image of
        the SAME size as the observation (cropped and resized like it); default K_obs.
        `samples` (default EngineConfig.view_samples) views are drawn from p(i | c, o) in one batch.
        With more than one, each is scored by how close the model places it to the requested
        camera (view_consistency; scores in `consistency`); `image` is the per-pixel mean of the
        `keep` best (default EngineConfig.view_keep; 0 = all): an expected view over the samples
        that show the requested side, smoother than any one sample and closer to the truth in
        squared error. `spread` is the per-pixel standard deviation of all the samples (where the
        model is unsure what it will see) and `consistent_sample` the single best: sharper than
        the mean, and a better single view than a random sample."""
        samples = self.config.view_samples if samples is None else samples
        keep = self.config.view_keep if keep is None else keep
        _check_count(samples, "samples")
        _check_count(keep, "keep", minimum=0)
        w2c = as_array(w2c_target, "w2c_target", (4, 4))
        check_pose(w2c, "w2c_target")
        obs_sq, K_sq = self.prepare(observation, K_obs, "observation")
        if K_target is not None:
            _, K_sq = self.prepare(observation, K_target, "K_target")
        gen = self._generator_for(seed)
        with self._autocast():
            obs_tok = self.image_tokens(obs_sq)
            cam_tok = self.camera_tokens(K_sq, w2c)
            codes = generation.novel_view(self.model, obs_tok.expand(samples, -1),
                                          cam_tok.expand(samples, -1), self.sampling, gen)
        views = self._images(codes)
        if samples == 1:
            return PredictedView(image=views[0], K=K_sq, w2c=w2c)
        with self._autocast():
            consistency = self.view_consistency(obs_tok, codes, cam_tok, w2c)
        kept = samples if keep == 0 else min(keep, samples)
        order = np.argsort(-consistency, kind="stable")   # best first (a NaN score ranks last)
        image, _ = expected_view(views[np.sort(order[:kept])])
        _, spread = expected_view(views)
        return PredictedView(image=image, K=K_sq, w2c=w2c, spread=spread, samples=samples, kept=kept,
                             consistent_sample=views[int(order[0])], consistency=consistency,
                             sample_views=views)

    def view_consistency(self, observation_codes: torch.Tensor, view_codes: torch.Tensor,
                         camera_codes: torch.Tensor, w2c_target: np.ndarray) -> np.ndarray:
        """(k,) float64 scores of k sampled views (image codes (k, n)) of the camera `w2c_target`
        ((4,4), world = observation camera frame, OpenCV axes; its raw camera codes (1, n)) given
        the observation (image codes (1, n)): how well the model's own pose reading of each view
        agrees with the requested camera; higher = closer. With a pose head: minus the geodesic
        angle (degrees) between the requested rotation and the head's rotation read from
        (observation, view) (generation.pose_readout, both ways when EngineConfig.pose_symmetric:
        twice the read-out's cost, and the mean of the best-ranked samples is the requested side
        more often than when they are read one way, docs/training.md); without one:
        log p(c | view, o) in nats (generation.pose_log_likelihood).
        Keeping the best of 8 samples this way lifts one view's PSNR by ~0.4-0.5 dB over a random
        sample (model card)."""
        k = view_codes.shape[0]
        obs = observation_codes.expand(k, -1)
        if self.model.pose_head is None:
            loglik = generation.pose_log_likelihood(self.model, obs, view_codes, camera_codes.expand(k, -1))
            return loglik.double().cpu().numpy()
        readout = generation.pose_readout(self.model, obs, view_codes, self.config.pose_symmetric)
        R_read = rotation_from_covariance(readout.rotation.double())
        R_req = torch.as_tensor(np.asarray(w2c_target, dtype=np.float64)[:3, :3]).expand_as(R_read)
        return -rotation_error_deg(R_read, R_req)

    def propose_views(self, observation, n: int = 4, K_obs=None, seed=None) -> list[PredictedView]:
        """n viewpoints sampled from p(c | o) ([o, <GEN>] -> c), each with its view from
        p(i | c, o) in the same pass. Cameras are recovered with the observation's intrinsics
        (the proposals' images have the observation's K at the model resolution). A proposal whose
        decoded rays are degenerate (no camera fits) is left out, so fewer than n may come back;
        RuntimeError if none fits."""
        _check_count(n, "n")
        obs_sq, K_sq = self.prepare(observation, K_obs, "observation")
        gen = self._generator_for(seed)
        with self._autocast():
            obs_tok = self.image_tokens(obs_sq)
            cams, imgs = generation.propose_cameras(self.model, obs_tok.expand(n, -1), self.sampling, gen,
                                                    with_views=True)
        w2c, kept = self._cameras(cams, K_sq)
        images = self._images(imgs[kept])
        return [PredictedView(image=im, K=K_sq.copy(), w2c=T) for im, T in zip(images, w2c)]

    def unconditional_view(self, observation, K_obs=None, seed=None) -> PredictedView:
        """A view sampled from p(i | o) ([o, <EST>] -> i) with no camera given; its camera is then
        sampled from p(c | i, o) in the same pass (the <EST> order) and recovered with the
        observation's intrinsics."""
        obs_sq, K_sq = self.prepare(observation, K_obs, "observation")
        gen = self._generator_for(seed)
        vocab, layout = self.model.config.vocabulary, self.model.config.layout
        with self._autocast():
            prefix = build_prefix(vocab, layout, self.image_tokens(obs_sq), TASK_EST)
            ids = generation.generate_segments(self.model, prefix, ["image", "camera"], self.sampling, gen)
        img_codes, cam_codes = ids[:, : layout.n], vocab.ids_to_camera(ids[:, layout.n:])
        w2c, _ = self._cameras(cam_codes, K_sq)
        return PredictedView(image=self._images(img_codes)[0], K=K_sq, w2c=w2c[0])


def expected_view(views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-pixel mean as (S,S,3) uint8 RGB, per-pixel standard deviation as (S,S) float32 in 0-255
    intensity units, averaged over R, G, B) of sampled views (k,S,S,3) uint8 RGB, k >= 1."""
    v = np.asarray(views, dtype=np.float32)
    if v.ndim != 4 or v.shape[-1] != 3 or len(v) < 1:
        raise ValueError(f"views: expected (k, S, S, 3) RGB with k >= 1, got shape {v.shape}")
    mean = np.clip(np.rint(v.mean(axis=0)), 0, 255).astype(np.uint8)
    return mean, v.std(axis=0).mean(axis=-1).astype(np.float32)


def _check_image(image, name: str) -> tuple[int, int]:
    """(H, W) of a valid (H, W, 3) uint8 RGB numpy image; ValueError naming the problem otherwise."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name}: expected an (H, W, 3) uint8 RGB numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: expected shape (H, W, 3) RGB, got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8, got {image.dtype}")
    h, w = image.shape[:2]
    if min(h, w) < 1 or max(h, w) > MAX_IMAGE_SIDE:
        raise ValueError(f"{name}: image size {w}x{h} outside [1, {MAX_IMAGE_SIDE}]")
    return h, w


def _check_count(n, name: str, minimum: int = 1) -> None:
    if isinstance(n, bool) or int(n) != n or n < minimum:
        what = " (0 = all the samples)" if minimum == 0 else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{what}, got {n!r}")
