"""A fusion model's text stream on its own (catalogue F7): the text-only forward of VisualBERT
(the fused stack over text tokens alone) and LXMERT (the language layers), compared with the
transformers models run directly; the clear errors for sites a text batch cannot produce
(LXMERT's cross layers, ViLT's missing text path); T1 from a config on a tiny fusion model's
text stream. Registry-wide conformance of the new modality runs in test_adapters.py."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_models import tiny_spec  # noqa: E402
from vlprobe.errors import ConfigError  # noqa: E402
from vlprobe.modality import TAG_PAD, TAG_SPECIAL, TAG_TEXT  # noqa: E402
from vlprobe.models import load_model  # noqa: E402

TEXTS = ["a photo of a cat .", "the stock market rises today , very quite big"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion_text")
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model(tiny_spec(name, root))
        return cache[name]

    return get


def _check_text_tags(a, batch, trace) -> None:
    """[CLS] / [SEP] special, words text, padding pad; the mask is the text mask."""
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    tok = a.tokenizer
    want = torch.full(ids.shape, TAG_TEXT, dtype=torch.int8)
    want[(ids == tok.cls_token_id) | (ids == tok.sep_token_id)] = TAG_SPECIAL
    want[mask == 0] = TAG_PAD
    assert torch.equal(trace.modality_tags, want)
    assert torch.equal(trace.attention_mask, mask)
    assert (mask == 0).any(), "the batch should pad one text"


def test_visual_bert_text_forward_equals_hf_without_visual_inputs(tiny):
    """Every hidden state, attention and the pooler of a text batch equal VisualBertModel run
    with no visual inputs, and a BertModel holding the same weights (the text-only path of
    VisualBERT is BERT over the text)."""
    from transformers import BertConfig, BertModel

    a = tiny("visual_bert")
    assert "text" in a.modalities and a.streams_for("text") == ("fusion",)
    layers = a.layer_sites("text")
    assert layers == a.layer_sites("pair") == ["fusion.stem", "fusion.blocks.0",
                                               "fusion.blocks.1"]
    assert a.embedding_site("text") == "fusion.pooled"
    batch = a.prepare(TEXTS, "text")
    assert {"input_ids", "attention_mask"} <= set(batch.inputs)
    assert not [k for k in batch.inputs if k.startswith("visual")]  # tokens only
    attn = [f"fusion.blocks.{i}.attn" for i in range(2)]
    trace = a.forward(batch, [*layers, *attn, "fusion.pooled"])
    x = batch.inputs
    with torch.no_grad():
        hf = a.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                     token_type_ids=x.get("token_type_ids"), output_hidden_states=True,
                     output_attentions=True)
    assert len(hf.hidden_states) == len(layers)
    for site, want in zip(layers, hf.hidden_states):
        assert trace.hidden[site].shape == want.shape == (2, x["input_ids"].shape[1], 32)
        assert torch.allclose(trace.hidden[site], want, atol=1e-6), site
    for site, want in zip(attn, hf.attentions):
        assert torch.allclose(trace.attentions[site], want, atol=1e-6), site
    assert torch.allclose(trace.hidden["fusion.pooled"], hf.pooler_output, atol=1e-6)

    c = a.config
    bert = BertModel(BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings, pad_token_id=0,
    ), add_pooling_layer=True).eval()
    missing, _ = bert.load_state_dict(a.model.state_dict(), strict=False)
    assert not missing, missing
    with torch.no_grad():
        ref = bert(**x, output_hidden_states=True)
    real = x["attention_mask"].bool()
    for site, want in zip(layers, ref.hidden_states):
        assert torch.allclose(trace.hidden[site][real], want[real], atol=1e-5), site
    assert torch.allclose(trace.hidden["fusion.pooled"], ref.pooler_output, atol=1e-5)
    _check_text_tags(a, batch, trace)


def test_lxmert_text_forward_is_the_language_stream_of_hf(tiny):
    """A text batch's text.stem / text.blocks.* / attentions equal HF LxmertModel's language
    stream run WITH regions (the language layers never see them); text.pooled is the masked
    mean of the last language layer, in a text batch and in a pair batch alike."""
    a = tiny("lxmert")
    assert "text" in a.modalities
    layers = a.layer_sites("text")
    assert layers == ["text.stem", "text.blocks.0", "text.blocks.1"]
    assert layers == a.layer_sites("pair")[:3]
    assert [a.layer_index(s) for s in layers] == [0, 1, 2]
    assert a.embedding_site("text") == "text.pooled"
    assert a.embedding_site("pair") == "fusion.pooled"
    batch = a.prepare(TEXTS, "text")
    attn = ["text.blocks.0.attn", "text.blocks.1.attn"]
    trace = a.forward(batch, [*layers, *attn, "text.pooled"])
    x = batch.inputs
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, a.config.visual_feat_dim, generator=gen)
    boxes = torch.rand(2, 5, 4, generator=gen)
    with torch.no_grad():
        hf = a.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                     token_type_ids=x.get("token_type_ids"), visual_feats=feats,
                     visual_pos=boxes, output_hidden_states=True, output_attentions=True)
        types = x.get("token_type_ids", torch.zeros_like(x["input_ids"]))
        stem = a.model.embeddings(x["input_ids"], types)
    # HF's language_hidden_states: the L language layers, then the X cross layers' text
    assert len(hf.language_hidden_states) == 2 + 2 and len(hf.language_attentions) == 2
    assert torch.allclose(trace.hidden["text.stem"], stem, atol=1e-6)
    for site, want in zip(layers[1:], hf.language_hidden_states):
        assert torch.allclose(trace.hidden[site], want, atol=1e-6), site
    for site, want in zip(attn, hf.language_attentions):
        assert torch.allclose(trace.attentions[site], want, atol=1e-6), site
    m = x["attention_mask"].float().unsqueeze(-1)
    pooled = (hf.language_hidden_states[1] * m).sum(1) / m.sum(1)
    assert torch.allclose(trace.hidden["text.pooled"], pooled, atol=1e-6)
    _check_text_tags(a, batch, trace)

    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8"))] * 2
    pair = a.forward(a.prepare(list(zip(images, TEXTS)), "pair"),
                     ["text.blocks.1", "text.pooled", "fusion.pooled"])
    assert torch.allclose(pair.hidden["text.blocks.1"], trace.hidden["text.blocks.1"],
                          atol=1e-6)
    assert torch.allclose(pair.hidden["text.pooled"], trace.hidden["text.pooled"], atol=1e-6)


@pytest.mark.parametrize("site", ["cross.blocks.0.text", "cross.blocks.1.t2v.attn",
                                  "cross.blocks.0", "vision.stem", "fusion.pooled"])
def test_lxmert_sites_that_need_regions_are_refused_for_text(tiny, site):
    from vlprobe.extract.plan import resolve_sites

    a = tiny("lxmert")
    batch = a.prepare(TEXTS, "text")
    with pytest.raises(ConfigError, match=r"only the language layers.*use modality pair"):
        a.forward(batch, ["text.stem", site])
    with pytest.raises(ConfigError, match=site.replace(".", r"\.")):
        resolve_sites(a, "text", ["text.stem", site])
    assert resolve_sites(a, "text", None) == [*a.layer_sites("text"), "text.pooled"]


def test_text_batch_attention_sites_follow_the_streams_of_the_adapter(tiny):
    """``streams_for`` decides which attention sites a text batch has (FeatureSource uses it):
    VisualBERT's fused blocks, LXMERT's language layers only."""
    vb, lx = tiny("visual_bert"), tiny("lxmert")
    from vlprobe.modality import site_stream

    def attn(a):
        return [s for s in a.sites() if s.endswith(".attn")
                and site_stream(s) in a.streams_for("text")]

    assert attn(vb) == ["fusion.blocks.0.attn", "fusion.blocks.1.attn"]
    assert attn(lx) == ["text.blocks.0.attn", "text.blocks.1.attn"]
    with pytest.raises(ConfigError, match=r"has no site 'text\.stem'"):
        vb.forward(vb.prepare(TEXTS, "text"), ["text.stem"])


def test_vilt_has_no_text_path_and_says_why(tiny):
    a = tiny("vilt")
    assert a.modalities == ("pair",)
    for call in (lambda: a.prepare(TEXTS, "text"), lambda: a.layer_sites("text")):
        with pytest.raises(ConfigError, match=r"no text-only forward.*visual_bert or lxmert"):
            call()


def test_t1_runs_from_a_config_on_tiny_fusion_text_streams(tmp_path):
    """Config -> probing_task loader (synthetic treebank) -> the text streams of a tiny
    VisualBERT and a tiny LXMERT -> one T1 table with every layer of each text stream."""
    from test_probing_tasks import _ptb_text
    from test_runner import spec_dict

    from vlprobe.config import parse_config
    from vlprobe.results.records import read_result_table, read_run
    from vlprobe.runner import run

    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "a.mrg").write_text(_ptb_text(200, seed=1))
    cfg = {
        "name": "f7", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "models": {"single": spec_dict("visual_bert", tmp_path),
                   "two": spec_dict("lxmert", tmp_path)},
        "datasets": {"ptb_sentlen": {"loader": "probing_task", "path": str(tmp_path / "tb"),
                                     "options": {"task": "SentLen", "max_per_class": 40}}},
        "analyses": [
            {"analysis": "T1", "models": ["single", "two"], "dataset": "ptb_sentlen",
             "params": {"modality": "text", "mlp_hidden": [8], "mlp_weight_decay": [0.0],
                        "mlp_max_epochs": 5}},
        ],
    }
    run_dir = run(parse_config(cfg), progress=False)
    info = read_run(run_dir)["analyses"]["T1_ptb_sentlen"]
    assert info["status"] == "ok", info.get("error")
    table = read_result_table(run_dir, "T1_ptb_sentlen")
    assert set(table["modality"]) == {"text"} and set(table["task"]) == {"SentLen"}
    sites = {m: list(g.sort_values("layer")["site"]) for m, g in table.groupby("model")}
    assert sites == {"single": ["fusion.stem", "fusion.blocks.0", "fusion.blocks.1"],
                     "two": ["text.stem", "text.blocks.0", "text.blocks.1"]}
    assert (table["n_truncated"] == 0).all()
    assert np.isfinite(table["value"]).all()
