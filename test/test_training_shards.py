"""Pre-tokenised shards: exact round trip (hypothesis), memory-mapped reader, refusal of
unfinished directories, and pre-tokenisation with real (tiny, untrained) tokenizers."""
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gst_ros.geometry import look_at, relative_pose
from gst_ros.models.io import save_model_dir
from gst_ros.models.tokenizer import CameraTokenizer, ImageTokenizer
from gst_ros.models.vq import VQConfig, VQModel
from training.datasets.sample import MultiViewSample
from training.token_shards import MANIFEST, ShardFormatError, ShardWriter, TokenShardDataset, collate


def _scene(rng, n_views, n_pairs, n, image_vocab, camera_vocab):
    img = rng.integers(0, image_vocab, (n_views, n))
    pairs = rng.integers(0, n_views, (n_pairs, 2))
    cams = rng.integers(0, camera_vocab, (n_pairs, n))
    rel = rng.standard_normal((n_pairs, 4, 4))
    K = rng.standard_normal((n_pairs, 3, 3))
    return img, pairs, cams, rel, K


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), grid=st.sampled_from([(1, 1), (2, 3), (4, 4)]),
       scenes=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 6)), min_size=1, max_size=6),
       vocab=st.sampled_from([(16, 8), (70000, 8)]), per_shard=st.integers(1, 9))
def test_round_trip(tmp_path_factory, seed, grid, scenes, vocab, per_shard):
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(seed)
    n = grid[0] * grid[1]
    written = []
    with ShardWriter(root, grid, *vocab, pairs_per_shard=per_shard, metadata={"note": "x"}) as w:
        for s, (nv, npairs) in enumerate(scenes):
            sc = _scene(rng, nv, npairs, n, *vocab)
            w.add_scene(f"scene{s}", f"cat{s % 2}", *sc)
            written.append(sc)
    ds = TokenShardDataset(root)
    assert ds.manifest["num_pairs"] == sum(p for _, p in scenes) == len(ds)
    assert ds.manifest["metadata"]["note"] == "x"
    assert ds.manifest["dtype"] == ("uint16" if vocab[0] <= 65536 else "int32")
    k = 0
    for s, (img, pairs, cams, rel, K) in enumerate(written):
        for p in range(len(pairs)):
            item = ds[k]
            assert item["scene"] == s and ds.scenes[s]["id"] == f"scene{s}"
            np.testing.assert_array_equal(item["observation"].numpy(), img[pairs[p, 0]])
            np.testing.assert_array_equal(item["image"].numpy(), img[pairs[p, 1]])
            np.testing.assert_array_equal(item["camera"].numpy(), cams[p])
            np.testing.assert_array_equal(item["rel_w2c"].numpy(), rel[p])
            np.testing.assert_array_equal(item["K"].numpy(), K[p])
            assert item["observation"].dtype == torch.int64
            k += 1


def test_reader_is_memory_mapped_and_collates(tmp_path):
    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path, (2, 2), 32, 16, pairs_per_shard=3) as w:
        for s in range(5):
            w.add_scene(f"s{s}", "c", *_scene(rng, 3, 2, 4, 32, 16))
    ds = TokenShardDataset(tmp_path)
    # a shard is flushed once it holds >= 3 pairs: scenes (0, 1), (2, 3), (4)
    assert [s["pairs"] for s in ds.manifest["shards"]] == [4, 4, 2]
    assert ds.locate(0) == (0, 0) and ds.locate(len(ds) - 1)[0] == 2
    _ = ds[len(ds) - 1]
    assert all(isinstance(a, np.memmap) for a in ds._maps[2].values())
    batch = collate([ds[i] for i in range(5)])
    assert batch["observation"].shape == (5, 4) and batch["rel_w2c"].shape == (5, 4, 4)
    assert batch["scene"].tolist() == [0, 0, 1, 1, 2]
    with pytest.raises(IndexError):
        ds[len(ds)]
    # a DataLoader with workers re-opens the maps in each worker (no memmap pickled)
    import pickle

    assert pickle.loads(pickle.dumps(ds))._maps == {}


