"""How many views should `predict_view` sample, and how many of the most consistent should it
average? One pass of N samples per held-out view answers it for every smaller setting.

    python -m training.view_search --model models/gst_small --root outputs/known/data \
        --split test_views --views 3 --scenes 60 --samples 32 --out outputs/view_search

Per scene, view 0 is the observation and views 1..V-1 are requested at their true cameras
(normalised as training.evaluate does). Each request goes through `GSTEngine.predict_view` with
`samples=N`, which draws N views and scores each by how close the model places it to the
requested camera (`PredictedView.consistency`, `sample_views`). Every sample is then matched
against its scene's views (side retrieval, training.evaluate.side_retrieval: a hit when the
nearest of the scene's views is the requested one; the angle from the nearest view's camera to
the requested camera) and scored in PSNR against the truth.

From the same samples:
- best_of_k.csv: for each k <= N, the expected side@1 / side err / PSNR of the sample the engine
  would keep of k draws (`consistent_sample`) and, as the bound, of the sample nearest the
  truth in PSNR (the oracle). A random k-subset's best-scored sample is the one ranked r
  (0 = best of all N) with probability C(N-1-r, k-1) / C(N, k), so every k is read exactly from
  the N samples, with no resampling noise (`best_of_k_weights`);
- kept_mean.csv: for each (k, m) of --k x --keep with m <= k, the image the engine returns with
  `samples=k, keep=m`: the per-pixel mean of the m best-scored of k samples, averaged over
  --subsets random k-subsets of the N (one when k = N);
- samples.csv (one row per sample) and summary.md (both tables).
The engine's defaults (view_samples 16, view_keep 4) were chosen this way (docs/training.md,
"More samples, and the expected view of the most consistent").
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.evaluate import (
    markdown_table,
    normalized_cameras,
    retrieval_gallery,
    scenes_from_reader,
    side_retrieval,
)
from training.image_metrics import psnr
from training.logging_utils import CSVLogger


def best_of_k_weights(n: int, k: int) -> np.ndarray:
    """(n,) probabilities that the sample ranked r (0 = best of n) is the best of a uniform
    random k-subset of the n: C(n-1-r, k-1) / C(n, k). They sum to 1."""
    if not 1 <= k <= n:
        raise ValueError(f"best of k needs 1 <= k <= n, got k={k}, n={n}")
    return np.array([math.comb(n - 1 - r, k - 1) for r in range(n)], dtype=np.float64) / math.comb(n, k)


def expected_best_of_k(scores: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """(V,) expected value, per row of (V, n) `values`, of the sample with the highest score in a
    uniform random k-subset of the row's n samples (ties go to the lower index)."""
    scores, values = np.asarray(scores, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if scores.shape != values.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and values {values.shape} must be the same (V, n)")
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1) @ best_of_k_weights(scores.shape[1], k)


def mean_of_most_consistent(views: np.ndarray, scores: np.ndarray, subset: np.ndarray,
                            keep: int) -> np.ndarray:
    """(S,S,3) uint8: the per-pixel mean of the `keep` best-scored of the samples `subset`
    (indices into views (n,S,S,3) / scores (n,)), as predict_view(samples=len(subset), keep)."""
    best = subset[np.argsort(-np.asarray(scores)[subset], kind="stable")[:keep]]
    return np.clip(np.rint(views[np.sort(best)].astype(np.float32).mean(axis=0)), 0, 255).astype(np.uint8)


