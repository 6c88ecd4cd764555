"""Calibrate (and check) the uncertainty the read-out heads predict, on held-out pairs.

    python -m training.calibrate_pose --model models/gst_small \
        --root outputs/known/data --split test_views --scenes 100: --write
    python -m training.calibrate_pose --model models/gst_small --root outputs/known/data \
        --split test_objects --views 6 --scenes 0:30

A model with pose and centre heads estimates a pose in one pass (GSTEngine, pose_estimate
"head") and a covariance from the heads themselves (gst_ros.engine.engine.head_pose_estimate):
the rotation's from how far the pose head's matrix has shrunk from a rotation, the centre's from
the centre head's log-variances. Those are right in shape but not in size (a model fits its
training pairs better than new ones), so each gets one factor, fitted here by maximum likelihood
on held-out pairs: for pair i with predicted covariance S_i (before the floor), floor F and error
e_i (the rotation vector of R_true R_pred^T about the reference axes, in the covariance's
convention; or the centre's error), the factor a minimises the mean Gaussian negative
log-likelihood of e_i under a S_i + F.

Pairs come from images or from token shards:
- --root (with --data, --split, --views): every ordered pair of the first --views views of each
  scene, estimated through GSTEngine.estimate_pose as users call it, with the read-out the
  engine is configured for (both ways unless --one-way, averaged with the left-right mirrored
  pair unless --no-mirror). Fit the shipped model's factors this way.
- --shards (training/pretokenize.py): the observation's and target's image tokens and the true
  relative camera exactly as the transformer saw them in training, no image decoded; faster,
  but a token pair cannot be mirrored, so it needs --no-mirror.
--scenes A:B takes scenes A..B-1 of the split (or of the shards' manifest); the evaluation
(training/evaluate.py) reads the first scenes of a split, so fit on scenes it does not use.
--write stores {"rotation_var_scale", "center_var_scale", ...} as `pose_calibration` in
<model>/gst/config.json, which the engine reads, with the read-out they were fitted for.

Prints, before and after calibration: the median centre error (and, for comparison, that of the
head's rotation placed on its optical axis through the scene centre at distance 1, the read-out
of a model with a pose head only), the mean NLL, and the coverage (share of pairs whose squared
Mahalanobis error is within the chi-square(3) 68% / 95% quantiles, ideal 0.68 / 0.95), and the
rank correlation between the predicted RMS rotation deviation and the actual rotation error (does
a larger predicted uncertainty mean a larger error?). Writes them to --out (JSON) when given, with
a reliability plot beside it (predicted RMS deviation against actual error, per pair).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gst_ros.engine.engine import (
    POSITION_VAR_FLOOR,
    ROTATION_VAR_FLOOR,
    EngineConfig,
    GSTEngine,
    head_pose_estimate,
    pose_facing_scene_center,
)
from gst_ros.engine.generation import pose_readout
from gst_ros.geometry import invert_pose, so3_log
from gst_ros.geometry.conventions import camera_center
from gst_ros.models.transformer import HeadReadout
from training.evaluate import normalized_cameras, scenes_from_reader
from training.logging_utils import pyplot, save_figure
from training.token_shards import TokenShardDataset, collate

CHI2_3 = {0.68: 3.5059, 0.95: 7.8147}  # chi-square quantiles, 3 degrees of freedom
SCALE_GRID = np.exp(np.linspace(math.log(1e-3), math.log(1e3), 601))


def parse_scene_range(text: str, n_scenes: int) -> range:
    """"A:B" (either side may be empty) -> range of scene indices, clipped to [0, n_scenes)."""
    a, sep, b = text.partition(":")
    if not sep:
        raise ValueError(f"--scenes expects A:B (e.g. 100: or 0:60), got {text!r}")
    try:
        lo = int(a) if a.strip() else 0
        hi = int(b) if b.strip() else n_scenes
    except ValueError:
        raise ValueError(f"--scenes expects integers A:B, got {text!r}") from None
    lo, hi = max(0, lo), min(n_scenes, hi)
    if lo >= hi:
        raise ValueError(f"--scenes {text!r} selects no scene of {n_scenes}")
    return range(lo, hi)


ERROR_KEYS = ("rot_cov", "pos_cov", "rot_err", "pos_err", "angle_deg", "rms_rot_deg", "placement_err")
UNCALIBRATED = {"rotation_var_scale": 1.0, "center_var_scale": 1.0}


def _check_centre_head(engine: GSTEngine) -> None:
    if engine.model.center_head is None:
        raise ValueError(f"{engine.model_dir}: the transformer has no centre head (GSTConfig.center_head): "
                         "nothing to calibrate")


def _add_pair(out: dict, w2c: np.ndarray, cov: np.ndarray, rms_rot_deg: float, true: np.ndarray) -> None:
    """Append one pair's entries (ERROR_KEYS) to `out`: the estimate w2c (4,4) with its
    uncalibrated covariance cov (6,6, ROS order [x, y, z, rot_x, rot_y, rot_z], floors included)
    against the true relative camera `true` (4,4 w2c); world = the observation camera's optical
    frame (OpenCV axes), unit scene scale."""
    floors = np.zeros((6, 6))
    floors[:3, :3] = POSITION_VAR_FLOOR * np.eye(3)
    floors[3:, 3:] = ROTATION_VAR_FLOOR * np.eye(3)
    cov = cov - floors
    q_true, q_pred = invert_pose(true)[:3, :3], invert_pose(w2c)[:3, :3]
    w = so3_log(torch.from_numpy(q_true @ q_pred.T)).numpy()
    out["rot_cov"].append(cov[3:, 3:])
    out["pos_cov"].append(cov[:3, :3])
    out["rot_err"].append(w)
    out["pos_err"].append(camera_center(true) - camera_center(w2c))
    out["angle_deg"].append(math.degrees(float(np.linalg.norm(w))))
    out["rms_rot_deg"].append(rms_rot_deg)
    placed = pose_facing_scene_center(w2c[:3, :3], 1.0)  # the read-out without a centre head
    out["placement_err"].append(float(np.linalg.norm(camera_center(true) - camera_center(placed))))


def head_errors(engine: GSTEngine, data: TokenShardDataset, indices, batch: int = 64,
                progress: bool = True) -> dict:
    """Per pair of token shards: the uncalibrated predicted covariances and the actual errors of
    the heads' pose (read both ways when engine.config.pose_symmetric; token pairs cannot be
    mirrored, so never with pose_mirror: use image_errors for that).

    Returns {"rot_cov" (P,3,3) rad^2 and "pos_cov" (P,3,3) (unit scene scale)^2 without floors,
    "rot_err" (P,3) rotation vector of Q_true Q_pred^T (Q = camera-to-reference rotation, about
    the reference frame's fixed axes, rad), "pos_err" (P,3) true minus predicted camera centre in
    the reference frame, "angle_deg" (P,) rotation error, "rms_rot_deg" (P,) predicted RMS
    rotation deviation, "placement_err" (P,) centre error of the same rotation placed on its
    optical axis through the scene centre at distance 1 (what a pose head alone implies)}."""
    _check_centre_head(engine)
    out = {k: [] for k in ERROR_KEYS}
    indices = list(indices)
    for start in tqdm(range(0, len(indices), batch), desc="calibrate", disable=not progress):
        items = collate([data[i] for i in indices[start:start + batch]])
        readout = pose_readout(engine.model, items["observation"].to(engine.device),
                               items["image"].to(engine.device), engine.config.pose_symmetric)
        for j in range(len(items["observation"])):
            one_readout = HeadReadout(*(None if t is None else t[j:j + 1] for t in readout))
            w2c, cov, _, rms = head_pose_estimate(one_readout, **UNCALIBRATED)
            _add_pair(out, w2c, cov, rms, items["rel_w2c"][j].numpy())
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def image_errors(engine: GSTEngine, scenes, progress: bool = True) -> dict:
    """head_errors' dict for every ordered pair (i, j), i != j, of each scene's views (EvalScene,
    training.evaluate), estimated through GSTEngine.estimate_pose exactly as users call it (the
    images as given, cropped and tokenised by the engine, read as EngineConfig says, mirrored
    pairs included), without calibration. The true pair: the scene's cameras relative to view i,
    scaled so that view i is 1 from the scene centre all the scene's optical axes point at
    (training.evaluate.normalized_cameras, as the training pairs are)."""
    _check_centre_head(engine)
    out = {k: [] for k in ERROR_KEYS}
    stored, engine.pose_calibration = engine.pose_calibration, dict(UNCALIBRATED)
    try:
        for scene in tqdm(scenes, desc="calibrate", disable=not progress):
            n = len(scene.w2c)
            for i in range(n):
                order = [i] + [k for k in range(n) if k != i]
                rel = normalized_cameras(np.asarray(scene.w2c, dtype=np.float64)[order])
                for pos, j in enumerate(order[1:], start=1):
                    est = engine.estimate_pose(scene.images[i], scene.images[j], scene.K[i], scene.K[j],
                                               estimate="head")
                    _add_pair(out, est.w2c, est.covariance, est.rotation_spread_deg, rel[pos])
    finally:
        engine.pose_calibration = stored
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def gaussian_nll(err: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """(P,) negative log-likelihood of errors err (P,3) under N(0, cov (P,3,3)), without the
    constant 1.5 log(2 pi)."""
    sign, logdet = np.linalg.slogdet(cov)
    maha = np.einsum("pi,pi->p", err, np.linalg.solve(cov, err[..., None])[..., 0])
    return 0.5 * (logdet + maha)


def fit_scale(err: np.ndarray, cov: np.ndarray, floor: float) -> float:
    """The factor a (on a log grid 1e-3..1e3) minimising the mean NLL of err under a cov + floor I."""
    eye = floor * np.eye(3)
    nll = [float(np.mean(gaussian_nll(err, a * cov + eye))) for a in SCALE_GRID]
    return float(SCALE_GRID[int(np.argmin(nll))])


def coverage(err: np.ndarray, cov: np.ndarray) -> dict:
    """Share of errors within the chi-square(3) 68% and 95% ellipsoids of cov."""
    maha = np.einsum("pi,pi->p", err, np.linalg.solve(cov, err[..., None])[..., 0])
    return {f"{int(q * 100)}%": float(np.mean(maha <= c)) for q, c in CHI2_3.items()}


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties broken by order; enough for continuous values)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def report(errs: dict, scales: dict) -> dict:
    """NLL and coverage of rotation and centre under the given scales, and the rank correlation of
    predicted and actual rotation error."""
    rot_cov = scales["rotation_var_scale"] * errs["rot_cov"] + ROTATION_VAR_FLOOR * np.eye(3)
    pos_cov = scales["center_var_scale"] * errs["pos_cov"] + POSITION_VAR_FLOOR * np.eye(3)
    return {"rotation_nll": float(np.mean(gaussian_nll(errs["rot_err"], rot_cov))),
            "rotation_coverage": coverage(errs["rot_err"], rot_cov),
            "center_nll": float(np.mean(gaussian_nll(errs["pos_err"], pos_cov))),
            "center_coverage": coverage(errs["pos_err"], pos_cov),
            "rank_corr_predicted_vs_actual_rotation_error": rank_correlation(errs["rms_rot_deg"],
                                                                              errs["angle_deg"]),
            "median_rotation_error_deg": float(np.median(errs["angle_deg"])),
            "median_predicted_rms_rotation_deg": float(np.median(errs["rms_rot_deg"]
                                                                 * math.sqrt(scales["rotation_var_scale"]))),
            "median_center_error": float(np.median(np.linalg.norm(errs["pos_err"], axis=1))),
            "median_center_error_axis_placement": float(np.median(errs["placement_err"]))}


def plot_reliability(errs: dict, scales: dict, path) -> Path:
    """A figure a person can read: per pair, predicted RMS rotation deviation against the actual
    rotation error (the diagonal is a perfectly sized prediction), and the predicted RMS centre
    deviation against the actual centre error."""
    plt = pyplot()
    rot_pred = errs["rms_rot_deg"] * math.sqrt(scales["rotation_var_scale"])
    pos_pred = np.sqrt(np.trace(errs["pos_cov"], axis1=1, axis2=2) * scales["center_var_scale"])
    panels = [(rot_pred, errs["angle_deg"], "rotation (deg)"),
              (pos_pred, np.linalg.norm(errs["pos_err"], axis=1), "camera centre (scene units)")]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, (pred, actual, what) in zip(axes, panels):
        ax.scatter(pred, actual, s=4, alpha=0.3)
        top = float(max(np.percentile(pred, 99), np.percentile(actual, 99)))
        ax.plot([0, top], [0, top], color="k", lw=1, label="error = predicted RMS")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel(f"predicted RMS deviation, {what}")
        ax.set_ylabel(f"actual error, {what}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{len(actual)} held-out pairs", fontsize=10)
    return save_figure(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.calibrate_pose", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="GST model directory (pose and centre heads)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", help="dataset root: read the pairs' images through the engine (every "
                                    "read-out, the mirrored pair included)")
    src.add_argument("--shards", help="held-out token shards (training/pretokenize.py; no mirrored read-out: "
                                      "needs --no-mirror)")
    ap.add_argument("--data", default="synthetic",
                    help="with --root: dataset reader name (training.datasets)")
    ap.add_argument("--split", default="test_views", help="with --root: the split to read")
    ap.add_argument("--views", type=int, default=3, help="with --root: views per scene (all ordered pairs)")
    ap.add_argument("--scenes", default=":", help="scene range A:B of the split / the shards' manifest "
                                                  "(default all)")
    ap.add_argument("--write", action="store_true",
                    help="fit the two factors and store them in <model>/gst/config.json")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--one-way", action="store_true",
                    help="read each pair one way only (EngineConfig.pose_symmetric=False)")
    ap.add_argument("--no-mirror", action="store_true",
                    help="do not average in the left-right mirrored pair (EngineConfig.pose_mirror=False)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None,
                    help="write the figures as JSON here, and a reliability plot beside it (.png)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.shards and not args.no_mirror:
        ap.error("token pairs cannot be mirrored: calibrate from images (--root) or read without the "
                 "mirrored pair (--no-mirror, EngineConfig.pose_mirror=False)")
    from training.datasets import INPUT_ERRORS, build_dataset

    try:
        engine = GSTEngine(EngineConfig(model_dir=args.model, device=args.device,
                                        pose_symmetric=not args.one_way, pose_mirror=not args.no_mirror))
        data = TokenShardDataset(args.shards) if args.shards else None
        reader = None if args.shards else build_dataset(args.data, args.root, args.split)
    except INPUT_ERRORS as e:
        print(f"calibrate_pose: {e}", file=sys.stderr)
        return 2
    if args.shards:
        try:
            scenes = parse_scene_range(args.scenes, len(data.scenes))
        except ValueError as e:
            ap.error(str(e))
        pair_scene = data.pair_scenes()
        indices = np.flatnonzero((pair_scene >= scenes.start) & (pair_scene < scenes.stop))
        errs = head_errors(engine, data, indices, args.batch, progress=not args.no_progress)
        source = {"shards": str(args.shards)}
    else:
        try:
            scenes = parse_scene_range(args.scenes, len(reader))
        except ValueError as e:
            ap.error(str(e))
        found = scenes_from_reader(reader, args.split, args.views, len(scenes), first=scenes.start)
        errs = image_errors(engine, found, progress=not args.no_progress)
        source = {"root": str(args.root), "split": args.split, "views": args.views}
    stored = dict(engine.pose_calibration)
    read = {"pose_symmetric": engine.config.pose_symmetric, "pose_mirror": engine.config.pose_mirror}
    result = {"model": str(args.model), **source, "scenes": f"{scenes.start}:{scenes.stop}",
              "pairs": int(len(errs["angle_deg"])), "read_out": read, "stored_calibration": stored,
              "uncalibrated": report(errs, UNCALIBRATED),
              "with_stored_calibration": report(errs, stored)}
    if args.write:
        fitted = {"rotation_var_scale": fit_scale(errs["rot_err"], errs["rot_cov"], ROTATION_VAR_FLOOR),
                  "center_var_scale": fit_scale(errs["pos_err"], errs["pos_cov"], POSITION_VAR_FLOOR)}
        result["fitted"] = fitted
        result["with_fitted_calibration"] = report(errs, fitted)
        path = Path(args.model) / "gst" / "config.json"
        meta = json.loads(path.read_text())
        meta["pose_calibration"] = {**fitted, "pairs": result["pairs"], **source, **read,
                                    "scenes": f"{scenes.start}:{scenes.stop}"}
        path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        print(f"wrote pose_calibration to {path}", file=sys.stderr)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        scales = result["fitted"] if args.write else stored
        print(f"reliability plot: {plot_reliability(errs, scales, Path(args.out).with_suffix('.png'))}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
