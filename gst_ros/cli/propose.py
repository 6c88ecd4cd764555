"""Let the model propose N plausible new viewpoints for an observation image, with their views.

Writes into --out DIR:
  proposal_00.png ...   each predicted view (model resolution, square)
  montage.png           the observation (centre-cropped, first tile) followed by the proposals
  poses.json            {"frame": ..., "observation_K": K, "proposals": [{"index", "file",
                        "position", "quaternion_xyzw", "rotation", "camera_to_observation", "w2c",
                        "K"}]}: every proposed camera in the observation camera's optical frame
                        (OpenCV axes x right, y down, z forward; unit scene scale). "position" and
                        "quaternion_xyzw" use the same convention as `gst pose` / `gst view --pose`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from gst_ros.cli.pose import FRAME_NOTE, add_engine_arguments, engine_from_args, pose_record
from gst_ros.cli.view import save_png

HELP = "propose new viewpoints (poses + predicted views) for an observation image"


def montage(images: list[np.ndarray], columns: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile equally sized (H, W, 3) uint8 images in a grid (row-major) on a white background."""
    if not images:
        raise ValueError("montage: no images")
    h, w = images[0].shape[:2]
    if any(im.shape != images[0].shape for im in images):
        raise ValueError("montage: images must all have the same shape")
    cols = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y:y + h, x:x + w] = im
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("observation", help="observation image file")
    parser.add_argument("-n", type=int, default=8, help="number of proposals (>= 1)")
    parser.add_argument("--out", required=True, help="output directory")
    add_engine_arguments(parser)


def run(args) -> int:
    from gst_ros.engine.engine import ModelNotFoundError
    from gst_ros.preprocess import center_crop_resize, load_image

    try:
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"--out {args.out} is a file: give a folder for the proposals")
        obs = load_image(args.observation)
        engine = engine_from_args(args)
        views = engine.propose_views(obs, n=args.n, K_obs=args.K)
    except (ModelNotFoundError, ValueError) as e:
        print(f"gst propose: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, v in enumerate(views):
        path = save_png(out / f"proposal_{i:02d}.png", v.image)
        records.append({"index": i, "file": path.name, **pose_record(v.w2c), "K": v.K.tolist()})
    obs_sq, K_obs = center_crop_resize(obs, engine.intrinsics_or_default(obs, args.K), engine.image_size)
    save_png(out / "montage.png", montage([obs_sq] + [v.image for v in views]))
    (out / "poses.json").write_text(json.dumps(
        {"frame": FRAME_NOTE, "observation_K": K_obs.tolist(), "proposals": records}, indent=2) + "\n")
    for r in records:
        print(f"{r['file']}: position " + " ".join(f"{x:+.3f}" for x in r["position"])
              + "  quaternion (xyzw) " + " ".join(f"{x:+.3f}" for x in r["quaternion_xyzw"]))
    print(f"wrote {len(views)} proposals, montage.png and poses.json to {out}")
    return 0