def test_unfinished_or_inconsistent_directories_are_refused(tmp_path):
    w = ShardWriter(tmp_path / "a", (2, 2), 32, 16, pairs_per_shard=1)
    w.add_scene("s", "c", *_scene(np.random.default_rng(0), 2, 2, 4, 32, 16))  # shard 0 flushed, no manifest
    with pytest.raises(ShardFormatError, match="did not finish"):
        TokenShardDataset(tmp_path / "a")
    w.close()
    assert len(TokenShardDataset(tmp_path / "a")) == 2
    with pytest.raises(ShardFormatError, match="already holds"):
        ShardWriter(tmp_path / "a", (2, 2), 32, 16)
    (tmp_path / "a" / "shard_00000.cameras.npy").unlink()
    with pytest.raises(ShardFormatError, match="lacks cameras"):
        TokenShardDataset(tmp_path / "a")
    bad = ShardWriter(tmp_path / "b", (2, 2), 32, 16)
    img, pairs, cams, rel, K = _scene(np.random.default_rng(0), 2, 2, 4, 32, 16)
    with pytest.raises(ShardFormatError, match="image tokens outside"):
        bad.add_scene("s", "c", img + 32, pairs, cams, rel, K)
    with pytest.raises(ShardFormatError, match="pair indices"):
        bad.add_scene("s", "c", img, pairs + 5, cams, rel, K)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / MANIFEST).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ShardFormatError, match="format_version"):
        TokenShardDataset(tmp_path / "c")


# ------------------------------------------------------------------ pre-tokenisation

def tiny_tokenizers(root):
    """Untrained tiny tokenizers with 4x4 token grids saved as model directories."""
    torch.manual_seed(0)
    icfg = VQConfig(resolution=32, ch=16, ch_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=16,
                    codebook_size=64, codebook_embed_dim=4, norm_groups=8)
    ccfg = VQConfig(in_channels=6, out_channels=6, resolution=16, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                    z_channels=16, codebook_size=32, codebook_embed_dim=4, norm_groups=8)
    dirs = []
    for kind, cfg in (("image_tokenizer", icfg), ("camera_tokenizer", ccfg)):
        d = root / kind
        save_model_dir(d, kind, cfg, VQModel(cfg).state_dict())
        dirs.append(d)
    return dirs


class ListReader:
    """A reader over in-memory MultiViewSamples (None = a corrupt scene that raises)."""

    def __init__(self, samples):
        self.samples = samples
        self.skipped = 0

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        if self.samples[i] is None:
            raise ValueError("corrupt camera file")
        return self.samples[i]


def synthetic_samples(n_scenes, n_views, size=48, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_scenes):
        eyes = []
        for _ in range(n_views):
            az, el = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.8)
            eyes.append(2.0 * np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)]))
        w2c = np.stack([look_at(e, [0, 0, 0]) for e in eyes])
        c = (size - 1) / 2
        K = np.tile(np.array([[40.0, 0, c], [0, 40.0, c], [0, 0, 1]]), (n_views, 1, 1))
        imgs = rng.integers(0, 256, (n_views, size, size + 8, 3), dtype=np.uint8)  # not square: gets cropped
        out.append(MultiViewSample(imgs, K, w2c, scene_id=f"scene{s}", category="toy"))
    return out


