"""Checkpoint import: LlamaGen GPT and (assumed-layout) official GST gst.pt state dicts."""
import pytest
import torch

from gst_ros.engine.gpt_import import convert_gpt_state_dict, format_report
from gst_ros.models.io import config_from_dict, load_model_dir, load_state_dict_strict, save_model_dir
from gst_ros.models.transformer import GST, GSTConfig

DIM, LAYERS, VOCAB, CLASSES, HIDDEN = 128, 2, 300, 10, 512  # head_dim 64 -> 2 heads; hidden rule: 512


def llamagen_c2i_state_dict(grid=4):
    """A LlamaGen c2i GPT state dict written from its key names and shapes."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    sd = {
        "tok_embeddings.weight": r(VOCAB, DIM),
        "cls_embedding.embedding_table.weight": r(CLASSES + 1, DIM),
        "norm.weight": r(DIM),
        "output.weight": r(VOCAB, DIM),
        "freqs_cis": r(1 + grid * grid, 32, 2),
    }
    for i in range(LAYERS):
        p = f"layers.{i}."
        sd[p + "attention.wqkv.weight"] = r(3 * DIM, DIM)
        sd[p + "attention.wo.weight"] = r(DIM, DIM)
        sd[p + "feed_forward.w1.weight"] = r(HIDDEN, DIM)
        sd[p + "feed_forward.w3.weight"] = r(HIDDEN, DIM)
        sd[p + "feed_forward.w2.weight"] = r(DIM, HIDDEN)
        sd[p + "attention_norm.weight"] = r(DIM)
        sd[p + "ffn_norm.weight"] = r(DIM)
    return sd


def test_llamagen_gpt_converts_and_loads_strictly(tmp_path):
    foreign = llamagen_c2i_state_dict()
    state, cfg_dict, report = convert_gpt_state_dict("llamagen-gpt", {"model": foreign}, camera_vocab=50)
    cfg = config_from_dict(GSTConfig, cfg_dict)
    assert (cfg.dim, cfg.n_layer, cfg.n_head, cfg.image_vocab, cfg.camera_vocab, cfg.grid) == \
        (DIM, LAYERS, 2, VOCAB, 50, (4, 4))
    model = GST(cfg)
    load_state_dict_strict(model, state, "converted llamagen")
    # image-code rows copied, camera/task rows new
    emb = model.tok_embeddings.weight
    assert torch.equal(emb[:VOCAB], foreign["tok_embeddings.weight"])
    assert emb.shape[0] == VOCAB + 50 + 2 and 0.01 < emb[VOCAB:].std().item() < 0.03
    assert torch.equal(model.output.weight[:VOCAB], foreign["output.weight"])
    assert bool((model.output.weight[VOCAB:] == 0).all())
    assert torch.equal(model.layers[1].feed_forward.w2.weight, foreign["layers.1.feed_forward.w2.weight"])
    assert bool((model.layers[0].attention.q_norm.weight == 1).all())
    assert bool((model.layers[0].attention.k_norm.bias == 0).all())
    # the report accounts for every tensor on both sides
    assert sorted(report["dropped"]) == ["cls_embedding.embedding_table.weight", "freqs_cis"]
    assert sorted(report["new"]) == sorted(f"layers.{i}.attention.{q}_norm.{w}" for i in range(LAYERS)
                                           for q in "qk" for w in ("weight", "bias"))
    mapped_src = {s for s, _ in report["mapped"]}
    assert mapped_src | set(report["dropped"]) == set(foreign)
    assert {d for _, d in report["mapped"]} | set(report["new"]) == set(model.state_dict())
    assert report["extended"] == {"tok_embeddings.weight": (VOCAB, VOCAB + 52),
                                  "output.weight": (VOCAB, VOCAB + 52)}
    assert "dropped: freqs_cis" in format_report(report)
    # saved with the shared model-directory format and reloaded
    save_model_dir(tmp_path / "gst", "gst", cfg_dict, state)
    meta, loaded = load_model_dir(tmp_path / "gst", kind="gst")
    m2 = GST(config_from_dict(GSTConfig, meta["config"]))
    load_state_dict_strict(m2, loaded)
    x = torch.randint(0, VOCAB, (1, 10))
    assert torch.equal(m2.eval()(x), model.eval()(x))


def test_gst_gpt_with_qk_norm_maps_everything():
    foreign = llamagen_c2i_state_dict()
    del foreign["cls_embedding.embedding_table.weight"], foreign["freqs_cis"]
    total = 300 + 2048 + 2
    foreign["tok_embeddings.weight"] = torch.randn(total, DIM)
    foreign["output.weight"] = torch.randn(total, DIM)
    for i in range(LAYERS):
        for q in "qk":
            foreign[f"layers.{i}.attention.{q}_norm.weight"] = torch.rand(64)
            foreign[f"layers.{i}.attention.{q}_norm.bias"] = torch.rand(64)
    foreign["_orig_mod.unknown.extra"] = torch.zeros(3)
    ck = {"model": {("_orig_mod." + k if k.startswith("layers.0") else k): v for k, v in foreign.items()},
          "epoch": 3}
    state, cfg_dict, report = convert_gpt_state_dict("gst-gpt", ck)
    cfg = config_from_dict(GSTConfig, cfg_dict)
    assert (cfg.image_vocab, cfg.camera_vocab, cfg.vocab_size) == (300, 2048, total)
    assert report["new"] == [] and report["dropped"] == ["unknown.extra"] and report["extended"] == {}
    model = GST(cfg)
    load_state_dict_strict(model, state)
    assert torch.equal(model.layers[0].attention.k_norm.bias, foreign["layers.0.attention.k_norm.bias"])


def test_bad_checkpoints_raise():
    with pytest.raises(ValueError, match="unknown checkpoint kind"):
        convert_gpt_state_dict("vqgan", {})
    with pytest.raises(ValueError, match="tok_embeddings"):
        convert_gpt_state_dict("llamagen-gpt", {"model": {"foo": torch.zeros(1)}})
    sd = llamagen_c2i_state_dict()
    sd["layers.1.feed_forward.w1.weight"] = torch.zeros(HIDDEN + 1, DIM)
    with pytest.raises(ValueError, match="w1"):
        convert_gpt_state_dict("llamagen-gpt", sd)
    sd = llamagen_c2i_state_dict()
    sd["layers.0.feed_forward.w1.weight"] = torch.zeros(300, DIM)
    with pytest.raises(ValueError, match="hidden size"):
        convert_gpt_state_dict("llamagen-gpt", sd)
    sd = llamagen_c2i_state_dict()
    del sd["layers.0.attention.wqkv.weight"]
    with pytest.raises(ValueError, match="numbered"):
        convert_gpt_state_dict("llamagen-gpt", sd)
