"""Per-task latency of GSTEngine (pose estimation, novel view, proposals, unconditional view).

    .venv/bin/python benchmarks/bench_engine.py                     # shipped model if present, else tiny
    .venv/bin/python benchmarks/bench_engine.py --model models/gst_small --repeats 5
    .venv/bin/python benchmarks/bench_engine.py --random small --backend onnx   # shipped sizes, random

Prints median and min wall-clock seconds per call over --repeats calls (after one warm-up call)
for each task, on a 640x480 input image (centre-cropped and resized by the engine like any
input), with the K of that image. Latency includes preprocessing, tokenisation, sampling with the
KV cache, decoding and the rays -> camera fit. As in the node, the observation (reference) stays
the same from call to call and every pose call reads a new target frame, so the reference's image
codes come from the engine's cache (GSTEngine.image_codes) and the frame's are computed; the row
"both images new" pays for tokenising both. The pose is timed with the model's default read-out
(for a model with pose and centre heads one forward pass, no sampling; then the sampled "mean"
read-out is timed too). --beside-views adds the pose's latency while a second engine draws views
on another thread without pause (gst_node's view worker, docs/node.md): the cost of sharing the
cores, against the whole view's time a pose would wait on one worker.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test"))

from gst_ros.engine.engine import EngineConfig, GSTEngine, default_model_dir  # noqa: E402
from gst_ros.geometry import look_at  # noqa: E402
from training.evaluate import parse_view_samples, view_method  # noqa: E402


def test_image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:h, 0:w]
    a = rng.uniform(2, 6, 3)
    img = np.stack([127 + 120 * np.sin(a[0] * u / w), 127 + 120 * np.cos(a[1] * v / h),
                    127 + 120 * np.sin(a[2] * (u + v) / (w + h))], -1)
    return img.astype(np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="GST model directory (default: shipped, else tiny)")
    p.add_argument("--random", choices=("tiny", "small"), default=None,
                   help="benchmark a randomly initialised model instead: the tiny test model, or one "
                        "with the shipped CPU model's sizes (small)")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--samples", type=int, default=4, help="pose samples per estimate")
    p.add_argument("--proposals", type=int, default=4)
    p.add_argument("--view-samples", default="", metavar="K[/M][,...]",
                   help="also time predict_view with these sample counts K, averaging the M most "
                        "consistent (e.g. 4,16/4; training.evaluate's --view-samples; default: only the "
                        "engine's default and one sample)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--beside-views", action="store_true",
                   help="also time the default pose while a second engine (the node's view worker) draws "
                        "default views on another thread without pause")
    args = p.parse_args(argv)
    try:
        extra_views = parse_view_samples(args.view_samples) if args.view_samples else []
    except ValueError as e:
        p.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = None
    model_dir = Path(args.model) if args.model else default_model_dir()
    if args.random is None and args.model is None and not model_dir.is_dir():
        print(f"no shipped model at {model_dir}: benchmarking the tiny random model")
        args.random = "tiny"
    if args.random:
        from engine_fixtures import make_small_model, make_tiny_model

        tmp = tempfile.TemporaryDirectory()
        make = make_tiny_model if args.random == "tiny" else make_small_model
        model_dir = make(tmp.name, onnx=args.backend == "onnx")
    t0 = time.perf_counter()
    engine = GSTEngine(EngineConfig(model_dir=str(model_dir), device=args.device,
                                    tokenizer_backend=args.backend))
    load_s = time.perf_counter() - t0
    obs = test_image(480, 640, 0)
    frames = (test_image(480, 640, 1 + i) for i in range(10 ** 6))   # a new target frame per call
    K = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])
    w2c = look_at([0.3, -0.1, 0.05], [0.0, 0.0, 1.0], up=(0.0, -1.0, 0.0))
    heads_only = engine.pose_estimate == "head" and engine.model.center_head is not None
    label = "heads, no sampling" if heads_only else f"{engine.pose_estimate}, samples={args.samples}"
    default_view = view_method(engine.config.view_samples, engine.config.view_keep).removeprefix("gst, ")
    default_view = "one sample" if default_view == "gst" else default_view
    tasks = {
        f"estimate_pose ({label})": (
            lambda: engine.estimate_pose(obs, next(frames), K, K, samples=args.samples)),
        f"estimate_pose ({label}, both images new)": (
            lambda: engine.estimate_pose(next(frames), next(frames), K, K, samples=args.samples)),
        f"estimate_pose ({label}, K unknown)": (
            lambda: engine.estimate_pose(obs, next(frames), samples=args.samples)),
        f"predict_view (default: {default_view})": (
            lambda: engine.predict_view(obs, w2c, K_obs=K)),
        "predict_view (one sample)": lambda: engine.predict_view(obs, w2c, K_obs=K, samples=1),
        f"propose_views (n={args.proposals})": lambda: engine.propose_views(obs, n=args.proposals, K_obs=K),
        "unconditional_view": lambda: engine.unconditional_view(obs, K_obs=K),
    }
    for k, keep in extra_views:
        tasks[f"predict_view ({view_method(k, keep).removeprefix('gst, ')})"] = (
            lambda k=k, keep=keep: engine.predict_view(obs, w2c, K_obs=K, samples=k, keep=keep))
    if heads_only:  # the camera-token read-out of the same model, for comparison
        tasks[f"estimate_pose (mean, samples={args.samples})"] = (
            lambda: engine.estimate_pose(obs, next(frames), K, K, samples=args.samples, estimate="mean"))
    g = engine.model.config
    print(f"model {model_dir}: transformer dim {g.dim} x {g.n_layer} layers, grid {g.grid[0]}x{g.grid[1]}, "
          f"image {engine.image_size}px; device {engine.device}, tokenizer backend {args.backend}, "
          f"torch threads {torch.get_num_threads()}; load {load_s:.2f} s")
    rows = []
    for name, fn in tasks.items():
        fn()  # warm-up
        times = []
        for _ in tqdm(range(args.repeats), desc=name, leave=False):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        rows.append((name, statistics.median(times), min(times)))
    if args.beside_views:
        rows.append(pose_beside_views(engine, model_dir, args, obs, frames, K, w2c))
    width = max(len(r[0]) for r in rows)
    print(f"{'task':<{width}}  median s   min s")
    for name, med, mn in rows:
        print(f"{name:<{width}}  {med:8.3f}  {mn:7.3f}")
    if tmp is not None:
        tmp.cleanup()
    return 0


def pose_beside_views(poses, model_dir, args, obs, frames, K, w2c) -> tuple[str, float, float]:
    """(name, median s, min s) of the default pose estimate by engine `poses` on this thread while
    a second engine on the same model draws default views on another thread, as gst_node's two
    workers do."""
    import threading

    views = GSTEngine(EngineConfig(model_dir=str(model_dir), device=args.device,
                                   tokenizer_backend=args.backend))
    stop, drawn, failed = threading.Event(), [], []

    def draw():
        try:
            while not stop.is_set():
                views.predict_view(obs, w2c, K_obs=K)
                drawn.append(1)
        except Exception as e:  # reported on the main thread
            failed.append(e)

    poses.estimate_pose(obs, next(frames), K, K)   # warm-up
    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    times = []
    try:
        while thread.is_alive() and (len(drawn) < 1 or len(times) < max(args.repeats, 10)):
            t = time.perf_counter()   # at least one whole view drawn beside
            poses.estimate_pose(obs, next(frames), K, K)
            times.append(time.perf_counter() - t)
    finally:
        stop.set()
        thread.join()
    if failed:
        raise RuntimeError(f"the view thread failed: {failed[0]!r}") from failed[0]
    return (f"estimate_pose (default) beside a view worker ({len(drawn)} views drawn meanwhile)",
            statistics.median(times), min(times))


if __name__ == "__main__":
    sys.exit(main())