def test_pretokenize_matches_tokenizers_and_counts_skips(tmp_path):
    from gst_ros.preprocess import center_crop_resize
    from training.pretokenize import pretokenize

    idir, cdir = tiny_tokenizers(tmp_path)
    itok, ctok = ImageTokenizer.from_dir(idir), CameraTokenizer.from_dir(cdir)
    samples = synthetic_samples(3, 4)
    one_view = MultiViewSample(samples[0].images[:1], samples[0].K[:1], samples[0].w2c[:1], scene_id="lonely")
    reader = ListReader([samples[0], None, samples[1], one_view, samples[2]])
    m = pretokenize(reader, itok, ctok, tmp_path / "shards", pairs_per_scene=5, seed=3,
                    metadata={"image_tokenizer": str(idir), "camera_tokenizer": str(cdir)}, progress=False)
    assert m["skipped"] == {"corrupt scene (ValueError)": 1, "fewer than 2 usable views": 1}
    assert m["num_pairs"] == 15 and [s["id"] for s in m["scenes"]] == ["scene0", "scene1", "scene2"]
    assert m["grid"] == [4, 4] and m["image_vocab"] == 64 and m["camera_vocab"] == 32
    ds = TokenShardDataset(tmp_path / "shards")
    # decode back: the stored tokens are exactly what the tokenizers give for that pair
    shard, row = ds.locate(7)
    pairs = ds._shard(shard)["pairs"]
    item = ds[7]
    sample = samples[item["scene"]]
    scene_start = sum(s["views"] for s in m["scenes"][: item["scene"]])
    a, b = (int(v) - scene_start for v in pairs[row])
    assert a != b
    crop_a, _ = center_crop_resize(sample.images[a], sample.K[a], 32)
    crop_b, K_b = center_crop_resize(sample.images[b], sample.K[b], 32)
    np.testing.assert_array_equal(item["observation"].numpy(), itok.encode(crop_a).reshape(-1).numpy())
    np.testing.assert_array_equal(item["image"].numpy(), itok.encode(crop_b).reshape(-1).numpy())
    np.testing.assert_allclose(item["K"].numpy(), K_b)
    rel = item["rel_w2c"].numpy()
    # same rotation as the raw relative pose; translation rescaled (observation 1 from the centre)
    np.testing.assert_allclose(rel[:3, :3], relative_pose(sample.w2c[a], sample.w2c[b])[:3, :3], atol=1e-9)
    assert np.linalg.norm(sample.w2c[a][:3, 3]) == pytest.approx(2.0)
    raw_t = relative_pose(sample.w2c[a], sample.w2c[b])[:3, 3]
    np.testing.assert_allclose(rel[:3, 3], raw_t / 2.0, atol=1e-6)
    np.testing.assert_array_equal(item["camera"].numpy(),
                                  ctok.encode(K_b, rel, image_size=32).reshape(-1).numpy())
    # the same seed draws the same pairs
    m2 = pretokenize(ListReader(samples), itok, ctok, tmp_path / "again", pairs_per_scene=5, seed=3,
                     progress=False)
    ds2 = TokenShardDataset(tmp_path / "again")
    assert m2["num_pairs"] == 15
    np.testing.assert_array_equal(ds2[7]["camera"].numpy(), item["camera"].numpy())


def test_siblings_are_other_targets_of_the_same_observation(tmp_path):
    """siblings=True: each pair also carries the camera of the next pair (cyclically, in row
    order) with the same observation view; a pair whose observation has no other target carries
    its own camera and has_sibling False. Scenes never share views, so neither do siblings."""
    n = 4
    views = np.arange(4 * n).reshape(4, n)
    pairs = np.array([[0, 1], [2, 3], [0, 2], [1, 0], [0, 3]])  # view 0 observes three targets
    cams = np.arange(5)[:, None] * np.ones(n, dtype=np.int64)
    with ShardWriter(tmp_path, (2, 2), 64, 8, pairs_per_shard=64) as w:
        for s in range(2):
            w.add_scene(f"s{s}", "toy", views, pairs, cams, np.tile(np.eye(4), (5, 1, 1)),
                        np.tile(np.eye(3), (5, 1, 1)))
    plain = TokenShardDataset(tmp_path)
    assert "sibling_camera" not in plain[0] and "has_sibling" not in collate([plain[0], plain[1]])
    data = TokenShardDataset(tmp_path, siblings=True)
    # pairs 0, 2, 4 observe view 0: 0 -> 2 -> 4 -> 0; pairs 1 and 3 are alone with their observation
    for s in range(2):
        got = [(int(data[5 * s + i]["sibling_camera"][0]), data[5 * s + i]["has_sibling"]) for i in range(5)]
        assert got == [(2, True), (1, False), (4, True), (3, False), (0, True)]
    batch = collate([data[i] for i in range(5)])
    assert batch["sibling_camera"].shape == (5, n) and batch["has_sibling"].tolist() == [True, False, True,
                                                                                        False, True]
    assert torch.equal(batch["observation"], collate([plain[i] for i in range(5)])["observation"])
