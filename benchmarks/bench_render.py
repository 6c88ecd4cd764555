"""Rendering throughput of the synthetic data pipeline (prints figures; no assertions).

    .venv/bin/python benchmarks/bench_render.py [--size 128] [--scenes 24] [--views 12]

1. raw render: Renderer.render() of one loaded scene (pybullet tiny renderer + mask/background);
2. `gst render` end to end (scene loading, rendering, PNG encoding, files), 1 and 2 workers.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from gst_ros.sim.cameras import SphereCameras
from gst_ros.sim.dataset import RenderConfig, write_dataset
from gst_ros.sim.renderer import Renderer
from gst_ros.sim.scene import SceneSampler, object_pool


def bench_raw(size: int, n: int = 100) -> float:
    with Renderer() as r:
        rng = np.random.default_rng(0)
        info = r.load_scene(SceneSampler().sample(rng, "bench", object_pool("textured")))
        K, w2c = SphereCameras().sample(rng, n, info.center, info.radius, size, size)
        r.render(K[0], w2c[0], size, size)
        t = time.perf_counter()
        for j in range(n):
            r.render(K[j], w2c[j], size, size)
        return n / (time.perf_counter() - t)


def bench_dataset(size: int, scenes: int, views: int, workers: int, objects: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        cfg = RenderConfig(scenes=scenes, views=views, size=size, objects=objects)
        t = time.perf_counter()
        write_dataset(d, cfg, workers=workers, progress=False)
        return scenes * views / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--scenes", type=int, default=24)
    ap.add_argument("--views", type=int, default=12)
    args = ap.parse_args()
    print(f"raw render {args.size}px: {bench_raw(args.size):.0f} views/s (1 process)")
    for objects in ("textured", "random"):
        for workers in (1, 2):
            v = bench_dataset(args.size, args.scenes, args.views, workers, objects)
            print(f"gst render {args.size}px, {objects}, {args.scenes} scenes x {args.views} views, "
                  f"{workers} worker(s): {v:.0f} views/s")


if __name__ == "__main__":
    main()
