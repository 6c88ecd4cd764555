"""Pose probe: can the relative rotation be read from a pair of image-token grids at all?

    python -m training.probe_pose --shards outputs/known/tokens/train \
        --val-shards outputs/known/tokens/test_views \
        --image-tokenizer models/gst_small/image_tokenizer --epochs 5 --out outputs/probe

A small convolutional network (not the GST) looks at the observation's and the target view's
token grids, each code entered as its frozen tokenizer codebook vector (`--features codebook`,
default) or as an embedding learned from scratch (`--features learned`), and regresses the
relative rotation of the target camera in the observation's frame (rel_w2c of the shards). Its
held-out rotation accuracy is an estimate of what the tokens carry about the pose, reached in
minutes on a CPU: run it before spending hours on a transformer, and when a tokenizer changes.
A probe far above the transformer's RRA says the transformer has not learned to read the pose
yet; a probe near chance says the tokens do not hold it (a tokenizer or data problem).

`--network gst` swaps the CNN for a small GST trunk (GSTPoseProbe: [observation, <EST>, target
view] in, the GST pose head on the target view's states; `--gst-dim`, `--gst-layers`, `--aligned`
for the aligned-observation input): how fast the transformer architecture itself learns to read
the pose, in the same minutes, without camera tokens or an image loss in the way.

Loss: squared Frobenius distance between the network's 3x3 output and the true rotation; the
prediction is that output projected onto SO(3) (orthogonal Procrustes). Rotations act on column
vectors, OpenCV camera axes (the shards' convention, training/token_shards.py).

Writes <out>/probe_log.csv (per epoch: train loss, held-out RRA@15/30, median error) and
<out>/results.md (the final accuracy, also per angular-baseline bin of training/evaluate.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from gst_ros.geometry.metrics import accuracy_at, rotation_error_deg
from gst_ros.geometry.rotations import geodesic_angle, rotation_from_covariance
from gst_ros.models.sequence import build_prefix
from training.evaluate import ANGLE_BINS
from training.logging_utils import CSVLogger
from training.token_shards import TokenShardDataset, read_manifest
from training.train_gst import tokenizer_codebook

FEATURES = ("codebook", "learned")
NETWORKS = ("cnn", "gst")


def load_pairs(root) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(observation codes (P, n) long, target codes (P, n) long, R (P, 3, 3) float32): every pair
    of a shard directory; R is the target camera's rotation in the observation's camera frame
    (w2c convention: x_target = R x_observation + t, OpenCV axes)."""
    data = TokenShardDataset(root)
    if len(data) == 0:
        raise ValueError(f"{root}: no pairs")
    items = [data[i] for i in range(len(data))]
    return (torch.stack([it["observation"] for it in items]), torch.stack([it["image"] for it in items]),
            torch.stack([it["rel_w2c"][:3, :3] for it in items]).float())