def search(engine, scenes, n: int, ks, keeps, subsets: int = 4, seed: int = 0, progress: bool = True):
    """(per-sample rows, best-of-k rows, kept-mean rows) over every requested view of `scenes`
    (training.evaluate.EvalScene, view 0 the observation)."""
    rng = np.random.default_rng(seed)
    sample_rows, kept = [], {(k, m): [] for k in ks for m in keeps if m <= k}
    for scene in tqdm(scenes, desc="view search", disable=not progress, dynamic_ncols=True):
        gt = normalized_cameras(np.asarray(scene.w2c, dtype=np.float64))
        gallery, gallery_w2c = retrieval_gallery(scene, engine.image_size)
        for j in range(1, len(gt)):
            view = engine.predict_view(scene.images[0], gt[j], K_obs=scene.K[0], K_target=scene.K[j],
                                       seed=seed + j, samples=n, keep=1)
            for i, sample in enumerate(view.sample_views):
                side = side_retrieval(sample, gallery, gallery_w2c, j)
                sample_rows.append({"group": scene.group, "scene": scene.scene_id, "j": j, "sample": i,
                                    "score": float(view.consistency[i]), "side@1": float(side.hit),
                                    "side_err_deg": side.error_deg,
                                    "psnr": float(psnr(sample, gallery[j])[0])})
            for (k, m), out in kept.items():
                draws = [np.arange(n)] if k == n else [rng.permutation(n)[:k] for _ in range(subsets)]
                got = []
                for subset in draws:
                    image = mean_of_most_consistent(view.sample_views, view.consistency, subset, m)
                    side = side_retrieval(image, gallery, gallery_w2c, j)
                    got.append((float(side.hit), side.error_deg, float(psnr(image, gallery[j])[0])))
                out.append(np.mean(got, axis=0))
    # (requested views, n) arrays: the rows hold each view's n samples in order
    scores_all, hits, errs, psnrs = (np.array([r[key] for r in sample_rows], dtype=np.float64).reshape(-1, n)
                                     for key in ("score", "side@1", "side_err_deg", "psnr"))
    best_rows = []
    picks = (("most consistent (the engine's pick)", scores_all), ("nearest the truth (oracle)", psnrs))
    for k in ks:
        for name, ranking in picks:
            best_rows.append({"k": k, "pick": name,
                              "side@1": float(expected_best_of_k(ranking, hits, k).mean()),
                              "side err": float(np.median(expected_best_of_k(ranking, errs, k))),
                              "PSNR": float(expected_best_of_k(ranking, psnrs, k).mean())})
    kept_rows = []
    for (k, m), out in kept.items():
        out = np.asarray(out)
        kept_rows.append({"samples": k, "keep": m, "side@1": float(out[:, 0].mean()),
                          "side err": float(np.median(out[:, 1])), "PSNR": float(out[:, 2].mean())})
    return sample_rows, best_rows, kept_rows


def _ints(text: str, name: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"{name}: expected integers like 1,4,16, got {text!r}") from None
    if not values or values[0] < 1:
        raise ValueError(f"{name}: expected integers >= 1, got {text!r}")
    return values


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.view_search", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="GST model directory")
    ap.add_argument("--data", default="synthetic", help="dataset reader name (training.datasets)")
    ap.add_argument("--root", required=True)
    ap.add_argument("--split", default="test_views")
    ap.add_argument("--views", type=int, default=3, help="views per scene (view 0 is the observation)")
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--samples", type=int, default=32, help="N: samples drawn per requested view")
    ap.add_argument("--k", default="1,2,4,8,16,32", help="sample counts read from the N (<= N)")
    ap.add_argument("--keep", default="1,2,4,8,16,32", help="numbers of the most consistent averaged")
    ap.add_argument("--subsets", type=int, default=4, help="random k-subsets per view for the kept means")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        ks = [k for k in _ints(args.k, "--k") if k <= args.samples]
        keeps = _ints(args.keep, "--keep")
    except ValueError as e:
        ap.error(str(e))
    if args.samples < 2 or args.views < 2 or args.subsets < 1:
        ap.error("need --samples >= 2, --views >= 2 and --subsets >= 1")
    from gst_ros.engine.engine import EngineConfig, GSTEngine
    from training.datasets import INPUT_ERRORS, build_dataset

    try:
        engine = GSTEngine(EngineConfig(model_dir=args.model, device=args.device, seed=args.seed))
        scenes = scenes_from_reader(build_dataset(args.data, args.root, args.split), args.split, args.views,
                                    args.scenes)
    except INPUT_ERRORS as e:
        print(f"view_search: {e}", file=sys.stderr)
        return 2
    if not scenes:
        print(f"view_search: no {args.split} scene with {args.views} views", file=sys.stderr)
        return 2
    sample_rows, best_rows, kept_rows = search(engine, scenes, args.samples, ks or [1], keeps, args.subsets,
                                               args.seed, progress=not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("samples", sample_rows), ("best_of_k", best_rows), ("kept_mean", kept_rows)):
        log = CSVLogger(out / f"{name}.csv", resume=False)
        for row in rows:
            log.log(**row)
    text = (f"# View search: {args.model}, {args.split}, {len(sample_rows) // args.samples} requested views, "
            f"{args.samples} samples each\n\n## The kept sample, best of k\n\n{markdown_table(best_rows)}\n\n"
            f"## The expected view: mean of the m most consistent of k\n\n{markdown_table(kept_rows)}\n")
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
