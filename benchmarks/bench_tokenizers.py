"""Tokenizer latency on CPU: eager torch vs ONNX Runtime, encode and decode, batch 1.

    .venv/bin/python benchmarks/bench_tokenizers.py [--presets image-vq16 image-small camera-small] [--reps 5]

Random weights (latency does not depend on their values). Prints the median of --reps runs
after one warm-up, per preset, and the ONNX/torch speed-up.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from functools import partial

import torch

from gst_ros.engine.onnx_tokenizer import OnnxVQ, export_onnx
from gst_ros.models.vq import VQModel, preset


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="+",
                    default=["image-vq16", "image-small", "camera-small", "camera-vq4"],
                    help="gst_ros.models.vq preset names")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'preset':<14}{'input':>12}{'enc torch':>11}{'enc onnx':>10}{'x':>6}"
          f"{'dec torch':>11}{'dec onnx':>10}{'x':>6}")
    for name in args.presets:
        torch.manual_seed(0)
        model = VQModel(preset(name)).eval()
        c = model.config
        x = torch.rand(args.batch, c.in_channels, c.resolution, c.resolution) * 2 - 1
        with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(model, d)
            core = OnnxVQ(d, c)
            ids = model.encode_indices(x)
            et = median_ms(partial(model.encode_indices, x), args.reps)
            eo = median_ms(partial(core.encode_indices, x), args.reps)
            dt = median_ms(partial(model.decode_indices, ids), args.reps)
            do = median_ms(partial(core.decode_indices, ids), args.reps)
        shape = f"{c.in_channels}x{c.resolution}x{c.resolution}"
        print(f"{name:<14}{shape:>12}{et:>9.1f}ms{eo:>8.1f}ms{et / eo:>5.2f}x"
              f"{dt:>9.1f}ms{do:>8.1f}ms{dt / do:>5.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
