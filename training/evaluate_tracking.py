"""Replay the simulated camera offline: keyframe tracking against reading every frame directly.

    python -m training.evaluate_tracking --model models/gst_small --seeds 0-8 --start 15 \
        --frames 36 --out outputs/tracking [--keyframe-deg 30] [--size 256]

Per seed, the scene and orbit the demo's simulated camera draws (gst_ros.sim.moving_camera with
the demo's settings: two textured objects, 5 Hz, 20 s per orbit, square images of --size px).
Frame --start is the reference view and the next --frames frames are estimated relative to it
through gst_ros.engine.tracking.KeyframeTracker twice: with --keyframe-deg (keyframes) and with 0
(every frame read directly against the reference). Unlike the live demo, every frame is read
(no frame is dropped while the model is busy), so both modes see the same frames.

Error = geodesic angle between the estimated and the true relative rotation
(w2c_t @ inv(w2c_ref), world = the reference camera's optical frame); "turned" = the true
relative rotation's angle. Printed and written to --out: summary.md (per mode: the mean over
seeds of the median error and of accuracy at 15 / 30 deg, and the median error and accuracy at
15 deg by how far the camera had turned), per_frame.csv (seed, mode, frame, turned, error, the
keyframe an estimate was chained through: 0 = direct).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gst_ros.engine.tracking import KeyframeTracker
from gst_ros.geometry import invert_pose, rotation_error_deg
from training.evaluate import markdown_table
from training.logging_utils import CSVLogger

TURNED_BINS = ((0.0, 60.0), (60.0, 90.0), (90.0, 120.0), (120.0, 180.1))
DEMO_RATE_HZ, DEMO_PERIOD_S, DEMO_OBJECTS = 5.0, 20.0, 2


def parse_seeds(text: str) -> list[int]:
    """'0-8' or '0,3,5' or a mix ('0-2,7') -> [0, 1, 2, 7]."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return seeds


def replay(engine, seed: int, start: int, frames: int, size: int, keyframe_degs: dict[str, float],
           progress: bool = False) -> list[dict]:
    """Rows {seed, mode, frame, turned_deg, rot_err_deg, keyframe} of one seed's orbit, every
    mode (name -> keyframe_deg) estimating the same frames against frame `start`."""
    from gst_ros.sim.moving_camera import MovingCamera

    world = MovingCamera(seed, size, size, num_objects=DEMO_OBJECTS, rate_hz=DEMO_RATE_HZ,
                         period_s=DEMO_PERIOD_S)
    try:
        shots = [world.render(f) for f in tqdm(range(start, start + frames + 1), desc=f"render seed {seed}",
                                               disable=not progress, leave=False)]
    finally:
        world.close()
    (ref_image, ref_w2c), K = shots[0], world.K
    rows = []
    for mode, keyframe_deg in keyframe_degs.items():
        tracker = KeyframeTracker(engine, keyframe_deg=keyframe_deg)
        tracker.set_reference(ref_image, K)
        for i, (image, w2c) in enumerate(shots[1:], start=1):
            truth = w2c @ invert_pose(ref_w2c)
            est = tracker.estimate(image, K)
            rows.append({"seed": seed, "mode": mode, "frame": i,
                         "turned_deg": float(rotation_error_deg(truth[:3, :3], np.eye(3))),
                         "rot_err_deg": float(rotation_error_deg(est.w2c[:3, :3], truth[:3, :3])),
                         "keyframe": est.keyframe})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """One row per mode: mean over seeds of the median error and of accuracy at 15 / 30 deg, then
    per TURNED_BINS bin the number of frames, their median error and accuracy at 15 deg."""
    out = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        seeds = sorted({r["seed"] for r in mine})
        per_seed = [np.array([r["rot_err_deg"] for r in mine if r["seed"] == s]) for s in seeds]
        row = {"mode": mode, "seeds": len(seeds),
               "median_err_deg": float(np.mean([np.median(e) for e in per_seed])),
               "acc@15": float(np.mean([np.mean(e < 15.0) for e in per_seed])),
               "acc@30": float(np.mean([np.mean(e < 30.0) for e in per_seed])),
               "chained": float(np.mean([r["keyframe"] > 0 for r in mine]))}
        turned = np.array([r["turned_deg"] for r in mine])
        err = np.array([r["rot_err_deg"] for r in mine])
        for lo, hi in TURNED_BINS:
            m = (turned >= lo) & (turned < hi)
            name = f"{lo:.0f}-{min(hi, 180.0):.0f}"
            row[f"n {name}"] = int(m.sum())
            row[f"median {name}"] = float(np.median(err[m])) if m.any() else float("nan")
            row[f"acc@15 {name}"] = float(np.mean(err[m] < 15.0)) if m.any() else float("nan")
        out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate_tracking", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GST model directory (default: the shipped model)")
    ap.add_argument("--seeds", default="0-8", help="scene seeds, e.g. 0-8 or 0,3,5")
    ap.add_argument("--start", type=int, default=15, help="orbit frame that is the reference view")
    ap.add_argument("--frames", type=int, default=36, help="frames estimated after the reference")
    ap.add_argument("--size", type=int, default=256, help="rendered image size (square, pixels)")
    ap.add_argument("--keyframe-deg", type=float, default=30.0, help="the keyframe mode's spacing")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        ap.error(f"--seeds: {e}")
    if args.frames < 1 or args.start < 0 or args.keyframe_deg <= 0:
        ap.error("--frames must be >= 1, --start >= 0 and --keyframe-deg > 0")
    from gst_ros.engine.engine import EngineConfig, GSTEngine, ModelNotFoundError, default_model_dir

    try:
        engine = GSTEngine(EngineConfig(model_dir=args.model or str(default_model_dir()), device=args.device))
    except ModelNotFoundError as e:
        print(f"evaluate_tracking: {e}", file=sys.stderr)
        return 2
    modes = {f"keyframes every {args.keyframe_deg:g} deg": args.keyframe_deg, "direct": 0.0}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = CSVLogger(out / "per_frame.csv", resume=False)
    rows = []
    for seed in tqdm(seeds, desc="seeds", disable=args.no_progress):
        for r in replay(engine, seed, args.start, args.frames, args.size, modes,
                        progress=not args.no_progress):
            log.log(**r)
            rows.append(r)
    text = markdown_table(summarize(rows), digits=2)
    (out / "summary.md").write_text(text)
    print(text)
    print(f"wrote {out / 'summary.md'} and {out / 'per_frame.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
