"""ONNX export + ONNX Runtime backend: same token ids and outputs as eager torch, same API."""
import warnings

import numpy as np
import pytest
import torch

from gst_ros.cli import main as gst_main
from gst_ros.engine.onnx_tokenizer import OnnxVQ, export_onnx, load_tokenizer
from gst_ros.models.io import ModelFormatError, save_model_dir
from gst_ros.models.tokenizer import CameraTokenizer, ImageTokenizer
from gst_ros.models.vq import VQModel, preset


@pytest.fixture(scope="module", params=["image-small", "camera-small"])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    model = VQModel(preset(request.param)).eval()
    d = tmp_path_factory.mktemp(request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, d)
    return model, OnnxVQ(d, model.config)


def test_parity_with_dynamic_batch(exported):
    model, core = exported
    c = model.config
    g = torch.Generator().manual_seed(1)
    for b in (1, 5):
        x = torch.rand(b, c.in_channels, c.resolution, c.resolution, generator=g) * 2 - 1
        ids_t, ids_o = model.encode_indices(x), core.encode_indices(x)
        assert ids_o.shape == (b, c.token_grid, c.token_grid) and ids_o.dtype == torch.int64
        assert float((ids_t == ids_o).float().mean()) >= 0.999
        y_t, y_o = model.decode_indices(ids_t), core.decode_indices(ids_t)
        assert y_o.shape == y_t.shape
        assert float((y_t - y_o).abs().max()) <= 1e-4


def test_load_tokenizer_backends_agree(tmp_path):
    torch.manual_seed(0)
    model = VQModel(preset("image-small")).eval()
    save_model_dir(tmp_path / "tok", "image_tokenizer", model.config, model.state_dict())
    with pytest.raises(ModelFormatError, match="encoder.onnx is missing.*gst export-onnx <tokenizer dir>"):
        load_tokenizer(tmp_path / "tok", backend="onnx")
    assert gst_main(["export-onnx", str(tmp_path / "tok")]) == 0
    t_torch = load_tokenizer(tmp_path / "tok", backend="torch")
    t_onnx = load_tokenizer(tmp_path / "tok", backend="onnx")
    assert isinstance(t_torch, ImageTokenizer) and isinstance(t_onnx, ImageTokenizer)
    imgs = np.random.default_rng(0).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    ids = t_torch.encode(imgs)
    assert float((t_onnx.encode(imgs) == ids).float().mean()) >= 0.999
    assert float((t_onnx.decode(ids) - t_torch.decode(ids)).abs().max()) <= 1e-4
    with pytest.raises(ValueError, match="unknown tokenizer backend"):
        load_tokenizer(tmp_path / "tok", backend="tensorrt")
    # weights changed after the export: the stale ONNX files are refused
    sd = model.state_dict()
    sd["post_quant_conv.bias"] = sd["post_quant_conv.bias"] + 1
    save_model_dir(tmp_path / "tok", "image_tokenizer", model.config, sd)
    with pytest.raises(ValueError, match="different weights"):
        load_tokenizer(tmp_path / "tok", backend="onnx")


def test_camera_tokenizer_on_onnx(tmp_path):
    from gst_ros.geometry import intrinsics_from_fov, look_at

    torch.manual_seed(0)
    model = VQModel(preset("camera-small")).eval()
    save_model_dir(tmp_path / "cam", "camera_tokenizer", model.config, model.state_dict())
    assert gst_main(["export-onnx", str(tmp_path / "cam")]) == 0
    tok = load_tokenizer(tmp_path / "cam", backend="onnx")
    assert isinstance(tok, CameraTokenizer)
    K = intrinsics_from_fov(49.1, 128, 128)
    w2c = np.stack([np.eye(4), look_at(np.array([0.8, 0.2, 0.1]), np.array([0.0, 0.0, 1.0]))])
    ids = tok.encode(K, w2c, 128)
    assert torch.equal(ids, CameraTokenizer(model).encode(K, w2c, 128))


def test_export_onnx_of_a_model_directory_exports_both_tokenizers(tmp_path, capsys):
    """`gst export-onnx <GST model dir>` exports its image and camera tokenizers, each beside its
    weights, so that the engine's ONNX backend loads; --out (one folder) is refused for two, and
    a directory that holds no tokenizer exits 2 with the reason."""
    from engine_fixtures import make_tiny_model

    from gst_ros.engine.engine import EngineConfig, GSTEngine

    model = make_tiny_model(tmp_path)
    with pytest.raises(ModelFormatError, match="gst export-onnx"):
        GSTEngine(EngineConfig(model_dir=str(model), tokenizer_backend="onnx"))
    assert gst_main(["export-onnx", str(model), "--out", str(tmp_path / "o")]) == 2
    assert "two tokenizers" in capsys.readouterr().err
    assert gst_main(["export-onnx", str(model)]) == 0
    out = capsys.readouterr().out
    assert out.count("parity: 100.00% identical token ids") == 2
    for part in ("image_tokenizer", "camera_tokenizer"):
        assert all((model / part / "onnx" / f).is_file() for f in ("encoder.onnx", "decoder.onnx"))
    engine = GSTEngine(EngineConfig(model_dir=str(model), tokenizer_backend="onnx"))
    assert engine.image_tokenizer.__class__.__name__ == "ImageTokenizer"
    assert gst_main(["export-onnx", str(tmp_path)]) == 2
    assert "gst export-onnx:" in capsys.readouterr().err
