"""The GST trainer: schedule, optimizer groups, accumulation equivalence, init-from, export, and
resume after SIGKILL (subprocess) with identical state."""
import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from gst_ros.models.io import load_model_dir
from training.token_shards import ShardWriter
from training.train_gst import TrainConfig, load_config, lr_at, make_optimizer, train

REPO = Path(__file__).resolve().parents[1]


def make_shards(root, scenes=12, seed=0, grid=(4, 4), image_vocab=64, camera_vocab=32):
    """Random token shards with learnable structure: the target image tokens are the observation's
    shifted by one, camera tokens a function of the pair's view distance."""
    rng = np.random.default_rng(seed)
    n = grid[0] * grid[1]
    with ShardWriter(root, grid, image_vocab, camera_vocab, pairs_per_shard=16) as w:
        for s in range(scenes):
            views = rng.integers(0, image_vocab, (4, n))
            pairs = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]])
            cams = np.stack([np.full(n, (b - a) % 4 * 7) for a, b in pairs]) % camera_vocab
            w.add_scene(f"s{s}", "toy", views, pairs, cams, np.tile(np.eye(4), (5, 1, 1)),
                        np.tile(np.eye(3), (5, 1, 1)))
    return Path(root)


TINY = {"model": "tiny", "model_overrides": {"dim": 64, "n_layer": 1, "n_head": 1}, "batch_size": 8,
        "grad_accum": 1, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 2, "log_every": 1, "seed": 0}


def tiny_cfg(shards, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "shards": str(shards), **kw})


def read_log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_lr_schedule_and_config_checks():
    cfg = TrainConfig(lr=1e-4, min_lr=1e-5, max_steps=101, warmup_steps=0, lr_decay="cosine")
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(50, cfg) == pytest.approx(5.5e-5)
    assert lr_at(100, cfg) == pytest.approx(1e-5)
    lin = TrainConfig(lr=1e-4, min_lr=1e-5, max_steps=11, warmup_steps=0, lr_decay="linear")
    assert lr_at(5, lin) == pytest.approx(5.5e-5)
    warm = TrainConfig(lr=1e-4, max_steps=100, warmup_steps=4)
    assert [lr_at(s, warm) for s in range(3)] == pytest.approx([2.5e-5, 5e-5, 7.5e-5])
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="both")
    with pytest.raises(ValueError, match="divisible by grad_accum"):
        TrainConfig(batch_size=10, grad_accum=4)
    with pytest.raises(ValueError, match="unknown train_gst config fields"):
        load_config(None, {"learning_rate": 1})
    # YAML 1.1 reads 5e-4 without a dot as a string: numbers are numbers however they are written
    from training.train_gst import parse_set

    cfg = load_config(None, parse_set(["lr=5e-4", "min_lr=1e-5", "pose_aux_weight=4"]))
    assert cfg.lr == 5e-4 and cfg.min_lr == 1e-5 and cfg.pose_aux_weight == 4.0
    with pytest.raises(ValueError, match="lr must be a number, got 'fast'"):
        TrainConfig(lr="fast")
    # every field is checked against its type, so a --set typo in a value is refused by name
    with pytest.raises(ValueError, match="train_gst config: batch_size must be an integer, got 'eight'"):
        load_config(None, parse_set(["batch_size=eight"]))
    with pytest.raises(ValueError, match="max_steps must be an integer, got 2.5"):
        load_config(None, parse_set(["max_steps=2.5"]))
    with pytest.raises(ValueError, match="tensorboard must be true or false, got 'maybe'"):
        load_config(None, parse_set(["tensorboard=maybe"]))
    with pytest.raises(ValueError, match="model_overrides must be a mapping, got 3"):
        load_config(None, parse_set(["model_overrides=3"]))
    cfg = load_config(None, parse_set(["max_steps=1e4", "shards=2024", "train_modules=[pose_head]"]))
    assert cfg.max_steps == 10000 and isinstance(cfg.max_steps, int) and cfg.shards == "2024"
    assert cfg.train_modules == ["pose_head"]
    # a key left blank in YAML (None) takes the field's default; tuples are checked item by item
    blank = ["val_shards=", "init_from=null", "model_overrides=", "betas=[0.8,0.9]"]
    cfg = load_config(None, parse_set(blank))
    assert (cfg.val_shards, cfg.init_from, cfg.model_overrides, cfg.betas) == ("", "", {}, (0.8, 0.9))
    for bad in ("betas=[0.9,x]", "betas=[0.9]", "betas=0.9"):
        with pytest.raises(ValueError, match=r"betas must be a list of 2 \(a number, a number\)"):
            load_config(None, parse_set([bad]))


def test_paper_recipe_config():
    cfg = load_config(REPO / "training/configs/gst_xxl.yaml")
    assert (cfg.model, cfg.batch_size, cfg.grad_accum, cfg.lr, cfg.min_lr) == ("XXL", 192, 8, 1e-4, 1e-5)
    assert cfg.betas == (0.9, 0.95) and cfg.weight_decay == 0.05 and cfg.grad_clip == 1.0
    assert cfg.precision == "bf16" and cfg.strategy == "fsdp" and cfg.cond_drop_prob == 0.1
    for name in ("gst_tiny_cpu.yaml", "gst_small_cpu.yaml"):
        load_config(REPO / "training/configs" / name)


def test_weight_decay_only_on_matrices():
    from gst_ros.models.transformer import GST, gst_config

    model = GST(gst_config("tiny", dim=64, n_layer=1, n_head=1))
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_module_lr_scale_gives_a_module_its_own_multiple_of_the_schedule():
    from gst_ros.models.transformer import GST, gst_config
    from training.train_gst import set_lr

    model = GST(gst_config("tiny", dim=64, n_layer=1, n_head=1, camera_code_dim=4, aligned_camera=True))
    opt = make_optimizer(model, TrainConfig(module_lr_scale={"aligned_camera_proj": 20}), torch.device("cpu"))
    assert len(opt.param_groups) == 3
    decay, no_decay, scaled = opt.param_groups
    assert scaled["params"] == [model.aligned_camera_proj.weight] and scaled["weight_decay"] == 0.05
    assert all(p is not model.aligned_camera_proj.weight for p in decay["params"] + no_decay["params"])
    set_lr(opt, 1e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-4, 2e-3])
    with pytest.raises(ValueError, match="module_lr_scale"):
        TrainConfig(module_lr_scale={"aligned_camera_proj": 0})
    with pytest.raises(ValueError, match="fsdp"):
        TrainConfig(module_lr_scale={"output": 2}, strategy="fsdp")


