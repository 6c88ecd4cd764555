"""Compare two evaluations of the same pairs: is model B's pose accuracy (or, with --views, its
novel views) really different from A's?

    python -m training.compare_eval outputs/eval_unseen_old outputs/eval_unseen \
        [--method gst-head] [--method-b gst-head] [--resamples 5000] [--seed 0] [--out diff.csv]
    python -m training.compare_eval A B --views [--method gst] [--method-b "gst, mean of 4"]

A and B are `training.evaluate --out` directories (or their per_pair.csv files) of the same
split, scenes and views, e.g. the shipped model and a candidate. The ordered pairs of one
scene share their images and their errors go together, so pairs are not independent samples;
the uncertainty of the difference comes from a paired bootstrap over scenes: scenes are drawn
with replacement (the same draw for A and B), and for each draw the relative rotation accuracy
of B minus that of A is recomputed the way training.evaluate computes it (per category, then
averaged over categories). Printed per group (seen / unseen), threshold and angular-baseline
bin: RRA of A and of B, their difference, its 95% bootstrap interval, and the share of draws in
which B is not better (difference <= 0), a one-sided p-value for "B is better".

With --views the two nvs.csv files are compared instead, view by view (matched on group,
category, scene and target view j): for each group the mean of side@1, side err (degrees),
PSNR (dB) and SSIM of A and of B (per category, then averaged over categories, as the pose
accuracy), their difference with its 95% interval from the same paired bootstrap over scenes,
and P(B - A <= 0). For side err lower is better, so there "B is better" is P(B - A >= 0) small.

Pairs are matched on (group, category, scene, i, j); the two runs must hold exactly the same
pairs for the chosen methods, otherwise it stops and names what is missing.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from training.evaluate import ANGLE_BINS, THRESHOLDS, category_averaged_accuracy, markdown_table
from training.logging_utils import CSVLogger

PAIR_KEY = ("group", "category", "scene", "i", "j")
VIEW_KEY = ("group", "category", "scene", "j")
VIEW_METRICS = ("side@1", "side_err_deg", "psnr", "ssim")  # training.evaluate's nvs.csv columns


class EvalComparisonError(ValueError):
    """The two evaluations cannot be compared (missing file, method or pairs)."""


def load_pair_errors(path, method: str) -> dict[tuple, tuple[float, float]]:
    """{(group, category, scene, i, j): (baseline_deg, rot_err_deg)} of `method` from a
    training.evaluate per_pair.csv (or the directory holding it). Angles in degrees."""
    path = Path(path)
    if path.is_dir():
        path = path / "per_pair.csv"
    if not path.is_file():
        raise EvalComparisonError(f"{path}: no per_pair.csv (run training.evaluate --out first)")
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("method") != method:
                continue
            try:
                out[tuple(row[k] for k in PAIR_KEY)] = (float(row["baseline_deg"]), float(row["rot_err_deg"]))
            except (KeyError, ValueError) as e:
                raise EvalComparisonError(f"{path}: malformed row {row}: {e}") from e
    if not out:
        raise EvalComparisonError(f"{path}: no pairs of method {method!r}")
    return out


def load_view_scores(path, method: str) -> dict[tuple, dict[str, float]]:
    """{(group, category, scene, j): {metric: value}} of the novel views of `method` from a
    training.evaluate nvs.csv (or the directory holding it); the metrics of VIEW_METRICS that
    the row holds (side@1 0/1, side err in degrees, PSNR in dB, SSIM)."""
    path = Path(path)
    if path.is_dir():
        path = path / "nvs.csv"
    if not path.is_file():
        raise EvalComparisonError(f"{path}: no nvs.csv (run training.evaluate --out first)")
    out, methods = {}, set()
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            methods.add(row.get("method", ""))
            if row.get("method") != method:
                continue
            try:
                out[tuple(row[k] for k in VIEW_KEY)] = {m: float(row[m]) for m in VIEW_METRICS
                                                        if row.get(m) not in (None, "")}
            except (KeyError, ValueError) as e:
                raise EvalComparisonError(f"{path}: malformed row {row}: {e}") from e
    if not out:
        raise EvalComparisonError(f"{path}: no views of method {method!r} (it has {sorted(methods)})")
    return out


def _check_same_keys(a: dict, b: dict, what: str) -> None:
    missing_b, missing_a = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if missing_a or missing_b:
        raise EvalComparisonError(
            f"the runs hold different {what}: {len(missing_b)} of A's missing in B (first {missing_b[:3]}), "
            f"{len(missing_a)} of B's missing in A (first {missing_a[:3]}); evaluate both on the same "
            "--split, --views and --scenes")


def paired_bootstrap(scene_ids, categories, hits_a, hits_b, resamples: int = 5000,
                     seed: int = 0) -> tuple[float, np.ndarray]:
    """Category-averaged accuracy difference B - A over the given pairs, and its bootstrap
    distribution over scenes (`resamples` draws of the scenes with replacement, paired).

    scene_ids, categories: one entry per pair; hits_a, hits_b: whether each pair is within the
    threshold for A and for B, or any per-pair value (a view's PSNR), whose category-averaged
    mean is then compared. Returns (difference, array of `resamples` differences)."""
    scene_ids, categories = np.asarray(scene_ids), np.asarray(categories)
    hits_a, hits_b = np.asarray(hits_a, dtype=np.float64), np.asarray(hits_b, dtype=np.float64)
    scenes, s_idx = np.unique(scene_ids, return_inverse=True)
    cats, c_idx = np.unique(categories, return_inverse=True)
    n = np.zeros((len(scenes), len(cats)))
    ha, hb = np.zeros_like(n), np.zeros_like(n)
    np.add.at(n, (s_idx, c_idx), 1.0)
    np.add.at(ha, (s_idx, c_idx), hits_a)
    np.add.at(hb, (s_idx, c_idx), hits_b)

    def diff(weights: np.ndarray) -> np.ndarray:      # weights: (R, scenes) draw counts
        tot = weights @ n
        with np.errstate(invalid="ignore", divide="ignore"):
            acc_a, acc_b = (weights @ ha) / tot, (weights @ hb) / tot
        return np.nanmean(acc_b, axis=1) - np.nanmean(acc_a, axis=1)

    point = float(diff(np.ones((1, len(scenes))))[0])
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(scenes), np.full(len(scenes), 1.0 / len(scenes)), size=resamples)
    return point, diff(draws.astype(np.float64))


def compare(pairs_a: dict, pairs_b: dict, thresholds=THRESHOLDS, resamples: int = 5000,
            seed: int = 0) -> list[dict]:
    """Rows {group, threshold, bin, pairs, scenes, RRA A, RRA B, B - A, 95% low, 95% high,
    P(B - A <= 0)} for every group, threshold and angular-baseline bin ("all" first)."""
    _check_same_keys(pairs_a, pairs_b, "pairs")
    keys = sorted(pairs_a)
    group = np.array([k[0] for k in keys])
    category = np.array([k[1] for k in keys])
    scene = np.array([f"{k[1]}/{k[2]}" for k in keys])
    baseline = np.array([pairs_a[k][0] for k in keys])
    err_a = np.array([pairs_a[k][1] for k in keys])
    err_b = np.array([pairs_b[k][1] for k in keys])
    bins = (("all", 0.0, np.inf),) + ANGLE_BINS
    rows = []
    for g in sorted(set(group.tolist())):
        for t in thresholds:
            for name, lo, hi in bins:
                m = (group == g) & (baseline >= lo) & (baseline < hi)
                if not m.any():
                    continue
                point, boot = paired_bootstrap(scene[m], category[m], err_a[m] < t, err_b[m] < t,
                                               resamples=resamples, seed=seed)
                acc_a = category_averaged_accuracy(err_a[m], category[m], t)
                rows.append({"group": g, "threshold": f"{t:g} deg", "bin": name, "pairs": int(m.sum()),
                             "scenes": len(set(scene[m].tolist())), "RRA A": acc_a, "RRA B": acc_a + point,
                             "B - A": point, "95% low": float(np.nanpercentile(boot, 2.5)),
                             "95% high": float(np.nanpercentile(boot, 97.5)),
                             "P(B - A <= 0)": float(np.mean(boot <= 0))})
    return rows


def compare_views(views_a: dict, views_b: dict, resamples: int = 5000, seed: int = 0) -> list[dict]:
    """Rows {group, metric, views, scenes, A, B, B - A, 95% low, 95% high, P(B - A <= 0)} for every
    group and every metric both runs hold for all their views (load_view_scores)."""
    _check_same_keys(views_a, views_b, "views")
    keys = sorted(views_a)
    group = np.array([k[0] for k in keys])
    category = np.array([k[1] for k in keys])
    scene = np.array([f"{k[1]}/{k[2]}" for k in keys])
    rows = []
    for g in sorted(set(group.tolist())):
        m = group == g
        for metric in VIEW_METRICS:
            if not all(metric in views_a[k] and metric in views_b[k] for k, use in zip(keys, m) if use):
                continue
            va = np.array([views_a[k][metric] for k, use in zip(keys, m) if use])
            vb = np.array([views_b[k][metric] for k, use in zip(keys, m) if use])
            point, boot = paired_bootstrap(scene[m], category[m], va, vb, resamples=resamples, seed=seed)
            mean_a = float(np.mean([va[category[m] == c].mean() for c in np.unique(category[m])]))
            rows.append({"group": g, "metric": metric, "views": int(m.sum()),
                         "scenes": len(set(scene[m].tolist())), "A": mean_a, "B": mean_a + point,
                         "B - A": point, "95% low": float(np.nanpercentile(boot, 2.5)),
                         "95% high": float(np.nanpercentile(boot, 97.5)),
                         "P(B - A <= 0)": float(np.mean(boot <= 0))})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.compare_eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="evaluation A (the reference): a training.evaluate --out directory "
                    "or its per_pair.csv")
    ap.add_argument("b", help="evaluation B (the candidate)")
    ap.add_argument("--views", action="store_true",
                    help="compare the novel views (nvs.csv: side@1, side err, PSNR, SSIM), not the poses")
    ap.add_argument("--method", default=None, help="method of A (per_pair.csv / nvs.csv 'method'; "
                    "default gst-head, with --views gst)")
    ap.add_argument("--method-b", default=None, help="method of B (default: --method)")
    ap.add_argument("--resamples", type=int, default=5000, help="bootstrap draws over scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the table as CSV here")
    args = ap.parse_args(argv)
    if args.resamples < 100:
        ap.error("--resamples must be at least 100")
    method_a = args.method or ("gst" if args.views else "gst-head")
    method_b = args.method_b or method_a
    load, cmp = (load_view_scores, compare_views) if args.views else (load_pair_errors, compare)
    try:
        rows = cmp(load(args.a, method_a), load(args.b, method_b), resamples=args.resamples, seed=args.seed)
    except EvalComparisonError as e:
        print(f"compare_eval: {e}", file=sys.stderr)
        return 2
    print(f"A = {args.a} ({method_a}), B = {args.b} ({method_b}); "
          f"paired bootstrap over scenes, {args.resamples} draws")
    print(markdown_table(rows))
    if args.out:
        log = CSVLogger(args.out, resume=False)
        for r in rows:
            log.log(**r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
