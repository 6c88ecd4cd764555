"""Where does a novel view depend on its camera? A per-cell map of the camera's worth.

    python -m training.camera_dependence --model models/gst_small \
        --shards outputs/known/tokens_ft/test_views --pairs 1024 --out outputs/camera_dependence

For held-out pairs (observation o, target view i, target camera c) that have a sibling (another
target camera c' of the same observation: the scene from another side, TokenShardDataset
(siblings=True)), one teacher-forced <GEN>-order pass [o, <GEN>, c, i] and one with c' give
each target-view cell k's NLL, -log p(i_k | i_<k, c, o) and -log p(i_k | i_<k, c', o), in nats.
Their difference is what the camera is worth at that cell: how much the model's prediction of
the view there follows the requested side rather than the view's own earlier cells. It is what
val_image_gain_sibling_camera of training/train_gst.py averages, resolved by cell (row-major,
the image tokens' raster order) and by pair.

Two per-pair readings are added: the pair's total gain (sum over its n cells, nats) and whether
the view is likelier under its own camera than under the sibling (own_wins: 1, 0, or 0.5 for a
tie; a two-way choice of camera by the model's likelihood, 0.5 on average for a model that
ignores its camera).

Writes <out>/cells.csv (row, col, nll_own, nll_sibling, gain per cell), <out>/pairs.csv (pair
index, scene, nll_own, nll_sibling, gain, own_wins; totals over the view's cells),
<out>/summary.json and <out>/camera_dependence.png (heatmaps of the NLL under the true camera
and of the gain, one cell per image token).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from gst_ros.engine.engine import EngineConfig, GSTEngine
from gst_ros.models.sequence import TASK_GEN
from training.logging_utils import pyplot, save_figure
from training.token_shards import TokenShardDataset, collate
from training.train_gst import batch_from_tokens


def cell_nll(model, tokens: dict, camera: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, n) float64 NLL in nats of each target-view cell under teacher forcing in the <GEN>
    order [o, <GEN>, camera, i], no condition dropout. tokens: collated shard items (observation,
    image: (B, n) image codes); camera: (B, n) raw camera codes of the target camera relative to
    the observation (the shards' convention: observation camera = identity, OpenCV axes)."""
    cfg = model.config
    b, n = camera.shape[0], cfg.layout.n
    items = {"observation": tokens["observation"], "image": tokens["image"], "camera": camera}
    inp, tgt, _ = batch_from_tokens(cfg, items, torch.full((b,), TASK_GEN), torch.zeros(b, dtype=torch.bool),
                                    "joint", device)
    logits = model(inp)[:, -n:]
    per_cell = F.cross_entropy(logits.float().transpose(1, 2), tgt[:, -n:], reduction="none")
    return per_cell.double().cpu()


def measure(model, data: TokenShardDataset, pairs: int, batch: int, seed: int, device: torch.device,
            progress: bool = True) -> dict:
    """Per-pair, per-cell NLL under the own and the sibling camera for up to `pairs` held-out pairs
    with a sibling (drawn without replacement, seeded). Returns {"index", "scene": (P,) int,
    "own", "sibling": (P, n) float64 nats}."""
    if not data.siblings:
        raise ValueError("camera_dependence needs TokenShardDataset(siblings=True)")
    order = np.random.default_rng(seed).permutation(len(data))

    def has_sibling(i: int) -> bool:  # from the shard's pair table, without reading any tokens
        shard, row = data.locate(i)
        return data.sibling_row(shard, row) != row

    chosen = list(itertools.islice((int(i) for i in order if has_sibling(int(i))), pairs))
    if not chosen:
        raise ValueError(f"{data.root}: no pair has a sibling (one target per observation); "
                         "pre-tokenise with --pairs-per-scene >= 2")
    own, sib, scenes = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(chosen), batch), desc="camera dependence", disable=not progress):
                tokens = collate([data[i] for i in chosen[start: start + batch]])
                own.append(cell_nll(model, tokens, tokens["camera"], device))
                sib.append(cell_nll(model, tokens, tokens["sibling_camera"], device))
                scenes.append(tokens["scene"].numpy())
    finally:
        model.train(was_training)
    return {"index": np.array(chosen), "scene": np.concatenate(scenes), "own": torch.cat(own).numpy(),
            "sibling": torch.cat(sib).numpy()}


TIE_NATS = 1e-6  # per-view gains this close to 0 are a tie (the two passes agree to rounding)


