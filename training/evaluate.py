"""Evaluate a trained GST model directory the way users run it: through gst_ros.engine.GSTEngine.

    python -m training.evaluate --model runs/gst/model --data synthetic --root data/synth \
        --split test_views:seen --split test_objects:unseen --views 3 --scenes 20 --out runs/eval \
        [--samples 4] [--vgg vgg16.safetensors] [--no-opencv]

Per scene, N views are taken (view 0 is the observation). Every method predicts the cameras of
views 1..N-1 relative to view 0 (view 0 = identity, OpenCV axes):
- gst: engine.estimate_pose(observation, view j) (camera tokens sampled, averaged);
- gst-head: the same call with estimate="head": the rotation read by the model's pose head from the
  same [o, <EST>, i] pass, also read swapped and averaged unless --one-way, the centre from its
  centre head when it has one (models trained with a pose head; left out by default for models
  without);
- gst-prior: engine.prior_pose(observation) (camera tokens sampled from p(c | o), the target image
  unseen): the model's own pose prior; gst minus gst-prior is what the target image is worth;
- opencv: SIFT/ORB + essential matrix (MAGSAC++) + recoverPose (training/baselines.py);
- identity: every camera equals the observation camera;
- chance: a uniformly random rotation (closed form, no per-pair data).
Relative pose, CO3D protocol (RayDiffusion, GST Table 3): all ordered pairs (i, j), i != j, of
the N cameras; error = angle of R_rel_gt R_rel_pred^T (gst_ros.geometry.relative_rotation_errors);
accuracy at 15 and 30 degrees computed per category, then averaged over categories; seen and
unseen splits reported apart; also split by the pair's angular baseline (<30, 30-60, >60 deg).
Camera-centre accuracy (share of centres within 0.1 scene scale after a similarity alignment,
gst_ros.geometry.camera_center_accuracy) needs N >= 3 (two centres always align exactly).
Novel views: engine.predict_view(observation, true camera j) against the true view j at the model
resolution: PSNR, SSIM, LPIPS when VGG weights are given (training/image_metrics.py); the
"copy observation" baseline scores the observation itself as the prediction. One row per entry
of --view-samples: "gst" is a single sampled view (the paper's protocol), "gst, mean of k" the
per-pixel mean of k sampled views, "gst, mean of the m most consistent of k" (an entry k/m) the
per-pixel mean of the m of k samples the model places closest to the requested camera (the
engine's expected view, EngineConfig.view_samples / view_keep, by default 16/4), and with each k
"gst, most consistent of k": the one of those k samples the model places closest to the
requested camera (PredictedView.consistent_sample, GSTEngine.view_consistency). The row "truth
through the image tokenizer (bound)" encodes and decodes the true view: what a perfect transformer
would score through this tokenizer. The row "gst at the observation's own camera (copy check)"
asks for the view from the observation's own camera (the identity) and scores it against the
observation itself (one sample per scene): a model that uses its camera copies it.
Side retrieval ("is it recognisably the requested side?"): each predicted view is compared (PSNR)
with every view of its scene (the observation, the requested view and the others; with the
synthetic reader the whole orbit, training views included) and the nearest is kept: side@1 is
the share of predictions whose nearest view is the requested one, "side err" the median angle
between the nearest view's camera and the requested camera. Copying the observation retrieves
the observation (side@1 0, side err = the median baseline); the "chance" row is a view drawn at
random (side@1 = 1 / views in the gallery).

Writes into --out: results.md and results.csv (summary tables), per_pair.csv (every ordered
pair's rotation error per method), nvs.csv (per predicted view), and grids/*.png: rows of
observation | truth | prediction per NVS row (nvs_observation_truth_prediction.png) and, in the
same layout, the scene view each prediction is nearest to (nvs_observation_truth_nearest_view.png:
where a prediction shows the truth, the side retrieval hit).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gst_ros.geometry import (
    GeometryError,
    camera_center,
    camera_center_accuracy,
    closest_point_to_lines,
    normalize_scene,
    relative_rotation_errors,
    rotation_error_deg,
)
from gst_ros.preprocess import center_crop_resize, from_model_tensor
from training import baselines
from training.datasets.pairs import pairwise_baseline_deg
from training.image_metrics import LPIPSMetric, psnr, ssim
from training.logging_utils import CSVLogger, save_image_grid

THRESHOLDS = (15.0, 30.0)
ANGLE_BINS = (("<30", 0.0, 30.0), ("30-60", 30.0, 60.0), (">60", 60.0, 180.0 + 1e-9))
POSE_METHODS = ("gst", "gst-head", "gst-prior", "opencv", "identity")
TOKENIZER_BOUND = "truth through the image tokenizer (bound)"
OWN_CAMERA = "gst at the observation's own camera (copy check)"


# ------------------------------------------------------------------ maths

def ordered_pair_baselines(w2c_gt) -> np.ndarray:
    """Angular baseline (degrees) of every ordered pair (i, j), i != j, in the row-major order of
    gst_ros.geometry.relative_rotation_errors. w2c_gt: (N,4,4) true world-to-camera poses."""
    ang = pairwise_baseline_deg(np.asarray(w2c_gt))
    return ang[~np.eye(len(ang), dtype=bool)]


def angle_bin(baseline_deg: float) -> str:
    for name, lo, hi in ANGLE_BINS:
        if lo <= baseline_deg < hi:
            return name
    raise ValueError(f"angular baseline {baseline_deg} outside [0, 180]")


def category_averaged_accuracy(errors, categories, threshold: float) -> float:
    """Share of errors below `threshold`, computed per category, then averaged over categories
    (the CO3D protocol). NaN when there are no errors."""
    errors, categories = np.asarray(errors, dtype=np.float64), np.asarray(categories)
    if errors.size == 0:
        return float("nan")
    cats = sorted(set(categories.tolist()))
    return float(np.mean([(errors[categories == c] < threshold).mean() for c in cats]))


def summarize_pose(rows: list[dict], thresholds=THRESHOLDS) -> list[dict]:
    """Summary rows per (method, group) from per-pair rows {method, group, category,
    baseline_deg, rot_err_deg}: RRA@t category-averaged over all pairs and per angular-baseline
    bin, plus the pair count. Adds the analytic chance baseline for each group."""
    out = []
    groups = sorted({r["group"] for r in rows})
    methods = [m for m in POSE_METHODS if any(r["method"] == m for r in rows)]
    for group in groups:
        for method in methods:
            sel = [r for r in rows if r["method"] == method and r["group"] == group]
            err = np.array([r["rot_err_deg"] for r in sel])
            cat = np.array([r["category"] for r in sel])
            base = np.array([r["baseline_deg"] for r in sel])
            row = {"method": method, "group": group, "pairs": len(sel)}
            for t in thresholds:
                row[f"RRA@{t:g}"] = category_averaged_accuracy(err, cat, t)
            for name, lo, hi in ANGLE_BINS:
                m = (base >= lo) & (base < hi)
                acc = category_averaged_accuracy(err[m], cat[m], thresholds[0])
                row[f"RRA@{thresholds[0]:g} {name}"] = acc
                row[f"pairs {name}"] = int(m.sum())
            out.append(row)
        row = {"method": "chance", "group": group, "pairs": 0}
        for t in thresholds:
            row[f"RRA@{t:g}"] = baselines.chance_rotation_accuracy(t)
        for name, _, _ in ANGLE_BINS:
            row[f"RRA@{thresholds[0]:g} {name}"] = baselines.chance_rotation_accuracy(thresholds[0])
            row[f"pairs {name}"] = 0
        out.append(row)
    return out


@dataclass
class SideRetrieval:
    """Which of a scene's views a predicted view looks most like (see `side_retrieval`)."""

    retrieved: int              # gallery index of the nearest view
    hit: bool                   # retrieved == the requested (target) view
    error_deg: float            # rotation angle between the retrieved view's camera and the target's
    chance_error_deg: float     # that angle for a gallery view drawn at random (expected value)


