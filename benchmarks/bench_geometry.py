"""Time the geometry layer on CPU: Plücker maps of a batch of cameras, and cameras back from the
maps (known-K route and homography route), at 16x16 and 64x64.

    .venv/bin/python benchmarks/bench_geometry.py [--batch 32] [--repeats 20] [--threads 1]

Prints wall time (median, best) and process CPU time per call (ms) and the worst error of the
recovered cameras (so a fast but wrong solver shows up). Run on an idle machine for figures worth quoting.
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


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """(median wall ms, best wall ms, median CPU ms of this process) per call. On a shared,
    busy machine the CPU time is the steadier figure: wall time includes waiting for a core."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1e3 * float(np.median(wall)), 1e3 * float(np.min(wall)), 1e3 * float(np.median(cpu))


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
    print(f"{'task':48s} {'wall med ms':>11s} {'wall best':>9s} {'cpu med ms':>10s} "
          f"{'max rot err deg':>16s} {'max centre err':>15s}")
    for size in (16, 64):
        K = intrinsics_from_fov(49.1, size, size)
        maps = plucker_map(K, w2c, size, size)
        med, best, cpu = timed(lambda K=K, s=size: plucker_map(K, w2c, s, s), args.repeats)
        print(f"{f'plucker_map {size}x{size}':48s} {med:11.2f} {best:9.2f} {cpu:10.2f}")
        for name, k, robust in (("known K", K, True), ("known K, robust=False", K, False),
                                ("homography (K unknown)", None, True)):
            fit = cameras_from_plucker(maps, k, robust=robust)
            rot = rotation_error_deg(fit.w2c[:, :3, :3].numpy(), R).max()
            cen = np.abs(camera_center(fit.w2c.numpy()) - C).max()
            med, best, cpu = timed(lambda k=k, x=maps, r=robust: cameras_from_plucker(x, k, robust=r),
                                   args.repeats)
            print(f"{f'cameras_from_plucker {size}x{size} {name}':48s} {med:11.2f} {best:9.2f} {cpu:10.2f} "
                  f"{rot:16.2e} {cen:15.2e}")


if __name__ == "__main__":
    main()
