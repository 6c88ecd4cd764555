"""Time the geometry layer on CPU: Plücker maps of a batch of cameras, and cameras back from the
maps (known-K route and homography route), at 16x16 and 64x64.

    .venv/bin/python benchmarks/bench_geometry.py [--batch 32] [--repeats 20] [--threads 1]

Prints the median and best wall time per call (ms) and the worst error of the recovered cameras
(so a fast but wrong solver shows up). Run on an idle machine for figures worth quoting.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gst_ros.geometry import (
    camera_center,
    cameras_from_plucker,
    intrinsics_from_fov,
    make_pose,
    plucker_map,
    rotation_error_deg,
    so3_exp,
)


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times)), 1e3 * float(np.min(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    R = so3_exp(torch.as_tensor(rng.normal(size=(args.batch, 3)))).numpy()
    C = rng.normal(size=(args.batch, 3)) * 2
    w2c = np.stack([make_pose(r, -r @ c) for r, c in zip(R, C)])
    print(f"batch {args.batch}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'task':34s} {'median ms':>10s} {'best ms':>9s} {'max rot err deg':>16s} {'max centre err':>15s}")
    for size in (16, 64):
        K = intrinsics_from_fov(49.1, size, size)
        maps = plucker_map(K, w2c, size, size)
        med, best = timed(lambda K=K, s=size: plucker_map(K, w2c, s, s), args.repeats)
        print(f"{f'plucker_map {size}x{size}':34s} {med:10.2f} {best:9.2f}")
        for name, k in (("known K", K), ("homography (K unknown)", None)):
            fit = cameras_from_plucker(maps, k)
            rot = rotation_error_deg(fit.w2c[:, :3, :3].numpy(), R).max()
            cen = np.abs(camera_center(fit.w2c.numpy()) - C).max()
            med, best = timed(lambda k=k, x=maps: cameras_from_plucker(x, k), args.repeats)
            print(f"{f'cameras_from_plucker {size}x{size} {name}':34s} {med:10.2f} {best:9.2f} "
                  f"{rot:16.2e} {cen:15.2e}")


if __name__ == "__main__":
    main()
