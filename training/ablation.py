"""The paper's Table 4 at small scale: joint training vs the alternating baseline.

    python -m training.ablation --config training/configs/gst_tiny_cpu.yaml \
        --shards outputs/pipeline_quick/tokens/train --val-shards outputs/pipeline_quick/tokens/test_views \
        --steps 300 --out outputs/ablation [--eval-root outputs/pipeline_quick/data --eval-scenes 8]

Both runs share everything but the objective: the same config, seed, initial weights (the seed
fixes them; or --init-from), data order and condition-dropout draws (training/train_gst.py draws
them from (seed, step)). Outputs in --out:
- joint/ and alternating/: the two training runs (train_log.csv, checkpoint, model/);
- curves.png: training loss and gradient norm per step for both, plus the held-out NLLs;
- ablation.md / ablation.csv: final held-out NLL of p(i|c,o) (image segment of <GEN>) and
  p(c|i,o) (camera segment of <EST>), the two terms both objectives train, and, with --eval-root,
  the engine metrics (RRA@15/30, PSNR, SSIM) of training/evaluate.py for each model.
The two training losses are not comparable as numbers (joint also counts the first segment);
the held-out NLLs are.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

from training import train_gst
from training.evaluate import markdown_table
from training.logging_utils import CSVLogger, pyplot, save_figure

OBJECTIVES = ("joint", "alternating")


def read_curve(log_path) -> dict[str, list[float]]:
    """Columns of a train_log.csv as float lists (empty cells skipped per column, with their steps)."""
    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list] = {}
    for r in rows:
        for k, v in r.items():
            if v not in ("", None) and k != "step":
                out.setdefault(k, []).append((int(float(r["step"])), float(v)))
    return out


def plot_curves(curves: dict[str, dict], path) -> Path:
    """curves.png: loss, gradient norm and held-out NLLs against step for each objective."""
    plt = pyplot()
    panels = [("loss", "training loss"), ("grad_norm", "gradient norm (before clipping)"),
              ("val_nll_image", "held-out NLL p(i|c,o)"), ("val_nll_camera", "held-out NLL p(c|i,o)"),
              ("val_camera_gain_image", "what the target image is worth to p(c|i,o)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for name, curve in curves.items():
            if key in curve:
                steps, vals = zip(*curve[key])
                ax.plot(steps, vals, marker="o" if len(steps) < 10 else None, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def run_ablation(cfg: train_gst.TrainConfig, out, eval_scenes=None, eval_samples: int = 2,
                 progress: bool = True) -> list[dict]:
    """Train both objectives from the same config/seed into out/<objective>; write the curves and
    the table; return the table rows. eval_scenes: optional training.evaluate.EvalScene list."""
    out = Path(out)
    rows = []
    curves = {}
    for objective in OBJECTIVES:
        run_cfg = dataclasses.replace(cfg, objective=objective)
        res = train_gst.train(run_cfg, out / objective, progress=progress)
        curves[objective] = read_curve(out / objective / train_gst.LOG)
        row = {"objective": objective, "steps": res["step"], "final train loss": res["loss"]}
        for k in ("val_nll_image", "val_nll_camera", "val_camera_gain_image", "val_image_gain_camera"):
            if k in res:
                row[k] = res[k]
        if eval_scenes:
            from gst_ros.engine.engine import EngineConfig, GSTEngine
            from training import evaluate

            engine = GSTEngine(EngineConfig(model_dir=res["model_dir"], device="cpu", seed=cfg.seed))
            ev = evaluate.evaluate_scenes(eval_scenes, engine, methods=("gst",), samples=eval_samples,
                                          seed=cfg.seed, progress=progress)
            for t in evaluate.summarize(ev):
                if t["method"] == "gst":
                    g = t["group"]
                    row.update({f"RRA@15 {g}": t["RRA@15"], f"RRA@30 {g}": t["RRA@30"]})
                    row.update({f"{k} {g}": t[k] for k in ("PSNR", "SSIM") if k in t})
        rows.append(row)
    plot_curves(curves, out / "curves.png")
    log = CSVLogger(out / "ablation.csv", resume=False)
    for r in rows:
        log.log(**r)
    (out / "ablation.md").write_text(
        "# Joint vs alternating training (GST Table 4, small scale)\n\n"
        f"Same config, seed {cfg.seed}, initial weights and data order; {cfg.max_steps} steps.\n\n"
        + markdown_table(rows) + "\n![curves](curves.png)\n")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(Path(__file__).parent / "configs" / "gst_tiny_cpu.yaml"))
    ap.add_argument("--shards", required=True)
    ap.add_argument("--val-shards", required=True, help="held-out shards (the comparable NLLs)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--init-from", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--eval-root", default=None, help="synthetic data root: also evaluate through the engine")
    ap.add_argument("--eval-scenes", type=int, default=8)
    ap.add_argument("--eval-views", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    over = {"shards": args.shards, "val_shards": args.val_shards, "max_steps": args.steps,
            "init_from": args.init_from, **train_gst.parse_set(args.set)}
    cfg = train_gst.load_config(args.config, over)
    scenes = None
    if args.eval_root:
        from training import evaluate
        from training.datasets import build_dataset

        scenes = []
        for split, group in (("test_views", "seen"), ("test_objects", "unseen")):
            scenes += evaluate.scenes_from_reader(build_dataset("synthetic", args.eval_root, split), group,
                                                  args.eval_views, args.eval_scenes)
    rows = run_ablation(cfg, args.out, scenes, progress=not args.no_progress)
    print(markdown_table(rows))
    print(f"curves: {Path(args.out) / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
