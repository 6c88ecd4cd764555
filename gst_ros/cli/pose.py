"""Estimate where a TARGET image was taken, relative to an OBSERVATION image.

Prints the target camera's pose in the observation camera's frame:
- frame: the observation camera's optical frame, OpenCV axes (x right, y down, z forward);
- position: the target camera's centre in that frame, in the model's unit scene scale (the
  observation camera sits at distance ~1 from the scene it looks at; absolute scale is unknown);
- quaternion (x, y, z, w) and rotation matrix: the target camera's orientation in that frame
  (columns of the matrix = the target camera's x, y, z axes), i.e. the transform
  X_observation = R X_target + position (TF: parent = observation, child = target);
- confidence in [0, 1] and the rotation spread of the sampled poses, or for a model with pose
  and centre heads (the shipped one; nothing is sampled) the RMS rotation deviation they predict.
`--json` prints the same plus the world-to-camera matrix w2c (= inverse of that transform), the
6x6 covariance (ROS order x, y, z, rot_x, rot_y, rot_z) and every sample.

Intrinsics: `--K fx,fy,cx,cy` (pixels of the images as given, both images from that camera), or
`--fov-deg F` (field of view across the image's shorter side), default 49.1 (GST's renders).
A model with pose and centre heads (the shipped one) reads the pose from the two images alone,
so K does not change its pose; it does for `--pose-estimate mean|mode` (docs/engine.md).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

HELP = "estimate the pose of a target image relative to an observation image"


def parse_intrinsics(text: str) -> np.ndarray:
    """`fx,fy,cx,cy` (pixels, OpenCV convention: top-left pixel centre at (0, 0)) -> K (3,3)."""
    from gst_ros.geometry import check_intrinsics

    try:
        fx, fy, cx, cy = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fx,fy,cx,cy (4 numbers), got {text!r}") from None
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    try:
        check_intrinsics(K, "--K")
    except ValueError as e:   # argparse names the flag itself
        raise argparse.ArgumentTypeError(str(e).removeprefix("--K: ")) from None
    return K


def parse_floats(text: str, n: int, what: str) -> np.ndarray:
    """Comma-separated list of exactly n finite floats."""
    try:
        vals = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected {n} comma-separated numbers, "
                                         f"got {text!r}") from None
    if len(vals) != n or not np.isfinite(vals).all():
        raise argparse.ArgumentTypeError(f"{what}: expected {n} finite comma-separated numbers, got {text!r}")
    return vals


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `gst pose`, `gst view` and `gst propose`."""
    cam = parser.add_mutually_exclusive_group()
    cam.add_argument("--K", type=parse_intrinsics, default=None, metavar="FX,FY,CX,CY",
                     help="pixel intrinsics of the input image(s) as given (before any crop)")
    cam.add_argument("--fov-deg", type=float, default=None, metavar="F",
                     help="field of view across the image's shorter side when K is unknown (default 49.1)")
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="GST model directory (default: the shipped models/gst_small)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="tokenizer backend")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--cfg-scale", type=float, default=1.0,
                        help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--pose-estimate", choices=("auto", "mean", "mode", "head"), default="auto",
                        help="mean of the sampled poses, the most likely sample (mode), the pose head's "
                             "rotation (head), or auto: head when the model has one, else mean")
    parser.add_argument("--one-way", action="store_true",
                        help="head read-outs: read the pair one way only (EngineConfig.pose_symmetric off)")
    parser.add_argument("--no-mirror", action="store_true",
                        help="head read-outs: do not average in the pair mirrored left-right "
                             "(EngineConfig.pose_mirror off)")


def engine_from_args(args):
    """A GSTEngine configured from add_engine_arguments' options."""
    from gst_ros.engine.engine import EngineConfig, GSTEngine

    kw = dict(device=args.device, tokenizer_backend=args.backend, seed=args.seed,
              temperature=args.temperature, top_k=args.top_k, cfg_scale=args.cfg_scale,
              pose_estimate=args.pose_estimate, pose_symmetric=not args.one_way,
              pose_mirror=not args.no_mirror)
    if args.model:
        kw["model_dir"] = args.model
    if args.fov_deg is not None:
        kw["default_fov_deg"] = args.fov_deg
    return GSTEngine(EngineConfig(**kw))


def pose_record(w2c: np.ndarray) -> dict:
    """JSON-ready description of a camera given by w2c (world = observation camera frame)."""
    from gst_ros.geometry import invert_pose, matrix_to_quat_xyzw

    c2o = invert_pose(np.asarray(w2c, dtype=np.float64))
    return {
        "position": c2o[:3, 3].tolist(),
        "quaternion_xyzw": matrix_to_quat_xyzw(c2o[:3, :3]).tolist(),
        "rotation": c2o[:3, :3].tolist(),
        "camera_to_observation": c2o.tolist(),
        "w2c": np.asarray(w2c, dtype=np.float64).tolist(),
    }


FRAME_NOTE = ("observation camera optical frame (OpenCV: x right, y down, z forward); "
              "translation in unit scene scale (up to scale)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("observation", help="observation (reference) image file")
    parser.add_argument("target", help="target image file whose camera pose is estimated")
    parser.add_argument("--samples", type=int, default=4,
                        help="number of sampled poses averaged (>= 1; a model with pose and centre heads "
                             "samples none)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_engine_arguments(parser)


def run(args) -> int:
    from gst_ros.engine.engine import ModelNotFoundError
    from gst_ros.preprocess import load_image

    try:
        obs, tgt = load_image(args.observation), load_image(args.target)
        engine = engine_from_args(args)
        est = engine.estimate_pose(obs, tgt, K_obs=args.K, K_target=args.K, samples=args.samples)
    except (ModelNotFoundError, ValueError) as e:
        print(f"gst pose: {e}", file=sys.stderr)
        return 2
    rec = pose_record(est.w2c)
    if args.json:
        out = {"frame": FRAME_NOTE, **rec, "confidence": est.confidence,
               "rotation_spread_deg": est.rotation_spread_deg, "uncertainty_from": est.uncertainty_from,
               "covariance": est.covariance.tolist(),
               "samples": [pose_record(s) for s in est.samples_w2c], "latency_s": est.latency_s}
        print(json.dumps(out, indent=2))
        return 0
    fmt = lambda v: " ".join(f"{x:+.4f}" for x in v)
    print(f"target camera in the {FRAME_NOTE}")
    print(f"position            {fmt(rec['position'])}")
    print(f"quaternion (xyzw)   {fmt(rec['quaternion_xyzw'])}")
    print("rotation            " + "\n                    ".join(fmt(r) for r in rec["rotation"]))
    if est.uncertainty_from == "heads":
        spread = f"predicted RMS rotation deviation {est.rotation_spread_deg:.2f} deg, from the model's heads"
    else:
        spread = f"rotation spread {est.rotation_spread_deg:.2f} deg over {len(est.samples_w2c)} samples"
    print(f"confidence          {est.confidence:.3f}  ({spread})")
    print(f"latency             {est.latency_s:.2f} s")
    return 0
