"""Pre-tokenise a multi-view data set once with the frozen tokenizers (format: token_shards.py).

    python -m training.pretokenize --data synthetic --root data/synth --split train \
        --image-tokenizer runs/tok_img/model --camera-tokenizer runs/tok_cam/model \
        --out data/synth_tokens/train --pairs-per-scene 8 [--baseline-deg 0 120] [--max-scenes N]

Per scene: every view is centre-cropped and resized to the image tokenizer's resolution (K
adjusted the same way) and encoded once; then `pairs_per_scene` ordered (observation, target)
pairs are drawn without replacement (RNG seeded by (seed, scene index), only pairs whose angular
baseline lies in --baseline-deg), the target camera is expressed relative to the observation
and scale-normalised exactly as training.datasets.pairs.PairDataset does (scale "center": the
observation's distance to the scene centre is 1), and its Plücker map is encoded by the camera
tokenizer. Scenes that cannot be read, have fewer than two usable views, or fail a check are
skipped and counted by reason in the manifest ("skipped") together with the reader's own counts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gst_ros.geometry.errors import GeometryError
from gst_ros.models.tokenizer import CameraTokenizer, ImageTokenizer
from gst_ros.preprocess import center_crop_resize
from training.datasets import INPUT_ERRORS, add_split_fractions_argument, build_dataset, reader_options
from training.datasets.pairs import PairDataset, pairwise_baseline_deg
from training.token_shards import ShardWriter


def scene_views_at(reader, i: int, size: int):
    """MultiViewSample-like (images (V,S,S,3) uint8, K (V,3,3), w2c (V,4,4), scene_id, category)
    of scene i at the square model size S, or None when the scene cannot be read."""
    if hasattr(reader, "load") and hasattr(reader, "scene_views"):
        s = reader.load(i, size=size)
        return None if s is None else (s.images, s.K, s.w2c, s.scene_id, s.category)
    s = reader[i]
    crops = [center_crop_resize(img, K, size) for img, K in zip(s.images, s.K)]
    return (np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops]), s.w2c, s.scene_id, s.category)


def choose_pairs(w2c: np.ndarray, n_pairs: int, rng: np.random.Generator, baseline_deg=None) -> np.ndarray:
    """(P, 2) distinct ordered (observation, target) view pairs, P <= n_pairs, drawn without
    replacement among the pairs whose relative rotation angle lies in baseline_deg (degrees)."""
    ang = pairwise_baseline_deg(w2c)
    ok = ~np.eye(len(w2c), dtype=bool)
    if baseline_deg is not None:
        ok &= (ang >= baseline_deg[0]) & (ang <= baseline_deg[1])
    cand = np.argwhere(ok)
    if len(cand) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    pick = rng.choice(len(cand), size=min(n_pairs, len(cand)), replace=False)
    return cand[np.sort(pick)].astype(np.int64)


@torch.no_grad()
def pretokenize(reader, image_tok: ImageTokenizer, camera_tok: CameraTokenizer, out, pairs_per_scene: int = 8,
                seed: int = 0, baseline_deg=None, scale: str = "center", max_scenes: int | None = None,
                batch: int = 32, pairs_per_shard: int = 4096, metadata: dict | None = None,
                progress: bool = True) -> dict:
    """Tokenise `reader`'s scenes into shards under `out`; returns the manifest dict."""
    if image_tok.grid != camera_tok.grid:
        raise ValueError(f"image tokenizer grid {image_tok.grid} != camera tokenizer grid {camera_tok.grid}")
    size, g = image_tok.resolution, image_tok.grid
    policy = PairDataset(reader, size=size, seed=seed, baseline_deg=baseline_deg, scale=scale)
    n_scenes = len(reader) if max_scenes is None else min(len(reader), max_scenes)
    writer = ShardWriter(out, (g, g), image_tok.codebook_size, camera_tok.codebook_size, pairs_per_shard,
                         metadata={**(metadata or {}), "pairs_per_scene": pairs_per_scene, "seed": seed,
                                   "baseline_deg": list(baseline_deg) if baseline_deg else None,
                                   "scale": scale, "image_size": size})
    for i in tqdm(range(n_scenes), desc="pretokenize", disable=not progress, dynamic_ncols=True):
        try:
            views = scene_views_at(reader, i, size)
            if views is None:
                writer.skip("scene could not be read")
                continue
            images, K, w2c, scene_id, category = views
            if len(images) < 2:
                writer.skip("fewer than 2 usable views")
                continue
            pairs = choose_pairs(w2c, pairs_per_scene, np.random.default_rng([seed, i]), policy.baseline_deg)
            if len(pairs) == 0:
                writer.skip("no view pair within the baseline range")
                continue
            rel = np.stack([policy._normalise(w2c, w2c[a], w2c[b])[0] for a, b in pairs])
            if not np.isfinite(rel).all():
                writer.skip("non-finite relative pose")
                continue
            img_codes = torch.cat([image_tok.encode(images[k:k + batch])
                                   for k in range(0, len(images), batch)])
            K_t = K[pairs[:, 1]]
            cam_codes = torch.cat([camera_tok.encode(K_t[k:k + batch], rel[k:k + batch], image_size=size)
                                   for k in range(0, len(pairs), batch)])
        except (ValueError, GeometryError, OSError, KeyError) as e:
            writer.skip(f"corrupt scene ({type(e).__name__})")
            print(f"pretokenize: skipping scene {i}: {e}", file=sys.stderr)
            continue
        writer.add_scene(scene_id, category, img_codes.reshape(len(images), -1).numpy(), pairs,
                         cam_codes.reshape(len(pairs), -1).numpy(), rel, K_t)
    for reason, count in getattr(reader, "skip_reasons", {}).items():
        writer.skipped[f"reader: {reason}"] = writer.skipped.get(f"reader: {reason}", 0) + int(count)
    if getattr(reader, "skipped", 0) and not getattr(reader, "skip_reasons", None):
        writer.skipped["reader: skipped files"] = int(reader.skipped)
    writer.close()
    from training.token_shards import read_manifest

    return read_manifest(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.pretokenize", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic", help="dataset reader name (training.datasets)")
    ap.add_argument("--root", required=True, help="dataset root directory")
    ap.add_argument("--split", default="train")
    ap.add_argument("--image-tokenizer", required=True, help="image tokenizer model directory")
    ap.add_argument("--camera-tokenizer", required=True, help="camera tokenizer model directory")
    ap.add_argument("--out", required=True, help="output shard directory (must not hold a finished set)")
    ap.add_argument("--pairs-per-scene", type=int, default=8)
    ap.add_argument("--baseline-deg", type=float, nargs=2, default=None, metavar=("MIN", "MAX"))
    ap.add_argument("--scale", default="center", choices=("center", "baseline", "none"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-scenes", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32, help="views per tokenizer call")
    ap.add_argument("--pairs-per-shard", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-progress", action="store_true")
    add_split_fractions_argument(ap)
    args = ap.parse_args(argv)
    try:
        reader = build_dataset(args.data, args.root, args.split, **reader_options(args))
        itok = ImageTokenizer.from_dir(args.image_tokenizer, args.device)
        ctok = CameraTokenizer.from_dir(args.camera_tokenizer, args.device)
    except INPUT_ERRORS as e:
        print(f"pretokenize: {e}", file=sys.stderr)
        return 2
    meta = {"dataset": args.data, "root": str(Path(args.root).resolve()), "split": args.split,
            "image_tokenizer": str(Path(args.image_tokenizer).resolve()),
            "camera_tokenizer": str(Path(args.camera_tokenizer).resolve())}
    m = pretokenize(reader, itok, ctok, args.out, args.pairs_per_scene, args.seed, args.baseline_deg,
                    args.scale, args.max_scenes, args.batch, args.pairs_per_shard, meta,
                    progress=not args.no_progress)
    print(f"{m['num_pairs']} pairs from {len(m['scenes'])} scenes in {len(m['shards'])} shard(s) "
          f"-> {args.out}; "
          f"skipped: {m['skipped'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
