"""Sampling with KV cache and CFG, and the four tasks (gst_ros.engine.generation)."""
import pytest
import torch

from gst_ros.engine.generation import (
    SamplingConfig,
    estimate_pose,
    generate_segments,
    novel_view,
    pose_log_likelihood,
    propose_cameras,
    sample_logits,
    unconditional_view,
)
from gst_ros.models.sequence import build_prefix, make_batch
from gst_ros.models.transformer import GST, gst_config


def _model(grid=(3, 3), seed=0):
    torch.manual_seed(seed)
    m = GST(gst_config("tiny", grid=grid, image_vocab=40, camera_vocab=20))
    with torch.no_grad():
        m.output.weight.normal_(0, 1.0)
    return m.eval()


def _obs(b, n, seed=0, hi=40):
    return torch.randint(0, hi, (b, n), generator=torch.Generator().manual_seed(seed))


def test_sample_logits_respects_allowed_top_k_and_top_p():
    g = torch.Generator().manual_seed(0)
    allowed = torch.zeros(10, dtype=torch.bool)
    allowed[3:6] = True
    logits = torch.zeros(500, 10)
    logits[:, 0] = 50.0  # overwhelmingly likely, but illegal
    s = sample_logits(logits, allowed, SamplingConfig(top_k=None), g)
    assert set(s.tolist()) == {3, 4, 5}
    logits = torch.tensor([[0.0, 0, 0, 3.0, 2.0, 1.0, 0, 0, 0, 0]]).repeat(2000, 1)
    s = sample_logits(logits, allowed, SamplingConfig(top_k=2), g)
    assert set(s.tolist()) == {3, 4}
    # probabilities over {3,4,5} are 0.665, 0.245, 0.090: top_p 0.8 keeps {3, 4}, 0.5 keeps {3}
    s = sample_logits(logits, allowed, SamplingConfig(top_k=None, top_p=0.8), g)
    assert set(s.tolist()) == {3, 4}
    s = sample_logits(logits, allowed, SamplingConfig(top_k=None, top_p=0.5), g)
    assert set(s.tolist()) == {3}
    s = sample_logits(logits[:1], allowed, SamplingConfig(temperature=0), g)
    assert s.tolist() == [3]
    # temperature: frequencies follow softmax(logits / T)
    s = sample_logits(logits, allowed, SamplingConfig(top_k=None, temperature=1.0), g)
    assert abs((s == 3).float().mean().item() - 0.665) < 0.04


def test_sampling_config_validation():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1)


def test_illegal_tokens_never_sampled_in_a_segment():
    m = _model()
    n = m.config.layout.n
    voc = m.config.vocabulary
    with torch.no_grad():
        # a large constant feature 0 in every embedding reaches the head; rows that read it get a
        # large logit: task tokens the largest, then image codes (illegal in a camera segment)
        m.tok_embeddings.weight[:, 0] += 10.0
        m.output.weight[:, 0] = 0.0
        m.output.weight[voc.gen_token:, 0] = 8.0
        m.output.weight[: voc.image_vocab, 0] = 4.0
    obs = _obs(64, n)
    with torch.no_grad():  # unmasked, the model would pick a task token
        raw = m(build_prefix(voc, m.config.layout, obs, "gen"))[:, -1]
    assert bool((raw.argmax(-1) >= voc.gen_token).all())
    cam_logits = raw[:, voc.camera_offset: voc.gen_token]
    assert bool((raw[:, : voc.image_vocab].max(-1).values > cam_logits.max(-1).values).all())
    sc = SamplingConfig(temperature=2.0, top_k=None)
    g = torch.Generator().manual_seed(0)
    cams, views = propose_cameras(m, obs, sc, g, with_views=True)
    assert cams.min() >= 0 and cams.max() < voc.camera_vocab
    assert views.min() >= 0 and views.max() < voc.image_vocab
    # not degenerate: many different legal codes are drawn
    assert len(set(cams.flatten().tolist())) > 10 and len(set(views.flatten().tolist())) > 20
    c = estimate_pose(m, obs, _obs(64, n, seed=1), sc, g)
    assert c.min() >= 0 and c.max() < voc.camera_vocab
    ids = generate_segments(m, build_prefix(voc, m.config.layout, obs, "gen"), ["camera", "image"], sc, g)
    assert bool((ids[:, :n] >= voc.camera_offset).all() & (ids[:, :n] < voc.gen_token).all())
    assert bool((ids[:, n:] < voc.image_vocab).all())