def side_retrieval(prediction: np.ndarray, gallery: np.ndarray, gallery_w2c: np.ndarray,
                   target: int) -> SideRetrieval:
    """Is a predicted view recognisably the requested side of the scene? Ranks every gallery view
    (the scene's views: the observation, the requested view and the others, as the model sees
    them) by PSNR against the prediction and keeps the nearest.

    prediction: (S,S,3) uint8 RGB; gallery: (G,S,S,3) uint8 RGB, same size; gallery_w2c: (G,4,4)
    world-to-camera poses of the gallery views in one world frame (OpenCV axes; only their
    rotations are used); target: gallery index of the requested view. A copy of the observation
    retrieves the observation (error = the pair's baseline); chance hits 1/G of the time."""
    gallery = np.asarray(gallery)
    if gallery.ndim != 4 or gallery.shape[1:] != np.shape(prediction):
        raise ValueError(f"side_retrieval: gallery {gallery.shape} does not hold images of the "
                         f"prediction's shape {np.shape(prediction)}")
    if not 0 <= target < len(gallery) or len(gallery_w2c) != len(gallery):
        raise ValueError(f"side_retrieval: target {target} / {len(gallery_w2c)} cameras for "
                         f"{len(gallery)} gallery views")
    scores = psnr(np.repeat(np.asarray(prediction)[None], len(gallery), axis=0), gallery)
    best = int(np.argmax(scores))
    R = np.asarray(gallery_w2c, dtype=np.float64)[:, :3, :3]
    angles = rotation_error_deg(R, np.repeat(R[target][None], len(R), axis=0))
    return SideRetrieval(best, best == target, float(angles[best]), float(angles.mean()))