def test_module_lr_scale_trains_a_named_module_faster_and_refuses_unknown_names(tmp_path):
    """Two 3-step runs from the same start, the output head's lr 10x in the second: it moves
    about 10x as far (Adam's step scales with lr), the embeddings within the schedule's steps; a
    name that is no module of the model is refused by name before any step."""
    shards = make_shards(tmp_path / "shards")
    base = dict(max_steps=3, lr=1e-3, min_lr=1e-3, warmup_steps=0, weight_decay=0.0)
    train(tiny_cfg(shards, **base), tmp_path / "plain", progress=False)
    train(tiny_cfg(shards, module_lr_scale={"output": 10}, **base), tmp_path / "scaled", progress=False)
    _, plain = load_model_dir(tmp_path / "plain/model/gst", "gst")
    _, scaled = load_model_dir(tmp_path / "scaled/model/gst", "gst")
    # the output head starts at zero, so its weights are how far it moved
    ratio = float(scaled["output.weight"].abs().sum() / plain["output.weight"].abs().sum())
    assert 5.0 < ratio < 15.0
    # the rest keeps the schedule's lr: 3 Adam steps of ~1e-3 each, where 10x would allow ~0.03
    emb = "tok_embeddings.weight"
    assert float((scaled[emb] - plain[emb]).abs().max()) < 0.015
    with pytest.raises(ValueError, match=r"module_lr_scale names \['no_such_head'\]"):
        train(tiny_cfg(shards, module_lr_scale={"no_such_head": 2.0}, **base), tmp_path / "bad",
              progress=False)
    assert not (tmp_path / "bad/train_log.csv").exists()


def test_accumulation_equals_one_big_batch_and_export(tmp_path):
    """Same global batch with 1 or 4 micro-steps: same losses and weights (dropouts off)."""
    shards = make_shards(tmp_path / "shards")
    no_drop = {"dim": 64, "n_layer": 1, "n_head": 1, "token_dropout": 0.0, "resid_dropout": 0.0,
               "ffn_dropout": 0.0}
    res = {}
    for accum in (1, 4):
        cfg = tiny_cfg(shards, grad_accum=accum, max_steps=3, model_overrides=no_drop)
        res[accum] = train(cfg, tmp_path / f"a{accum}", progress=False)
    assert res[1]["loss"] == pytest.approx(res[4]["loss"], rel=1e-5)
    w1 = load_file(tmp_path / "a1/model/gst/model.safetensors")
    w4 = load_file(tmp_path / "a4/model/gst/model.safetensors")
    for k in w1:
        torch.testing.assert_close(w1[k], w4[k], rtol=1e-5, atol=1e-6)
    meta, _ = load_model_dir(tmp_path / "a1/model/gst", "gst")
    assert meta["config"]["grid"] == [4, 4] and meta["config"]["image_vocab"] == 64
    assert meta["trained_steps"] == 3
    log = read_log(tmp_path / "a1/train_log.csv")
    assert [int(r["step"]) for r in log] == [1, 2, 3]
    assert float(log[0]["lr"]) == pytest.approx(5e-4)  # warm-up step 1 of 2


def test_training_lowers_loss_and_init_from_model_dir(tmp_path):
    shards = make_shards(tmp_path / "shards")
    first = train(tiny_cfg(shards, max_steps=40, val_shards=str(shards)), tmp_path / "run1", progress=False)
    log = read_log(tmp_path / "run1/train_log.csv")
    assert float(log[-1]["loss"]) < float(log[0]["loss"]) - 0.3
    assert {"val_loss", "val_nll_image", "val_nll_camera"} <= set(first)
    # init from the exported model: the first step starts from the trained weights (low loss)
    cfg = tiny_cfg(shards, max_steps=1, init_from=str(tmp_path / "run1/model/gst"), model_overrides={})
    second = train(cfg, tmp_path / "run2", progress=False)
    assert second["loss"] < float(log[0]["loss"]) - 0.3
    # the recipe that made the checkpoint continues it (equal sizes); a different size is refused
    same = train(tiny_cfg(shards, max_steps=1, init_from=str(tmp_path / "run1/model/gst")), tmp_path / "r3",
                 progress=False)
    assert same["loss"] < float(log[0]["loss"]) - 0.3
    with pytest.raises(ValueError, match=r"\['dim'\] conflict with init_from"):
        train(tiny_cfg(shards, max_steps=1, init_from=str(tmp_path / "run1/model/gst"),
                       model_overrides={**TINY["model_overrides"], "dim": 32}),
              tmp_path / "r4", progress=False)


