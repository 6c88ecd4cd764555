"""A TINY, randomly initialised, complete GST model directory for tests (engine, CLI, node).

    from engine_fixtures import make_tiny_model
    model_dir = make_tiny_model(tmp_path)            # -> tmp_path / "gst_tiny"
    engine = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu"))

The model is real (same classes, same gst_ros.models.io format as a trained one) but tiny and
untrained: 32x32 images -> 4x4 image tokens (64 codes), 16x16 Plücker maps -> 4x4 camera tokens
(32 codes), a 2-layer dim-64 transformer. It loads in well under a second and runs every task
in a fraction of one; its outputs are random but deterministic for a given `seed`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from gst_ros.models.io import save_model_dir
from gst_ros.models.transformer import GST, gst_config
from gst_ros.models.vq import VQConfig, VQModel
from gst_ros.models.vq import preset as vq_preset

TINY_IMAGE = VQConfig(in_channels=3, out_channels=3, resolution=32, ch=16, ch_mult=(1, 1, 2, 2),
                      num_res_blocks=1, z_channels=16, codebook_size=64, codebook_embed_dim=4, norm_groups=8)
TINY_CAMERA = VQConfig(in_channels=6, out_channels=6, resolution=16, ch=16, ch_mult=(1, 2, 2),
                       num_res_blocks=1, z_channels=16, codebook_size=32, codebook_embed_dim=4, norm_groups=8)


def tiny_gst_config(**overrides):
    sizes = {"dim": 64, "n_layer": 2, "n_head": 2, "image_vocab": TINY_IMAGE.codebook_size,
             "camera_vocab": TINY_CAMERA.codebook_size, "grid": (TINY_IMAGE.token_grid,) * 2}
    return gst_config("tiny", **{**sizes, **overrides})


def make_random_model(root, image_cfg: VQConfig, camera_cfg: VQConfig, gst_cfg, seed: int = 0,
                      onnx: bool = False, name: str = "gst_random") -> Path:
    """Build and save a randomly initialised GST model directory `root/name` (image_tokenizer/,
    camera_tokenizer/, gst/, model_card.md) from the three configs; returns its path.
    onnx=True also exports both tokenizers for the ONNX Runtime backend (<part>/onnx/)."""
    out = Path(root) / name
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image, camera = VQModel(image_cfg), VQModel(camera_cfg)
        gst = GST(gst_cfg)
        # the output head is zero-initialised (uniform logits); give it weights so the sampled
        # tokens depend on the input like a trained model's do
        torch.nn.init.normal_(gst.output.weight, std=0.5)
    save_model_dir(out / "image_tokenizer", "image_tokenizer", image.config, image.state_dict())
    save_model_dir(out / "camera_tokenizer", "camera_tokenizer", camera.config, camera.state_dict())
    save_model_dir(out / "gst", "gst", gst.config, gst.state_dict())
    (out / "model_card.md").write_text(
        f"# {name} (test fixture)\n\nRandomly initialised, untrained: for tests and benchmarks only. "
        "Outputs are meaningless but deterministic per seed.\n")
    if onnx:
        from gst_ros.engine.onnx_tokenizer import export_model_dir

        export_model_dir(out / "image_tokenizer")
        export_model_dir(out / "camera_tokenizer")
    return out


def make_tiny_model(root, seed: int = 0, onnx: bool = False, name: str = "gst_tiny", **gst_overrides) -> Path:
    """The tiny random model (see the module docstring) saved as `root/name`; returns its path,
    to pass as EngineConfig.model_dir. onnx=True also exports the tokenizers to ONNX.
    gst_overrides: GSTConfig fields to change (e.g. pose_head=True)."""
    gst = tiny_gst_config(**gst_overrides)
    return make_random_model(root, TINY_IMAGE, TINY_CAMERA, gst, seed, onnx, name)


def make_small_model(root, seed: int = 0, onnx: bool = False, name: str = "gst_small_random") -> Path:
    """A random model with the sizes of the shipped CPU model (VQ presets image-small /
    camera-small, transformer preset "small"): for latency benchmarks before one is trained."""
    image, camera = vq_preset("image-small"), vq_preset("camera-small")
    g = gst_config("small", image_vocab=image.codebook_size, camera_vocab=camera.codebook_size,
                   grid=(image.token_grid,) * 2)
    return make_random_model(root, image, camera, g, seed, onnx, name)


