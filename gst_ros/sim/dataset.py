"""Write a synthetic multi-view data set (the project's embedded default) to disk.

On-disk format (version 1), all cameras in gst_ros.geometry's convention:

    <root>/manifest.json          format, version, the render config, object split, view splits
    <root>/render_log.csv         per scene: id, split, objects, views, seconds (timings vary)
    <root>/preview.png            a grid of a few scenes' views, to look at
    <root>/scenes/<scene_id>/
        cameras.json              width, height, near, far, scene centre/radius, the scene spec,
                                  and per view {"id": "000", "K": 3x3, "w2c": 4x4}
        rgb/NNN.png               (H, W, 3) 8-bit RGB
        depth/NNN.png             optional: 16-bit, camera z in scene units * 1000, 0 = no hit
        mask/NNN.png              optional: 8-bit, 0 = background/ground, i = i-th object

Splits (manifest["splits"], each a list of {"scene": id, "views": [view ids]}):
    train         train scenes, their training views
    test_views    train scenes, held-out views      (unseen views of seen objects)
    test_objects  scenes built only from held-out objects, all views (unseen objects)
No object of a test_objects scene appears in any train scene, and within a scene the train and
test_views view sets are disjoint. The last round(scenes * test_object_fraction) scenes are the
test_objects scenes.

Determinism: scene i is drawn from numpy's default_rng([seed, i]), independent of the number of
workers, and PNGs are encoded with fixed settings, so the same config gives the same bytes
(render_log.csv excepted: it holds timings).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .cameras import TRAJECTORIES, camera_sampler
from .scene import OBJECT_SETS, SceneSampler, object_pool, split_objects

FORMAT = "gst_ros.synthetic"
VERSION = 1
SPLITS = ("train", "test_views", "test_objects")
MIN_SIZE, MAX_SIZE = 64, 512
DEPTH_SCALE = 1000.0  # depth PNG value = round(depth * DEPTH_SCALE)
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]


@dataclass
class RenderConfig:
    scenes: int = 10
    views: int = 12
    size: int = 128
    seed: int = 0
    objects: str = "textured"          # textured | random | mixed
    trajectory: str = "sphere"         # sphere | orbit
    objects_per_scene: tuple[int, int] = (1, 1)
    test_object_fraction: float = 0.1  # share of objects and of scenes held out as unseen objects
    test_view_fraction: float = 0.2    # share of each train scene's views held out
    depth: bool = False
    masks: bool = False

    def validate(self) -> None:
        if self.scenes < 1:
            raise ValueError(f"--scenes must be >= 1, got {self.scenes}")
        if self.views < 1:
            raise ValueError(f"--views must be >= 1, got {self.views}")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"--size must be in [{MIN_SIZE}, {MAX_SIZE}] pixels, got {self.size}")
        if self.objects not in OBJECT_SETS:
            raise ValueError(f"--objects must be one of {OBJECT_SETS}, got {self.objects!r}")
        if self.trajectory not in TRAJECTORIES:
            raise ValueError(f"--trajectory must be one of {TRAJECTORIES}, got {self.trajectory!r}")
        lo, hi = self.objects_per_scene
        if not 1 <= lo <= hi:
            raise ValueError(f"objects per scene must satisfy 1 <= min <= max, got {self.objects_per_scene}")
        for name in ("test_object_fraction", "test_view_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")


def scene_id(i: int) -> str:
    return f"{i:06d}"


def view_id(j: int) -> str:
    return f"{j:03d}"


def encode_png(array: np.ndarray) -> bytes:
    """Deterministic PNG bytes of an (H, W, 3) uint8 RGB, (H, W) uint8 or (H, W) uint16 image."""
    a = np.ascontiguousarray(array)
    if a.ndim == 3:
        a = np.ascontiguousarray(a[:, :, ::-1])  # OpenCV writes BGR
    ok, buf = cv2.imencode(".png", a, PNG_PARAMS)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for an array of shape {array.shape} {array.dtype}")
    return buf.tobytes()


def _plan(cfg: RenderConfig) -> tuple[list[dict], dict]:
    """Per-scene jobs (id, object pool, split role) and the object split, from the config only."""
    train_objs, test_objs = split_objects(object_pool(cfg.objects), cfg.test_object_fraction, cfg.seed)
    n_test = round(cfg.scenes * cfg.test_object_fraction) if test_objs else 0
    n_test = min(n_test, cfg.scenes - 1)
    jobs = [{"index": i, "scene_id": scene_id(i), "test_objects": i >= cfg.scenes - n_test}
            for i in range(cfg.scenes)]
    return jobs, {"train": train_objs, "test": test_objs}


# one renderer per worker process, created lazily (pybullet clients do not survive fork)
_RENDERER = None


def _renderer():
    global _RENDERER
    if _RENDERER is None:
        from .renderer import Renderer

        _RENDERER = Renderer()
    return _RENDERER


def render_scene(root: Path, cfg: RenderConfig, job: dict, objects: dict) -> dict:
    """Render one scene's views and write its files; returns its split record."""
    t0 = time.perf_counter()
    i, sid = job["index"], job["scene_id"]
    rng = np.random.default_rng([cfg.seed, i])
    pool = objects["test"] if job["test_objects"] else objects["train"]
    spec = SceneSampler(objects_per_scene=tuple(cfg.objects_per_scene)).sample(rng, sid, pool)
    r = _renderer()
    info = r.load_scene(spec)
    sampler = camera_sampler(cfg.trajectory)
    K, w2c = sampler.sample(rng, cfg.views, info.center, info.radius, cfg.size, cfg.size)
    near, far = r.clip_planes()
    d = root / "scenes" / sid
    for sub, on in (("rgb", True), ("depth", cfg.depth), ("mask", cfg.masks)):
        if on:
            (d / sub).mkdir(parents=True, exist_ok=True)
    for j in range(cfg.views):
        out = r.render(K[j], w2c[j], cfg.size, cfg.size)
        (d / "rgb" / f"{view_id(j)}.png").write_bytes(encode_png(out.rgb))
        if cfg.depth:
            z = np.where(np.isfinite(out.depth), np.round(out.depth * DEPTH_SCALE), 0)
            z = np.clip(z, 0, 65535).astype(np.uint16)
            (d / "depth" / f"{view_id(j)}.png").write_bytes(encode_png(z))
        if cfg.masks:
            (d / "mask" / f"{view_id(j)}.png").write_bytes(encode_png(out.mask))
    cams = {
        "scene_id": sid, "width": cfg.size, "height": cfg.size, "near": near, "far": far,
        "center": info.center.tolist(), "radius": info.radius,
        "depth_scale": DEPTH_SCALE if cfg.depth else None, "masks": cfg.masks,
        "scene": spec.to_dict(),
        "views": [{"id": view_id(j), "K": K[j].tolist(), "w2c": w2c[j].tolist()} for j in range(cfg.views)],
    }
    (d / "cameras.json").write_text(json.dumps(cams, indent=1, sort_keys=True) + "\n")
    views = [view_id(j) for j in range(cfg.views)]
    if job["test_objects"]:
        split = {"test_objects": views}
    else:
        n_hold = min(round(cfg.views * cfg.test_view_fraction), cfg.views - 1)
        held = set(rng.choice(cfg.views, size=n_hold, replace=False).tolist()) if n_hold else set()
        split = {"train": [v for j, v in enumerate(views) if j not in held],
                 "test_views": [v for j, v in enumerate(views) if j in held]}
    return {"scene_id": sid, "split": split, "objects": [o.name for o in spec.objects],
            "seconds": time.perf_counter() - t0}


