"""training/lease_payload.py: a tree packed for a lease's transfer limits comes back loadable."""
from __future__ import annotations

import io
import json
import zlib

import numpy as np
import pytest
import torch
from engine_fixtures import TINY_CAMERA, TINY_IMAGE, make_tiny_model
from safetensors.torch import load as safetensors_load

from gst_ros.engine.engine import EngineConfig, GSTEngine
from gst_ros.models.io import load_model_dir, save_model_dir
from training.lease_payload import PayloadError, main, pack, restore
from training.token_shards import ShardWriter, TokenShardDataset
from training.train_gst import tokenizer_codebook


def toy_shards(root, scenes: int = 4):
    """Shards on the tiny model's 4x4 grid with non-trivial relative cameras (rel_w2c float64)."""
    rng = np.random.default_rng(0)
    n = TINY_IMAGE.token_grid ** 2
    with ShardWriter(root, (TINY_IMAGE.token_grid,) * 2, TINY_IMAGE.codebook_size, TINY_CAMERA.codebook_size,
                     pairs_per_shard=4) as w:
        for s in range(scenes):
            rel = np.tile(np.eye(4), (2, 1, 1))
            rel[:, :3, 3] = rng.normal(0, 1, (2, 3))
            w.add_scene(f"s{s}", "toy", rng.integers(0, TINY_IMAGE.codebook_size, (3, n)),
                        np.array([[0, 1], [0, 2]]), rng.integers(0, TINY_CAMERA.codebook_size, (2, n)),
                        rel, np.tile(np.eye(3), (2, 1, 1)))


def test_pack_and_restore_round_trip(tmp_path):
    """The transformer's weights travel as float16 (codebook copies untouched), the tokenizers and
    every other file byte for byte, shard cameras as float32; large files are split into parts.
    Restored, every tensor and array has its original dtype and the values rounded once, the
    engine loads the model and the shards read as before."""
    src = tmp_path / "src"
    model_dir = make_tiny_model(src, seed=3, pose_head=True, image_code_dim=4, camera_code_dim=4)
    meta, state = load_model_dir(model_dir / "gst", "gst")
    for kind in ("image", "camera"):  # the tokenizers' own codebooks, as training sets them
        state[f"{kind}_codebook"] = tokenizer_codebook(kind, {}, str(model_dir / f"{kind}_tokenizer"))
    save_model_dir(model_dir / "gst", "gst", meta["config"], state)
    toy_shards(src / "shards")
    (src / "notes.txt").write_text("kept as it is\n")
    manifest = pack(src, tmp_path / "payload", part_mib=0.05)  # 52 KB parts: the weights split
    gst_entry = manifest["files"]["gst_tiny/gst/model.safetensors"]
    assert gst_entry["parts"] >= 2 and "tok_embeddings.weight" in gst_entry["tensors"]
    assert {"image_codebook", "camera_codebook"}.isdisjoint(gst_entry["tensors"])  # kept full
    assert "tensors" not in manifest["files"]["gst_tiny/image_tokenizer/model.safetensors"]  # not a GST
    assert manifest["files"]["shards/shard_00000.rel_w2c.npy"]["array"] == "float64"
    limit = manifest["part_bytes"]
    sizes = [p.stat().st_size for p in (tmp_path / "payload").rglob("*")
             if p.is_file() and p.name != "payload.json"]
    assert max(sizes) <= limit
    packed = sum(p.stat().st_size for p in (tmp_path / "payload" / "gst_tiny" / "gst").glob("model.*"))
    original = (model_dir / "gst" / "model.safetensors").stat().st_size
    assert packed < 0.6 * original

    restore(tmp_path / "payload", tmp_path / "back")
    back = tmp_path / "back"
    _, before = load_model_dir(model_dir / "gst", "gst")
    _, after = load_model_dir(back / "gst_tiny" / "gst", "gst")
    assert before.keys() == after.keys()
    assert not torch.equal(before["image_codebook"].half().float(), before["image_codebook"])
    for k, v in before.items():
        assert after[k].dtype == v.dtype
        want = v if k.endswith("codebook") else v.half().to(v.dtype)
        torch.testing.assert_close(after[k], want, rtol=0, atol=0)
    for rel in ("notes.txt", "gst_tiny/image_tokenizer/model.safetensors", "gst_tiny/gst/config.json",
                "shards/manifest.json", "shards/shard_00000.views.npy"):
        assert (back / rel).read_bytes() == (src / rel).read_bytes()
    old, new = TokenShardDataset(src / "shards"), TokenShardDataset(back / "shards")
    assert len(new) == len(old) == 8
    for i in range(len(old)):
        assert new[i]["rel_w2c"].dtype == torch.float64
        torch.testing.assert_close(new[i]["rel_w2c"], old[i]["rel_w2c"], rtol=1e-6, atol=1e-6)
        assert torch.equal(new[i]["camera"], old[i]["camera"])
    engine = GSTEngine(EngineConfig(model_dir=str(back / "gst_tiny"), device="cpu"))
    assert engine.model.pose_head is not None


