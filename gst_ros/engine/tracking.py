"""Keyframe tracking: a moving camera's pose relative to the reference view, through keyframes.

A GST reads the pose of one view relative to another; the further apart the two views, the
less it sees in common and the worse the reading (the shipped model: model card, by angular
baseline). A camera that keeps moving away from the reference view eventually leaves the range
where the direct reading holds. KeyframeTracker keeps a few earlier frames as keyframes, each
with the pose it was estimated at, and reads every new frame twice: against the reference
(direct) and against the keyframe nearest the previous estimate, composing that reading with
the keyframe's pose (chained). Of the two it returns the one whose predicted rotation variance
is lower (the covariance comes from the model: its heads, or its samples' spread); a chain is
never surer than its keyframe, so when the direct reading is surer than the keyframe the second
reading is skipped. A frame whose estimate is more than `keyframe_deg` from every keyframe (and
from the reference) becomes a keyframe itself.

Frames and conventions as GSTEngine.estimate_pose: w2c of the camera, world = the reference
camera's optical frame (OpenCV axes), translation in the model's unit scene scale (the
reference camera 1 unit from the scene centre SCENE_CENTER_REF = (0, 0, 1)); covariance in ROS
order [x, y, z, rot_x, rot_y, rot_z]: the camera centre in the reference frame, then a rotation
vector about the reference frame's fixed axes (c2w rotation Q = Exp(w) Q_mean).

Chaining a link (the frame read against keyframe k, in k's own frame and unit scale) onto k's
pose: the scene centre P = SCENE_CENTER_REF is shared, so k's unit is its distance
s = |P - C_k| to the scene centre in the reference's units, and with c2w rotations Q and centres C,
    Q = Q_k Q_link,    C = C_k + s Q_k C_link.
To first order (w_k, dC_k: k's errors; w_l, dC_l: the link's, about k's axes), with
v = s Q_k C_link and u = (P - C_k) / s (so ds = -u . dC_k),
    w  = w_k + Q_k w_l,    dC = (I - v u^T / s) dC_k - [v]x w_k + s Q_k dC_l,
so the covariance is J_k S_k J_k^T + J_l S_l J_l^T (errors of k and of the link independent).
Chained errors add up, so a chain wins only where the direct reading is predicted to be worse.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from gst_ros.geometry import SCENE_CENTER_REF, camera_center, invert_pose, relative_pose, rotation_error_deg
from gst_ros.geometry.rotations import skew

DEFAULT_KEYFRAME_DEG = 30.0
MAX_KEYFRAMES = 32
MIN_KEYFRAME_DISTANCE = 1e-3   # unit scene scale: a keyframe's distance to the scene centre is its unit


@dataclass
class Keyframe:
    image: np.ndarray      # (H,W,3) uint8 RGB as given
    K: np.ndarray | None   # its intrinsics (pixels), None = the engine's default
    w2c: np.ndarray        # (4,4) its camera, world = reference optical frame, unit scene scale
    covariance: np.ndarray  # (6,6) of that pose, ROS order (module docstring)


def chain_pose(keyframe_w2c: np.ndarray, keyframe_cov: np.ndarray, link_w2c: np.ndarray,
               link_cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(w2c (4,4), covariance (6,6)) of a camera read against a keyframe, in the reference frame.

    keyframe_w2c / keyframe_cov: the keyframe's camera in the reference frame (world = reference
    optical frame, OpenCV axes, the reference's unit scene scale) and its covariance;
    link_w2c / link_cov: the camera read against the keyframe (world = the keyframe's optical
    frame, the keyframe's unit scene scale, i.e. its own distance to the scene centre = 1).
    Covariances in ROS order [x, y, z, rot_x, rot_y, rot_z] (centre, then rotation vector about
    the fixed axes of the frame the pose is expressed in). Composition and first-order
    propagation in the module docstring."""
    kf_c2w, link_c2w = invert_pose(keyframe_w2c), invert_pose(link_w2c)
    Q_k, C_k = kf_c2w[:3, :3], kf_c2w[:3, 3]
    s = float(np.linalg.norm(SCENE_CENTER_REF - C_k))
    u = (SCENE_CENTER_REF - C_k) / s
    v = s * Q_k @ link_c2w[:3, 3]
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = Q_k @ link_c2w[:3, :3], C_k + v
    J_k = np.eye(6)
    J_k[:3, :3] -= np.outer(v, u) / s
    J_k[:3, 3:] = -skew(torch.from_numpy(v)).numpy()
    J_l = np.zeros((6, 6))
    J_l[:3, :3], J_l[3:, 3:] = s * Q_k, Q_k
    cov = J_k @ keyframe_cov @ J_k.T + J_l @ link_cov @ J_l.T
    return invert_pose(c2w), 0.5 * (cov + cov.T)