def pair_readings(result: dict) -> tuple[np.ndarray, np.ndarray]:
    """(gain per view (P,) in nats: the sum over its cells of sibling minus own NLL; own_wins (P,):
    1 where the view is likelier under its own camera, 0 where under the sibling's, 0.5 for a
    tie within TIE_NATS). The one place both summary.json and pairs.csv take them from."""
    gain_view = (result["sibling"] - result["own"]).sum(axis=1)
    wins = np.where(np.abs(gain_view) <= TIE_NATS, 0.5, (gain_view > 0).astype(np.float64))
    return gain_view, wins


def summarize(result: dict, grid: tuple[int, int]) -> dict:
    """Means over pairs: per cell (lists in row-major order, grid = (rows, cols)) and per view,
    with the share of pairs whose view is likelier under its own camera (own_wins; ties count
    half, pair_readings)."""
    own, sib = result["own"], result["sibling"]
    gain = sib - own
    gain_view, wins = pair_readings(result)
    first_row = gain[:, : grid[1]].mean()
    return {"pairs": int(len(own)), "grid": list(grid),
            "nll_own_per_token": float(own.mean()), "nll_sibling_per_token": float(sib.mean()),
            "gain_per_token": float(gain.mean()), "gain_per_view": float(gain_view.mean()),
            "gain_first_row_per_token": float(first_row),
            "gain_other_rows_per_token": float(gain[:, grid[1]:].mean()) if grid[0] > 1 else float("nan"),
            "own_wins": float(wins.mean()),
            "gain_per_cell": gain.mean(axis=0).tolist(), "nll_own_per_cell": own.mean(axis=0).tolist()}


def write_outputs(result: dict, summary: dict, out: Path) -> None:
    """cells.csv, pairs.csv, summary.json and camera_dependence.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    gh, gw = summary["grid"]
    own_c, sib_c = result["own"].mean(axis=0), result["sibling"].mean(axis=0)
    lines = ["row,col,nll_own,nll_sibling,gain"]
    lines += [f"{k // gw},{k % gw},{own_c[k]:.5f},{sib_c[k]:.5f},{sib_c[k] - own_c[k]:.5f}"
              for k in range(gh * gw)]
    (out / "cells.csv").write_text("\n".join(lines) + "\n")
    own_view, sib_view = result["own"].sum(axis=1), result["sibling"].sum(axis=1)
    gain_view, wins = pair_readings(result)
    lines = ["pair,scene,nll_own,nll_sibling,gain,own_wins"]
    lines += [f"{i},{scene},{own:.4f},{sib:.4f},{gain:.4f},{win:g}" for i, scene, own, sib, gain, win
              in zip(result["index"], result["scene"], own_view, sib_view, gain_view, wins)]
    (out / "pairs.csv").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, values, title, cmap in (
            (axes[0], own_c, "NLL under the true camera (nats)", "viridis"),
            (axes[1], sib_c - own_c, "camera's worth: sibling - true (nats)", "magma")):
        im = ax.imshow(values.reshape(gh, gw), cmap=cmap)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{summary['pairs']} held-out pairs; the view likelier under its own camera "
                 f"{summary['own_wins']:.2f} of the time", fontsize=9)
    save_figure(fig, out / "camera_dependence.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.camera_dependence", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="GST model directory (as training.evaluate)")
    ap.add_argument("--shards", required=True,
                    help="held-out token shards, several targets per observation (training/pretokenize.py)")
    ap.add_argument("--pairs", type=int, default=1024, help="pairs with a sibling to read")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.pairs < 1 or args.batch < 1:
        ap.error("--pairs and --batch must be >= 1")
    engine = GSTEngine(EngineConfig(model_dir=args.model, device=args.device))
    data = TokenShardDataset(args.shards, siblings=True)
    if data.n != engine.model.config.layout.n:
        ap.error(f"{args.shards}: {data.n} tokens per view, the model expects {engine.model.config.layout.n}")
    result = measure(engine.model, data, args.pairs, args.batch, args.seed, engine.device,
                     progress=not args.no_progress)
    summary = summarize(result, tuple(data.grid))
    write_outputs(result, summary, Path(args.out))
    print(f"{summary['pairs']} pairs: camera's worth {summary['gain_per_token']:.4f} nats per token "
          f"({summary['gain_per_view']:.2f} per view; first row {summary['gain_first_row_per_token']:.3f}, "
          f"the rest {summary['gain_other_rows_per_token']:.3f}); view likelier under its own camera "
          f"{summary['own_wins']:.3f} of the time -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
