"""Predict the image a camera would see from a new viewpoint, given one observation image.

The new camera is given in the observation camera's optical frame (OpenCV axes: x right,
y down, z forward), translation in the model's unit scene scale, in one of two ways:

  --pose tx,ty,tz,qx,qy,qz,qw   the new camera's pose in that frame: its centre (tx, ty, tz) and
                                its orientation as a quaternion (x, y, z, w), i.e. the transform
                                X_observation = R X_new + t (TF parent = observation,
                                child = new camera). `gst pose` prints the same quantities, so
                                its output can be fed back here. Identity: 0,0,0,0,0,0,1.
  --orbit AZ_DEG,EL_DEG         orbit around the pivot point P = (0, 0, 1), one unit in front of
                                the observation camera (the normalised scene centre), keeping
                                the distance 1 and looking at P with image-up as close as
                                possible to the observation's image-up (-y). The new centre is
                                P + (sin(az) cos(el), -sin(el), -cos(az) cos(el)): AZ > 0 moves
                                the camera to the right (+x), EL > 0 moves it up (-y);
                                0,0 is the observation camera itself.

Write a value list that starts with a minus sign with `=`: `--orbit=-30,10`, `--pose=-0.2,0,0,0,0,0,1`.

The predicted view is written as a PNG at the model's resolution (square); its intrinsics are
the observation's after the centre crop and resize (printed). With --samples N > 1 (default: the
engine's, 16) N views are sampled and each is scored by how close the model places it to the
requested camera (the pose it reads back from the sample against the one asked for); the PNG is
the per-pixel mean of the --keep M best (default 4; 0 = all N): the expected view of the
requested side. The N samples' per-pixel standard deviation is written beside it as
<out>_spread.png (grey level = deviation in 0-255 intensity units: bright where the model is
unsure) and the single best sample (a sharp view from the requested side) as <out>_sample.png;
--samples 1 writes one sample.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from gst_ros.cli.pose import add_engine_arguments, engine_from_args, parse_floats, pose_record

HELP = "predict the view from a new camera pose given an observation image"


def orbit_w2c(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """w2c (4,4) of a camera orbiting the pivot P = (0, 0, 1) of the observation camera's
    optical frame (OpenCV axes) at distance 1, looking at P; see the module docstring for the
    angle conventions. orbit_w2c(0, 0) is the identity."""
    from gst_ros.geometry import look_at

    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    if abs(math.cos(el)) < 1e-6:
        raise ValueError(f"--orbit elevation {elevation_deg} deg looks straight along the up axis: "
                         f"choose |EL| < 90")
    pivot = np.array([0.0, 0.0, 1.0])
    eye = pivot + np.array([math.sin(az) * math.cos(el), -math.sin(el), -math.cos(az) * math.cos(el)])
    return look_at(eye, pivot, up=(0.0, -1.0, 0.0))


def pose_w2c(values) -> np.ndarray:
    """w2c (4,4) from `tx,ty,tz,qx,qy,qz,qw`: the camera's pose in the observation frame."""
    from gst_ros.geometry import w2c_from_ros_camera_pose

    values = np.asarray(values, dtype=np.float64)
    return w2c_from_ros_camera_pose(values[:3], values[3:])


def check_image_out(path, flag: str = "--out") -> Path:
    """`path` as a Path, or ValueError naming `flag` unless an image can be written there: not an
    existing directory, and an extension OpenCV writes (.png; also .jpg, .bmp, ...). Checked
    before any model is loaded, so a bad name costs nothing."""
    import cv2

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory: give an image file name, e.g. {path / 'view.png'}")
    if not path.suffix or not cv2.haveImageWriter(str(path)):
        raise ValueError(f"{flag} {path}: no image format for the extension {path.suffix or '(none)'!r}; "
                         f"use .png")
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"{flag} {path}: {path.parent} is a file, not a folder")
    return path


def save_png(path, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB image as PNG (parent folders created)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("observation", help="observation image file")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--pose", type=lambda s: parse_floats(s, 7, "--pose"), metavar="TX,TY,TZ,QX,QY,QZ,QW",
                       help="new camera pose in the observation camera frame (see above)")
    where.add_argument("--orbit", type=lambda s: parse_floats(s, 2, "--orbit"), metavar="AZ_DEG,EL_DEG",
                       help="orbit around the point one unit in front of the camera (see above)")
    parser.add_argument("--out", required=True, help="output PNG file")
    parser.add_argument("--samples", type=int, default=None, metavar="N",
                        help="views sampled (default: the engine's view_samples, 16; 1 = a single sample)")
    parser.add_argument("--keep", type=int, default=None, metavar="M",
                        help="the output averages the M samples placed closest to the requested camera "
                             "(default: the engine's view_keep, 4; 0 = all N)")
    parser.add_argument("--json", action="store_true", help="print the view's camera as JSON")
    add_engine_arguments(parser)


def run(args) -> int:
    from gst_ros.engine.engine import ModelNotFoundError
    from gst_ros.preprocess import load_image

    try:
        check_image_out(args.out)
        w2c = pose_w2c(args.pose) if args.pose is not None else orbit_w2c(*args.orbit)
        obs = load_image(args.observation)
        engine = engine_from_args(args)
        view = engine.predict_view(obs, w2c, K_obs=args.K, samples=args.samples, keep=args.keep)
    except (ModelNotFoundError, ValueError) as e:
        print(f"gst view: {e}", file=sys.stderr)
        return 2
    path = save_png(args.out, view.image)
    rec = {"file": str(path), **pose_record(view.w2c), "K": view.K.tolist(), "samples": view.samples,
           "kept": view.kept}
    grey = view.spread_image()
    if grey is not None:
        spread_path = path.with_name(path.stem + "_spread.png")
        rec["spread_file"] = str(save_png(spread_path, np.repeat(grey[..., None], 3, axis=-1)))
        rec["sample_file"] = str(save_png(path.with_name(path.stem + "_sample.png"), view.consistent_sample))
    if args.json:
        print(json.dumps(rec, indent=2))
    else:
        p, q = rec["position"], rec["quaternion_xyzw"]
        what = ("one sample" if view.samples == 1 else f"mean of all {view.samples} samples"
                if view.kept == view.samples else
                f"mean of the {view.kept} of {view.samples} samples closest to the camera")
        print(f"wrote {path} ({view.image.shape[1]}x{view.image.shape[0]}, {what})"
              + (f", {rec['spread_file']} and {rec['sample_file']} (most consistent sample)"
                 if "spread_file" in rec else ""))
        print("camera position " + " ".join(f"{v:+.4f}" for v in p)
              + "  quaternion (xyzw) " + " ".join(f"{v:+.4f}" for v in q))
        print(f"K fx={view.K[0, 0]:.2f} fy={view.K[1, 1]:.2f} cx={view.K[0, 2]:.2f} cy={view.K[1, 2]:.2f}")
    return 0
