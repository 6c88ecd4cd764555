"""VQ tokenizer models: quantizer, the VQ-16 key/shape manifest, presets, the tokenizer API."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gst_ros.models.io import load_state_dict_strict
from gst_ros.models.quantizer import USAGE_WINDOW, VectorQuantizer, codebook_usage
from gst_ros.models.tokenizer import CameraTokenizer, ImageTokenizer, images_to_tensor
from gst_ros.models.vq import VQModel, count_parameters, preset


def vq16_manifest():
    """(name, shape) of every tensor of LlamaGen VQ-16, written from DESIGN.md section 1:
    ch 128, ch_mult [1,1,2,2,4], 2 res blocks per encoder level / 3 per decoder level, attention
    (2 in the encoder, 3 in the decoder) at the lowest resolution only, mid res-attn-res,
    z 256, codebook 16384 x 8, a 65536-long usage buffer."""
    widths = [128, 128, 256, 256, 512]
    out = []

    def conv(name, cin, cout, k):
        out.extend([(f"{name}.weight", (cout, cin, k, k)), (f"{name}.bias", (cout,))])

    def norm(name, c):
        out.extend([(f"{name}.weight", (c,)), (f"{name}.bias", (c,))])

    def res(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    conv("encoder.conv_in", 3, 128, 3)
    cin = 128
    for i, w in enumerate(widths):
        for j in range(2):
            res(f"encoder.conv_blocks.{i}.res.{j}", cin, w)
            cin = w
        if i == 4:
            attn("encoder.conv_blocks.4.attn.0", 512)
            attn("encoder.conv_blocks.4.attn.1", 512)
        else:
            conv(f"encoder.conv_blocks.{i}.downsample.conv", w, w, 3)
    res("encoder.mid.0", 512, 512)
    attn("encoder.mid.1", 512)
    res("encoder.mid.2", 512, 512)
    norm("encoder.norm_out", 512)
    conv("encoder.conv_out", 512, 256, 3)

    conv("decoder.conv_in", 256, 512, 3)
    res("decoder.mid.0", 512, 512)
    attn("decoder.mid.1", 512)
    res("decoder.mid.2", 512, 512)
    cin = 512
    for n, w in enumerate(reversed(widths)):       # decoder.conv_blocks.0 = lowest resolution
        for j in range(3):
            res(f"decoder.conv_blocks.{n}.res.{j}", cin, w)
            cin = w
        if n == 0:
            for j in range(3):
                attn(f"decoder.conv_blocks.0.attn.{j}", 512)
        if n != 4:
            conv(f"decoder.conv_blocks.{n}.upsample.conv", w, w, 3)
    norm("decoder.norm_out", 128)
    conv("decoder.conv_out", 128, 3, 3)

    out.append(("quantize.embedding.weight", (16384, 8)))
    out.append(("quantize.codebook_used", (65536,)))
    conv("quant_conv", 256, 8, 1)
    conv("post_quant_conv", 8, 256, 1)
    return out


def test_vq16_manifest_loads_strictly():
    manifest = vq16_manifest()
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in manifest}
    model = VQModel(preset("image-vq16"))
    assert len(model.state_dict()) == len(manifest)
    load_state_dict_strict(model, sd, "manifest")
    assert torch.equal(model.quantize.embedding.weight, sd["quantize.embedding.weight"])
    assert torch.equal(model.decoder.conv_blocks[0].attn[2].proj_out.weight,
                       sd["decoder.conv_blocks.0.attn.2.proj_out.weight"])
    # parameters (everything but the usage buffer): 71.88M
    n = sum(int(np.prod(s)) for k, s in manifest if k != "quantize.codebook_used")
    assert count_parameters(model) == n
    assert round(n / 1e6, 2) == 71.88


def test_full_preset_sizes():
    with torch.device("meta"):
        cam = VQModel(preset("camera-vq4"))
        img = VQModel(preset("image-vq16"))
    assert abs(count_parameters(cam) / 1e6 - 22.9) < 0.05
    assert round(count_parameters(img) / 1e6, 2) == 71.88
    c = cam.config
    assert (c.in_channels, c.out_channels, c.codebook_size, c.codebook_embed_dim) == (6, 6, 2048, 4)
    assert c.token_grid == img.config.token_grid == 16
    assert cam.state_dict()["encoder.conv_in.weight"].shape == (128, 6, 3, 3)
    assert cam.state_dict()["quantize.codebook_used"].shape == (USAGE_WINDOW,)


def test_small_presets_share_the_token_grid():
    assert preset("image-small").token_grid == preset("camera-small").token_grid == 8
    assert preset("image-small").resolution == 128 and preset("camera-small").resolution == 32
    with pytest.raises(KeyError, match="unknown VQ preset"):
        preset("nope")
    with pytest.raises(ValueError, match="not a multiple"):
        preset("image-small", resolution=100)


def test_quantizer_nearest_code_and_straight_through():
    q = VectorQuantizer(16, 4, beta=0.25, l2_norm=True)
    z = torch.randn(2, 4, 3, 5, requires_grad=True)
    zq, losses, idx = q(z)
    assert idx.shape == (2, 3, 5) and idx.dtype == torch.int64
    # nearest by cosine similarity
    zn = torch.nn.functional.normalize(z.detach().permute(0, 2, 3, 1), dim=-1)
    sims = zn @ q.codebook().t()
    assert torch.equal(idx, sims.argmax(-1))
    # the output equals the normalised code vectors, and gradients pass straight through
    assert torch.allclose(zq.permute(0, 2, 3, 1), q.codebook()[idx], atol=1e-6)
    zq.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    commit, codebook = float(losses.commitment.detach()), float(losses.codebook.detach())
    assert commit == pytest.approx(0.25 * codebook, rel=1e-5)


def test_quantizer_usage_buffer_is_plain_and_updates_in_train_mode():
    q = VectorQuantizer(8, 2).train()
    assert "codebook_used" in dict(q.named_buffers())
    assert "codebook_used" not in dict(q.named_parameters())
    _, losses, idx = q(torch.randn(1, 2, 4, 4))
    tail = q.codebook_used[-16:].long()
    assert torch.equal(tail, idx.reshape(-1))
    assert losses.usage == pytest.approx(codebook_usage(idx, 8))
    assert (q.codebook_used[:-16] == -1).all()


def test_entropy_loss_is_optional():
    z = torch.randn(2, 4, 4, 4)
    assert float(VectorQuantizer(16, 4)(z)[1].entropy) == 0.0
    assert float(VectorQuantizer(16, 4, entropy_loss_ratio=0.1)(z)[1].entropy.detach()) != 0.0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-1, 63), min_size=1, max_size=200))
def test_codebook_usage_counts_distinct_codes(values):
    idx = torch.tensor(values)
    assert codebook_usage(idx, 64) == len({v for v in values if v >= 0}) / 64


@pytest.fixture(scope="module")
def small_image_model():
    torch.manual_seed(0)
    return VQModel(preset("image-small")).eval()


def test_image_api_shapes_and_inputs(small_image_model):
    tok = ImageTokenizer(small_image_model)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    ids = tok.encode(imgs)
    assert ids.shape == (2, 8, 8) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < 1024
    # a single uint8 image and the same pixels as a float tensor give the same tokens
    assert torch.equal(tok.encode(imgs[0]), ids[:1])
    assert torch.equal(tok.encode(images_to_tensor(imgs)), ids)
    out = tok.decode(ids)
    assert out.shape == (2, 3, 128, 128) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="128x128"):
        tok.encode(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        tok.encode(np.zeros((128, 128, 3), np.float64))
    with pytest.raises(ValueError, match="out of range"):
        tok.decode(torch.full((1, 8, 8), 1024))
    with pytest.raises(ValueError, match=r"\(B, 8, 8\)"):
        tok.decode(torch.zeros(1, 4, 4, dtype=torch.int64))


def test_camera_api_shapes_and_plucker_grid():
    from gst_ros.geometry import crop_resize_intrinsics, intrinsics_from_fov, look_at, plucker_map

    torch.manual_seed(0)
    tok = CameraTokenizer(VQModel(preset("camera-small")).eval())
    K = intrinsics_from_fov(49.1, 256, 256)
    w2c = np.stack([np.eye(4), look_at(np.array([1.0, -0.5, 0.3]), np.array([0.0, 0.0, 1.0]))])
    maps = tok.plucker(K, w2c, 256)
    assert maps.shape == (2, 6, 32, 32)
    K32 = crop_resize_intrinsics(K, (0, 0, 256, 256), (32, 32))
    assert torch.allclose(maps, plucker_map(np.stack([K32, K32]), w2c, 32, 32).float())
    ids = tok.encode(K, w2c, (256, 256))
    assert ids.shape == (2, 8, 8) and ids.dtype == torch.int64
    assert torch.equal(ids, tok.encode_maps(maps))
    fit = tok.decode(ids, image_size=(256, 256))
    assert fit.w2c.shape == (2, 4, 4) and fit.K.shape == (2, 3, 3)
    with pytest.raises(ValueError, match="K given without"):
        tok.decode(ids, K=K)