def normalized_cameras(w2c: np.ndarray) -> np.ndarray:
    """(N,4,4) cameras relative to the first (identity), scaled so the first camera is at distance
    1 from the scene centre (the point nearest all optical axes), as the training pairs are;
    falls back to a unit baseline between the first two cameras when the axes fix no centre."""
    try:
        center = closest_point_to_lines(camera_center(w2c), w2c[:, 2, :3])
        return normalize_scene(w2c, mode="center", scene_center=center)[0]
    except GeometryError:
        return normalize_scene(w2c, mode="baseline")[0]


# ------------------------------------------------------------------ running methods

@dataclass
class EvalScene:
    """One evaluation unit: N >= 2 views of one scene (view 0 is the observation)."""

    images: np.ndarray          # (N,H,W,3) uint8 RGB
    K: np.ndarray               # (N,3,3) pixel intrinsics of those images
    w2c: np.ndarray             # (N,4,4) true world-to-camera (any world frame; OpenCV axes)
    scene_id: str
    category: str
    group: str
    extra: dict = field(default_factory=dict)
    # the scene's other views (not evaluated; they only widen the side-retrieval gallery)
    other_images: np.ndarray | None = None   # (M,H,W,3) uint8 RGB
    other_K: np.ndarray | None = None        # (M,3,3)
    other_w2c: np.ndarray | None = None      # (M,4,4), same world frame as w2c


def scenes_from_reader(reader, group: str, n_views: int, max_scenes: int | None = None,
                       first: int = 0) -> list[EvalScene]:
    """The first `max_scenes` scenes from reader index `first` on with at least n_views views,
    first n_views each. The scene's other views (the rest of the split's; with a reader that
    has `scene_view_ids`, every view of the scene in any split) become `other_*`, the
    side-retrieval gallery's extra views."""
    out = []
    reader_ids = reader.scene_ids() if hasattr(reader, "scene_view_ids") else []
    for i in range(first, len(reader)):
        if max_scenes is not None and len(out) >= max_scenes:
            break
        s = reader[i]
        if len(s) < n_views:
            continue
        scene = EvalScene(s.images[:n_views], s.K[:n_views], s.w2c[:n_views], s.scene_id,
                          s.category or "all", group)
        other = s
        if hasattr(reader, "scene_view_ids"):
            # (when scene i was unreadable the reader gave the next one: its views are not scene i's)
            ids = ([v for v in reader.scene_view_ids(i) if v not in s.view_ids[:n_views]]
                   if reader_ids[i] == s.scene_id else [])
            other = reader.get(i, view_ids=ids) if ids else None
            if other is not None and (other.scene_id != s.scene_id
                                      or other.images.shape[1:] != s.images.shape[1:]):
                other = None  # unreadable views: the gallery keeps the evaluated ones
            n_skip = 0
        else:
            n_skip = n_views
        if other is not None and len(other) > n_skip:
            scene.other_images, scene.other_K, scene.other_w2c = (
                other.images[n_skip:], other.K[n_skip:], other.w2c[n_skip:])
        out.append(scene)
    return out