def test_reproducible_with_seed_and_cache_equals_recompute():
    m = _model()
    obs = _obs(3, m.config.layout.n)
    sc = SamplingConfig(temperature=1.0, top_k=10)
    a = propose_cameras(m, obs, sc, torch.Generator().manual_seed(5), with_views=True)
    b = propose_cameras(m, obs, sc, torch.Generator().manual_seed(5), with_views=True)
    c = propose_cameras(m, obs, sc, torch.Generator().manual_seed(5), with_views=True, use_kv_cache=False)
    d = propose_cameras(m, obs, sc, torch.Generator().manual_seed(6), with_views=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    assert not torch.equal(a[1], d[1])


def test_shared_prefix_prefilled_once_gives_the_same_samples():
    """Several samples of one query (the engine's pose estimate): the prefix is prefilled once and
    its KV cache repeated, which must sample exactly what recomputing every row does, also with
    the aligned observation input (whose remembered observation is repeated too)."""
    torch.manual_seed(0)
    m = GST(gst_config("tiny", grid=(3, 3), image_vocab=40, camera_vocab=20, image_code_dim=4,
                       aligned_observation=True, segment_embedding=True))
    with torch.no_grad():
        m.output.weight.normal_(0, 1.0)
        m.image_codebook.normal_()
        m.aligned_proj.weight.normal_(0, 1.0)
    m.eval()
    n = m.config.layout.n
    obs, img = _obs(1, n), _obs(1, n, seed=1)
    sc = SamplingConfig(temperature=4.0, top_k=None)
    shared = estimate_pose(m, obs.expand(6, -1), img.expand(6, -1), sc, torch.Generator().manual_seed(3))
    recomputed = estimate_pose(m, obs.expand(6, -1), img.expand(6, -1), sc, torch.Generator().manual_seed(3),
                               use_kv_cache=False)
    assert torch.equal(shared, recomputed)
    assert len({tuple(r) for r in shared.tolist()}) > 1  # the rows decode apart after the prefix
    # rows with different prefixes are not shared: still the per-row result
    two = torch.cat([obs, _obs(1, n, seed=2)])
    a = estimate_pose(m, two, img.expand(2, -1), sc, torch.Generator().manual_seed(4))
    b = estimate_pose(m, two, img.expand(2, -1), sc, torch.Generator().manual_seed(4), use_kv_cache=False)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="batch-1 cache"):
        m.setup_caches(2)
        m.repeat_caches(3)
    m.clear_caches()


def test_cfg_scale_one_equals_conditional_sampling():
    m = _model()
    n = m.config.layout.n
    obs, cam = _obs(4, n), _obs(4, n, seed=2, hi=20)
    plain = novel_view(m, obs, cam, SamplingConfig(top_k=20), torch.Generator().manual_seed(9))
    cfg1 = novel_view(m, obs, cam, SamplingConfig(top_k=20, cfg_scale=1.0), torch.Generator().manual_seed(9))
    assert torch.equal(plain, cfg1)
    cfg3 = novel_view(m, obs, cam, SamplingConfig(top_k=20, cfg_scale=3.0), torch.Generator().manual_seed(9))
    assert not torch.equal(plain, cfg3)


def test_cfg_uses_null_condition_logits():
    """Greedy CFG with scale 0 must equal greedy sampling from the null condition (obs = 0)."""
    m = _model()
    n = m.config.layout.n
    obs = _obs(2, n, seed=3)
    g = torch.Generator()
    greedy_u = unconditional_view(m, torch.zeros_like(obs), SamplingConfig(temperature=0), g)
    cfg0 = unconditional_view(m, obs, SamplingConfig(temperature=0, cfg_scale=0.0), g)
    assert torch.equal(greedy_u, cfg0)


def test_greedy_novel_view_matches_full_forward_argmax():
    """The first generated token is the argmax of the full forward's last logits over image codes."""
    m = _model()
    lay, voc = m.config.layout, m.config.vocabulary
    obs, cam = _obs(2, lay.n), _obs(2, lay.n, seed=4, hi=20)
    out = novel_view(m, obs, cam, SamplingConfig(temperature=0))
    prefix = build_prefix(voc, lay, obs, "gen", given=cam)
    with torch.no_grad():
        expect = m(prefix)[:, -1, : voc.image_vocab].argmax(-1)
    assert torch.equal(out[:, 0], expect)
    assert out.shape == (2, lay.n)


def test_task_shapes_and_errors():
    m = _model(grid=(2, 2))
    n = m.config.layout.n
    obs = _obs(2, n)
    assert unconditional_view(m, obs).shape == (2, n)
    cams, views = propose_cameras(m, obs)
    assert cams.shape == (2, n) and views is None
    with pytest.raises(ValueError, match="camera codes"):
        novel_view(m, obs, torch.full((2, n), 20))  # camera vocab is 20: code 20 is out of range
    with pytest.raises(ValueError, match="shape"):
        estimate_pose(m, obs, obs[:, :2])
    was = m.train()
    estimate_pose(m, obs, obs)
    assert was.training  # training mode restored


