"""Train a VQ tokenizer: the image tokenizer (L2 + perceptual + PatchGAN + VQ) or the camera
tokenizer (MSE + VQ on Plücker maps of training cameras).

    python -m training.train_tokenizer --config training/configs/tokenizer_image_small.yaml \
        [--data DIR] [--out DIR] [--steps N] [--resume]
    python -m training.train_tokenizer --config training/configs/tokenizer_camera_small.yaml --usage-sweep

Writes into --out: train_log.csv (one row per log step: losses, codebook usage, held-out
reconstruction error), samples/step_XXXXXX.png (inputs above reconstructions), checkpoint.pt
(atomic; --resume continues from it exactly), model/ (a model directory the runtime loads:
gst_ros.models.tokenizer / gst_ros.engine.onnx_tokenizer.load_tokenizer), and with
--usage-sweep usage_sweep.csv (the paper's Table 1b at small scale).

Data (`dataset` in the config): "builtin" makes data without files (images: coloured shapes on
gradients; cameras: look-at cameras on a sphere around the origin, radius 1.5-2.2, expressed
relative to a reference camera on the same sphere and scaled so the reference is at distance 1
from the centre); any other name is a training.datasets reader (e.g. "synthetic") on --data DIR:
images are centre-cropped/resized, cameras are (reference, target) view pairs of one scene made
relative and scale-normalised with gst_ros.geometry.normalize_scene.

Fine-tuning: `init_from: DIR` starts from a trained tokenizer's model directory (same
architecture). With `train_decoder_only: true` only post_quant_conv and the decoder train; the
encoder and codebook stay frozen, so token ids do not change and the token shards and transformers
made with the tokenizer stay valid (training/configs/tokenizer_image_decoder_ft.yaml).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from gst_ros.geometry import intrinsics_from_fov, look_at, normalize_scene
from gst_ros.models.io import save_model_dir
from gst_ros.models.quantizer import codebook_usage
from gst_ros.models.tokenizer import CAMERA_KIND, IMAGE_KIND, CameraTokenizer
from gst_ros.models.vq import VQConfig, VQModel, preset
from gst_ros.preprocess import center_crop_resize, from_model_tensor, to_model_tensor
from training.checkpointing import load_training_state, save_training_state
from training.config_fields import check_field_types, load_dataclass_config
from training.logging_utils import CSVLogger, save_image_grid

GST_FOV_DEG = 49.1  # the Zero-1-to-3 renders' vertical field of view


@dataclass
class TrainConfig:
    kind: str = "image"                 # "image" or "camera"
    preset: str = "image-small"         # gst_ros.models.vq.PRESETS name
    model: dict = field(default_factory=dict)  # VQConfig field overrides
    dataset: str = "builtin"            # "builtin" or a training.datasets name (needs --data)
    data: str | None = None
    val_split: str | None = None        # held-out split of the reader; None: its default (synthetic:
    #                                     test_views, the real-data readers: val)
    out: str = "runs/tokenizer"
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"                # "auto" = cuda when available
    # fine-tuning: start from a trained tokenizer's model directory (same architecture), and
    # optionally train only its decoder (post_quant_conv + decoder): the encoder and codebook stay
    # fixed, so every token id, token shard and transformer made with the tokenizer stays valid
    init_from: str | None = None
    train_decoder_only: bool = False
    # image losses
    recon_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual_weights: str | None = None   # VGG16 weights file (safetensors / torch state dict)
    lpips_lin_weights: str | None = None    # optional LPIPS layer weights file
    disc_weight: float = 0.5
    disc_start: int = 20000
    disc_ndf: int = 64
    disc_layers: int = 3
    # builtin cameras
    radius: tuple[float, float] = (1.5, 2.2)
    elevation_deg: tuple[float, float] = (-10.0, 60.0)
    target_jitter: float = 0.05
    # bookkeeping
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 4
    sample_every: int = 200
    ckpt_every: int = 200
    # --usage-sweep: (codebook size, dim) pairs and steps per run
    sweep: list = field(default_factory=lambda: [[1024, 4], [2048, 2], [2048, 4], [2048, 8],
                                                 [4096, 2], [4096, 4]])
    sweep_steps: int = 300

    def __post_init__(self):
        check_field_types(self, "tokenizer training config")   # also makes the tuple fields tuples
        if self.kind not in ("image", "camera"):
            raise ValueError(f"kind must be 'image' or 'camera', got {self.kind!r}")
        if self.train_decoder_only and not self.init_from:
            raise ValueError("train_decoder_only needs init_from (a trained tokenizer's model directory): "
                             "a decoder trained on an untrained encoder's tokens is useless")

    @property
    def model_kind(self) -> str:
        """The model directory kind (gst_ros.models.io) this run reads from and writes."""
        return IMAGE_KIND if self.kind == "image" else CAMERA_KIND

    def vq_config(self) -> VQConfig:
        cfg = preset(self.preset, **self.model)
        want = 3 if self.kind == "image" else 6
        if cfg.in_channels != want or cfg.out_channels != want:
            raise ValueError(f"a {self.kind} tokenizer needs {want} input/output channels; preset "
                             f"{self.preset!r} has {cfg.in_channels}/{cfg.out_channels}")
        return cfg


def load_config(path=None, **overrides) -> TrainConfig:
    """TrainConfig from a YAML file (unknown keys are an error), then keyword overrides."""
    return load_dataclass_config(TrainConfig, path, overrides, "tokenizer training config")


# ------------------------------------------------------------------ data

def builtin_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, size, size, 3) uint8 RGB: a two-colour linear gradient with 1-4 filled rectangles and
    discs of random colours on top."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        ang = rng.uniform(0, 2 * np.pi)
        s = np.clip(np.cos(ang) * xx + np.sin(ang) * yy, 0, 1)[..., None]
        img = a * (1 - s) + b * s
        for _ in range(rng.integers(1, 5)):
            col = rng.uniform(0, 255, 3)
            cx, cy = rng.uniform(0.1, 0.9, 2)
            r = rng.uniform(0.08, 0.3)
            if rng.random() < 0.5:
                mask = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < rng.uniform(0.5, 1.0) * r)
            else:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
            img[mask] = col
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def sphere_cameras(rng: np.random.Generator, n: int, cfg: TrainConfig) -> np.ndarray:
    """(n, 4, 4) world-to-camera matrices of target cameras relative to a reference camera
    (OpenCV axes, reference = identity), scaled so the reference is at distance 1 from the scene
    centre. Both cameras look (with jitter for the target) at the origin from a sphere shell."""
    out = np.empty((n, 4, 4))
    for i in range(n):
        eyes = []
        for _ in range(2):
            r = rng.uniform(*cfg.radius)
            az = rng.uniform(0, 2 * np.pi)
            el = np.deg2rad(rng.uniform(*cfg.elevation_deg))
            eyes.append(r * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)]))
        ref = look_at(eyes[0], np.zeros(3))
        tgt = look_at(eyes[1], rng.normal(0, cfg.target_jitter, 3))
        rel, _ = normalize_scene(np.stack([ref, tgt]), mode="center", scene_center=np.zeros(3))
        out[i] = rel[1]
    return out


class BatchSource:
    """Model-input batches, deterministic in (seed, split, step): a resumed run sees the same data.
    Images: (B, 3, R, R) in [-1, 1]. Cameras: Plücker maps (B, 6, R, R)."""

    def __init__(self, cfg: TrainConfig, vq_cfg: VQConfig, model: VQModel):
        self.cfg, self.res = cfg, vq_cfg.resolution
        self.camtok = CameraTokenizer(model) if cfg.kind == "camera" else None
        self.readers = {}
        if cfg.dataset != "builtin":
            if not cfg.data:
                raise ValueError(f"dataset {cfg.dataset!r} needs a data directory (--data DIR)")
            from training.datasets import build_dataset, dataset_class

            val_split = cfg.val_split or dataset_class(cfg.dataset).held_out_split
            self.readers = {"train": build_dataset(cfg.dataset, cfg.data, "train"),
                            "val": build_dataset(cfg.dataset, cfg.data, val_split)}
            if len(self.readers["train"]) == 0:
                raise ValueError(f"dataset {cfg.dataset!r} at {cfg.data}: no training scenes")

    def _rng(self, split: str, step: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, 0 if split == "train" else 1, step])

    def _reader(self, split: str):
        r = self.readers.get(split)
        return r if r is not None and len(r) else self.readers["train"]

    def batch(self, step: int, split: str = "train", n: int | None = None) -> torch.Tensor:
        n = n or self.cfg.batch_size
        rng = self._rng(split, step)
        if self.cfg.kind == "image":
            return to_model_tensor(self._images(rng, n, split))
        return self._cameras(rng, n, split)

    def _images(self, rng, n, split) -> np.ndarray:
        if self.cfg.dataset == "builtin":
            return builtin_images(rng, n, self.res)
        reader, out = self._reader(split), []
        while len(out) < n:
            sample = reader[int(rng.integers(len(reader)))]
            v = int(rng.integers(len(sample)))
            out.append(center_crop_resize(sample.images[v], sample.K[v], self.res)[0])
        return np.stack(out)

    def _cameras(self, rng, n, split) -> torch.Tensor:
        m = self.res
        if self.cfg.dataset == "builtin":
            w2c = sphere_cameras(rng, n, self.cfg)
            K = np.repeat(intrinsics_from_fov(GST_FOV_DEG, m, m)[None], n, 0)
            return self.camtok.plucker(K, w2c, m)
        from gst_ros.geometry import center_square_box, crop_resize_intrinsics

        reader, Ks, w2cs = self._reader(split), [], []
        while len(w2cs) < n:
            sample = reader[int(rng.integers(len(reader)))]
            if len(sample) < 2:
                continue
            i, j = rng.choice(len(sample), 2, replace=False)
            order = [i, j] + [k for k in range(len(sample)) if k not in (i, j)]
            try:
                rel, _ = normalize_scene(sample.w2c[order], mode="center")
            except ValueError:
                rel, _ = normalize_scene(sample.w2c[order], mode="baseline")
            h, w = sample.images.shape[1:3]
            Ks.append(crop_resize_intrinsics(sample.K[j], center_square_box(w, h), (m, m)))
            w2cs.append(rel[1])
        return self.camtok.plucker(np.stack(Ks), np.stack(w2cs), m)


# ------------------------------------------------------------------ training

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# VQConfig fields that only weight training losses; a fine-tune may change them
_LOSS_ONLY_FIELDS = ("commit_loss_beta", "entropy_loss_ratio", "dropout")


def init_from_tokenizer(model: VQModel, directory, model_kind: str) -> None:
    """Copy the weights of the tokenizer model directory into `model`; its architecture must be
    the one the training config builds (a differing field is named in the error)."""
    from gst_ros.models.tokenizer import load_vq_model

    source = load_vq_model(directory, kind=model_kind)
    mine, theirs = dataclasses.asdict(model.config), dataclasses.asdict(source.config)
    differ = [f"{k}: config {mine[k]!r} vs {directory} {theirs[k]!r}" for k in mine
              if k not in _LOSS_ONLY_FIELDS and mine[k] != theirs[k]]
    if differ:
        raise ValueError(f"init_from {directory}: architecture differs from the training config "
                         f"({'; '.join(differ)})")
    model.load_state_dict(source.state_dict())


def freeze_encoder_and_codebook(model: VQModel) -> list[torch.nn.Parameter]:
    """Freeze encoder, quant_conv and codebook (token ids can no longer change); return the
    parameters left to train (post_quant_conv + decoder)."""
    for part in (model.encoder, model.quant_conv, model.quantize):
        part.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def evaluate(model: VQModel, source: BatchSource, n_batches: int, device) -> dict:
    """Held-out reconstruction MSE, PSNR (images, on [-1, 1] -> data range 2) and codebook usage."""
    was_training = model.training
    model.eval()
    se, count, ids = 0.0, 0, []
    for b in range(n_batches):
        x = source.batch(b, "val").to(device)
        out = model(x)
        se += float(F.mse_loss(out.reconstruction.float(), x, reduction="sum"))
        count += x.numel()
        ids.append(out.indices.cpu())
    model.train(was_training)
    mse = se / count
    return {"val_mse": mse, "val_psnr": 10 * math.log10(4.0 / max(mse, 1e-12)),
            "val_usage": codebook_usage(torch.cat(ids), model.config.codebook_size)}


def _plucker_rgb(maps: torch.Tensor) -> np.ndarray:
    """Plücker maps (B, 6, m, m) -> uint8 (B, m, 2m, 3): moment (scaled by its max) | direction."""
    m, d = maps[:, :3], maps[:, 3:]
    m = m / m.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return from_model_tensor(torch.cat([m, d], dim=3).clamp(-1, 1))


def save_samples(model: VQModel, x: torch.Tensor, kind: str, path: Path) -> None:
    """PNG: the inputs in the first row(s), their reconstructions below."""
    with torch.no_grad():
        was_training = model.training
        model.eval()
        y = model(x).reconstruction.float().cpu()
        model.train(was_training)
    x = x.cpu()
    if kind == "image":
        imgs = list(from_model_tensor(x)) + list(from_model_tensor(y))
    else:
        scale = max(1, 64 // x.shape[-1])
        block = np.ones((scale, scale, 1), np.uint8)
        imgs = [np.kron(im, block) for im in (*_plucker_rgb(x), *_plucker_rgb(y))]
    save_image_grid(imgs, path, ncols=len(x))


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run the training described by cfg; return a summary (initial/final held-out metrics, paths)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    vq_cfg = cfg.vq_config()
    model = VQModel(vq_cfg).to(device).train()
    messages = []
    if cfg.init_from and not resume:
        init_from_tokenizer(model, cfg.init_from, cfg.model_kind)
        messages.append(f"initialised from {cfg.init_from}")
    params = list(model.parameters())
    if cfg.train_decoder_only:
        params = freeze_encoder_and_codebook(model)
        messages.append("training the decoder only (encoder and codebook frozen: token ids unchanged)")
    source = BatchSource(cfg, vq_cfg, model)
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    modules, optimizers = {"vq": model}, {"vq": opt}

    perceptual, disc, opt_d = None, None, None
    if cfg.kind == "image":
        from training.losses import PatchDiscriminator, PerceptualLoss

        if cfg.perceptual_weights and cfg.perceptual_weight > 0:
            perceptual = PerceptualLoss.from_file(cfg.perceptual_weights, cfg.lpips_lin_weights).to(device)
            messages.append(f"perceptual loss ON (VGG16 weights {cfg.perceptual_weights}"
                            f", {'LPIPS' if perceptual.has_lpips_weights else 'uniform'} layer weights)")
        else:
            messages.append("perceptual loss OFF (no VGG16 weights file given: set perceptual_weights)")
        if cfg.disc_weight > 0:
            disc = PatchDiscriminator(3, cfg.disc_ndf, cfg.disc_layers).to(device).train()
            opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=cfg.betas)
            modules["disc"], optimizers["disc"] = disc, opt_d
            messages.append(f"discriminator ON from step {cfg.disc_start} (weight {cfg.disc_weight})")

    ckpt_path = out / "checkpoint.pt"
    step, initial = 0, None
    log = CSVLogger(out / "train_log.csv", resume=resume)
    if resume:
        step, extra = load_training_state(ckpt_path, modules, optimizers)
        initial = extra.get("initial_eval")
        log.truncate_after(step)
        messages.append(f"resumed from {ckpt_path} at step {step}")
    for msg in messages:
        print(f"[train_tokenizer] {msg}", file=sys.stderr)
    if initial is None:
        initial = evaluate(model, source, cfg.eval_batches, device)
        log.log(step=0, **initial)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    bar = tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, disable=not progress,
               desc=f"{cfg.kind} tokenizer", dynamic_ncols=True)
    metrics = {}
    for step in bar:
        x = source.batch(step).to(device)
        with autocast:
            res = model(x)
        recon = res.reconstruction.float()
        rec = F.mse_loss(recon, x)
        loss = cfg.recon_weight * rec + res.losses.total
        metrics = {"loss_rec": rec.item(), "loss_codebook": res.losses.codebook.item(),
                   "loss_commit": res.losses.commitment.item(), "loss_entropy": res.losses.entropy.item(),
                   "usage": res.losses.usage}
        gan_on = disc is not None and step >= cfg.disc_start
        if perceptual is not None:
            with autocast:
                p = perceptual(recon, x)
            loss = loss + cfg.perceptual_weight * p.float()
            metrics["loss_perceptual"] = p.item()
        if gan_on:
            disc.eval()  # the generator step must not update BatchNorm statistics
            with autocast:
                g = -disc(recon).float().mean()
            disc.train()
            loss = loss + cfg.disc_weight * g
            metrics["loss_gen"] = g.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if gan_on:
            from training.losses import hinge_d_loss

            with autocast:
                d_loss = cfg.disc_weight * hinge_d_loss(disc(x).float(), disc(recon.detach()).float())
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(disc.parameters(), cfg.grad_clip)
            opt_d.step()
            metrics["loss_disc"] = d_loss.item()
        metrics["loss"] = loss.item()
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            metrics.update(evaluate(model, source, cfg.eval_batches, device))
        if done % cfg.log_every == 0 or done == cfg.steps or "val_mse" in metrics:
            log.log(step=done, **metrics)
            bar.set_postfix(rec=f"{rec.item():.4f}", usage=f"{res.losses.usage:.3f}")
        if done % cfg.sample_every == 0 or done == cfg.steps:
            save_samples(model, source.batch(0, "val", 8).to(device), cfg.kind,
                         out / "samples" / f"step_{done:06d}.png")
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            save_training_state(ckpt_path, done, modules, optimizers, {"initial_eval": initial})
            export_model(model, out / "model", cfg, done)
    bar.close()
    final = evaluate(model, source, cfg.eval_batches, device)
    return {"initial_eval": initial, "final_eval": final, "model_dir": str(out / "model"),
            "checkpoint": str(ckpt_path), "log": str(out / "train_log.csv"), "last_metrics": metrics}


def export_model(model: VQModel, directory: Path, cfg: TrainConfig, step: int) -> Path:
    """Write the runtime model directory (weights in fp32 on CPU)."""
    state = {k: v.float() for k, v in model.state_dict().items()}
    return save_model_dir(directory, cfg.model_kind, model.config, state,
                          extra={"trained_steps": step, "dataset": cfg.dataset,
                                 **({"init_from": str(cfg.init_from)} if cfg.init_from else {}),
                                 **({"decoder_only": True} if cfg.train_decoder_only else {})})


def usage_sweep(cfg: TrainConfig, progress: bool = True) -> list[dict]:
    """Train one small camera tokenizer per (codebook size, dim) in cfg.sweep for cfg.sweep_steps
    steps; return and write (out/usage_sweep.csv) held-out codebook usage and reconstruction MSE."""
    if cfg.kind != "camera":
        raise ValueError("the codebook usage sweep is for camera tokenizers (kind: camera)")
    rows = []
    for size, dim in cfg.sweep:
        run_cfg = dataclasses.replace(cfg, model={**cfg.model, "codebook_size": int(size),
                                                  "codebook_embed_dim": int(dim)},
                                      steps=cfg.sweep_steps, out=str(Path(cfg.out) / f"sweep_{size}x{dim}"),
                                      sample_every=10 ** 9, eval_every=10 ** 9, ckpt_every=cfg.sweep_steps)
        summary = train(run_cfg, progress=progress)
        f = summary["final_eval"]
        rows.append({"codebook_size": int(size), "dim": int(dim), "usage": f["val_usage"],
                     "val_mse": f["val_mse"]})
    log = CSVLogger(Path(cfg.out) / "usage_sweep.csv", resume=False)
    for r in rows:
        log.log(**r)
    print(f"{'size':>6} {'dim':>4} {'usage':>8} {'val MSE':>10}")
    for r in rows:
        print(f"{r['codebook_size']:>6} {r['dim']:>4} {100 * r['usage']:>7.1f}% {r['val_mse']:>10.2e}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML file of TrainConfig fields")
    ap.add_argument("--data", default=None, help="dataset root (for a dataset other than builtin)")
    ap.add_argument("--out", default=None, help="output directory")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    ap.add_argument("--usage-sweep", action="store_true", help="codebook usage over cfg.sweep (camera)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, data=args.data, out=args.out, steps=args.steps)
    except (ValueError, OSError) as e:   # a config file that is missing, not a mapping, or wrong
        print(f"train_tokenizer: {e}", file=sys.stderr)
        return 2
    if args.usage_sweep:
        usage_sweep(cfg, progress=not args.no_progress)
        return 0
    s = train(cfg, resume=args.resume, progress=not args.no_progress)
    a, b = s["initial_eval"], s["final_eval"]
    print(f"held-out MSE {a['val_mse']:.4g} -> {b['val_mse']:.4g}, "
          f"codebook usage {100 * b['val_usage']:.1f}%; "
          f"model: {s['model_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