def retrieval_gallery(scene: EvalScene, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The scene's views as the model sees them, for side_retrieval: ((G,size,size,3) uint8 RGB
    centre crops, (G,4,4) world-to-camera), the N evaluated views first (so view j is index j),
    then the other views."""
    images, Ks, w2c = list(scene.images), list(scene.K), list(scene.w2c)
    if scene.other_images is not None:
        images += list(scene.other_images)
        Ks += list(scene.other_K)
        w2c += list(scene.other_w2c)
    crops = np.stack([center_crop_resize(im, K, size)[0] for im, K in zip(images, Ks)])
    return crops, np.stack(w2c).astype(np.float64)


def predict_poses(scene: EvalScene, method: str, engine=None, samples: int = 4,
                  seed: int = 0) -> tuple[np.ndarray, int]:
    """((N,4,4) predicted cameras of all N views in view 0's frame (view 0 = identity), number of
    views where the method failed and fell back to the identity (the OpenCV baseline only))."""
    n = len(scene.images)
    pred = np.tile(np.eye(4), (n, 1, 1))
    failed = 0
    for j in range(1, n):
        if method == "gst":
            est = engine.estimate_pose(scene.images[0], scene.images[j], K_obs=scene.K[0],
                                       K_target=scene.K[j], samples=samples, seed=seed + j)
            pred[j] = est.w2c
        elif method == "gst-head":
            est = engine.estimate_pose(scene.images[0], scene.images[j], K_obs=scene.K[0],
                                       K_target=scene.K[j], samples=samples, seed=seed + j, estimate="head")
            pred[j] = est.w2c
        elif method == "gst-prior":
            est = engine.prior_pose(scene.images[0], K_obs=scene.K[0], K_target=scene.K[j], samples=samples,
                                    seed=seed + j)
            pred[j] = est.w2c
        elif method == "opencv":
            res = baselines.essential_matrix_pose(scene.images[0], scene.images[j], scene.K[0], scene.K[j])
            pred[j] = res.rel_w2c
            failed += int(not res.ok)
        elif method == "identity":
            pred[j] = baselines.identity_pose()
        else:
            raise ValueError(f"unknown pose method {method!r}; expected one of {POSE_METHODS}")
    return pred, failed


def default_methods(engine) -> list[str]:
    """Every pose method, gst-head only for an engine whose model has a pose head (the gst methods
    are skipped anyway without an engine)."""
    has_head = engine is not None and engine.model.pose_head is not None
    return [m for m in POSE_METHODS if m != "gst-head" or has_head]


def view_method(view_samples: int, keep: int = 0) -> str:
    """The NVS row name of a predicted view of `view_samples` samples whose image averages the
    `keep` most consistent of them (0 = all; predict_view's `keep`)."""
    if view_samples == 1:
        return "gst"
    if keep == 0 or keep >= view_samples:
        return f"gst, mean of {view_samples}"
    return f"gst, mean of the {keep} most consistent of {view_samples}"


def parse_view_samples(text: str) -> list[tuple[int, int]]:
    """--view-samples "1,8,16/4" -> [(1, 0), (8, 0), (16, 4)]: (samples, keep) per entry; "K" is
    the mean of all K samples (keep 0), "K/M" the mean of the M most consistent of K. Entries that
    make the same view (M >= K, or K = 1) are written as keep 0 and listed once. ValueError naming
    the entry otherwise."""
    out = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        k, _, m = entry.partition("/")
        try:
            pair = (int(k), int(m) if m else 0)
        except ValueError:
            raise ValueError(f"--view-samples: {entry!r} is not K or K/M (integers)") from None
        if pair[0] < 1 or pair[1] < 0:
            raise ValueError(f"--view-samples: {entry!r} needs K >= 1 and M >= 0")
        if pair[1] >= pair[0] or pair[0] == 1:
            pair = (pair[0], 0)
        if pair not in out:
            out.append(pair)
    if not out:
        raise ValueError(f"--view-samples: no entry in {text!r}")
    return out


def consistent_view_method(view_samples: int) -> str:
    """The NVS row name of the sample predict_view keeps among `view_samples` (> 1) as the one
    closest to the requested camera (PredictedView.consistent_sample)."""
    return f"gst, most consistent of {view_samples}"


def evaluate_scenes(scenes: list[EvalScene], engine=None, methods=None, samples: int = 4,
                    seed: int = 0, nvs: bool = True, lpips: LPIPSMetric | None = None,
                    progress: bool = True, view_samples=((1, 0),)) -> dict:
    """Run the methods on every scene. Returns {"pairs": per-pair rows, "scenes": per-scene rows
    (camera-centre accuracy), "nvs": per-view rows, "grids": [(obs, truth, pred per view_samples
    entry)] images}. methods: names from POSE_METHODS; None = default_methods(engine);
    view_samples: (samples, keep) of each predicted view scored (predict_view's arguments, keep 0
    = the mean of all; parse_view_samples reads them; view_method names the rows)."""
    methods = default_methods(engine) if methods is None else methods
    pair_rows, scene_rows, nvs_rows, grids, side_grids = [], [], [], [], []
    for scene in tqdm(scenes, desc="evaluate", disable=not progress, dynamic_ncols=True):
        gt = normalized_cameras(np.asarray(scene.w2c, dtype=np.float64))
        base = ordered_pair_baselines(gt)
        n = len(gt)
        for method in methods:
            if method.startswith("gst") and engine is None:
                continue
            pred, failed = predict_poses(scene, method, engine, samples, seed)
            errs = relative_rotation_errors(pred[:, :3, :3], gt[:, :3, :3])
            pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
            for (i, j), e, b in zip(pairs, errs, base):
                pair_rows.append({"method": method, "group": scene.group, "category": scene.category,
                                  "scene": scene.scene_id, "i": i, "j": j, "baseline_deg": float(b),
                                  "rot_err_deg": float(e)})
            cc = float("nan")
            if n >= 3:
                try:
                    cc = camera_center_accuracy(camera_center(pred), camera_center(gt), 0.1)
                except GeometryError:  # e.g. all predicted centres coincide (identity): nothing aligns
                    cc = 0.0
            scene_rows.append({"method": method, "group": scene.group, "category": scene.category,
                               "scene": scene.scene_id, "cc_acc@0.1": cc, "failed": failed,
                               "estimates": n - 1})
        if nvs and engine is not None:
            size = engine.image_size
            gallery, gallery_w2c = retrieval_gallery(scene, size)
            obs_sq = gallery[0]
            own = engine.predict_view(scene.images[0], np.eye(4), K_obs=scene.K[0], seed=seed,
                                      samples=1).image
            side = side_retrieval(own, gallery, gallery_w2c, 0)
            nvs_rows.append({"method": OWN_CAMERA, "group": scene.group, "category": scene.category,
                             "scene": scene.scene_id, "j": 0, "psnr": float(psnr(own, obs_sq)[0]),
                             "ssim": float(ssim(own, obs_sq)[0]), "side@1": float(side.hit),
                             "side_err_deg": side.error_deg})
            for j in range(1, n):
                truth = gallery[j]
                preds, named = [], set()
                for k, keep in view_samples:
                    view = engine.predict_view(scene.images[0], gt[j], K_obs=scene.K[0], K_target=scene.K[j],
                                               seed=seed + j, samples=k, keep=keep)
                    preds.append((view_method(k, keep), view.image))
                    if k > 1 and consistent_view_method(k) not in named:  # the same draws for every keep
                        named.add(consistent_view_method(k))
                        preds.append((consistent_view_method(k), view.consistent_sample))
                tok = engine.image_tokenizer
                bound = from_model_tensor(tok.decode(tok.encode(truth)))[0]
                key = {"group": scene.group, "category": scene.category, "scene": scene.scene_id, "j": j}
                nearest = []
                for method, img in preds + [("copy observation", obs_sq), (TOKENIZER_BOUND, bound)]:
                    side = side_retrieval(img, gallery, gallery_w2c, j)
                    nearest.append(gallery[side.retrieved])
                    row = {"method": method, **key, "psnr": float(psnr(img, truth)[0]),
                           "ssim": float(ssim(img, truth)[0]), "side@1": float(side.hit),
                           "side_err_deg": side.error_deg}
                    if lpips is not None:
                        row["lpips"] = float(lpips(img, truth)[0])
                    nvs_rows.append(row)
                nvs_rows.append({"method": "chance", **key, "side@1": 1.0 / len(gallery),
                                 "side_err_deg": side.chance_error_deg})
                grids.append((obs_sq, truth, *(img for _, img in preds)))
                side_grids.append((obs_sq, truth, *nearest[:len(preds)]))
    return {"pairs": pair_rows, "scenes": scene_rows, "nvs": nvs_rows, "grids": grids,
            "side_grids": side_grids}


def summarize(results: dict) -> list[dict]:
    """One table: pose rows (summarize_pose) joined with camera-centre accuracy, the share of
    failed estimates (fallen back to the identity) and NVS means."""
    table = summarize_pose(results["pairs"])
    for row in table:
        runs = [r for r in results["scenes"] if r["method"] == row["method"] and r["group"] == row["group"]]
        cc = [r["cc_acc@0.1"] for r in runs if not np.isnan(r["cc_acc@0.1"])]
        row["CC@0.1"] = float(np.mean(cc)) if cc else float("nan")
        if runs:
            row["failed"] = float(sum(r["failed"] for r in runs) / max(1, sum(r["estimates"] for r in runs)))
    nvs_methods = list(dict.fromkeys(r["method"] for r in results["nvs"]))  # first-seen order
    for method in nvs_methods:
        for group in sorted({r["group"] for r in results["nvs"]}):
            sel = [r for r in results["nvs"] if r["method"] == method and r["group"] == group]
            if not sel:
                continue
            target = next((r for r in table if r["method"] == method and r["group"] == group), None)
            if target is None:
                target = {"method": method, "group": group, "pairs": 0}
                table.append(target)
            for key in ("psnr", "ssim", "lpips"):
                if key in sel[0]:
                    target[key.upper()] = float(np.mean([r[key] for r in sel]))
            if "side@1" in sel[0]:
                target["side@1"] = float(np.mean([r["side@1"] for r in sel]))
                target["side err"] = float(np.median([r["side_err_deg"] for r in sel]))
    return table


def markdown_table(rows: list[dict], digits: int = 3) -> str:
    """A GitHub markdown table of dict rows (union of keys, in first-seen order)."""
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]

    def fmt(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "n/a"
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out, title: str = "GST evaluation", max_grid_rows: int = 8) -> list[dict]:
    """results.md, results.csv, per_pair.csv, nvs.csv and grids/*.png under `out`; returns the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = summarize(results)
    files = (("results.csv", table), ("per_pair.csv", results["pairs"]), ("nvs.csv", results["nvs"]))
    for name, rows in files:
        log = CSVLogger(out / name, resume=False)
        for r in rows:
            log.log(**r)
    md = [f"# {title}", "", "Relative rotation accuracy (RRA, CO3D protocol: all ordered pairs, per category "
          "then averaged), camera-centre accuracy (CC, N >= 3 views), novel-view PSNR/SSIM(/LPIPS).", "",
          markdown_table(table)]
    (out / "results.md").write_text("\n".join(md))
    for key, name in (("grids", "nvs_observation_truth_prediction.png"),
                      ("side_grids", "nvs_observation_truth_nearest_view.png")):
        grids = results.get(key, [])[:max_grid_rows]
        if grids:
            save_image_grid([im for row in grids for im in row], out / "grids" / name, ncols=len(grids[0]))
    return table


def main(argv=None) -> int:
    from training.datasets import INPUT_ERRORS, add_split_fractions_argument, build_dataset, reader_options

    ap = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GST model directory (omit to run only the baselines)")
    ap.add_argument("--data", default="synthetic", help="dataset reader name (training.datasets): synthetic "
                                                        "(gst render), objaverse, co3d, re10k, mvimgnet")
    add_split_fractions_argument(ap)
    ap.add_argument("--root", required=True)
    ap.add_argument("--split", action="append", default=None, metavar="SPLIT[:GROUP]",
                    help="split to evaluate, optionally labelled seen/unseen (repeatable); "
                         "default test_views:seen and test_objects:unseen")
    ap.add_argument("--views", type=int, default=2, help="views per scene (view 0 is the observation)")
    ap.add_argument("--scenes", type=int, default=20, help="scenes per split")
    ap.add_argument("--samples", type=int, default=4, help="pose samples per estimate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (EngineConfig)")
    ap.add_argument("--top-k", type=int, default=100, help="top-k sampling, 0 = off (EngineConfig)")
    ap.add_argument("--cfg-scale", type=float, default=1.0,
                    help="classifier-free guidance scale, 1 = none (EngineConfig)")
    ap.add_argument("--vgg", default=None, help="VGG16 weights file: adds LPIPS")
    ap.add_argument("--lpips-lin", default=None, help="optional LPIPS layer weights file")
    ap.add_argument("--pose-estimate", choices=("mean", "mode"), default="mean",
                    help="gst: average of the sampled poses, or the most likely sample (EngineConfig); "
                         "the pose head's read-out is the separate method gst-head")
    ap.add_argument("--methods", default=None,
                    help=f"comma-separated pose methods among {','.join(POSE_METHODS)} (default: all; "
                         f"gst-head only for a model with a pose head)")
    ap.add_argument("--one-way", action="store_true",
                    help="gst-head: read each pair one way only (EngineConfig.pose_symmetric off)")
    ap.add_argument("--no-mirror", action="store_true",
                    help="head read-outs: do not average in the left-right mirrored pair "
                         "(EngineConfig.pose_mirror off)")
    ap.add_argument("--no-opencv", action="store_true", help="skip the OpenCV baseline")
    ap.add_argument("--no-nvs", action="store_true", help="skip novel-view synthesis")
    ap.add_argument("--view-samples", default="1,16/4", metavar="K[/M][,...]",
                    help="sampled views per predicted view, one NVS row per entry (1 = a single "
                         "sample, 'gst'; K > 1 = 'gst, mean of K' and 'gst, most consistent of K'; "
                         "K/M = 'gst, mean of the M most consistent of K', the engine's default 16/4)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.views < 2:
        ap.error("--views must be >= 2")
    if args.data != "synthetic" and not args.split:
        ap.error(f"--data {args.data} needs --split (e.g. test:unseen): the default splits, test_views and "
                 f"test_objects, are those of the synthetic renders")

    engine = None
    specs = args.split or ["test_views:seen", "test_objects:unseen"]
    scenes = []
    try:   # what the user named: the model, the data root, the splits
        if args.model:
            from gst_ros.engine.engine import EngineConfig, GSTEngine

            engine = GSTEngine(EngineConfig(model_dir=args.model, device=args.device, seed=args.seed,
                                            pose_estimate=args.pose_estimate, pose_symmetric=not args.one_way,
                                            pose_mirror=not args.no_mirror,
                                            temperature=args.temperature,
                                            top_k=args.top_k, cfg_scale=args.cfg_scale))
        for spec in specs:
            split, _, group = spec.partition(":")
            reader = build_dataset(args.data, args.root, split, **reader_options(args))
            scenes += scenes_from_reader(reader, group or split, args.views, args.scenes)
    except INPUT_ERRORS as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    if not scenes:
        print(f"evaluate: no scene of {', '.join(specs)} has {args.views} views (--views): lower --views, "
              f"or give a split whose scenes keep more of their views", file=sys.stderr)
        return 2
    if args.methods is None:
        methods = default_methods(engine)
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(POSE_METHODS))
    if unknown:
        ap.error(f"unknown pose methods {unknown}; expected some of {list(POSE_METHODS)}")
    methods = [m for m in methods if not (m == "opencv" and args.no_opencv)]
    lp = LPIPSMetric(args.vgg, args.lpips_lin) if args.vgg else None
    try:
        view_samples = parse_view_samples(args.view_samples)
    except ValueError as e:
        ap.error(str(e))
    res = evaluate_scenes(scenes, engine, methods, args.samples, args.seed, nvs=not args.no_nvs, lpips=lp,
                          progress=not args.no_progress, view_samples=view_samples)
    table = write_report(res, args.out)
    print(markdown_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
