"""Foreign checkpoint conversion (gst convert-checkpoint) and its error messages."""
import json

import pytest
import torch
from test_tokenizer_models import vq16_manifest

from gst_ros.cli import main as gst_main
from gst_ros.engine.checkpoints import CheckpointError, convert_state_dict, read_foreign_checkpoint
from gst_ros.models.io import ModelFormatError
from gst_ros.models.tokenizer import load_vq_model
from gst_ros.models.vq import VQModel, preset


@pytest.fixture(scope="module")
def vq16_file(tmp_path_factory):
    """A LlamaGen/GST-style image-16.pt: random tensors from the hand-written manifest under "model"."""
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in vq16_manifest()}
    path = tmp_path_factory.mktemp("ckpt") / "image-16.pt"
    torch.save({"model": sd, "steps": 123}, path)
    return path, sd


def test_convert_vq16_cli_roundtrip(vq16_file, tmp_path, capsys):
    path, sd = vq16_file
    out = tmp_path / "image_tokenizer"
    assert gst_main(["convert-checkpoint", "--kind", "gst-image", str(path), str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{len(sd)} mapped, 0 new, 0 dropped of {len(sd)} source tensors" in text
    assert "mapped   quantize.embedding.weight -> quantize.embedding.weight [16384x8]" in text
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == "image_tokenizer" and meta["config"]["ch_mult"] == [1, 1, 2, 2, 4]
    model = load_vq_model(out, "image_tokenizer")
    assert model.config.resolution == 256
    for k in ("encoder.conv_blocks.4.attn.1.q.weight", "decoder.conv_blocks.0.attn.2.v.bias",
              "post_quant_conv.weight"):
        assert torch.equal(model.state_dict()[k], sd[k])


def small_sd(name="image-small", **kw):
    torch.manual_seed(0)
    return VQModel(preset(name, **kw)).state_dict()


def test_camera_kind_infers_the_architecture_and_reports_new_and_dropped():
    sd = {f"module.{k}": v for k, v in small_sd("camera-vq4").items() if k != "quantize.codebook_used"}
    sd["module.loss.discriminator.main.0.weight"] = torch.zeros(64, 6, 4, 4)
    state, cfg, report = convert_state_dict("gst-camera", sd)
    assert cfg["in_channels"] == 6 and tuple(cfg["ch_mult"]) == (1, 2, 2) and cfg["codebook_size"] == 2048
    assert cfg["resolution"] == 64 and cfg["codebook_embed_dim"] == 4
    assert report["new"] == ["quantize.codebook_used"]
    assert report["dropped"] == ["module.loss.discriminator.main.0.weight"]
    assert len(report["mapped"]) == len(sd) - 1
    assert ("module.encoder.conv_in.weight", "encoder.conv_in.weight") in report["mapped"]
    VQModel(preset("camera-vq4")).load_state_dict(state, strict=True)


def test_wrong_channel_count_for_kind():
    with pytest.raises(CheckpointError, match="expected 6 input/output channels"):
        convert_state_dict("gst-camera", small_sd())


def test_missing_key_is_named():
    sd = small_sd()
    del sd["decoder.mid.1.k.bias"]
    with pytest.raises(CheckpointError, match=r"missing tensor 'decoder\.mid\.1\.k\.bias'"):
        convert_state_dict("llamagen-vq", sd)


def test_wrong_shape_is_named():
    sd = small_sd()
    sd["decoder.conv_out.bias"] = torch.zeros(4)
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'decoder\.conv_out\.bias'"):
        convert_state_dict("llamagen-vq", sd)


def test_unexpected_key_is_named():
    sd = small_sd()
    sd["encoder.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'encoder\.extra\.weight'"):
        convert_state_dict("llamagen-vq", sd)


def test_truncated_and_bad_files(tmp_path, capsys):
    good = tmp_path / "good.pt"
    torch.save({"model": small_sd()}, good)
    data = good.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a torch checkpoint"):
        read_foreign_checkpoint(bad)
    assert gst_main(["convert-checkpoint", "--kind", "llamagen-vq", str(bad), str(tmp_path / "o")]) == 2
    assert "truncated" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="does not exist"):
        read_foreign_checkpoint(tmp_path / "nope.pt")
    st = tmp_path / "w.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match="safetensors"):
        read_foreign_checkpoint(st)
    odd = tmp_path / "odd.pt"
    torch.save({"model": {"a": torch.zeros(1), "b": 3}}, odd)
    with pytest.raises(CheckpointError, match="'b' is a int"):
        read_foreign_checkpoint(odd)


def test_code_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "fn": torch.nn.Linear(1, 1)}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        read_foreign_checkpoint(path)


def test_converted_model_dir_errors_are_clear(tmp_path):
    from gst_ros.models.io import save_model_dir

    model = VQModel(preset("image-small"))
    sd = model.state_dict()
    sd["quant_conv.weight"] = torch.zeros(1)
    save_model_dir(tmp_path / "m", "image_tokenizer", model.config, sd)
    with pytest.raises(ModelFormatError, match="quant_conv.weight"):
        load_vq_model(tmp_path / "m")
    with pytest.raises(ModelFormatError, match="expected 'camera_tokenizer'"):
        load_vq_model(tmp_path / "m", "camera_tokenizer")


def test_gpt_kinds_dispatch_to_gpt_import(monkeypatch):
    import sys
    import types

    calls = []
    fake = types.ModuleType("gst_ros.engine.gpt_import")
    empty = {"mapped": [], "new": [], "dropped": []}
    fake.convert_gpt_state_dict = lambda kind, sd: calls.append(kind) or ({}, {}, empty)
    monkeypatch.setitem(sys.modules, "gst_ros.engine.gpt_import", fake)
    convert_state_dict("gst-gpt", {"x": torch.zeros(1)})
    convert_state_dict("llamagen-gpt", {"x": torch.zeros(1)})
    assert calls == ["gst-gpt", "llamagen-gpt"]
    with pytest.raises(CheckpointError, match="unknown checkpoint kind"):
        convert_state_dict("vq-99", {})