def test_restore_names_what_is_missing(tmp_path):
    src = tmp_path / "src"
    make_tiny_model(src, seed=1)
    pack(src, tmp_path / "payload", part_mib=0.05)
    parts = sorted((tmp_path / "payload" / "gst_tiny" / "gst").glob("model.safetensors.part*"))
    whole = parts[-1].read_bytes()
    parts[-1].write_bytes(whole[: len(whole) // 2])  # a part cut short in a transfer
    with pytest.raises(PayloadError, match="do not match"):
        restore(tmp_path / "payload", tmp_path / "back")
    assert not (tmp_path / "back").exists() and not (tmp_path / "back.partial").exists()
    parts[-1].unlink()  # a part left behind by a transfer
    with pytest.raises(PayloadError, match=r"missing part \d+ of \d+"):
        restore(tmp_path / "payload", tmp_path / "back")
    (tmp_path / "payload" / "payload.json").write_text("not json")
    with pytest.raises(PayloadError, match="not a payload manifest"):
        restore(tmp_path / "payload", tmp_path / "back")
    with pytest.raises(PayloadError, match="no payload.json"):
        restore(src, tmp_path / "back2")
    with pytest.raises(PayloadError, match="exists"):
        pack(src, tmp_path / "payload")
    assert main(["restore", str(src), str(tmp_path / "back3")]) == 1  # the CLI reports, not crashes


def test_packed_files_hold_the_narrow_dtypes_and_keep_what_float16_cannot(tmp_path):
    """Unsplit, the packed weights are float16 but for the codebook copies and a tensor with a
    value beyond float16's range (kept float32, restored exactly); shard cameras are float32."""
    src = tmp_path / "src"
    model_dir = make_tiny_model(src, seed=2, image_code_dim=4)
    meta, state = load_model_dir(model_dir / "gst", "gst")
    state["output.weight"][0, 0] = 1e6  # float16 would make it inf
    save_model_dir(model_dir / "gst", "gst", meta["config"], state)
    toy_shards(src / "shards", scenes=2)
    assert main(["pack", str(src), str(tmp_path / "payload"), "--part-mib", "15"]) == 0
    files = json.loads((tmp_path / "payload" / "payload.json").read_text())["files"]

    def stored(rel):  # the file as packed, decompressed when pack compressed it
        data = (tmp_path / "payload" / rel).read_bytes()
        return zlib.decompress(data) if files[rel].get("zlib") else data

    packed = safetensors_load(stored("gst_tiny/gst/model.safetensors"))
    assert packed["tok_embeddings.weight"].dtype == torch.float16
    assert packed["image_codebook"].dtype == torch.float32 and packed["output.weight"].dtype == torch.float32
    assert np.load(io.BytesIO(stored("shards/shard_00000.rel_w2c.npy"))).dtype == np.float32
    assert files["shards/shard_00000.cameras.npy"]["zlib"]  # token arrays compress
    restore(tmp_path / "payload", tmp_path / "back")
    _, after = load_model_dir(tmp_path / "back" / "gst_tiny" / "gst", "gst")
    assert torch.equal(after["output.weight"], state["output.weight"])


def test_pack_refuses_what_it_cannot_carry_faithfully(tmp_path):
    for name, make in (("payload.json", lambda d: (d / "payload.json").write_text("{}")),
                       ("looks like a part", lambda d: (d / "big.part000").write_bytes(b"x")),
                       ("symbolic link", lambda d: (d / "link").symlink_to(d / "a.txt"))):
        src = tmp_path / name.replace(" ", "_")
        src.mkdir()
        (src / "a.txt").write_text("a")
        make(src)
        with pytest.raises(PayloadError, match=name):
            pack(src, tmp_path / f"out_{src.name}")
        assert not (tmp_path / f"out_{src.name}").exists()
    with pytest.raises(PayloadError, match="positive number of MiB"):
        pack(src, tmp_path / "o", part_mib=float("nan"))

