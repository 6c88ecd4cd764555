"""Decode speed of the GST transformer on a full GST sequence.

For each preset, batch size and CFG setting, samples the 512 tokens that follow the prefix
[observation (n), <GEN>] of a 769-token sequence (16x16 grid: camera then image segment, i.e.
camera proposals with views), with and without the KV cache, with random weights (speed does
not depend on the weights). Prints tokens/s per sequence (= token steps per second), the same
for the whole batch (batch x as many tokens), and ms per token step. The cached figures include
the prefill of the 257-token prefix.

Without the cache every step recomputes the whole prefix, so a full run is slow: by default
only `--no-cache-steps` steps are timed, at sequence lengths spread evenly over the run, and the
total is extrapolated as (mean step time) x (steps); the output marks such rows "extrapolated".
--full-no-cache times every step instead.

    .venv/bin/python benchmarks/bench_decode.py            # small + B, batch 1 and 8
    .venv/bin/python benchmarks/bench_decode.py --quick    # small + B, batch 1 only, fewer steps
"""
from __future__ import annotations

import argparse
import time

import torch

from gst_ros.engine.generation import SamplingConfig, generate_segments, sample_logits
from gst_ros.models.sequence import build_prefix, null_condition
from gst_ros.models.transformer import GST, count_parameters, gst_config


def _prefix(model, batch, gen):
    lay = model.config.layout
    obs = torch.randint(0, model.config.image_vocab, (batch, lay.n), generator=gen)
    return build_prefix(model.config.vocabulary, lay, obs, "gen")


def time_cached(model, batch, cfg_scale, gen):
    """Seconds for the real KV-cache path (prefill + 2n - 1 decode steps)."""
    prefix = _prefix(model, batch, gen)
    t0 = time.perf_counter()
    generate_segments(model, prefix, ["camera", "image"], SamplingConfig(cfg_scale=cfg_scale), gen)
    return time.perf_counter() - t0


def time_uncached(model, batch, cfg_scale, gen, steps):
    """(seconds for all 2n steps, measured steps) of the recompute path: each step is one forward
    over the whole sequence so far + one draw, exactly what generate_segments(use_kv_cache=False)
    does. With steps < 2n, time those steps at evenly spread lengths and extrapolate."""
    lay, voc = model.config.layout, model.config.vocabulary
    total = 2 * lay.n
    p = lay.n + 1
    prefix = _prefix(model, batch, gen)
    rows = torch.cat([prefix, null_condition(prefix, lay)]) if cfg_scale is not None else prefix
    seq = torch.randint(0, voc.image_vocab, (rows.shape[0], p + total), generator=gen)
    seq[:, :p] = rows
    allowed = voc.segment_logit_mask("image")
    sc = SamplingConfig(cfg_scale=cfg_scale)
    which = range(total) if steps >= total else [round(i * (total - 1) / (steps - 1)) for i in range(steps)]
    spent = 0.0
    with torch.inference_mode():
        for step in which:
            t0 = time.perf_counter()
            logits = model(seq[:, : p + step])[:, -1]
            if cfg_scale is not None:
                c, u = logits.chunk(2)
                logits = cfg_scale * c + (1 - cfg_scale) * u
            sample_logits(logits, allowed, sc, gen)
            spent += time.perf_counter() - t0
    return spent / len(which) * total, len(which)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="small,B")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--cfg-scale", type=float, default=4.0, help="scale used for the CFG rows")
    ap.add_argument("--no-cache-steps", type=int, default=24, help="timed steps of the no-cache path")
    ap.add_argument("--full-no-cache", action="store_true", help="time every no-cache step")
    ap.add_argument("--quick", action="store_true", help="batch 1 only, 8 no-cache steps")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    nc_steps = 8 if args.quick else args.no_cache_steps
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, fp32, "
          f"grid 16x16 (769-token sequence, 512 generated tokens)")
    header = f"{'preset':>6} {'params':>8} {'batch':>5} {'cfg':>4} {'kv-cache':>8} {'tok/s':>8} " \
             f"{'batch tok/s':>11} {'ms/token':>9}  note"
    print(header)
    print("-" * len(header))
    for name in args.presets.split(","):
        torch.manual_seed(0)
        model = GST(gst_config(name, grid=(16, 16))).eval()
        n_tok = 2 * model.config.layout.n
        for batch in batches:
            for cfg in (None, args.cfg_scale):
                ref = None
                for cache in (True, False):
                    note = ""
                    if cache:
                        secs = time_cached(model, batch, cfg, gen)
                        ref = secs
                    else:
                        steps = n_tok if args.full_no_cache else nc_steps
                        secs, done = time_uncached(model, batch, cfg, gen, steps)
                        note = f"{ref and secs / ref:.1f}x slower than cached"
                        if done < n_tok:
                            note += f"; extrapolated from {done} of {n_tok} steps"
                    print(f"{name:>6} {count_parameters(model) / 1e6:7.1f}M {batch:>5} "
                          f"{'on' if cfg is not None else 'off':>4} {'yes' if cache else 'no':>8} "
                          f"{n_tok / secs:8.1f} {batch * n_tok / secs:11.1f} "
                          f"{1000 * secs / n_tok:9.2f}  {note}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
