"""Tokenizer training: a tiny tokenizer learns, exact resume, logs, losses."""
import csv

import numpy as np
import pytest
import torch

from training.checkpointing import TrainingCheckpointError, load_training_state, save_training_state
from training.logging_utils import CSVLogger, save_image_grid
from training.losses import PatchDiscriminator, PerceptualLoss, hinge_d_loss
from training.train_tokenizer import load_config, train, usage_sweep

TINY_IMAGE = dict(resolution=32, ch=16, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=32,
                  codebook_size=256, codebook_embed_dim=8, norm_groups=8)
TINY_CAMERA = dict(resolution=16, ch=16, ch_mult=[1, 2], num_res_blocks=1, z_channels=16,
                   codebook_size=64, codebook_embed_dim=4, norm_groups=8)


@pytest.mark.slow
def test_tiny_image_tokenizer_learns(tmp_path):
    cfg = load_config(None, kind="image", preset="image-small", model=TINY_IMAGE, steps=200, batch_size=8,
                      lr=1e-3, disc_start=10**6, eval_every=100, sample_every=200, ckpt_every=200,
                      eval_batches=2, out=str(tmp_path))
    s = train(cfg, progress=False)
    first, last = s["initial_eval"]["val_mse"], s["final_eval"]["val_mse"]
    # held-out images (not seen in training): MSE at least 40% below the untrained model's (~60% seen)
    assert last < 0.6 * first, (first, last)
    assert s["final_eval"]["val_usage"] > 0.05
    rows = list(csv.DictReader(open(tmp_path / "train_log.csv")))
    assert rows[0]["step"] == "0" and rows[-1]["step"] == "200"
    assert (tmp_path / "samples" / "step_000200.png").is_file()
    from gst_ros.models.tokenizer import ImageTokenizer

    tok = ImageTokenizer.from_dir(tmp_path / "model")
    assert tok.encode(np.zeros((32, 32, 3), np.uint8)).shape == (1, 8, 8)


def test_discriminator_switches_on_after_disc_start(tmp_path):
    cfg = load_config(None, kind="image", preset="image-small", model=TINY_IMAGE,
                      steps=3, batch_size=2, disc_start=2, disc_ndf=8, eval_every=100, sample_every=100,
                      ckpt_every=100, eval_batches=1, log_every=1, out=str(tmp_path))
    train(cfg, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "train_log.csv")))
    assert [bool(r.get("loss_disc")) for r in rows[1:]] == [False, False, True]
    assert rows[-1]["loss_gen"] != ""


