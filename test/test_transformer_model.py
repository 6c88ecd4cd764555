"""The GST transformer: parameter counts, RoPE, KV cache equivalence, init, overfitting."""
import time

import pytest
import torch

from gst_ros.geometry.rotations import rotation_from_covariance
from gst_ros.models.sequence import Layout, make_batch, masked_cross_entropy
from gst_ros.models.transformer import (
    GST,
    GSTConfig,
    apply_rope,
    count_parameters,
    gst_config,
    rope_table,
)


def _random_model(cfg: GSTConfig, seed: int = 0) -> GST:
    torch.manual_seed(seed)
    m = GST(cfg)
    with torch.no_grad():
        m.output.weight.normal_(0, 0.5)  # the zero-initialised head would make every logit 0
        for layer in m.layers:  # non-trivial QK-Norm affine parameters
            layer.attention.q_norm.weight.uniform_(0.5, 1.5)
            layer.attention.k_norm.bias.normal_(0, 0.1)
    return m.eval()


def _meta_count(cfg: GSTConfig) -> int:
    with torch.device("meta"):
        return count_parameters(GST(cfg))


def test_parameter_counts_of_paper_sizes():
    # XXL with GST's vocabulary (18434): 1.416B (within 1%)
    assert abs(_meta_count(gst_config("XXL")) - 1.416e9) / 1.416e9 < 0.01
    # B/L/XL with LlamaGen's c2i vocabulary: 16384 image codes + 1001 class rows -> 111M / 343M / 775M
    for name, expected in [("B", 111e6), ("L", 343e6), ("XL", 775e6)]:
        cfg = gst_config(name, image_vocab=16384, camera_vocab=0)
        n = _meta_count(cfg) + 1001 * cfg.dim
        assert abs(n - expected) / expected < 0.01, (name, n)


def test_config_rules_and_presets():
    assert gst_config("B").ffn_hidden == 2048
    assert gst_config("XXL").ffn_hidden == 4096
    assert gst_config("XXL").head_dim == 64
    assert gst_config("B").vocab_size == 18434 and gst_config("B").max_seq_len == 769
    tiny = gst_config("tiny")
    assert tiny.grid == (8, 8) and tiny.max_seq_len == 193
    assert gst_config("tiny", grid=[4, 4]).grid == (4, 4)
    with pytest.raises(ValueError, match="preset"):
        gst_config("huge")
    with pytest.raises(ValueError, match="n_head"):
        GSTConfig(dim=100, n_head=3)


def test_initialisation_and_state_dict_names():
    torch.manual_seed(0)
    m = GST(gst_config("tiny"))
    assert bool((m.output.weight == 0).all())
    std = m.layers[0].feed_forward.w1.weight.std().item()
    assert 0.018 < std < 0.022
    assert bool((m.layers[0].attention.q_norm.weight == 1).all())
    sd = m.state_dict()
    assert "rope" not in sd and "causal_mask" not in sd
    assert {"tok_embeddings.weight", "norm.weight", "output.weight", "layers.1.attention.wqkv.weight",
            "layers.1.attention.k_norm.bias", "layers.1.feed_forward.w3.weight"} <= set(sd)
    # no biases anywhere but in the QK LayerNorms
    assert all(k.endswith(("q_norm.bias", "k_norm.bias")) for k in sd if k.endswith("bias"))


