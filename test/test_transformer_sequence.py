"""Sequence layout, vocabulary, loss masks and condition dropout (gst_ros.models.sequence)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gst_ros.models.sequence import (
    NULL_TOKEN,
    TASK_EST,
    TASK_GEN,
    Layout,
    Vocabulary,
    build_prefix,
    build_sequence,
    camera_token_weights,
    loss_mask,
    make_batch,
    masked_cross_entropy,
    null_condition,
    sample_tasks,
    segment_order,
)

V = Vocabulary(image_vocab=10, camera_vocab=5)  # ids: image 0..9, camera 10..14, <GEN> 15, <EST> 16
L = Layout(1, 2)  # n = 2 tokens per segment, sequence of 7


def test_gst_vocabulary_numbers():
    v = Vocabulary(16384, 2048)
    assert v.size == 18434
    assert v.camera_offset == 16384
    assert (v.gen_token, v.est_token) == (18432, 18433)
    assert Layout(16, 16).seq_len == 769


def test_sequence_layout_token_by_token():
    obs = torch.tensor([[1, 2]])
    img = torch.tensor([[3, 4]])
    cam = torch.tensor([[0, 4]])
    gen = build_sequence(V, L, obs, img, cam, "gen")
    est = build_sequence(V, L, obs, img, cam, "est")
    assert gen.tolist() == [[1, 2, 15, 10, 14, 3, 4]]
    assert est.tolist() == [[1, 2, 16, 3, 4, 10, 14]]
    mixed = build_sequence(V, L, obs.repeat(2, 1), img.repeat(2, 1), cam.repeat(2, 1),
                           torch.tensor([TASK_EST, TASK_GEN]))
    assert mixed.tolist() == [est[0].tolist(), gen[0].tolist()]
    assert segment_order("gen") == ("camera", "image")
    assert segment_order(TASK_EST) == ("image", "camera")


def test_loss_masks_written_by_hand():
    # shifted targets of a 7-token sequence: input k predicts token k+1
    # targets: [obs1, task, seg1a, seg1b, seg2a, seg2b]
    assert loss_mask(L, "joint").tolist() == [[False, False, True, True, True, True]]
    assert loss_mask(L, "alternating").tolist() == [[False, False, False, False, True, True]]
    l2 = Layout(2, 2)  # n = 4, 12 targets
    j = [0] * 4 + [1] * 8
    a = [0] * 8 + [1] * 4
    assert loss_mask(l2, "joint", batch=3).int().tolist() == [j] * 3
    assert loss_mask(l2, "alternating").int().tolist() == [a]
    with pytest.raises(ValueError, match="objective"):
        loss_mask(L, "both")


def test_make_batch_shift_and_targets():
    obs, img, cam = torch.tensor([[1, 2]]), torch.tensor([[3, 4]]), torch.tensor([[0, 4]])
    b = make_batch(V, L, obs, img, cam, "gen", objective="joint")
    assert b.input_ids.tolist() == [[1, 2, 15, 10, 14, 3]]
    assert b.targets.tolist() == [[2, 15, 10, 14, 3, 4]]
    # the masked targets are exactly the two segments
    assert b.targets[b.loss_mask].tolist() == [10, 14, 3, 4]
    alt = make_batch(V, L, obs, img, cam, "est", objective="alternating")
    assert alt.targets[alt.loss_mask].tolist() == [10, 14]
    assert not bool(b.dropped.any())


def test_condition_dropout_nulls_observation_only():
    n = 6
    obs = torch.randint(1, 10, (n, 2))
    img = torch.randint(0, 10, (n, 2))
    cam = torch.randint(0, 5, (n, 2))
    g = torch.Generator().manual_seed(0)
    b = make_batch(V, L, obs, img, cam, "gen", cond_drop_prob=0.5, generator=g)
    ref = make_batch(V, L, obs, img, cam, "gen")
    assert 0 < int(b.dropped.sum()) < n  # this seed drops some but not all
    for i in range(n):
        if b.dropped[i]:
            assert b.input_ids[i, :2].tolist() == [NULL_TOKEN, NULL_TOKEN]
        else:
            assert torch.equal(b.input_ids[i, :2], obs[i])
        assert torch.equal(b.input_ids[i, 2:], ref.input_ids[i, 2:])
    assert torch.equal(b.targets[:, 1:], ref.targets[:, 1:])
    allb = make_batch(V, L, obs, img, cam, "gen", cond_drop_prob=1.0)
    assert bool((allb.input_ids[:, :2] == NULL_TOKEN).all())


def test_prefix_and_null_condition():
    obs = torch.tensor([[7, 8]])
    p = build_prefix(V, L, obs, "gen", given=torch.tensor([[1, 2]]))
    assert p.tolist() == [[7, 8, 15, 11, 12]]
    assert build_prefix(V, L, obs, "est").tolist() == [[7, 8, 16]]
    assert null_condition(p, L).tolist() == [[0, 0, 15, 11, 12]]
    assert p.tolist() == [[7, 8, 15, 11, 12]]  # not modified in place


def test_bad_inputs_raise_clear_errors():
    obs, img = torch.tensor([[1, 2]]), torch.tensor([[3, 4]])
    with pytest.raises(ValueError, match="camera codes"):
        build_sequence(V, L, obs, img, torch.tensor([[0, 5]]), "gen")  # 5 is out of the camera vocab
    with pytest.raises(ValueError, match="observation tokens"):
        build_sequence(V, L, torch.tensor([[1, 10]]), img, torch.tensor([[0, 1]]), "gen")
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        build_sequence(V, L, torch.tensor([[1, 2, 3]]), img, torch.tensor([[0, 1]]), "gen")
    with pytest.raises(ValueError, match="task"):
        build_sequence(V, L, obs, img, torch.tensor([[0, 1]]), "pose")
    with pytest.raises(ValueError, match="integer"):
        build_prefix(V, L, obs.float(), "gen")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2047), min_size=1, max_size=50))
def test_camera_offset_round_trip(codes):
    v = Vocabulary(16384, 2048)
    c = torch.tensor(codes)
    ids = v.camera_to_ids(c)
    assert bool(((ids >= 16384) & (ids < 18432)).all())
    assert torch.equal(v.ids_to_camera(ids), c)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31 - 1), st.sampled_from(["gen", "est"]))
def test_sequence_segments_round_trip(h, w, seed, task):
    v = Vocabulary(20, 7)
    lay = Layout(h, w)
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 20, (2, lay.n), generator=g)
    img = torch.randint(0, 20, (2, lay.n), generator=g)
    cam = torch.randint(0, 7, (2, lay.n), generator=g)
    s = build_sequence(v, lay, obs, img, cam, task)
    assert s.shape == (2, lay.seq_len)
    first, second = s[:, lay.first_segment], s[:, lay.second_segment]
    c_ids, i_ids = (first, second) if task == "gen" else (second, first)
    assert torch.equal(s[:, : lay.n], obs)
    assert torch.equal(i_ids, img)
    assert torch.equal(v.ids_to_camera(c_ids), cam)


def test_grid_positions_reuse_grid_per_segment():
    rows, cols = Layout(2, 3).grid_positions()
    r = [0, 0, 0, 1, 1, 1]
    c = [0, 1, 2, 0, 1, 2]
    assert rows.tolist() == r + [0] + r + r
    assert cols.tolist() == c + [0] + c + c


def test_sample_tasks():
    g = torch.Generator().manual_seed(0)
    t = sample_tasks("joint", 200, generator=g)
    assert 60 < int((t == TASK_GEN).sum()) < 140 and set(t.tolist()) == {TASK_GEN, TASK_EST}
    assert sample_tasks("alternating", 4, step=0).tolist() == [TASK_GEN] * 4
    assert sample_tasks("alternating", 4, step=1).tolist() == [TASK_EST] * 4


def test_masked_cross_entropy_counts_only_masked():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 1] = 100.0  # confident and right at position 0
    targets = torch.tensor([[1, 2, 3]])
    mask = torch.tensor([[True, False, False]])
    assert masked_cross_entropy(logits, targets, mask).item() == pytest.approx(0.0, abs=1e-6)
    mask2 = torch.tensor([[False, True, True]])  # uniform logits there: ln 4
    assert masked_cross_entropy(logits, targets, mask2).item() == pytest.approx(math.log(4.0))
    with pytest.raises(ValueError, match="no token"):
        masked_cross_entropy(logits, targets, torch.zeros(1, 3, dtype=torch.bool))


def test_camera_token_weights_reweight_the_camera_segment():
    """Camera targets get the weight, image codes and task tokens 1; the weighted mean follows."""
    seq = build_sequence(V, L, torch.tensor([[1, 2]]), torch.tensor([[3, 4]]), torch.tensor([[0, 4]]), "est")
    targets = seq[:, 1:]  # [obs 2, <EST>, image 3, image 4, camera 10, camera 14]
    w = camera_token_weights(V, targets, 3.0)
    assert w.tolist() == [[1.0, 1.0, 1.0, 1.0, 3.0, 3.0]]
    assert camera_token_weights(V, targets, 1.0).tolist() == [[1.0] * 6]
    # joint mask: targets 3, 4 (predicted exactly: ce 0) and 10, 14 (uniform logits: ce ln V)
    logits = torch.zeros(1, 6, V.size)
    logits[0, 2, 3] = logits[0, 3, 4] = 100.0
    mask = loss_mask(L, "joint")
    assert masked_cross_entropy(logits, targets, mask).item() == pytest.approx(2 * math.log(V.size) / 4)
    assert masked_cross_entropy(logits, targets, mask, w).item() == pytest.approx(6 * math.log(V.size) / 8)
    assert masked_cross_entropy(logits, targets, mask, torch.ones(1, 6)).item() == pytest.approx(
        masked_cross_entropy(logits, targets, mask).item(), rel=1e-6)
    with pytest.raises(ValueError, match="camera_weight"):
        camera_token_weights(V, targets, 0.0)
    with pytest.raises(ValueError, match="weights must have shape"):
        masked_cross_entropy(logits, targets, mask, torch.ones(1, 5))


def test_noise_second_segment_randomises_only_teacher_forced_second_segment_inputs():
    """Noise touches the inputs at 2n+1 .. 3n-1 only, with codes of the segment's own kind (camera
    codes in <EST> order, image codes in <GEN> order), at about the asked rate; targets and loss
    mask are not its business; rate 0 returns the inputs unchanged."""
    from gst_ros.models.sequence import TASK_EST, TASK_GEN, noise_second_segment

    vocab, lay = Vocabulary(image_vocab=500, camera_vocab=300), Layout(8, 8)
    n, b = lay.n, 64
    g = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 500, (b, n), generator=g)
    img = torch.randint(0, 500, (b, n), generator=g)
    cam = torch.randint(0, 300, (b, n), generator=g)
    tasks = torch.tensor([TASK_GEN, TASK_EST] * (b // 2))
    batch = make_batch(vocab, lay, obs, img, cam, tasks)
    assert noise_second_segment(vocab, lay, batch.input_ids, tasks, 0.0) is batch.input_ids
    noisy = noise_second_segment(vocab, lay, batch.input_ids, tasks, 0.3, torch.Generator().manual_seed(1))
    changed = noisy != batch.input_ids
    assert not changed[:, : 2 * n + 1].any()  # observation, task, first segment, first target token
    rate = changed[:, 2 * n + 1:].float().mean().item()
    assert 0.25 < rate < 0.32                                # 0.3 minus chance hits of the same code
    est, gen = noisy[1::2, 2 * n + 1:], noisy[0::2, 2 * n + 1:]
    assert ((est >= vocab.camera_offset) & (est < vocab.gen_token)).all()
    assert (gen < vocab.image_vocab).all()
    full = noise_second_segment(vocab, lay, batch.input_ids, tasks, 1.0, torch.Generator().manual_seed(2))
    assert (full[:, 2 * n + 1:] != batch.input_ids[:, 2 * n + 1:]).float().mean() > 0.99
    with pytest.raises(ValueError, match="noise rate"):
        noise_second_segment(vocab, lay, batch.input_ids, tasks, 1.5)
