"""training/camera_dependence.py: the per-cell camera's worth of a novel view."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from engine_fixtures import TINY_CAMERA, TINY_IMAGE, make_tiny_model

from gst_ros.engine.engine import EngineConfig, GSTEngine
from gst_ros.models.sequence import TASK_GEN, build_prefix
from training.camera_dependence import cell_nll, main, measure, pair_readings, summarize
from training.token_shards import ShardWriter, TokenShardDataset, collate

GRID = TINY_IMAGE.token_grid
N = GRID * GRID


def sibling_shards(root, scenes: int = 5, targets=2, seed: int = 0):
    """Shards of the tiny model's vocabulary: each scene's observation (view 0) with `targets`
    target views (an int, or one count per scene), so a pair has a sibling when its scene has
    two targets or more."""
    rng = np.random.default_rng(seed)
    counts = [targets] * scenes if isinstance(targets, int) else list(targets)
    with ShardWriter(root, (GRID, GRID), TINY_IMAGE.codebook_size, TINY_CAMERA.codebook_size,
                     pairs_per_shard=64) as w:
        for s, targets in enumerate(counts):
            views = rng.integers(0, TINY_IMAGE.codebook_size, (targets + 1, N))
            pairs = np.array([[0, t] for t in range(1, targets + 1)])
            cams = rng.integers(0, TINY_CAMERA.codebook_size, (targets, N))
            w.add_scene(f"s{s}", "toy", views, pairs, cams, np.tile(np.eye(4), (targets, 1, 1)),
                        np.tile(np.eye(3), (targets, 1, 1)))


def test_cell_nll_is_each_cells_next_token_loss(tmp_path):
    """Cell k's NLL equals -log p(i_k | o, <GEN>, c, i_<k) read from a separate pass over the
    prefix that ends before cell k (full-vocabulary softmax, as the trainer's image NLL)."""
    engine = GSTEngine(EngineConfig(model_dir=str(make_tiny_model(tmp_path, seed=2)), device="cpu"))
    model = engine.model
    sibling_shards(tmp_path / "shards", scenes=2)
    tokens = collate([TokenShardDataset(tmp_path / "shards")[i] for i in range(3)])
    nll = cell_nll(model, tokens, tokens["camera"], torch.device("cpu"))
    assert nll.shape == (3, N) and bool((nll > 0).all())
    vocab = model.config.vocabulary
    prefix = build_prefix(vocab, model.config.layout, tokens["observation"], TASK_GEN,
                          given=tokens["camera"])
    with torch.inference_mode():
        for k in (0, 5, N - 1):
            seq = torch.cat([prefix, tokens["image"][:, :k]], dim=1)
            logp = torch.log_softmax(model(seq)[:, -1].double(), dim=-1)
            want = -logp.gather(1, tokens["image"][:, k: k + 1])[:, 0]
            torch.testing.assert_close(nll[:, k], want, atol=1e-4, rtol=1e-4)


def test_a_model_that_ignores_its_camera_has_no_camera_worth(tmp_path):
    """With every camera code embedded alike the view cannot depend on the camera: the gain is 0
    at every cell and the own camera wins half the two-way choices (ties); a model that reads
    its camera gives a non-zero gain map."""
    engine = GSTEngine(EngineConfig(model_dir=str(make_tiny_model(tmp_path, seed=1)), device="cpu"))
    model = engine.model
    sibling_shards(tmp_path / "shards", scenes=6, targets=3)
    data = TokenShardDataset(tmp_path / "shards", siblings=True)
    reading = measure(model, data, pairs=12, batch=5, seed=0, device=torch.device("cpu"), progress=False)
    assert reading["own"].shape == (12, N) and len(set(reading["index"].tolist())) == 12
    assert float(np.abs(reading["sibling"] - reading["own"]).max()) > 1e-3
    vocab = model.config.vocabulary
    with torch.no_grad():
        cams = slice(vocab.camera_offset, vocab.camera_offset + vocab.camera_vocab)
        model.tok_embeddings.weight[cams] = model.tok_embeddings.weight[vocab.camera_offset]
        if model.camera_code_proj is not None:  # codebook features of the camera codes, alike too
            model.camera_codebook[:] = model.camera_codebook[0]
    blind = summarize(measure(model, data, pairs=12, batch=5, seed=0, device=torch.device("cpu"),
                              progress=False), (GRID, GRID))
    assert blind["pairs"] == 12 and len(blind["gain_per_cell"]) == N
    assert max(abs(g) for g in blind["gain_per_cell"]) < 1e-5
    assert blind["own_wins"] == 0.5  # every pair a tie


def test_only_pairs_with_a_sibling_are_read(tmp_path):
    """Scenes with one target give pairs without a sibling: they are skipped, and every pair
    read is one of the scenes with two targets."""
    engine = GSTEngine(EngineConfig(model_dir=str(make_tiny_model(tmp_path, seed=5)), device="cpu"))
    sibling_shards(tmp_path / "shards", scenes=6, targets=[1, 2, 1, 2, 1, 1])
    data = TokenShardDataset(tmp_path / "shards", siblings=True)
    assert len(data) == 8
    reading = measure(engine.model, data, pairs=100, batch=3, seed=1, device=torch.device("cpu"),
                      progress=False)
    assert sorted(reading["scene"].tolist()) == [1, 1, 3, 3]
    assert all(bool(data[int(i)]["has_sibling"]) for i in reading["index"])


def test_summary_reads_a_known_reading():
    """On a (2, 3) grid: per-cell means in row-major order, the first row averaged apart from the
    rest, the per-view gain the sum over cells, and own_wins counting a view likelier under its
    own camera 1, under the sibling's 0 and a tie (within TIE_NATS) half."""
    own = np.full((3, 6), 1.0)
    sib = np.array([[1.6, 1.0, 1.0, 1.0, 1.0, 1.0],    # +0.6: own camera wins
                    [1.0, 1.0, 1.0, 1.0, 1.0, 0.7],    # -0.3: the sibling wins
                    [1.2, 1.0, 1.0, 0.8, 1.0, 1.0]])   # 0 (a tie)
    s = summarize({"own": own, "sibling": sib}, (2, 3))
    assert s["gain_per_cell"] == pytest.approx([0.8 / 3, 0, 0, -0.2 / 3, 0, -0.1])
    assert s["gain_per_view"] == pytest.approx(0.1) and s["gain_per_token"] == pytest.approx(0.3 / 18)
    assert s["gain_first_row_per_token"] == pytest.approx(0.8 / 9)
    assert s["gain_other_rows_per_token"] == pytest.approx(-0.5 / 9)
    assert s["nll_own_per_token"] == 1.0 and s["nll_sibling_per_token"] == pytest.approx(1 + 0.3 / 18)
    assert s["own_wins"] == pytest.approx(0.5)  # (1 + 0 + 0.5) / 3
    gain_view, wins = pair_readings({"own": own, "sibling": sib})
    assert gain_view == pytest.approx([0.6, -0.3, 0.0], abs=1e-12) and wins.tolist() == [1.0, 0.0, 0.5]


def test_cli_writes_the_map_and_refuses_shards_without_siblings(tmp_path):
    model_dir = make_tiny_model(tmp_path, seed=0)
    sibling_shards(tmp_path / "shards", scenes=4)
    out = tmp_path / "out"
    assert main(["--model", str(model_dir), "--shards", str(tmp_path / "shards"), "--pairs", "6",
                 "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 6 and summary["grid"] == [GRID, GRID]
    cells = (out / "cells.csv").read_text().splitlines()
    assert cells[0] == "row,col,nll_own,nll_sibling,gain" and len(cells) == 1 + N
    rows = [line.split(",") for line in (out / "pairs.csv").read_text().splitlines()[1:]]
    assert len(rows) == 6
    for _, _, own, sib, gain, win in rows:  # each pair's columns agree with one another
        assert float(gain) == pytest.approx(float(sib) - float(own), abs=2e-4)
        assert float(win) in (0.0, 0.5, 1.0)
        if abs(float(gain)) > 1e-3:
            assert float(win) == float(float(gain) > 0)
    assert np.mean([float(r[5]) for r in rows]) == pytest.approx(summary["own_wins"])
    assert (out / "camera_dependence.png").stat().st_size > 1000
    sibling_shards(tmp_path / "single", scenes=3, targets=1)
    with pytest.raises(ValueError, match="no pair has a sibling"):
        main(["--model", str(model_dir), "--shards", str(tmp_path / "single"), "--device", "cpu",
              "--out", str(tmp_path / "o2"), "--no-progress"])