def test_resume_refuses_other_settings_and_empty_validation(tmp_path, capsys):
    """A run resumes only under the settings that wrote its checkpoint, except those that do not
    change what a step computes (RESUME_MAY_CHANGE: max_steps, logging, device, ...); each other
    difference is named. A resume with nothing left to train says so. Validation shards without a
    pair are refused rather than logged as zero loss."""
    shards = make_shards(tmp_path / "shards")
    run = tmp_path / "run"
    assert train(tiny_cfg(shards, max_steps=2), run, progress=False)["step"] == 2
    with pytest.raises(ValueError, match=r"other settings \(objective 'joint' -> 'alternating'; batch_size "
                                         r"8 -> 4\).*--init-from .*run/model/gst"):
        train(tiny_cfg(shards, max_steps=4, batch_size=4, objective="alternating"), run, progress=False)
    other = make_shards(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="other settings \\(shards "):
        train(tiny_cfg(other, max_steps=4), run, progress=False)
    capsys.readouterr()
    longer = train(tiny_cfg(shards, max_steps=4, log_every=2, val_every=2, codebook_embedding_init=True), run,
                   progress=False)   # read only when a run starts: it may differ at a resume
    assert longer["step"] == 4 and "resumed from" in capsys.readouterr().err
    done = train(tiny_cfg(shards, max_steps=3), run, progress=False)
    assert done["step"] == 4 and "nothing left to train" in capsys.readouterr().err
    empty = tmp_path / "empty"
    with ShardWriter(empty, (4, 4), 64, 32, pairs_per_shard=16):
        pass
    with pytest.raises(ValueError, match="validation shards .* hold no pairs"):
        train(tiny_cfg(shards, max_steps=1, val_shards=str(empty)), tmp_path / "v", progress=False)
    # the command line prints each of these as one line and exits 2
    from training.train_gst import main

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({**TINY, "max_steps": 4}))
    capsys.readouterr()
    for extra, message in [(["--set", "batch_size=eight"], "batch_size must be an integer, got 'eight'"),
                           (["--set", "seed=3"], "other settings (seed 0 -> 3)"),
                           (["--val-shards", str(empty)], "hold no pairs")]:
        assert main(["--config", str(cfg_path), "--out", str(run), "--shards", str(shards), "--no-progress",
                     *extra]) == 2
        err = capsys.readouterr().err
        last = err.splitlines()[-1]
        assert last.startswith("train_gst: ") and message in last and "Traceback" not in err, err


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path):
    shards = make_shards(tmp_path / "shards")
    cfg = {**TINY, "shards": str(shards), "max_steps": 60, "ckpt_every": 4}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def cmd(out):
        return [sys.executable, "-m", "training.train_gst", "--config", str(cfg_path), "--out", str(out),
                "--no-progress"]

    run = tmp_path / "run"
    proc = subprocess.Popen(cmd(run), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint after 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # the checkpoint on disk is complete (written to a temp file, then renamed)
    payload = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    ckpt_step = payload["step"]
    logged = [int(r["step"]) for r in read_log(run / "train_log.csv")]
    assert ckpt_step % 4 == 0 and 4 <= ckpt_step < 60
    assert max(logged) - ckpt_step < 4 + 1  # lost at most one checkpoint interval (+ the step in flight)
    resumed = subprocess.run(cmd(run), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {run / 'checkpoint.pt'} at step {ckpt_step}" in resumed.stderr
    ref = subprocess.run(cmd(tmp_path / "ref"), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == 0, ref.stderr
    # identical state: same weights bit for bit, same logged losses at every step
    a = load_file(run / "model/gst/model.safetensors")
    b = load_file(tmp_path / "ref/model/gst/model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_a, log_b = read_log(run / "train_log.csv"), read_log(tmp_path / "ref/train_log.csv")
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b] == [str(s) for s in range(1, 61)]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    final = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert final["step"] == 60


class _CameraFromImage(torch.nn.Module):
    """A stand-in model for the conditioning checks: in the <EST> order it predicts camera token j
    as (target image token j) mod camera_vocab with high confidence, and is uniform everywhere
    else (so it ignores the camera when predicting images)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(self, idx):
        n, vocab = self.cfg.layout.n, self.cfg.vocabulary
        logits = torch.zeros(*idx.shape, vocab.size)
        est = idx[:, n] == vocab.est_token
        for j in range(n):  # input position 2n + j predicts camera j; image token j sits at n + 1 + j
            code = vocab.camera_offset + idx[:, n + 1 + j] % vocab.camera_vocab
            logits[est, 2 * n + j, code[est]] = 12.0
        return logits


def test_validation_conditioning_gains(tmp_path):
    """val_camera_gain_image measures how much the target image tells the camera: positive when
    the camera tokens follow from the image, zero for a model that ignores its conditions."""
    from gst_ros.models.transformer import GSTConfig
    from training.token_shards import TokenShardDataset
    from training.train_gst import validation_losses

    rng = np.random.default_rng(1)
    grid, iv, cv = (2, 2), 16, 8
    with ShardWriter(tmp_path / "s", grid, iv, cv, pairs_per_shard=64) as w:
        for s in range(6):
            views = rng.integers(0, iv, (3, 4))
            pairs = np.array([[0, 1], [1, 2], [2, 0]])
            cams = views[pairs[:, 1]] % cv  # the camera codes follow from the target image
            w.add_scene(f"s{s}", "toy", views, pairs, cams, np.tile(np.eye(4), (3, 1, 1)),
                        np.tile(np.eye(3), (3, 1, 1)))
    data = TokenShardDataset(tmp_path / "s")
    cfg = GSTConfig(dim=64, n_layer=1, n_head=1, grid=grid, image_vocab=iv, camera_vocab=cv)
    tcfg = TrainConfig(val_batches=2)
    fake = validation_losses(_CameraFromImage(cfg), cfg, data, tcfg, torch.device("cpu"), batch=9)
    # right image: the camera is near-certain; another pair's image: mostly wrong codes at 12 nats
    assert fake["val_nll_camera"] < 0.01
    assert fake["val_camera_gain_image"] > 5.0
    assert fake["val_image_gain_camera"] == pytest.approx(0.0, abs=1e-6)
    assert fake["val_nll_image"] == pytest.approx(np.log(cfg.vocab_size), rel=1e-5)
    # an untrained GST has a zero output head: every condition is worth exactly nothing
    from gst_ros.models.transformer import GST

    plain = validation_losses(GST(cfg), cfg, data, tcfg, torch.device("cpu"), batch=9)
    assert plain["val_camera_gain_image"] == pytest.approx(0.0, abs=1e-6)
    assert plain["val_image_gain_camera"] == pytest.approx(0.0, abs=1e-6)


def test_camera_loss_weight_shifts_training_toward_the_camera(tmp_path):
    """camera_loss_weight reaches the training loss: from the same seed and data, weighting the
    camera targets 4x ends with a lower held-out camera NLL and a higher image NLL than 1x."""
    shards = make_shards(tmp_path / "shards")
    res = {w: train(tiny_cfg(shards, max_steps=30, val_shards=str(shards), camera_loss_weight=w),
                    tmp_path / f"w{w}", progress=False, export=False) for w in (1.0, 4.0)}
    assert res[4.0]["val_nll_camera"] < res[1.0]["val_nll_camera"] - 0.1
    assert res[4.0]["val_nll_image"] > res[1.0]["val_nll_image"]
    with pytest.raises(ValueError, match="camera_loss_weight"):
        TrainConfig(camera_loss_weight=0.0)


def test_codebook_embedding_init_puts_similar_codes_close():
    """Codes whose codebook vectors are close start with close embeddings (and far ones far);
    a codebook of the wrong size is refused by name."""
    import torch.nn.functional as F

    from gst_ros.models.transformer import GST, gst_config
    from training.train_gst import codebook_embedding_init

    torch.manual_seed(0)
    m = GST(gst_config("tiny", grid=(2, 2)))
    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(m.config.image_vocab, 8, generator=g), dim=-1)
    img[1] = F.normalize(img[0] + 0.01, dim=-1)  # nearly code 0
    img[2] = -img[0]                              # opposite of code 0
    cam = F.normalize(torch.randn(m.config.camera_vocab, 4, generator=g), dim=-1)
    before = m.tok_embeddings.weight.detach().clone()
    codebook_embedding_init(m, img, cam, seed=0)
    w = m.tok_embeddings.weight.detach()
    assert (w[0] - w[1]).norm() < 0.8 * (w[0] - w[2]).norm()
    # the distances between embeddings follow the codebook distances across the vocabulary
    ib = torch.cdist(img[:200], img[:200]).flatten()
    ie = torch.cdist(w[:200], w[:200]).flatten()
    assert torch.corrcoef(torch.stack([ib, ie]))[0, 1] > 0.5
    off = m.config.vocabulary.camera_offset
    cb = torch.cdist(cam, cam).flatten()
    ce = torch.cdist(w[off:off + len(cam)], w[off:off + len(cam)]).flatten()
    assert torch.corrcoef(torch.stack([cb, ce]))[0, 1] > 0.5
    # task tokens keep their plain initialisation; the scale stays that of the default init
    assert torch.equal(w[-2:], before[-2:])
    assert abs(float(w[:200].std()) - float(before[:200].std())) < 0.005
    with pytest.raises(ValueError, match="camera codebook"):
        codebook_embedding_init(m, img, cam[:5])


def test_codebook_features_come_from_the_tokenizers_and_travel_with_the_model(tmp_path):
    """A from-scratch run with image/camera_code_dim fills the codebook buffers from the tokenizers
    the shards were made with; the exported model directory carries them, so init_from and the
    engine's loader see the same features; combining them with codebook_embedding_init is
    refused; target_token_noise trains and is range-checked."""
    import torch.nn.functional as F
    from engine_fixtures import TINY_CAMERA, TINY_IMAGE, make_random_model, tiny_gst_config

    from gst_ros.models.tokenizer import CameraTokenizer, ImageTokenizer

    tok = make_random_model(tmp_path, TINY_IMAGE, TINY_CAMERA, tiny_gst_config())
    shards = make_shards(tmp_path / "shards", image_vocab=TINY_IMAGE.codebook_size,
                         camera_vocab=TINY_CAMERA.codebook_size)
    over = {**TINY["model_overrides"], "image_code_dim": 4, "camera_code_dim": 4}
    kw = dict(image_tokenizer=str(tok / "image_tokenizer"), camera_tokenizer=str(tok / "camera_tokenizer"),
              model_overrides=over)
    train(tiny_cfg(shards, max_steps=3, target_token_noise=0.3, **kw), tmp_path / "run", progress=False)
    meta, state = load_model_dir(tmp_path / "run/model/gst", "gst")
    assert meta["config"]["image_code_dim"] == 4 and meta["config"]["camera_code_dim"] == 4
    image_book = ImageTokenizer.from_dir(tok / "image_tokenizer").core.quantize.codebook().detach()
    camera_book = CameraTokenizer.from_dir(tok / "camera_tokenizer").core.quantize.codebook().detach()
    assert torch.allclose(state["image_codebook"], F.normalize(image_book, dim=-1), atol=1e-6)
    assert torch.allclose(state["camera_codebook"], F.normalize(camera_book, dim=-1), atol=1e-6)
    # continuing from the export keeps the buffers (they come from the state dict, not re-read)
    res = train(tiny_cfg(shards, max_steps=1, init_from=str(tmp_path / "run/model/gst"), model_overrides={}),
                tmp_path / "cont", progress=False)
    assert np.isfinite(res["loss"])
    _, cont = load_model_dir(tmp_path / "cont/model/gst", "gst")
    assert torch.equal(cont["image_codebook"], state["image_codebook"])
    # continuing on shards made with another (e.g. fine-tuned) image tokenizer: its codebook
    # replaces the image features; the camera tokenizer is the same, so its features stay
    other = make_random_model(tmp_path / "other", TINY_IMAGE, TINY_CAMERA, tiny_gst_config(), seed=5)
    res = train(tiny_cfg(shards, max_steps=1, init_from=str(tmp_path / "run/model/gst"), model_overrides={},
                         image_tokenizer=str(other / "image_tokenizer"),
                         camera_tokenizer=str(tok / "camera_tokenizer")), tmp_path / "retok", progress=False)
    _, retok = load_model_dir(tmp_path / "retok/model/gst", "gst")
    other_book = ImageTokenizer.from_dir(other / "image_tokenizer").core.quantize.codebook().detach()
    assert torch.allclose(retok["image_codebook"], F.normalize(other_book, dim=-1), atol=1e-6)
    assert not torch.allclose(retok["image_codebook"], state["image_codebook"], atol=1e-3)
    assert torch.equal(retok["camera_codebook"], state["camera_codebook"])
    with pytest.raises(ValueError, match="use one"):
        train(tiny_cfg(shards, max_steps=1, codebook_embedding_init=True, **kw), tmp_path / "both",
              progress=False)
    with pytest.raises(ValueError, match="target_token_noise"):
        TrainConfig(target_token_noise=-0.1)


def yaw(deg):
    """Rotation (3, 3) about the camera's y axis (OpenCV axes) by deg degrees."""
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def landmark_shards(root, scenes, seed, camera_vocab=8, distance_step=None):
    """Toy shards whose token grids encode the relative rotation: view k of a scene is a random
    4x4 grid whose first column holds code k (a landmark whose look tells the viewing direction),
    and the rotation from view a to view b is a yaw of 30 (b - a) deg. Camera code: b - a mod 8.
    Translation: none; with distance_step, the target camera looks at the scene centre (0, 0, 1)
    from distance 1 + distance_step (b - a)."""
    rng = np.random.default_rng(seed)
    grid, n = (4, 4), 16
    with ShardWriter(root, grid, 32, camera_vocab, pairs_per_shard=64) as w:
        for s in range(scenes):
            base = rng.integers(0, 32, (4, 4))
            views = np.stack([np.concatenate([np.full((4, 1), k), base[:, 1:]], 1).reshape(-1)
                              for k in range(4)])
            pairs = np.array([[0, k] for k in range(1, 4)] + [[k, 0] for k in range(1, 4)])
            rel = np.tile(np.eye(4), (len(pairs), 1, 1))
            for i, (a, b) in enumerate(pairs):
                rel[i, :3, :3] = yaw(30.0 * (b - a))
                if distance_step is not None:
                    centre = np.array([0.0, 0.0, 1.0]) - (1 + distance_step * (b - a)) * rel[i, 2, :3]
                    rel[i, :3, 3] = -rel[i, :3, :3] @ centre
            cams = np.repeat(((pairs[:, 1] - pairs[:, 0]) % camera_vocab)[:, None], n, axis=1)
            w.add_scene(f"s{s}", "toy", views, pairs, cams, rel, np.tile(np.eye(3), (len(pairs), 1, 1)))
    return Path(root)


def test_pose_probe_reads_a_rotation_the_tokens_encode(tmp_path):
    """The pose probe learns a relative rotation that the token grids do encode (the target grid is
    the observation's shifted by k columns, the rotation a yaw of 30k deg) far above chance on
    held-out pairs with frozen codebook features, writes its log and report; and refuses a
    codebook of the wrong size. Toy encoding: view k of a scene is a random grid whose first
    column holds code k (a landmark whose look tells the viewing direction), and the rotation
    from view a to view b is a yaw of 30 (b - a) deg."""
    from training.probe_pose import PoseProbe, load_pairs, main

    train_root = landmark_shards(tmp_path / "train", 100, 0)
    val_root = landmark_shards(tmp_path / "val", 20, 1)
    obs, tgt, rot = load_pairs(val_root)
    assert obs.shape == (120, 16) and torch.allclose(rot[0], torch.tensor(yaw(30.0)).float())
    codebook = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    from training.probe_pose import probe

    res = probe(load_pairs(train_root), (obs, tgt, rot), (4, 4), 32, codebook, epochs=5, batch=32,
                progress=False)
    assert res["rra15"] > 0.9 and res["median_deg"] < 10  # chance RRA@15 is ~0.001
    assert set(res["bins"]) <= {"<30", "30-60", ">60"} and sum(n for n, _ in res["bins"].values()) == 120
    with pytest.raises(ValueError, match="codebook has 5 codes"):
        PoseProbe((4, 4), 32, codebook[:5])
    assert main(["--shards", str(train_root), "--val-shards", str(val_root), "--features", "learned",
                 "--epochs", "1", "--out", str(tmp_path / "out")]) == 0
    assert "RRA@15" in (tmp_path / "out/results.md").read_text()
    assert len(read_log(tmp_path / "out/probe_log.csv")) == 1
    no_tokenizer = ["--shards", str(train_root), "--val-shards", str(val_root), "--out", str(tmp_path / "o2")]
    assert main(no_tokenizer) == 2


def test_pose_aux_loss_trains_the_pose_head_and_adds_to_a_trained_model(tmp_path):
    """pose_aux_weight gives the model a pose head and trains it through the trunk: on toy shards
    whose grids encode the rotation, the head's held-out RRA@15 goes from chance to near 1 in 100
    steps. The loss is the mean squared Frobenius distance over <EST> samples with their
    observation; a head is added to a checkpoint without one (every other tensor loaded)."""
    from training.train_gst import pose_aux_loss

    train_root = landmark_shards(tmp_path / "train", 100, 0)
    val_root = landmark_shards(tmp_path / "val", 20, 1)
    base = dict(val_shards=str(val_root), p_gen=0.0, cond_drop_prob=0.0, val_batches=8, batch_size=16,
                model_overrides={"dim": 64, "n_layer": 2, "n_head": 1})
    res = train(tiny_cfg(train_root, max_steps=100, pose_aux_weight=1.0, **base), tmp_path / "aux",
                progress=False)
    assert res["val_pose_head_rra15"] > 0.8  # a constant rotation gets at most 1/6 of these yaws
    log = read_log(tmp_path / "aux/train_log.csv")
    assert float(log[-1]["pose_aux"]) < 0.5 * float(log[0]["pose_aux"])
    meta, state = load_model_dir(tmp_path / "aux/model/gst", "gst")
    assert meta["config"]["pose_head"] and "pose_head.2.weight" in state
    # a plain run has no head and logs no pose figures; continuing it with the aux loss adds one
    plain = train(tiny_cfg(train_root, max_steps=5, **base), tmp_path / "plain", progress=False)
    assert "val_pose_head_rra15" not in plain
    assert "pose_aux" not in read_log(tmp_path / "plain/train_log.csv")[0]
    more = tiny_cfg(train_root, max_steps=1, pose_aux_weight=1.0, lr=1e-9, min_lr=0.0,
                    init_from=str(tmp_path / "plain/model/gst"), **base)
    train(more, tmp_path / "more", progress=False)
    _, before = load_model_dir(tmp_path / "plain/model/gst", "gst")
    _, after = load_model_dir(tmp_path / "more/model/gst", "gst")
    head = {k for k in after if k.startswith("pose_head.")}
    assert head and set(after) == set(before) | head
    wqkv = "layers.0.attention.wqkv.weight"
    torch.testing.assert_close(after[wqkv], before[wqkv], atol=1e-6, rtol=0)
    # the loss itself: squared Frobenius distance, only over the samples in use
    pose = torch.zeros(3, 3, 3, requires_grad=True)
    rel = torch.eye(4).repeat(3, 1, 1)
    use = torch.tensor([True, False, True])
    loss = pose_aux_loss(pose, rel, use)
    assert loss.item() == pytest.approx(3.0)  # ||0 - I||_F^2
    loss.backward()
    assert float(pose.grad[1].abs().sum()) == 0.0 and float(pose.grad[0].abs().sum()) > 0
    none = pose_aux_loss(pose, rel, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="pose_aux_weight"):
        TrainConfig(pose_aux_weight=-1.0)
    # the loss implies the head, whatever the overrides say, from scratch and from a checkpoint
    from training.train_gst import build_model_config

    manifest = {"image_vocab": 32, "camera_vocab": 8, "grid": [4, 4]}
    no_head = {**base["model_overrides"], "pose_head": False}
    implied = tiny_cfg(train_root, pose_aux_weight=1.0, model_overrides=no_head)
    assert build_model_config(implied, manifest).pose_head
    assert build_model_config(implied, manifest, meta["config"]).pose_head


def test_centre_head_trains_alone_on_a_frozen_model(tmp_path):
    """center_aux_weight with train_modules [center_head] adds a centre head to a trained model and
    trains only it: every other tensor stays bit-identical, while the head learns the toy centres
    (the target looks at the scene centre from distance 1 + 0.1 (b - a), b - a in +-1..3) far
    better than the object-centric placement at distance 1 it starts from.
    The loss is the centre's squared error plus the Gaussian NLL of that error under the predicted
    variances; an unknown module name is an error that lists the real ones."""
    from gst_ros.models.transformer import GST
    from training.train_gst import build_model_config, center_aux_loss, freeze_for_training

    train_root = landmark_shards(tmp_path / "train", 100, 0, distance_step=0.1)
    val_root = landmark_shards(tmp_path / "val", 20, 1, distance_step=0.1)
    base = dict(val_shards=str(val_root), p_gen=0.0, cond_drop_prob=0.0, val_batches=8, batch_size=16,
                model_overrides={"dim": 64, "n_layer": 2, "n_head": 1, "token_dropout": 0.0,
                                 "resid_dropout": 0.0, "ffn_dropout": 0.0})
    train(tiny_cfg(train_root, max_steps=100, pose_aux_weight=1.0, **base), tmp_path / "posed",
          progress=False)
    head = tiny_cfg(train_root, max_steps=150, center_aux_weight=1.0, train_modules=["center_head"], lr=3e-3,
                    min_lr=3e-4, warmup_steps=5, init_from=str(tmp_path / "posed/model/gst"), **base)
    res = train(head, tmp_path / "centre", progress=False)
    start = train(dataclasses.replace(head, max_steps=1, lr=1e-12, min_lr=0.0), tmp_path / "start",
                  progress=False)  # the head as added: the placement alone
    assert res["val_center_head_err"] < 0.6 * start["val_center_head_err"]
    log = read_log(tmp_path / "centre/train_log.csv")
    assert float(log[-1]["center_aux"]) < float(log[0]["center_aux"])
    meta_b, before = load_model_dir(tmp_path / "posed/model/gst", "gst")
    meta_a, after = load_model_dir(tmp_path / "centre/model/gst", "gst")
    assert meta_a["config"]["center_head"] and not meta_b["config"]["center_head"]
    added = {k for k in after if k.startswith("center_head.")}
    assert added and set(after) == set(before) | added
    for k in before:
        assert torch.equal(after[k], before[k]), k
    # the loss by hand: centre 0, log-variance 0, truth (1, 0, 0): 1 + 0.5 * (0 + 1)
    rel = torch.eye(4).repeat(2, 1, 1)
    rel[:, 0, 3] = -1.0  # t = -R C with R = I, C = (1, 0, 0)
    centre = torch.zeros(2, 3, requires_grad=True)
    log_var = torch.zeros(2, 3, requires_grad=True)
    use = torch.tensor([True, False])
    loss = center_aux_loss(centre, log_var, rel, use)
    assert loss.item() == pytest.approx(1.5)
    loss.backward()
    assert float(centre.grad[1].abs().sum()) == 0.0 and float(centre.grad[0, 0]) == pytest.approx(-2.0)
    manifest = {"image_vocab": 32, "camera_vocab": 8, "grid": [4, 4]}
    model = GST(build_model_config(tiny_cfg(train_root, center_aux_weight=1.0, **base), manifest))
    with pytest.raises(ValueError, match="not modules of this GST.*center_head"):
        freeze_for_training(model, ["centre_head"])
    with pytest.raises(ValueError, match="center_aux_weight"):
        TrainConfig(center_aux_weight=-1.0)


def test_gst_trunk_probe_learns_the_toy_rotation(tmp_path):
    """probe(network="gst"): a small GST trunk with a pose head at the last target-view token learns
    the toy rotation (chance RRA@15 ~1/6 of these yaws), with and without the aligned observation;
    it needs the codebook."""
    from training.probe_pose import GSTPoseProbe, load_pairs, probe

    train_pairs = load_pairs(landmark_shards(tmp_path / "train", 100, 0))
    val_pairs = load_pairs(landmark_shards(tmp_path / "val", 20, 1))
    codebook = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    for aligned in (False, True):
        res = probe(train_pairs, val_pairs, (4, 4), 32, codebook, epochs=5, batch=32, progress=False,
                    network="gst", gst_options={"dim": 64, "n_layer": 2, "aligned": aligned})
        assert res["rra15"] > 0.9 and res["median_deg"] < 10
    model = GSTPoseProbe((4, 4), 32, codebook, dim=64, n_layer=1, aligned=True)
    assert model(val_pairs[0][:3], val_pairs[1][:3]).shape == (3, 3, 3)
    with pytest.raises(ValueError, match="give the codebook"):
        probe(train_pairs, val_pairs, (4, 4), 32, None, epochs=1, network="gst")


def test_sequence_nll_sums_the_masked_cross_entropy():
    from gst_ros.models.sequence import masked_cross_entropy, sequence_nll

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g)
    targets = torch.randint(0, 7, (3, 5), generator=g)
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    nll = sequence_nll(logits, targets, mask)
    for b in range(3):
        ref = masked_cross_entropy(logits[b:b + 1], targets[b:b + 1], mask[b:b + 1]) * mask[b].sum()
        assert float(nll[b]) == pytest.approx(float(ref), rel=1e-5)
    with pytest.raises(ValueError, match="shape"):
        sequence_nll(logits, targets[:, :4], mask)


def _camera_view_tokens(n_items, grid=(2, 2), image_vocab=16, camera_vocab=8, seed=0):
    """Collated token pairs whose target view is a function of its camera and observation."""
    rng = np.random.default_rng(seed)
    n = grid[0] * grid[1]
    obs = rng.integers(0, image_vocab, (n_items, n))
    cam = rng.integers(0, camera_vocab, (n_items, n))
    img = (obs + 3 * cam) % image_vocab
    return {"observation": torch.as_tensor(obs), "image": torch.as_tensor(img),
            "camera": torch.as_tensor(cam), "rel_w2c": torch.eye(4).expand(n_items, 4, 4).double(),
            "K": torch.eye(3).expand(n_items, 3, 3)}


def test_camera_contrast_loss_is_the_two_way_camera_choice():
    """The loss is softplus(NLL under the own camera - NLL under the next qualifying sample's
    camera), over the view's tokens, for the selected <GEN> samples only; log 2 exactly when the
    model cannot tell cameras apart (an untrained GST's zero output head)."""
    from gst_ros.models.sequence import TASK_GEN, loss_mask, sequence_nll
    from gst_ros.models.transformer import GST, GSTConfig
    from training.train_gst import batch_from_tokens, camera_contrast_loss

    cfg = GSTConfig(dim=32, n_layer=1, n_head=1, grid=(2, 2), image_vocab=16, camera_vocab=8)
    tokens = _camera_view_tokens(5)
    tasks = torch.full((5,), TASK_GEN)
    keep = torch.zeros(5, dtype=torch.bool)
    inp, tgt, _ = batch_from_tokens(cfg, tokens, tasks, keep, "joint", torch.device("cpu"))
    use = torch.tensor([True, False, True, True, False])
    zero = GST(cfg).eval()
    loss = camera_contrast_loss(zero, cfg, tokens, inp, tgt, zero(inp), use, "joint")
    assert float(loss.detach()) == pytest.approx(np.log(2.0), abs=1e-6)
    torch.manual_seed(0)
    model = GST(cfg).eval()
    torch.nn.init.normal_(model.output.weight, std=0.5)

    def by_hand(rows, wrong_cameras):
        """The loss written out: both passes built from scratch for the given rows."""
        sub = {k: v[rows] for k, v in tokens.items()}
        k = len(rows)
        second = loss_mask(cfg.layout, "alternating", k)
        own_inp, own_tgt, _ = batch_from_tokens(cfg, sub, tasks[:k], keep[:k], "joint", torch.device("cpu"))
        other_inp, _, _ = batch_from_tokens(cfg, {**sub, "camera": wrong_cameras}, tasks[:k], keep[:k],
                                            "joint", torch.device("cpu"))
        with torch.no_grad():
            gap = (sequence_nll(model(own_inp), own_tgt, second)
                   - sequence_nll(model(other_inp), own_tgt, second))
        return float(torch.nn.functional.softplus(gap).mean())

    loss = camera_contrast_loss(model, cfg, tokens, inp, tgt, model(inp), use, "joint")
    rows = torch.tensor([0, 2, 3])  # each takes the previous one's camera
    assert float(loss.detach()) == pytest.approx(by_hand(rows, tokens["camera"][rows][[2, 0, 1]]), rel=1e-5)
    # too few samples: the pass still runs (ranks must match) and counts nothing
    alone = camera_contrast_loss(model, cfg, tokens, inp, tgt, model(inp),
                                 torch.tensor([False, True, False, False, False]), "joint")
    assert float(alone.detach()) == 0.0 and alone.requires_grad
    # with siblings (another camera of the same observation) those are the wrong cameras, and a
    # sample without one is left out
    sib = {**tokens, "sibling_camera": tokens["camera"].flip(0),
           "has_sibling": torch.tensor([True, True, False, True, True])}
    loss = camera_contrast_loss(model, cfg, sib, inp, tgt, model(inp), use, "joint")
    rows = torch.tensor([0, 3])
    assert float(loss.detach()) == pytest.approx(by_hand(rows, sib["sibling_camera"][rows]), rel=1e-5)


def toy_camera_view_shards(root, scenes: int = 30) -> tuple[int, int]:
    """Shards on a 2x2 grid (16 image codes, 8 camera codes) whose target view follows from the
    observation and the camera, view = (observation + 3 camera) mod 16 per cell, each
    observation seen from two cameras (so each pair has a sibling). Returns (image_vocab,
    camera_vocab)."""
    grid, iv, cv = (2, 2), 16, 8
    rng = np.random.default_rng(0)
    with ShardWriter(root, grid, iv, cv, pairs_per_shard=64) as w:
        for s in range(scenes):
            obs = rng.integers(0, iv, 4)
            cams = rng.integers(0, cv, (2, 4))
            views = np.stack([obs, *((obs + 3 * cams) % iv)])
            w.add_scene(f"s{s}", "toy", views, np.array([[0, 1], [0, 2]]), cams,
                        np.tile(np.eye(4), (2, 1, 1)), np.tile(np.eye(3), (2, 1, 1)))
    return iv, cv


def test_camera_contrast_trains_the_view_to_follow_its_camera(tmp_path):
    """camera_contrast_weight reaches training: on pairs whose view follows from the camera, the
    logged contrast loss falls from log 2 (nothing told apart) as the model learns to prefer each
    view's own camera, and the held-out view depends more on its camera (val_image_gain_camera)
    than after the same steps without it; without it the column is absent."""
    toy_camera_view_shards(tmp_path / "s")
    base = {"model_overrides": {"dim": 64, "n_layer": 1, "n_head": 1}, "p_gen": 1.0, "cond_drop_prob": 0.0,
            "max_steps": 60, "val_shards": str(tmp_path / "s")}
    with_contrast = train(tiny_cfg(tmp_path / "s", camera_contrast_weight=1.0, **base), tmp_path / "c",
                          progress=False, export=False)
    log = read_log(tmp_path / "c" / "train_log.csv")
    contrast = [float(r["camera_contrast"]) for r in log]
    assert contrast[0] == pytest.approx(np.log(2.0), abs=1e-3)
    assert np.mean(contrast[-10:]) < 0.5
    plain = train(tiny_cfg(tmp_path / "s", **base), tmp_path / "p", progress=False, export=False)
    assert "camera_contrast" not in read_log(tmp_path / "p" / "train_log.csv")[0]
    assert with_contrast["val_image_gain_camera"] > 1.5 * plain["val_image_gain_camera"] > 0
    # the sibling (the same observation's other camera) is the negative, and validation measures it
    assert (with_contrast["val_image_gain_sibling_camera"]
            > 1.5 * plain["val_image_gain_sibling_camera"] > 0)
    with pytest.raises(ValueError, match="camera_contrast_weight"):
        TrainConfig(camera_contrast_weight=-1.0)
    with pytest.raises(ValueError, match="single-process"):
        TrainConfig(camera_contrast_weight=0.1, strategy="ddp")


def test_view_aux_loss_trains_the_view_head_from_observation_and_camera(tmp_path):
    """view_aux_weight gives the model a view head and trains it: on pairs whose view follows from
    the observation and the camera, the head's held-out cross-entropy per cell falls from
    ln(image_vocab) (the zero head) to far below, and the logged view_aux falls with it. The loss
    counts only the samples in use; the head is added to a checkpoint without one."""
    from training.train_gst import build_model_config, view_aux_loss

    iv, cv = toy_camera_view_shards(tmp_path / "s")
    base = {"model_overrides": {"dim": 64, "n_layer": 1, "n_head": 1}, "p_gen": 1.0, "cond_drop_prob": 0.0,
            "val_shards": str(tmp_path / "s")}
    plain = train(tiny_cfg(tmp_path / "s", max_steps=2, **base), tmp_path / "p", progress=False)
    assert "val_view_head_nll" not in plain
    assert "view_aux" not in read_log(tmp_path / "p" / "train_log.csv")[0]
    start = train(tiny_cfg(tmp_path / "s", max_steps=1, lr=1e-12, min_lr=0.0, view_aux_weight=1.0,
                           init_from=str(tmp_path / "p/model/gst"), **base), tmp_path / "v0",
                  progress=False, export=False)
    assert start["val_view_head_nll"] == pytest.approx(np.log(iv), abs=1e-4)  # the zero head
    res = train(tiny_cfg(tmp_path / "s", max_steps=150, lr=3e-3, view_aux_weight=1.0,
                         init_from=str(tmp_path / "p/model/gst"), **base), tmp_path / "v", progress=False)
    assert res["val_view_head_nll"] < 0.7 * np.log(iv)
    log = read_log(tmp_path / "v" / "train_log.csv")
    assert np.mean([float(r["view_aux"]) for r in log[-3:]]) < 0.75 * float(log[0]["view_aux"])
    meta, state = load_model_dir(tmp_path / "v/model/gst", "gst")
    assert meta["config"]["view_head"] and state["view_head.weight"].shape == (iv, 64)
    assert build_model_config(tiny_cfg(tmp_path / "s", view_aux_weight=0.5),
                              {"image_vocab": iv, "camera_vocab": cv, "grid": [2, 2]}).view_head
    # the loss itself: cross-entropy per cell over the samples in use only
    logits = torch.zeros(3, 4, iv, requires_grad=True)
    image = torch.randint(0, iv, (3, 4))
    use = torch.tensor([True, False, True])
    loss = view_aux_loss(logits, image, use)
    assert loss.item() == pytest.approx(np.log(iv))
    loss.backward()
    assert float(logits.grad[1].abs().sum()) == 0.0 and float(logits.grad[0].abs().sum()) > 0
    none = view_aux_loss(logits, image, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="view_aux_weight"):
        TrainConfig(view_aux_weight=-1.0)


def test_identity_pairs_make_the_observation_its_own_target_at_the_identity_camera(tmp_path):
    """IdentityPairs: chosen rows get the observation as the target, the identity camera's codes
    (the camera tokenizer's encoding of rel_w2c = I with the pair's K, computed once per K) and
    rel_w2c = I; the other rows and the input batch are untouched. identity_draws are the
    configured share, reproducible, and leave step_draws as they were."""
    sys.path.insert(0, str(REPO / "test"))
    from engine_fixtures import TINY_IMAGE, make_tiny_model

    from gst_ros.models.tokenizer import CameraTokenizer
    from training.token_shards import TokenShardDataset, collate
    from training.train_gst import IdentityPairs, identity_draws, step_draws

    cam = CameraTokenizer.from_dir(make_tiny_model(tmp_path) / "camera_tokenizer")
    data = TokenShardDataset(make_shards(tmp_path / "s"))
    tokens = collate([data[i] for i in range(6)])
    tokens["K"] = torch.tensor([[30.0, 0, 15.5], [0, 30.0, 15.5], [0, 0, 1]]).expand(6, 3, 3).clone()
    tokens["K"][5, 0, 0] = 40.0
    before = {k: v.clone() for k, v in tokens.items()}
    ident = IdentityPairs(cam, TINY_IMAGE.resolution)
    encoded = []
    encode = cam.encode
    cam.encode = lambda *a, **kw: encoded.append(1) or encode(*a, **kw)
    rows = torch.tensor([True, False, True, False, False, True])
    out = ident.apply(tokens, rows)
    for k in before:
        assert torch.equal(tokens[k], before[k])                # the input batch is not changed
    for i in range(6):
        if rows[i]:
            assert torch.equal(out["image"][i], tokens["observation"][i])
            want = encode(tokens["K"][i:i + 1].double(), torch.eye(4, dtype=torch.float64)[None],
                          image_size=TINY_IMAGE.resolution).reshape(-1)
            assert torch.equal(out["camera"][i], want)
            assert torch.equal(out["rel_w2c"][i], torch.eye(4, dtype=tokens["rel_w2c"].dtype))
        else:
            for k in ("image", "camera", "rel_w2c", "observation"):
                assert torch.equal(out[k][i], tokens[k][i])
    assert len(encoded) == 2                                     # two distinct K: two encodes
    assert not torch.equal(out["camera"][0], out["camera"][5])   # the camera depends on K
    ident.apply(tokens, rows)
    assert len(encoded) == 2                                     # cached
    assert ident.apply(tokens, torch.zeros(6, dtype=torch.bool)) is tokens

    cfg = tiny_cfg(tmp_path / "s", identity_pair_prob=0.25, batch_size=64)
    draws = torch.stack([identity_draws(cfg, step) for step in range(50)])
    assert abs(float(draws.float().mean()) - 0.25) < 0.03
    assert torch.equal(draws[7], identity_draws(cfg, 7))
    plain = tiny_cfg(tmp_path / "s", batch_size=64)
    for step in (0, 3):
        assert all(torch.equal(a, b) for a, b in zip(step_draws(cfg, step), step_draws(plain, step)))
    with pytest.raises(ValueError, match="identity_pair_prob"):
        TrainConfig(identity_pair_prob=1.0)


def test_identity_pairs_reach_training_and_need_the_camera_tokenizer(tmp_path):
    """A run with identity_pair_prob trains on shards whose manifest names the camera tokenizer;
    shards that do not are refused with an error that says what is missing."""
    sys.path.insert(0, str(REPO / "test"))
    from engine_fixtures import TINY_IMAGE, make_tiny_model

    model = make_tiny_model(tmp_path)
    rng = np.random.default_rng(0)
    meta = {"camera_tokenizer": str(model / "camera_tokenizer"), "image_size": TINY_IMAGE.resolution}
    K = np.array([[30.0, 0, 15.5], [0, 30.0, 15.5], [0, 0, 1]])
    with ShardWriter(tmp_path / "s", (4, 4), 64, 32, pairs_per_shard=16, metadata=meta) as w:
        for s in range(8):
            views = rng.integers(0, 64, (3, 16))
            w.add_scene(f"s{s}", "toy", views, np.array([[0, 1], [1, 2]]), rng.integers(0, 32, (2, 16)),
                        np.tile(np.eye(4), (2, 1, 1)), np.tile(K, (2, 1, 1)))
    result = train(tiny_cfg(tmp_path / "s", identity_pair_prob=0.5, max_steps=3), tmp_path / "run",
                   progress=False, export=False)
    assert result["step"] == 3 and np.isfinite(result["loss"])
    with pytest.raises(ValueError, match="camera tokenizer"):
        train(tiny_cfg(make_shards(tmp_path / "bare"), identity_pair_prob=0.5, max_steps=1), tmp_path / "r2",
              progress=False, export=False)


def test_a_trained_model_gains_the_aligned_camera_input_unchanged_at_first():
    """Continuing a checkpoint with `aligned_camera` (model_overrides) adds its map at zero: every
    other tensor is the checkpoint's and every logit is as before, in both orders."""
    from gst_ros.models.io import load_state_dict_strict
    from gst_ros.models.sequence import make_batch
    from gst_ros.models.transformer import GST, gst_config
    from training.train_gst import build_model_config, init_state_with_new_heads

    torch.manual_seed(0)
    old = GST(gst_config("tiny", grid=(3, 3), image_vocab=40, camera_vocab=20, camera_code_dim=4))
    with torch.no_grad():
        old.output.weight.normal_(0, 1.0)
        old.camera_codebook.normal_()
    manifest = {"image_vocab": 40, "camera_vocab": 20, "grid": [3, 3]}
    cfg = TrainConfig(model_overrides={"aligned_camera": True})
    config = build_model_config(cfg, manifest, dataclasses.asdict(old.config))
    assert config.aligned_camera and config.camera_code_dim == 4
    new = GST(config)
    load_state_dict_strict(new, init_state_with_new_heads(new, old.state_dict()), "test")
    assert float(new.aligned_camera_proj.weight.abs().sum()) == 0.0
    old.eval()
    new.eval()
    n, voc = old.config.layout.n, old.config.vocabulary
    g = torch.Generator().manual_seed(1)
    obs, img = torch.randint(0, 40, (2, n), generator=g), torch.randint(0, 40, (2, n), generator=g)
    cam = torch.randint(0, 20, (2, n), generator=g)
    for task in ("gen", "est"):
        seq = make_batch(voc, old.config.layout, obs, img, cam, task).input_ids
        with torch.no_grad():
            torch.testing.assert_close(new(seq), old(seq))
