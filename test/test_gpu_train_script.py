"""scripts/gpu_train.sh, the one-lease GPU recipe, run on the CPU at toy size: a throughput probe
sizes both runs, run A continues the INIT model, run B starts from scratch, and each gets its
pose and centre heads refitted on its frozen transformer."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training_trainer import make_shards, read_log, tiny_cfg

from training.train_gst import train

REPO = Path(__file__).resolve().parents[1]
SIZES = {"dim": 32, "n_layer": 1, "n_head": 1, "segment_embedding": True, "image_code_dim": 0,
         "camera_code_dim": 0, "aligned_observation": False}


@pytest.mark.slow
@pytest.mark.parametrize("run_b", ["scratch", "continued"])
def test_gpu_train_script_probes_trains_both_runs_and_refits_heads(tmp_path, run_b):
    """run_b "scratch": the defaults (B from scratch). "continued": INIT_B makes B continue the
    INIT model too, and EXTRA_B reaches run B alone (its lr, here)."""
    shards = make_shards(tmp_path / "shards")
    init = tmp_path / "init"
    train(tiny_cfg(shards, max_steps=5, model_overrides=SIZES, pose_aux_weight=1.0), init, progress=False)
    out = tmp_path / "gpu"
    overrides = json.dumps(SIZES, separators=(",", ":"))  # one word: EXTRA is split on spaces
    env = {**os.environ, "PY": sys.executable, "INIT": str(init / "model"), "DEVICE": "cpu",
           "PROBE_STEPS": "3", "SCALE": "0.05", "HEADS_S": "40", "BATCH": "4",
           "EXTRA": "--set val_batches=1 --set num_workers=0 --set log_every=1 "
                    f"--set model_overrides={overrides}"}
    if run_b == "continued":
        env.update(CONFIG_B="training/configs/gpu/gst_continue.yaml", INIT_B=str(init / "model/gst"),
                   EXTRA_B="--set lr=1e-5 --set min_lr=1e-6")
    proc = subprocess.run(["bash", "scripts/gpu_train.sh", str(shards), str(shards), str(out), "150"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    chosen = re.search(r"A (\d+) steps, B (\d+) steps", proc.stdout)
    assert chosen, proc.stdout
    for run, steps in zip("AB", map(int, chosen.groups())):
        assert (out / f"probe_{run}/train_log.csv").is_file()
        assert int(read_log(out / f"{run}/train_log.csv")[-1]["step"]) == steps >= 5
        meta = json.loads((out / f"{run}_heads/model/gst/config.json").read_text())
        assert meta["config"]["center_head"] and meta["config"]["dim"] == 32
        # the heads stage froze the transformer: every tensor but the heads' is the main run's
        main = load_file(out / f"{run}/model/gst/model.safetensors")
        heads = load_file(out / f"{run}_heads/model/gst/model.safetensors")
        shared = [k for k in main if not k.startswith(("pose_head.", "center_head."))]
        assert shared and all(torch.equal(main[k], heads[k]) for k in shared)
        assert any(k.startswith("center_head.") for k in heads)
    assert "initialised from" in (out / "A.log").read_text()
    assert ("initialised from" in (out / "B.log").read_text()) == (run_b == "continued")
    peak_lr = {run: max(float(r["lr"]) for r in read_log(out / f"{run}/train_log.csv")) for run in "AB"}
    assert peak_lr["A"] > 1e-5
    assert (peak_lr["B"] <= 1e-5) == (run_b == "continued")


def test_gpu_configs_fit_the_shipped_model():
    """The GPU recipe's configs stay valid for whatever is shipped: run A and the heads take their
    sizes from the shipped transformer (a size in the config would refuse it), run B builds the
    documented 9.95M-parameter transformer (10.22M with the centre head of its heads stage)."""
    from gst_ros.models.transformer import GST
    from training.train_gst import build_model_config, load_config, load_init

    manifest = {"image_vocab": 1024, "camera_vocab": 1024, "grid": [8, 8]}
    shipped = str(REPO / "models/gst_small/gst")
    for name in ("gst_continue", "gst_heads"):
        cfg = load_config(REPO / f"training/configs/gpu/{name}.yaml", {"init_from": shipped})
        init_config, _, _ = load_init(cfg, manifest)
        got = build_model_config(cfg, manifest, init_config)
        assert (got.dim, got.n_layer, got.n_head) == (init_config["dim"], init_config["n_layer"],
                                                      init_config["n_head"])
        assert got.pose_head
    scratch = build_model_config(load_config(REPO / "training/configs/gpu/gst_scratch.yaml"), manifest)
    assert (scratch.dim, scratch.n_layer, scratch.n_head) == (320, 6, 5) and scratch.aligned_observation
    assert sum(p.numel() for p in GST(scratch).parameters()) == pytest.approx(9.95e6, rel=0.005)


@pytest.mark.slow
def test_gpu_train_script_exports_the_runs_its_budget_stopped(tmp_path):
    """Step counts far beyond the budget (SCALE 100): both runs are stopped at the budget's end,
    and each is exported from its last checkpoint (run A, which takes its sizes from INIT, too).
    (SCALE also stretches the heads stage past the budget here; the test above covers heads.)"""
    shards = make_shards(tmp_path / "shards")
    init = tmp_path / "init"
    train(tiny_cfg(shards, max_steps=5, model_overrides=SIZES, pose_aux_weight=1.0), init, progress=False)
    out = tmp_path / "gpu"
    overrides = json.dumps(SIZES, separators=(",", ":"))
    env = {**os.environ, "PY": sys.executable, "INIT": str(init / "model"), "DEVICE": "cpu",
           "PROBE_STEPS": "3", "SCALE": "100", "HEADS_S": "20", "BATCH": "4",
           "EXTRA": "--set val_batches=1 --set num_workers=0 --set log_every=1 --set ckpt_every=2 "
                    "--set val_every=1000000 "
                    f"--set model_overrides={overrides}"}
    proc = subprocess.run(["bash", "scripts/gpu_train.sh", str(shards), str(shards), str(out), "100"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    planned = re.search(r"A (\d+) steps, B (\d+) steps", proc.stdout)
    for run, steps in zip("AB", map(int, planned.groups())):
        assert f"run {run} did not finish: exporting its last checkpoint" in proc.stdout, proc.stdout
        meta = json.loads((out / f"{run}/model/gst/config.json").read_text())
        assert meta["config"]["dim"] == 32
        assert 2 <= meta["trained_steps"] < steps