def test_pose_log_likelihood_is_the_sum_of_legal_next_token_log_probs():
    """log p(c | i, o) equals the step-by-step product of the next-token probabilities among the
    camera codes (recomputed here one prefix at a time), and differs between cameras."""
    m = _model(grid=(2, 2))
    lay, voc = m.config.layout, m.config.vocabulary
    obs, img = _obs(3, lay.n, seed=5), _obs(3, lay.n, seed=6)
    cam = _obs(3, lay.n, seed=7, hi=voc.camera_vocab)
    ll = pose_log_likelihood(m, obs, img, cam)
    prefix = build_prefix(voc, lay, obs, "est", given=img)
    expect = torch.zeros(3)
    allowed = voc.segment_logit_mask("camera")
    with torch.no_grad():
        for k in range(lay.n):
            seq = torch.cat([prefix, voc.camera_to_ids(cam[:, :k])], dim=1)
            logp = m(seq)[:, -1].masked_fill(~allowed, float("-inf")).log_softmax(-1)
            expect += logp.gather(-1, voc.camera_to_ids(cam[:, k:k + 1]))[:, 0]
    assert torch.allclose(ll, expect, atol=1e-4)
    assert bool((ll < 0).all())
    assert not torch.allclose(ll, pose_log_likelihood(m, obs, img, cam.flip(0)))


def test_aligned_camera_gives_each_predicted_cell_its_camera_code_in_the_gen_order_only():
    """In the <GEN> order the input that predicts target cell j (sequence index 2n + j) gains
    aligned_camera_proj(camera codebook[camera code of cell j]); every other input, and every
    input of an <EST>-order sequence, gains nothing; the map starts at zero; it needs camera
    codebook features. Decoding with the KV cache (camera codes given in the prefix, or drawn one
    by one before the view, one prefix shared by many samples) samples what recomputing does."""
    with pytest.raises(ValueError, match="camera_code_dim"):
        gst_config("tiny", grid=(2, 2), aligned_camera=True)
    torch.manual_seed(0)
    cfg = gst_config("tiny", grid=(3, 3), image_vocab=40, camera_vocab=20, camera_code_dim=4,
                     aligned_camera=True, segment_embedding=True)
    m = GST(cfg)
    assert float(m.aligned_camera_proj.weight.abs().sum()) == 0.0
    with torch.no_grad():
        m.output.weight.normal_(0, 1.0)
        m.camera_codebook.normal_()
        m.aligned_camera_proj.weight.normal_(0, 1.0)
    m.eval()
    n, voc = cfg.layout.n, cfg.vocabulary
    obs, img, cam = _obs(1, n), _obs(1, n, seed=1), _obs(1, n, seed=2, hi=20)
    gen = make_batch(voc, cfg.layout, obs, img, cam, "gen").input_ids  # [o, <GEN>, c, i[:-1]]
    term = m.aligned_camera(gen, torch.arange(gen.shape[1]))
    books = m.aligned_camera_proj(m.camera_codebook[cam[0]])  # (n, dim): the term of each cell
    torch.testing.assert_close(term[0, 2 * n: 3 * n], books)
    assert float(term[0, : 2 * n].abs().sum()) == 0.0
    est = make_batch(voc, cfg.layout, obs, img, cam, "est").input_ids
    assert float(m.aligned_camera(est, torch.arange(est.shape[1])).abs().sum()) == 0.0
    # it reaches the logits of the view's cells, and of nothing before them
    with torch.no_grad():
        a = m(gen)
        weight = m.aligned_camera_proj.weight.clone()
        m.aligned_camera_proj.weight.zero_()
        b = m(gen)
        m.aligned_camera_proj.weight.copy_(weight)
    assert torch.equal(a[0, : 2 * n], b[0, : 2 * n]) and not torch.allclose(a[0, 2 * n:], b[0, 2 * n:])
    sc = SamplingConfig(temperature=4.0, top_k=None)
    cams = _obs(6, n, seed=3, hi=20)
    cached = novel_view(m, obs.expand(6, -1), cams, sc, torch.Generator().manual_seed(4))
    again = novel_view(m, obs.expand(6, -1), cams, sc, torch.Generator().manual_seed(4), use_kv_cache=False)
    assert torch.equal(cached, again)
    one_camera = cams[:1].expand(6, -1)  # one query, six samples: the prefix is prefilled once
    shared = novel_view(m, obs.expand(6, -1), one_camera, sc, torch.Generator().manual_seed(5))
    again = novel_view(m, obs.expand(6, -1), one_camera, sc, torch.Generator().manual_seed(5),
                       use_kv_cache=False)
    assert torch.equal(shared, again) and len({tuple(r) for r in shared.tolist()}) > 1
    drawn = propose_cameras(m, obs.expand(3, -1), sc, torch.Generator().manual_seed(6), with_views=True)
    again = propose_cameras(m, obs.expand(3, -1), sc, torch.Generator().manual_seed(6), with_views=True,
                            use_kv_cache=False)
    assert torch.equal(drawn[0], again[0]) and torch.equal(drawn[1], again[1])