def test_rope_relative_position_invariance():
    head_dim = 64
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, head_dim, generator=g)
    k = torch.randn(1, 1, 1, head_dim, generator=g)

    def score(pq, pk):
        t = rope_table(torch.tensor([pq[0], pk[0]]), torch.tensor([pq[1], pk[1]]), head_dim)
        qr = apply_rope(q, t[:1])
        kr = apply_rope(k, t[1:])
        return (qr * kr).sum().item()

    base = score((2, 3), (5, 1))
    for shift in [(1, 0), (0, 4), (7, 9), (-2, -1)]:
        s = score((2 + shift[0], 3 + shift[1]), (5 + shift[0], 1 + shift[1]))
        assert s == pytest.approx(base, abs=1e-4)
    # it does depend on the offset, on both axes
    assert abs(score((2, 3), (6, 1)) - base) > 1e-3
    assert abs(score((2, 3), (5, 2)) - base) > 1e-3
    # rotation preserves norms; row pairs use the first half of the pairs
    t = rope_table(torch.tensor([3]), torch.tensor([0]), head_dim)
    assert torch.allclose(apply_rope(q, t).norm(), q.norm(), atol=1e-5)
    assert bool((t[0, head_dim // 4:, 0] == 1).all()) and bool((t[0, : head_dim // 4, 1] != 0).any())


def test_task_token_rope_choices():
    m = GST(gst_config("tiny", grid=(2, 2)))
    ti = m.config.layout.task_index
    assert torch.equal(m.rope[ti], m.rope[0])  # identity: same as grid position (0, 0)
    assert bool((m.rope[ti, :, 0] == 1).all()) and bool((m.rope[ti, :, 1] == 0).all())
    z = GST(gst_config("tiny", grid=(2, 2), task_token_rope="zero"))
    assert bool((z.rope[ti] == 0).all())
    assert torch.equal(m.rope[ti + 1: ti + 5], m.rope[:4])  # first segment reuses the grid


@pytest.mark.parametrize("options", [{}, {"segment_embedding": True},
                                     {"image_code_dim": 8, "camera_code_dim": 4},
                                     {"image_code_dim": 8, "camera_code_dim": 4,
                                      "aligned_observation": True},
                                     {"image_code_dim": 8, "camera_code_dim": 4, "aligned_observation": True,
                                      "aligned_camera": True}])
@pytest.mark.parametrize("task", ["gen", "est"])
def test_kv_cache_matches_full_forward(task, options):
    cfg = gst_config("tiny", grid=(4, 4), **options)
    m = _random_model(cfg)
    if cfg.image_code_dim:
        g = torch.Generator().manual_seed(2)
        m.set_codebooks(torch.randn(cfg.image_vocab, 8, generator=g),
                        torch.randn(cfg.camera_vocab, 4, generator=g))
    if cfg.aligned_observation:  # zero at init: make it count
        with torch.no_grad():
            m.aligned_proj.weight.normal_(0, 0.5)
    if cfg.aligned_camera:
        with torch.no_grad():
            m.aligned_camera_proj.weight.normal_(0, 0.5)
    lay, voc = cfg.layout, cfg.vocabulary
    g = torch.Generator().manual_seed(1)
    b = 2
    obs = torch.randint(0, voc.image_vocab, (b, lay.n), generator=g)
    img = torch.randint(0, voc.image_vocab, (b, lay.n), generator=g)
    cam = torch.randint(0, voc.camera_vocab, (b, lay.n), generator=g)
    seq = make_batch(voc, lay, obs, img, cam, task).input_ids  # (B, 3n)
    with torch.no_grad():
        full = m(seq)
        m.setup_caches(b)
        p = lay.n + 1 + lay.n  # prefix [o, task, first segment] in one pass
        parts = [m(seq[:, :p], input_pos=torch.arange(p))]
        for i in range(p, seq.shape[1]):
            parts.append(m(seq[:, i: i + 1], input_pos=torch.tensor([i])))
        m.clear_caches()
    inc = torch.cat(parts, dim=1)
    assert full.abs().max() > 0.1  # logits are not trivial
    assert (full - inc).abs().max().item() < 1e-4


def test_kv_cache_under_bf16_autocast_matches_the_full_pass():
    """Cached decoding under bf16 autocast (what GSTEngine runs on CUDA) keeps the fp32 cache and
    follows the full bf16 pass: keys and values arrive in bf16 and are stored in the cache's dtype
    (writing them raised "Index put requires the source and destination dtypes match" before)."""
    cfg = gst_config("tiny", grid=(2, 2))
    m = _random_model(cfg)
    lay, voc = cfg.layout, cfg.vocabulary
    g = torch.Generator().manual_seed(3)
    obs, img, cam = (torch.randint(0, v, (2, lay.n), generator=g)
                     for v in (voc.image_vocab, voc.image_vocab, voc.camera_vocab))
    seq = make_batch(voc, lay, obs, img, cam, "gen").input_ids
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = m(seq).float()
        m.setup_caches(2)
        p = lay.n + 1
        parts = [m(seq[:, :p], input_pos=torch.arange(p)).float()]
        for i in range(p, seq.shape[1]):
            parts.append(m(seq[:, i: i + 1], input_pos=torch.tensor([i])).float())
        assert m.layers[0].attention.kv_cache.k.dtype == torch.float32
        m.clear_caches()
    inc = torch.cat(parts, dim=1)
    assert full.abs().max() > 0.1
    torch.testing.assert_close(inc, full, atol=0.1, rtol=0.0)  # bf16 rounding, not a wrong cache


def test_segment_embedding_tells_observation_from_target():
    """With segment_embedding the same image code at the same grid cell enters the network
    differently in the observation and in a segment (RoPE alone gives them the same position);
    without it the model has no such parameter and the paper's state dict is unchanged."""
    plain = GST(gst_config("tiny", grid=(2, 2)))
    assert not any(k.startswith("seg_embeddings") for k in plain.state_dict())
    torch.manual_seed(0)
    m = GST(gst_config("tiny", grid=(2, 2), segment_embedding=True)).eval()
    assert m.state_dict()["seg_embeddings.weight"].shape == (3, m.config.dim)
    assert m.segment_ids.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    seen = {}
    m.layers[0].attention_norm.register_forward_hook(lambda mod, inp, out: seen.update(h=inp[0]))
    vocab = m.config.vocabulary
    cams = (vocab.camera_offset + torch.arange(4)).tolist()
    seq = torch.tensor([[5, 6, 7, 8, vocab.est_token, 5, 6, 7, 8, *cams]])
    with torch.no_grad():
        m(seq)
    h = seen["h"][0]
    diff = (h[5] - h[0]) - (m.seg_embeddings.weight[1] - m.seg_embeddings.weight[0])
    assert diff.abs().max() < 1e-6  # same code, same cell: differs by exactly the segment embedding
    assert (h[5] - h[0]).abs().max() > 1e-3


def test_codebook_features_enter_codes_by_what_they_look_like():
    """With image/camera_code_dim the input embedding of a code is its (zero-initialised) row plus a
    learned map of its frozen codebook vector: codes with near-identical codebook vectors enter
    near-identically, far ones far; task tokens are untouched; the buffers live in the state dict
    (so a model directory carries them) and only when enabled; bad codebooks are refused by name."""
    import torch.nn.functional as F

    plain = GST(gst_config("tiny", grid=(2, 2)))
    assert not any("codebook" in k or "code_proj" in k for k in plain.state_dict())
    torch.manual_seed(0)
    cfg = gst_config("tiny", grid=(2, 2), image_code_dim=8, camera_code_dim=4)
    m = GST(cfg)
    vocab = cfg.vocabulary
    sd = m.state_dict()
    assert sd["image_codebook"].shape == (cfg.image_vocab, 8)
    assert sd["camera_codebook"].shape == (cfg.camera_vocab, 4)
    assert sd["image_code_proj.weight"].shape == (cfg.dim, 8)
    assert m.tok_embeddings.weight[: vocab.gen_token].abs().max() == 0  # code rows start at zero
    assert m.tok_embeddings.weight[vocab.gen_token:].abs().min() > 0     # task tokens: plain init
    g = torch.Generator().manual_seed(3)
    img = torch.randn(cfg.image_vocab, 8, generator=g)
    img[1] = img[0] * 3.0 + 0.01          # same direction as code 0 (the buffers are L2-normalised)
    img[2] = -img[0]
    cam = torch.randn(cfg.camera_vocab, 4, generator=g)
    m.set_codebooks(img, cam)
    assert torch.allclose(m.image_codebook, F.normalize(img, dim=-1))
    ids = torch.tensor([[0, 1, 2, vocab.camera_offset + 5, vocab.est_token]])
    with torch.no_grad():
        h = m.embed(ids)[0]
    assert (h[0] - h[1]).norm() < 0.05 * (h[0] - h[2]).norm()
    expected_cam = m.camera_code_proj(F.normalize(cam[5], dim=-1))
    assert torch.allclose(h[3], expected_cam, atol=1e-6)
    assert torch.equal(h[4], m.tok_embeddings.weight[vocab.est_token])
    with pytest.raises(ValueError, match="camera codebook has shape"):
        m.set_codebooks(camera_codebook=cam[:5])
    with pytest.raises(ValueError, match="non-finite"):
        m.set_codebooks(img.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="no image codebook features"):
        plain.set_codebooks(img)
    with pytest.raises(ValueError, match="code dims"):
        gst_config("tiny", image_code_dim=-1)


def test_forward_errors():
    m = GST(gst_config("tiny", grid=(2, 2)))
    with pytest.raises(ValueError, match="token ids"):
        m(torch.tensor([[0, 10_000]]))
    with pytest.raises(RuntimeError, match="setup_caches"):
        m(torch.tensor([[0]]), input_pos=torch.tensor([0]))
    with pytest.raises(ValueError, match="exceeds"):
        m(torch.zeros(1, 14, dtype=torch.long))


def test_dropout_active_in_training_only():
    m = GST(gst_config("tiny", grid=(2, 2)))
    with torch.no_grad():
        m.output.weight.normal_()
    x = torch.randint(0, 100, (1, 13))
    m.train()
    a, b = m(x), m(x)
    assert not torch.allclose(a, b)
    m.eval()
    assert torch.equal(m(x), m(x))


def test_tiny_model_overfits_a_few_sequences():
    torch.manual_seed(0)
    cfg = gst_config("tiny", grid=(4, 4), image_vocab=64, camera_vocab=32,
                     token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0)
    lay, voc = cfg.layout, cfg.vocabulary
    m = GST(cfg)
    g = torch.Generator().manual_seed(0)
    k = 4
    obs = torch.randint(0, 64, (k, lay.n), generator=g)
    img = torch.randint(0, 64, (k, lay.n), generator=g)
    cam = torch.randint(0, 32, (k, lay.n), generator=g)
    tasks = torch.tensor([0, 1, 0, 1])
    batch = make_batch(voc, lay, obs.repeat(2, 1), img.repeat(2, 1), cam.repeat(2, 1),
                       torch.cat([tasks, 1 - tasks]))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    t0 = time.perf_counter()
    loss = _overfit_steps(m, opt, batch, 300)
    elapsed = time.perf_counter() - t0  # informative only; no timed assertion
    first = loss[0]
    assert first > 3.0  # starts near ln(vocab)
    assert loss[-1] < 0.05, f"final loss {loss[-1]:.3f} after {len(loss)} steps, {elapsed:.1f}s"


def _overfit_steps(m, opt, batch, max_steps):
    losses = []
    for _ in range(max_steps):
        loss = masked_cross_entropy(m(batch.input_ids), batch.targets, batch.loss_mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < 0.02:
            break
    return losses


def test_bf16_forward_runs_and_is_close():
    m = _random_model(gst_config("tiny", grid=(2, 2)))
    x = torch.randint(0, 500, (2, 13))
    ref = m(x)
    out = m.to(torch.bfloat16)(x)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() < 0.1 * ref.abs().max().item()


def test_layout_matches_config():
    assert gst_config("B").layout == Layout(16, 16)


def test_pose_head_reads_the_first_camera_token_input():
    """return_heads gives the head's (B, 3, 3) output at input index 2n, which depends on the
    tokens up to 2n and on none after it (causal); without a head, or with a KV cache, it is an
    error that says so."""
    cfg = gst_config("tiny", grid=(2, 2), pose_head=True, token_dropout=0.0, resid_dropout=0.0,
                     ffn_dropout=0.0)
    torch.manual_seed(0)
    model = GST(cfg).eval()
    n = cfg.layout.n
    idx = torch.randint(0, cfg.image_vocab, (2, 3 * n))
    logits, readout = model(idx, return_heads=True)
    pose = readout.rotation
    assert logits.shape == (2, 3 * n, cfg.vocab_size) and pose.shape == (2, 3, 3)
    assert readout.center is None and readout.center_log_var is None  # no centre head
    later = idx.clone()
    later[:, 2 * n + 1:] = 0
    torch.testing.assert_close(model(later, return_heads=True)[1].rotation, pose)
    earlier = idx.clone()
    earlier[:, 2 * n] = (idx[:, 2 * n] + 1) % cfg.image_vocab
    assert not torch.allclose(model(earlier, return_heads=True)[1].rotation, pose)
    torch.testing.assert_close(model.read_heads(idx).rotation, pose)  # the same pass without token logits
    with pytest.raises(ValueError, match="full training prefix"):
        model(idx[:, : 2 * n], return_heads=True)
    with pytest.raises(ValueError, match="full training prefix"):
        model.read_heads(idx[:, : 2 * n])
    model.setup_caches(2, max_seq_len=3 * n)  # a cached decoding step has no heads to read
    with pytest.raises(ValueError, match="not a cached decoding step"):
        model(idx[:, :1], input_pos=torch.tensor([0]), return_heads=True)
    model.clear_caches()
    with pytest.raises(ValueError, match="a pose head or a view head"):
        GST(gst_config("tiny", grid=(2, 2)))(idx, return_heads=True)


def test_view_head_reads_each_cell_from_its_camera_token():
    """The view head gives (B, n, image_vocab) logits, cell k read from the final state at input
    index n+1+k (in the <GEN> order the camera token of cell k): it depends on the tokens up to
    that index and on none after it. It starts at zero (uniform over the codes), adding it
    changes neither the token logits nor the pose head, and a model with only a view head gives
    no rotation."""
    base = dict(grid=(2, 2), pose_head=True, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0)
    torch.manual_seed(0)
    plain = GST(gst_config("tiny", **base)).eval()
    model = GST(gst_config("tiny", view_head=True, **base)).eval()
    model.load_state_dict({**model.state_dict(), **plain.state_dict()})
    n, vocab = model.config.layout.n, model.config.image_vocab
    idx = torch.randint(0, vocab, (3, 3 * n))
    logits, readout = model(idx, return_heads=True)
    ref_logits, ref = plain(idx, return_heads=True)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(readout.rotation, ref.rotation)
    assert ref.view_logits is None
    assert readout.view_logits.shape == (3, n, vocab)
    assert float(readout.view_logits.abs().max()) == 0.0
    torch.nn.init.normal_(model.view_head.weight)  # a trained head reads the states
    view = model(idx, return_heads=True)[1].view_logits
    alone = model.read_heads(idx)  # the same heads without the token logits
    torch.testing.assert_close(alone.view_logits, view)
    torch.testing.assert_close(alone.rotation, readout.rotation)
    pose_only = model.read_heads(idx, with_view_head=False)  # the pose read-out skips the view head
    assert pose_only.view_logits is None
    torch.testing.assert_close(pose_only.rotation, readout.rotation)
    later = idx.clone()
    later[:, n + 3:] = 0  # input indices n+3 onward: cells 2 and 3 change, cells 0 and 1 cannot
    moved = model(later, return_heads=True)[1].view_logits
    torch.testing.assert_close(moved[:, :2], view[:, :2])
    assert not torch.allclose(moved[:, 2:], view[:, 2:])
    only = GST(gst_config("tiny", grid=(2, 2), view_head=True)).eval()
    _, alone = only(idx, return_heads=True)
    assert alone.rotation is None and alone.view_logits.shape == (3, n, vocab)
    with pytest.raises(ValueError, match="without the view head needs a GST with a pose head"):
        only.read_heads(idx, with_view_head=False)


def test_center_head_reads_the_same_target_view_states():
    """A centre head gives (B, 3) centres and log-variances from the target view's states (causal
    like the pose head), the centre as a correction to the pose head rotation's object-centric
    placement that starts at zero; adding it leaves the logits and the pose head's output
    unchanged, and it cannot exist without a pose head."""
    base = dict(grid=(2, 2), pose_head=True, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0)
    torch.manual_seed(0)
    plain = GST(gst_config("tiny", **base)).eval()
    model = GST(gst_config("tiny", center_head=True, **base)).eval()
    state = {**model.state_dict(), **plain.state_dict()}
    model.load_state_dict(state)
    n = model.config.layout.n
    idx = torch.randint(0, model.config.image_vocab, (3, 3 * n))
    logits, readout = model(idx, return_heads=True)
    ref_logits, ref = plain(idx, return_heads=True)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(readout.rotation, ref.rotation)
    assert readout.center.shape == (3, 3) and readout.center_log_var.shape == (3, 3)
    # a fresh centre head adds nothing yet: the centre is the rotation's object-centric placement
    R = rotation_from_covariance(readout.rotation)
    torch.testing.assert_close(readout.center, torch.tensor([0.0, 0.0, 1.0]) - R[:, 2, :])
    torch.testing.assert_close(readout.center_log_var, torch.zeros(3, 3))
    later = idx.clone()
    later[:, 2 * n + 1:] = 0
    torch.testing.assert_close(model(later, return_heads=True)[1].center, readout.center)
    earlier = idx.clone()
    earlier[:, n + 1] = (idx[:, n + 1] + 1) % model.config.image_vocab
    torch.nn.init.normal_(model.center_head[-1].weight)  # a trained head reads the states too
    changed = model(earlier, return_heads=True)[1]
    assert not torch.allclose(changed.center_log_var, model(idx, return_heads=True)[1].center_log_var)
    with pytest.raises(ValueError, match="set pose_head too"):
        gst_config("tiny", grid=(2, 2), center_head=True)


def test_center_head_under_bf16_autocast():
    """A bf16-autocast pass (what a CUDA training step with precision bf16 runs) reads the centre
    like the fp32 pass: the rotation's placement is solved in float32 (SVD and det have no bf16
    kernels; this raised before). rotation_from_covariance of a bf16 matrix is the float32
    rotation of the same matrix."""
    torch.manual_seed(0)
    cfg = gst_config("tiny", grid=(2, 2), pose_head=True, center_head=True, token_dropout=0.0,
                     resid_dropout=0.0, ffn_dropout=0.0)
    model = GST(cfg).eval()
    n = cfg.layout.n
    idx = torch.randint(0, cfg.image_vocab, (4, 3 * n))
    _, ref = model(idx, return_heads=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, low = model(idx, return_heads=True)
    assert torch.isfinite(low.center).all()
    torch.testing.assert_close(low.center.float(), ref.center, atol=0.05, rtol=0.0)
    C = torch.randn(5, 3, 3).bfloat16()
    R = rotation_from_covariance(C)
    assert R.dtype == torch.float32
    torch.testing.assert_close(R, rotation_from_covariance(C.float()))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(5))


def test_aligned_observation_gives_each_target_token_the_observation_code_of_its_cell():
    """A target-view image token's input gains aligned_proj(codebook[observation code at the same
    grid cell]); observation, task token and camera tokens gain nothing; the map starts at zero
    (a model gaining it is unchanged at first); it needs codebook features; a decode step without
    a prefill from index 0 is an error."""
    with pytest.raises(ValueError, match="image_code_dim"):
        gst_config("tiny", grid=(2, 2), aligned_observation=True)
    cfg = gst_config("tiny", grid=(2, 2), image_code_dim=8, aligned_observation=True)
    m = GST(cfg)
    assert float(m.aligned_proj.weight.abs().sum()) == 0.0
    g = torch.Generator().manual_seed(0)
    m.set_codebooks(torch.randn(cfg.image_vocab, 8, generator=g))
    with torch.no_grad():
        m.aligned_proj.weight.normal_(0, 1.0, generator=g)
    n, voc = cfg.layout.n, cfg.vocabulary
    obs = torch.tensor([[3, 5, 7, 9]])
    img = torch.tensor([[11, 12, 13, 14]])
    cam = torch.tensor([[1, 2, 3, 4]])
    seq = make_batch(voc, cfg.layout, obs, img, cam, "est").input_ids  # [o, <EST>, i, c[:-1]]
    term = m.aligned_observation(seq, torch.arange(seq.shape[1]), obs)
    books = m.aligned_proj(m.image_codebook[obs[0]])  # (n, dim): the term of each cell
    torch.testing.assert_close(term[0, n + 1: 2 * n + 1], books)
    assert float(term[0, : n + 1].abs().sum()) == 0.0 and float(term[0, 2 * n + 1:].abs().sum()) == 0.0
    gen = make_batch(voc, cfg.layout, obs, img, cam, "gen").input_ids  # [o, <GEN>, c, i[:-1]]
    term = m.aligned_observation(gen, torch.arange(gen.shape[1]), obs)
    torch.testing.assert_close(term[0, 2 * n + 1:], books[: n - 1])
    assert float(term[0, : 2 * n + 1].abs().sum()) == 0.0
    m.setup_caches(1)
    with pytest.raises(RuntimeError, match="prefill the cache from index 0"):
        m(seq[:, n + 1: n + 2], input_pos=torch.tensor([n + 1]))
