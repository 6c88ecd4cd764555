"""Scale-out: two CPU processes (torchrun, gloo) under DDP and under FSDP train exactly like one
process on the same global batch: same step losses, same updated weights (FSDP also gathers the
full state for its checkpoint and export). Also the deterministic rank split."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_training_trainer import TINY, make_shards

from training.distributed import DistInfo, free_port, rank_slice

REPO = Path(__file__).resolve().parents[1]


def test_rank_slices_partition_the_global_batch():
    parts = [rank_slice(12, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert [(s.start, s.stop) for s in parts] == [(0, 4), (4, 8), (8, 12)]
    with pytest.raises(ValueError, match="not divisible"):
        rank_slice(10, DistInfo(rank=0, world_size=3))


def _run(tmp_path, name, cfg, nproc):
    cfg_path = tmp_path / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    train = ["-m", "training.train_gst", "--config", str(cfg_path), "--out", str(out), "--no-progress"]
    if nproc == 1:
        cmd = [sys.executable, *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *train]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "train_log.csv") as f:
        log = list(csv.DictReader(f))
    return log, load_file(out / "model/gst/model.safetensors")


# dropouts inside the model draw per-process random numbers: off for an exact comparison
# (condition dropout and task draws are per global sample, so they stay on)
OVERRIDES = {"dim": 64, "n_layer": 1, "n_head": 1,
             "token_dropout": 0.0, "resid_dropout": 0.0, "ffn_dropout": 0.0}


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """(tmp dir, base config, log, weights) of the one-process reference run."""
    tmp = tmp_path_factory.mktemp("dist")
    shards = make_shards(tmp / "shards")
    base = {**TINY, "shards": str(shards), "max_steps": 3, "model_overrides": OVERRIDES,
            "cond_drop_prob": 0.25}
    log, w = _run(tmp, "single", {**base, "strategy": "none"}, 1)
    return tmp, base, log, w


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_equal_one_process(single_run, strategy):
    tmp_path, base, log1, w1 = single_run
    log2, w2 = _run(tmp_path, strategy, {**base, "strategy": strategy, "ckpt_every": 2}, 2)
    assert [r["step"] for r in log1] == [r["step"] for r in log2] == ["1", "2", "3"]
    for a, b in zip(log1, log2):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
        assert float(a["grad_norm"]) == pytest.approx(float(b["grad_norm"]), rel=1e-4)
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-5, atol=1e-6)
    ckpt = torch.load(tmp_path / strategy / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 3 and set(ckpt["modules"]["gst"]) == set(w1)  # full, unsharded state