def relative_to_keyframe(keyframe_w2c: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    """(4,4) w2c of a camera as seen from a keyframe: world = the keyframe's optical frame (OpenCV
    axes), unit = the keyframe's distance to the scene centre (as the engine reads any pair).
    keyframe_w2c, w2c: both in the reference frame (world = reference optical frame, the
    reference's unit scene scale). The inverse of chain_pose's composition (module docstring):
    Q_link = Q_k^T Q, C_link = Q_k^T (C - C_k) / s, so chain_pose(keyframe_w2c, ., link, .) gives
    w2c back."""
    link = relative_pose(keyframe_w2c, w2c)
    link[:3, 3] /= float(np.linalg.norm(SCENE_CENTER_REF - camera_center(keyframe_w2c)))
    return link


@dataclass
class NearestView:
    """The seen view nearest a requested camera (nearest_view, KeyframeTracker.nearest_view)."""
    image: np.ndarray       # (H,W,3) uint8 RGB as given: the reference or a keyframe
    K: np.ndarray | None    # its intrinsics (pixels), None = the engine's default
    w2c: np.ndarray         # (4,4) the requested camera relative to it (relative_to_keyframe)
    keyframe: int           # 0 = the reference, k = keyframe k (index + 1)
    angle_deg: float        # rotation between that view's camera and the requested one
    view_w2c: np.ndarray    # (4,4) that view's own camera in the reference frame (identity for the
                            # reference; a keyframe's estimated pose)


def rotation_variance(covariance: np.ndarray) -> float:
    """Total predicted rotation variance (rad^2): the trace of the rotation block."""
    return float(np.trace(np.asarray(covariance)[3:, 3:]))


@dataclass
class KeyframeTracker:
    """Pose of each new frame of one camera relative to the reference view, read directly and
    through the nearest keyframe, whichever the model predicts is better (module docstring).

    engine: a GSTEngine (or anything with its estimate_pose); keyframe_deg: a frame whose
    estimate is further than this from every keyframe and the reference becomes a keyframe;
    0 turns keyframes off (every frame is read against the reference only)."""

    engine: object
    keyframe_deg: float = DEFAULT_KEYFRAME_DEG
    max_keyframes: int = MAX_KEYFRAMES
    reference: tuple | None = None                   # (image, K) of the reference view
    keyframes: list[Keyframe] = field(default_factory=list)
    _previous: np.ndarray | None = None               # w2c of the last estimate

    def set_reference(self, image: np.ndarray, K=None) -> None:
        """A new reference view: every keyframe (all relative to the old one) is dropped."""
        self.reference = (image, K)
        self.keyframes.clear()
        self._previous = None

    def estimate(self, image: np.ndarray, K=None, samples: int = 4):
        """PoseEstimate (engine.PoseEstimate) of the camera that took `image` relative to the
        reference, with `keyframe` set to the index + 1 of the keyframe it was chained through
        (0 = read directly against the reference). RuntimeError before set_reference."""
        if self.reference is None:
            raise RuntimeError("KeyframeTracker.estimate before set_reference")
        t0 = time.perf_counter()
        ref_image, ref_K = self.reference
        best = self.engine.estimate_pose(ref_image, image, K_obs=ref_K, K_target=K, samples=samples)
        if self.keyframe_deg <= 0:
            return best
        if self.keyframes and self._previous is not None:
            i, kf = min(enumerate(self.keyframes),
                        key=lambda e: rotation_error_deg(e[1].w2c[:3, :3], self._previous[:3, :3]))
        else:
            kf = None
        # a chain is at least as unsure as its keyframe: when the direct reading is surer than
        # the keyframe itself, the chain cannot win and is not read
        if kf is not None and rotation_variance(kf.covariance) < rotation_variance(best.covariance):
            link = self.engine.estimate_pose(kf.image, image, K_obs=kf.K, K_target=K, samples=samples)
            w2c, cov = chain_pose(kf.w2c, kf.covariance, link.w2c, link.covariance)
            if rotation_variance(cov) < rotation_variance(best.covariance):
                best = chained_estimate(link, w2c, cov, i + 1)
        best.latency_s = time.perf_counter() - t0
        self._previous = best.w2c
        poses = [np.eye(4)] + [k.w2c for k in self.keyframes]
        at_centre = np.linalg.norm(SCENE_CENTER_REF - invert_pose(best.w2c)[:3, 3]) < MIN_KEYFRAME_DISTANCE
        far = min(rotation_error_deg(best.w2c[:3, :3], p[:3, :3]) for p in poses) > self.keyframe_deg
        if far and not at_centre:   # a camera at the scene centre has no scale to chain with
            if len(self.keyframes) >= self.max_keyframes:
                self.keyframes.pop(0)
            self.keyframes.append(Keyframe(image, None if K is None else np.asarray(K, np.float64),
                                           best.w2c.copy(), best.covariance.copy()))
        return best

    def nearest_view(self, w2c: np.ndarray) -> NearestView:
        """nearest_view over this tracker's reference and keyframes. RuntimeError before
        set_reference."""
        if self.reference is None:
            raise RuntimeError("KeyframeTracker.nearest_view before set_reference")
        return nearest_view(self.reference, self.keyframes, w2c)


def nearest_view(reference: tuple, keyframes: list[Keyframe], w2c: np.ndarray) -> NearestView:
    """The seen view, the reference ((image, K) with the identity camera) or one of `keyframes`,
    whose camera is nearest in rotation the requested camera `w2c` ((4,4), world = reference
    optical frame, OpenCV axes, the reference's unit scene scale), with that camera expressed
    relative to it (relative_to_keyframe), ready for GSTEngine.predict_view(view.image, view.w2c,
    K_obs=view.K): predicting from a nearby view leaves the model less to imagine than predicting
    from a distant reference. The keyframes' poses are estimates, so their errors carry over."""
    w2c = np.asarray(w2c, dtype=np.float64)
    angle = float(rotation_error_deg(np.eye(3), w2c[:3, :3]))
    best = NearestView(reference[0], reference[1], w2c, 0, angle, np.eye(4))
    for i, kf in enumerate(keyframes):
        angle = float(rotation_error_deg(kf.w2c[:3, :3], w2c[:3, :3]))
        if angle < best.angle_deg:
            best = NearestView(kf.image, kf.K, relative_to_keyframe(kf.w2c, w2c), i + 1, angle, kf.w2c)
    return best


def chained_estimate(link, w2c: np.ndarray, covariance: np.ndarray, keyframe: int):
    """A PoseEstimate for a chained reading: the link's estimate (its type and uncertainty
    source) with the composed pose and covariance, confidence and rotation spread recomputed
    from that covariance (engine.confidence_from_covariance), samples_w2c = the one pose."""
    from gst_ros.engine.engine import confidence_from_covariance

    confidence, rms_deg = confidence_from_covariance(covariance)
    return type(link)(w2c=w2c, samples_w2c=w2c[None], covariance=covariance, confidence=confidence,
                      rotation_spread_deg=rms_deg, latency_s=link.latency_s,
                      uncertainty_from=link.uncertainty_from, keyframe=keyframe)
