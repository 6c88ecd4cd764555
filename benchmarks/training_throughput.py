"""Throughput of the transformer training stack on this machine: the memory-mapped shard reader
(pairs/s) and optimizer steps of the tiny and small CPU recipes (tokens/s). Prints figures only.

    .venv/bin/python benchmarks/training_throughput.py [--steps 10]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from training.token_shards import ShardWriter, TokenShardDataset, collate
from training.train_gst import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def make_shards(root, grid, image_vocab, camera_vocab, scenes=64):
    rng = np.random.default_rng(0)
    n = grid[0] * grid[1]
    with ShardWriter(root, grid, image_vocab, camera_vocab, pairs_per_shard=256) as w:
        for s in range(scenes):
            pairs = rng.integers(0, 8, (16, 2))
            w.add_scene(f"s{s}", "c", rng.integers(0, image_vocab, (8, n)), pairs,
                        rng.integers(0, camera_vocab, (16, n)), np.tile(np.eye(4), (16, 1, 1)),
                        np.tile(np.eye(3), (16, 1, 1)))
    return root


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = make_shards(tmp / "s16", (16, 16), 16384, 2048)
        ds = TokenShardDataset(shards)
        idx = np.random.default_rng(0).permutation(len(ds))[:512]
        t = time.perf_counter()
        for k in range(0, len(idx), 32):
            collate([ds[int(i)] for i in idx[k:k + 32]])
        dt = time.perf_counter() - t
        print(f"shard reader (16x16 grid, random access, batches of 32): {len(idx) / dt:,.0f} pairs/s")
        for preset, grid, dim, layers, heads, batch in (("tiny", (8, 8), 128, 2, 2, 16),
                                                        ("small", (8, 8), 384, 6, 6, 8)):
            sh = make_shards(tmp / f"s_{preset}", grid, 1024, 512)
            cfg = TrainConfig(model=preset, model_overrides={"dim": dim, "n_layer": layers, "n_head": heads},
                              shards=str(sh), batch_size=batch, max_steps=args.steps + 1, log_every=1,
                              ckpt_every=10**9, lr=1e-4)
            out = tmp / f"run_{preset}"
            t0 = time.perf_counter()
            train(cfg, out, progress=False, export=False)
            total = time.perf_counter() - t0
            import csv

            rows = list(csv.DictReader(open(out / "train_log.csv")))[1:]  # the first step includes warm-up
            tps = np.median([float(r["tokens_per_s"]) for r in rows])
            seq = 3 * grid[0] * grid[1]
            print(f"train {preset} (dim {dim}, {layers} layers, batch {batch} x {seq} tokens): "
                  f"median {tps:,.0f} tokens/s = {tps / (batch * seq):.2f} steps/s ({total:.1f} s for "
                  f"{args.steps + 1} steps incl. start-up and final checkpoint)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