class PoseProbe(nn.Module):
    """Codes of both grids -> per-cell features (concatenated channels) -> 3 convolutions -> MLP
    -> 3x3 matrix. `codebook` (vocab, d): frozen features when given, else a learned embedding
    of width `learned_dim`."""

    def __init__(self, grid: tuple[int, int], vocab: int, codebook: torch.Tensor | None = None,
                 learned_dim: int = 32, width: int = 128):
        super().__init__()
        self.grid = tuple(grid)
        if codebook is not None:
            if codebook.shape[0] != vocab:
                raise ValueError(f"codebook has {codebook.shape[0]} codes, the shards {vocab}")
            self.embed = nn.Embedding.from_pretrained(F.normalize(codebook.float(), dim=-1), freeze=True)
        else:
            self.embed = nn.Embedding(vocab, learned_dim)
        d = self.embed.embedding_dim
        rows, cols = self.grid
        self.net = nn.Sequential(
            nn.Conv2d(2 * d, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Flatten(), nn.Linear(width * ((rows + 1) // 2) * ((cols + 1) // 2), 256), nn.GELU(),
            nn.Linear(256, 9))

    def forward(self, observation: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, n) codes each -> (B, 3, 3) unconstrained matrices (train on these; project with
        `rotation_from_covariance` to get rotations)."""
        b, (rows, cols) = observation.shape[0], self.grid
        x = torch.cat([self.embed(observation), self.embed(target)], -1)
        x = x.view(b, rows, cols, -1).permute(0, 3, 1, 2)
        return self.net(x).view(b, 3, 3)


class GSTPoseProbe(nn.Module):
    """The GST trunk as a probe: a small GST (codebook features, segment embedding, pose head,
    optionally the aligned observation) reads the <EST> prefix [observation, <EST>, target view]
    and its pose head regresses the rotation from the target view's states (the head of
    GSTConfig.pose_head, the one the auxiliary pose loss trains). It measures how fast the
    transformer itself can learn to read the pose, apart from the camera tokens and the image
    loss."""

    def __init__(self, grid: tuple[int, int], vocab: int, codebook: torch.Tensor, dim: int = 128,
                 n_layer: int = 2, aligned: bool = False):
        super().__init__()
        from gst_ros.models.transformer import GST, GSTConfig

        cfg = GSTConfig(dim=dim, n_layer=n_layer, n_head=max(1, dim // 64), image_vocab=vocab, camera_vocab=1,
                        grid=tuple(grid), image_code_dim=codebook.shape[1], segment_embedding=True,
                        pose_head=True, aligned_observation=aligned, token_dropout=0.0, resid_dropout=0.0,
                        ffn_dropout=0.0)
        self.gst = GST(cfg)
        self.gst.set_codebooks(codebook)

    def forward(self, observation: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cfg = self.gst.config
        prefix = build_prefix(cfg.vocabulary, cfg.layout, observation, "est", target)
        return self.gst(prefix, return_heads=True)[1].rotation


@torch.no_grad()
def predict_rotations(model: nn.Module, observation: torch.Tensor, target: torch.Tensor,
                      batch: int = 512) -> torch.Tensor:
    """(P, 3, 3) float64 rotations (the probe's output projected onto SO(3))."""
    model.eval()
    out = [model(observation[k:k + batch], target[k:k + batch]) for k in range(0, len(observation), batch)]
    return rotation_from_covariance(torch.cat(out).double())


def probe(train_pairs, val_pairs, grid, vocab: int, codebook: torch.Tensor | None = None, epochs: int = 5,
          batch: int = 128, lr: float = 1e-3, seed: int = 0, log: CSVLogger | None = None,
          progress: bool = True, network: str = "cnn", gst_options: dict | None = None) -> dict:
    """Train the probe (`network` "cnn": PoseProbe; "gst": GSTPoseProbe with `gst_options`, which
    needs the codebook) on `train_pairs` (load_pairs output), evaluate on `val_pairs` after every
    epoch. Returns {"rra15", "rra30", "median_deg", "bins": {bin: (count, rra15)}, "epochs": [...]}."""
    torch.manual_seed(seed)
    if network == "gst":
        if codebook is None:
            raise ValueError("the GST probe enters codes by their codebook vectors: give the codebook")
        model = GSTPoseProbe(grid, vocab, codebook, **(gst_options or {}))
    else:
        model = PoseProbe(grid, vocab, codebook)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr, weight_decay=0.01)
    obs, tgt, rot = train_pairs
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(obs), generator=gen)
        total = 0.0
        for k in tqdm(range(0, len(obs), batch), desc=f"probe epoch {epoch + 1}/{epochs}",
                      disable=not progress, dynamic_ncols=True, leave=False):
            idx = perm[k:k + batch]
            loss = (model(obs[idx], tgt[idx]) - rot[idx]).pow(2).sum((1, 2)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        err = rotation_error_deg(predict_rotations(model, val_pairs[0], val_pairs[1]), val_pairs[2].double())
        acc = accuracy_at(err)
        row = {"epoch": epoch + 1, "train_loss": total / len(obs), "val_rra15": acc[15.0],
               "val_rra30": acc[30.0], "val_median_deg": float(np.median(err))}
        history.append(row)
        if log is not None:
            log.log(**row)
    baseline = np.degrees(geodesic_angle(val_pairs[2].double(), torch.eye(3, dtype=torch.float64)).numpy())
    bins = {}
    for name, lo, hi in ANGLE_BINS:
        sel = (baseline >= lo) & (baseline < hi)
        if sel.any():
            bins[name] = (int(sel.sum()), float((err[sel] < 15.0).mean()))
    return {"rra15": acc[15.0], "rra30": acc[30.0], "median_deg": float(np.median(err)), "bins": bins,
            "epochs": history}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="training token shards (training/pretokenize.py)")
    p.add_argument("--val-shards", required=True, help="held-out token shards")
    p.add_argument("--image-tokenizer", default="", help="tokenizer dir (default: the one the shards record)")
    p.add_argument("--features", choices=FEATURES, default="codebook")
    p.add_argument("--network", choices=NETWORKS, default="cnn",
                   help="cnn: the convolutional probe; gst: a small GST trunk with a pose head")
    p.add_argument("--gst-dim", type=int, default=128)
    p.add_argument("--gst-layers", type=int, default=2)
    p.add_argument("--aligned", action="store_true", help="gst: with the aligned observation input")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        manifest = read_manifest(args.shards)
        train_pairs, val_pairs = load_pairs(args.shards), load_pairs(args.val_shards)
        codebook = (tokenizer_codebook("image", manifest, args.image_tokenizer)
                    if args.features == "codebook" else None)
    except (ValueError, OSError) as e:
        print(f"probe_pose: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = probe(train_pairs, val_pairs, tuple(manifest["grid"]), int(manifest["image_vocab"]), codebook,
                epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
                log=CSVLogger(out / "probe_log.csv", resume=False), network=args.network,
                gst_options={"dim": args.gst_dim, "n_layer": args.gst_layers, "aligned": args.aligned})
    what = (f"GST trunk dim {args.gst_dim}, {args.gst_layers} layers{', aligned observation' * args.aligned}"
            if args.network == "gst" else "CNN")
    lines = [f"# Pose probe ({what}, {args.features} features, {args.epochs} epochs, "
             f"{len(train_pairs[0])} training pairs, {time.perf_counter() - t0:.0f} s)", "",
             f"Held-out pairs: {len(val_pairs[0])}. RRA@15 {res['rra15']:.3f}, RRA@30 {res['rra30']:.3f}, "
             f"median error {res['median_deg']:.1f} deg.", "",
             "| baseline | pairs | RRA@15 |", "|---|---|---|"]
    lines += [f"| {name} | {n} | {acc:.3f} |" for name, (n, acc) in res["bins"].items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