def _render_star(args):
    return render_scene(*args)


def write_dataset(root, cfg: RenderConfig, workers: int = 2, overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Render `cfg` into directory `root` with `workers` processes; returns the manifest."""
    cfg.validate()
    root = Path(root)
    if (root / "manifest.json").exists() and not overwrite:
        raise FileExistsError(
            f"{root} already holds a data set (manifest.json); pass overwrite=True "
            f"(`gst render --overwrite`) to replace it")
    root.mkdir(parents=True, exist_ok=True)
    jobs, objects = _plan(cfg)
    args = [(root, cfg, job, objects) for job in jobs]
    records = []
    workers = max(1, min(int(workers), len(jobs)))
    from tqdm import tqdm

    bar = tqdm(total=cfg.scenes * cfg.views, unit="view", desc="render", disable=not progress)
    with open(root / "render_log.csv", "w", newline="") as f:
        log = csv.writer(f)
        log.writerow(["scene_id", "split", "objects", "views", "seconds"])
        if workers == 1:
            results = map(_render_star, args)
            pool = None
        else:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            pool = ctx.Pool(workers)
            results = pool.imap(_render_star, args, chunksize=1)
        try:
            for rec in results:
                records.append(rec)
                log.writerow([rec["scene_id"], "+".join(rec["split"]), " ".join(rec["objects"]),
                              cfg.views, f"{rec['seconds']:.4f}"])
                bar.update(cfg.views)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
            bar.close()
    splits = {name: [] for name in SPLITS}
    for rec in records:
        for name, views in rec["split"].items():
            if views:
                splits[name].append({"scene": rec["scene_id"], "views": views})
    manifest = {
        "format": FORMAT, "version": VERSION, "config": dataclasses.asdict(cfg),
        "objects": objects,
        "scenes": [{"scene": r["scene_id"], "objects": r["objects"]} for r in records],
        "splits": splits,
    }
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, root / "manifest.json")
    write_preview(root, [r["scene_id"] for r in records[:8]], root / "preview.png")
    return manifest


def image_grid(images: list[np.ndarray], cols: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """(H', W', 3) uint8 grid of equally sized (H, W, 3) uint8 images, row-major, `pad` pixels apart."""
    if not images:
        raise ValueError("image_grid: no images")
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return out


def write_preview(root: Path, scene_ids: list[str], path: Path, views: int = 6) -> None:
    """PNG grid of a few scenes: one row per scene, its first `views` views."""
    rows = []
    for sid in scene_ids:
        files = sorted((Path(root) / "scenes" / sid / "rgb").glob("*.png"))[:views]
        rows.append([cv2.imread(str(f), cv2.IMREAD_COLOR)[:, :, ::-1] for f in files])
    rows = [r for r in rows if r]
    if not rows:
        return
    cols = max(len(r) for r in rows)
    blank = np.full_like(rows[0][0], 255)
    cells = [im for r in rows for im in r + [blank] * (cols - len(r))]
    Path(path).write_bytes(encode_png(image_grid(cells, cols)))