def test_camera_training_resume_is_exact(tmp_path):
    common = dict(kind="camera", preset="camera-small", model=TINY_CAMERA, batch_size=4, lr=1e-3,
                  eval_every=1000, sample_every=1000, eval_batches=1)
    straight = train(load_config(None, steps=6, ckpt_every=6, out=str(tmp_path / "a"), **common),
                     progress=False)
    train(load_config(None, steps=3, ckpt_every=3, out=str(tmp_path / "b"), **common), progress=False)
    resumed = train(load_config(None, steps=6, ckpt_every=3, out=str(tmp_path / "b"), **common),
                    resume=True, progress=False)
    assert resumed["final_eval"]["val_mse"] == pytest.approx(straight["final_eval"]["val_mse"], rel=1e-5)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a/model/model.safetensors")
    b = load_file(tmp_path / "b/model/model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [r["step"] for r in csv.DictReader(open(tmp_path / "b/train_log.csv"))]
    assert steps == sorted(steps, key=int) and len(steps) == len(set(steps))


def test_usage_sweep_writes_a_table(tmp_path):
    cfg = load_config(None, kind="camera", preset="camera-small", model=TINY_CAMERA, batch_size=4,
                      sweep=[[32, 2], [64, 4]], sweep_steps=3, eval_batches=1, out=str(tmp_path))
    rows = usage_sweep(cfg, progress=False)
    assert [(r["codebook_size"], r["dim"]) for r in rows] == [(32, 2), (64, 4)]
    assert all(0 < r["usage"] <= 1 and r["val_mse"] > 0 for r in rows)
    assert len(list(csv.DictReader(open(tmp_path / "usage_sweep.csv")))) == 2


def test_bad_config_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer training config fields"):
        load_config(None, learning_rate=1.0)
    with pytest.raises(ValueError, match="tokenizer training config: steps must be an integer, got 'many'"):
        load_config(None, steps="many")
    assert load_config(None, data=None, init_from=None).init_from is None   # optional fields stay None
    with pytest.raises(ValueError, match="needs 6 input/output channels"):
        load_config(None, kind="camera", preset="image-small").vq_config()


def test_checkpoint_restores_rng_and_rejects_mismatch(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    np.random.seed(5)  # noqa: NPY002 (the global RNG is what is restored)
    torch.manual_seed(5)
    save_training_state(tmp_path / "c.pt", 7, {"net": net}, {"opt": opt}, {"note": "x"})
    expected = (np.random.rand(), torch.rand(1))  # noqa: NPY002
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(net2.parameters())
    step, extra = load_training_state(tmp_path / "c.pt", {"net": net2}, {"opt": opt2})
    assert step == 7 and extra == {"note": "x"}
    assert torch.equal(net2.weight, net.weight)
    assert (np.random.rand(), torch.rand(1)) == expected  # noqa: NPY002
    assert opt2.state_dict()["state"][0]["step"] == 1
    with pytest.raises(TrainingCheckpointError, match="does not match"):
        load_training_state(tmp_path / "c.pt", {"net": torch.nn.Linear(3, 5)})
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(TrainingCheckpointError, match="truncated"):
        load_training_state(tmp_path / "bad.pt", {"net": net2})


def test_csv_logger_grows_columns_and_resumes(tmp_path):
    log = CSVLogger(tmp_path / "l.csv")
    log.log(step=1, a=0.5)
    log.log(step=2, a=0.25, b=3)
    log.log(step=3, a=0.125)
    log2 = CSVLogger(tmp_path / "l.csv", resume=True)
    log2.truncate_after(2)
    log2.log(step=3, b=1)
    rows = list(csv.DictReader(open(tmp_path / "l.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["b"] == "3" and rows[2]["b"] == "1" and rows[0]["b"] == ""


def test_image_grid_png(tmp_path):
    from PIL import Image

    imgs = np.zeros((3, 4, 5, 3), np.uint8)
    imgs[1] = 200
    save_image_grid(imgs, tmp_path / "g.png", ncols=2, pad=1)
    g = np.asarray(Image.open(tmp_path / "g.png"))
    assert g.shape == (2 * 5 + 1, 2 * 6 + 1, 3)
    assert (g[1:5, 7:12] == 200).all() and (g[1:5, 1:6] == 0).all()


def test_perceptual_loss_from_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = PerceptualLoss()
    sd = {f"features.{k}": v.clone().normal_(0, 0.05) for k, v in ref.features.state_dict().items()}
    save_file(sd, tmp_path / "vgg16.safetensors")
    loss = PerceptualLoss.from_file(tmp_path / "vgg16.safetensors")
    assert not loss.has_lpips_weights
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    d = loss(x, x.flip(-1), reduction="none")
    assert d.shape == (2,) and (d > 0).all()
    y = x.clone().requires_grad_(True)
    loss(y, x.flip(-1)).backward()
    assert y.grad.abs().sum() > 0 and all(p.grad is None for p in loss.parameters())
    del sd["features.28.bias"]
    torch.save(sd, tmp_path / "vgg_bad.pth")
    with pytest.raises(ValueError, match="missing 'features.28.bias'"):
        PerceptualLoss.from_file(tmp_path / "vgg_bad.pth")
    with pytest.raises(FileNotFoundError):
        PerceptualLoss.from_file(tmp_path / "absent.pth")


def test_patch_discriminator_and_hinge():
    d = PatchDiscriminator(3, 64, 3)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1] and len(bns) == 3
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert float(hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0))) == 0.0
    assert float(hinge_d_loss(torch.zeros(4), torch.zeros(4))) == pytest.approx(1.0)


def test_decoder_only_fine_tune_keeps_token_ids(tmp_path):
    """A decoder-only fine-tune starts from the given tokenizer, leaves encoder, quant_conv and codebook
    bit-identical (so token ids do not change) and trains the decoder: given a trained tokenizer
    whose decoder was re-initialised at random, it brings the held-out error down (~30% in 40 steps)."""
    from safetensors.torch import load_file

    from gst_ros.models.io import save_model_dir
    from gst_ros.models.tokenizer import IMAGE_KIND, ImageTokenizer, load_vq_model
    from gst_ros.models.vq import VQModel

    common = dict(kind="image", preset="image-small", model=TINY_IMAGE, batch_size=8, lr=1e-3,
                  disc_start=10**6, eval_every=1000, sample_every=1000, eval_batches=2)
    train(load_config(None, steps=30, ckpt_every=30, out=str(tmp_path / "base"), **common), progress=False)
    base_model = load_vq_model(tmp_path / "base/model", kind=IMAGE_KIND)
    torch.manual_seed(5)
    fresh = VQModel(base_model.config)
    state = {k: (fresh.state_dict()[k] if k.startswith(("decoder.", "post_quant_conv.")) else v)
             for k, v in base_model.state_dict().items()}
    save_model_dir(tmp_path / "init", IMAGE_KIND, base_model.config, state)
    s = train(load_config(None, steps=40, ckpt_every=40, out=str(tmp_path / "ft"), seed=1,
                          init_from=str(tmp_path / "init"), train_decoder_only=True, **common),
              progress=False)
    assert s["final_eval"]["val_mse"] < 0.85 * s["initial_eval"]["val_mse"], s
    init = load_file(tmp_path / "init/model.safetensors")
    ft = load_file(tmp_path / "ft/model/model.safetensors")
    assert init.keys() == ft.keys()
    usage_window = "quantize.codebook_used"  # bookkeeping buffer (codebook usage), not a weight
    frozen = [k for k in init if k.startswith(("encoder.", "quant_conv.", "quantize.")) and k != usage_window]
    trained = [k for k in init if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and trained and len(frozen) + len(trained) + 1 == len(init)
    assert all(torch.equal(init[k], ft[k]) for k in frozen)
    assert sum(not torch.equal(init[k], ft[k]) for k in trained) > len(trained) // 2
    imgs = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    a, b = ImageTokenizer.from_dir(tmp_path / "base/model"), ImageTokenizer.from_dir(tmp_path / "ft/model")
    assert torch.equal(a.encode(imgs), b.encode(imgs))


def test_fine_tune_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="train_decoder_only needs init_from"):
        load_config(None, kind="image", train_decoder_only=True)
    common = dict(kind="image", preset="image-small", batch_size=2, eval_every=1000, sample_every=1000,
                  eval_batches=1, disc_start=10**6)
    train(load_config(None, model=TINY_IMAGE, steps=1, ckpt_every=1, out=str(tmp_path / "base"), **common),
          progress=False)
    wider = {**TINY_IMAGE, "ch": 32}
    with pytest.raises(ValueError, match=r"architecture differs.*ch: config 32"):
        train(load_config(None, model=wider, steps=1, out=str(tmp_path / "ft"),
                          init_from=str(tmp_path / "base/model"), **common), progress=False)


def test_held_out_split_defaults_to_the_readers_own(tmp_path):
    """A synthetic render has no "val" split: without `val_split` the held-out batches come from
    its unseen views (SyntheticDataset.held_out_split), a named split wins, the real-data readers
    default to "val", and a split the render lacks is named in the error."""
    pytest.importorskip("pybullet")
    from gst_ros.cli import main as gst_main
    from gst_ros.models.vq import VQModel
    from training.datasets import dataset_class
    from training.train_tokenizer import BatchSource

    data = tmp_path / "synth"
    assert gst_main(["render", "--out", str(data), "--scenes", "2", "--views", "4", "--size", "64",
                     "--test-view-fraction", "0.5", "--seed", "3", "--quiet"]) == 0
    assert {dataset_class(n).held_out_split for n in ("co3d", "objaverse", "re10k", "mvimgnet")} == {"val"}

    def source(**over):
        cfg = load_config(None, kind="image", preset="image-small", model=TINY_IMAGE, dataset="synthetic",
                          data=str(data), out=str(tmp_path / "run"), **over)
        return BatchSource(cfg, cfg.vq_config(), VQModel(cfg.vq_config()))

    default = source()
    assert default.readers["val"].split == "test_views"
    val = default.batch(0, "val", 4)
    assert val.shape == (4, 3, 32, 32) and torch.isfinite(val).all()
    assert source(val_split="train").readers["val"].split == "train"
    with pytest.raises(KeyError, match="no split 'val'"):
        source(val_split="val")
