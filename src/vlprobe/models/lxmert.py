"""LXMERT two-stream fusion model (transformers ``LxmertModel``) on (image, text) pairs, and
its language stream alone on texts.

LXMERT reads a caption (BERT WordPiece, ``[CLS] ... [SEP]``) and an image as R regions
(features ``visual_feats [B, R, D_v]`` + boxes ``visual_pos [B, R, 4]``, normalised
``x0, y0, x1, y1``). It runs L language layers on the text, R_l object-relationship layers on
the regions, then X cross-modality layers. Each cross layer k: (1) bidirectional
cross-attention through ONE shared module ``visual_attention`` (called first with language
queries over visual keys, then with visual queries over language keys), (2) a self-attention
per stream, (3) a feed-forward per stream.

Regions: ``options.regions`` (:mod:`vlprobe.models.regions`, the same keys as VisualBERT):
``{source: grid, model: <image adapter>, site: <site>}`` (default: the cells of
``efficientnet_lite0``'s ``vision.head`` map, boxes = each cell's footprint in the original
image) or ``{source: file, path: <file.npz | file.safetensors>}`` (per-image detector
features and boxes keyed by image id: ``image.info["image_id"]``, which ``Stimuli.payloads``
sets from the ``image_id`` descriptor, else the item id). A ``vlprobe train`` checkpoint
(``fusion.json``) without ``options.regions`` gets the grid it was trained on, with boxes
normalised to the CNN's window (:func:`vlprobe.models.regions.trained_regions`). The
feature width must equal ``config.visual_feat_dim`` (2048 for the published
``unc-nlp/lxmert-base-uncased``, trained on Faster R-CNN features: grid features of another
CNN run, but are out of its distribution).
Boxes (``visual_pos``) are zero at padded regions (masked).

Sites (T = text tokens, R = regions, H = heads):

- ``text.stem``: embedding output ``[B, T, D]``; ``text.blocks.{i}`` (+ ``.attn``
  ``[B, H, T, T]``): language layer i;
- ``vision.stem``: the visual feature encoder output (features + boxes projected) ``[B, R, D]``;
  ``vision.blocks.{i}`` (+ ``.attn`` ``[B, H, R, R]``): object-relationship layer i;
- cross-modality layer k: ``cross.blocks.{k}.t2v.attn`` (text queries over regions,
  ``[B, H, T, R]``), ``cross.blocks.{k}.v2t.attn`` (regions over text, ``[B, H, R, T]``),
  ``cross.blocks.{k}.text.attn`` / ``cross.blocks.{k}.vision.attn`` (the layer's
  self-attentions), ``cross.blocks.{k}.text`` ``[B, T, D]`` / ``cross.blocks.{k}.vision``
  ``[B, R, D]`` (the layer's outputs) and ``cross.blocks.{k}`` ``[B, T + R, D]``: both outputs
  concatenated ``[text; vision]``, the sequence ``trace.modality_tags`` describes (fusion
  degree, catalogue F1, clusters all of a pair's tokens of one cross layer);
- ``fusion.pooled``: the pooler output (tanh dense of the final language [CLS]) ``[B, D]``;
- ``text.pooled``: the last language layer's output (``text.blocks.{L-1}``; ``text.stem``
  when L = 0), mean over the real tokens ``[B, D]``: the final vector of the language stream
  BEFORE any cross layer (the embedding site of a text batch).

Text-only forward (modality ``text``, catalogue F7): the embeddings and the L language layers
(``model.embeddings`` and ``model.encoder.layer``, the modules a pair runs, with the same
additive padding mask), nothing else. The language layers never see the regions, so their
outputs are exactly those of a pair forward with the same text (tested). Sites of a text batch:
``text.stem``, ``text.blocks.{i}`` (+ ``.attn``) and ``text.pooled``;
``layer_sites("text")`` = ``text.stem, text.blocks.0..L-1``; ``embedding_site("text")`` =
``text.pooled``. Every ``cross.*`` site (the cross-modality layers attend to the regions),
``vision.*`` and ``fusion.pooled`` (read after the cross layers) need the vision stream: asked
of a text batch they are a ConfigError naming them. Tags as for the text of a pair.

Layers. ``layer_sites("pair")`` is the LANGUAGE path: ``text.stem``, ``text.blocks.0..L-1``,
``cross.blocks.0..X-1.text`` (layer index 0..L+X; the path that ends at [CLS] and the pooler;
it equals HF's ``language_hidden_states`` with the stem in front).
:meth:`LXMERTAdapter.stream_layer_sites` gives either path (``"vision"``: ``vision.stem``,
``vision.blocks.*``, ``cross.blocks.*.vision`` = HF's ``vision_hidden_states`` with the stem);
:meth:`layer_index` knows both.

Attention capture: every attention module (``LxmertAttention``) is made to return its weights
by a forward pre-hook (the cross layer asks for none, and for the visual direction never). The
shared cross module is called twice per layer; calls are counted: call 0 is t2v, call 1 v2t,
and the query / key lengths of each call are checked against T and R.

Traces: ``tags_by_stream`` ``{"text": [B, T], "vision": [B, R]}`` ([CLS]/[SEP] special, region
image, padding pad); ``modality_tags`` / ``attention_mask`` of the concatenation
``[text; vision]``; ``extras["boxes"]`` ``[B, T + R, 4]`` over that concatenation: each
region's box normalised to the original image (NaN at text and padding). Default pooling
``mean`` (over a stream's real tokens): ``cls`` would be meaningless on the vision stream.
Texts longer than ``max_position_embeddings`` are truncated and counted.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from vlprobe.errors import ConfigError
from vlprobe.modality import TAG_IMAGE, TAG_SPECIAL, TAG_TEXT, set_two_stream_tags
from vlprobe.models._fusion import region_token_boxes
from vlprobe.models._hf import HFAdapter
from vlprobe.models._hooks import HookTarget
from vlprobe.models._payloads import split_pairs
from vlprobe.models.base import Batch, Trace
from vlprobe.models.regions import region_source, trained_regions

_OPTIONS = ("regions",)


class LXMERTAdapter(HFAdapter):
    """LXMERT (language, object-relationship and cross-modality encoders)."""

    family: ClassVar[str] = "lxmert"
    name: ClassVar[str] = "lxmert"
    summary: ClassVar[str] = (
        "LXMERT two-stream fusion (transformers LxmertModel): regions + text pairs"
    )
    default_pooling: ClassVar[str] = "mean"

    @classmethod
    def _config_class(cls) -> Any:
        from transformers import LxmertConfig

        return LxmertConfig

    def _model_class(self) -> Any:
        from transformers import LxmertModel

        return LxmertModel

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("pair", "text")

    def check_modality_sites(self, modality: str, sites: Any) -> None:
        """A text batch runs the language layers only: anything else is a clear error."""
        if modality == "text":
            wrong = [s for s in sites if not s.startswith("text.")]
            if wrong:
                raise ConfigError(
                    f"lxmert: site(s) {', '.join(wrong)} cannot be captured from text inputs: "
                    "a text-only forward runs only the language layers (text.stem, "
                    "text.blocks.*, text.pooled); the cross-modality layers, the vision stream "
                    "and fusion.pooled need the image regions (use modality pair)"
                )
        super().check_modality_sites(modality, sites)

    # -- sites -------------------------------------------------------------------------
    def _setup(self) -> None:
        unknown = sorted(set(self.spec.options) - set(_OPTIONS))
        if unknown:
            raise ConfigError(
                f"lxmert: unknown option(s) {', '.join(unknown)}; known: {', '.join(_OPTIONS)}"
            )
        c = self.config
        self.n_text, self.n_vision, self.n_cross = int(c.l_layers), int(c.r_layers), int(
            c.x_layers)
        sites = ["text.stem"]
        for i in range(self.n_text):
            sites += [f"text.blocks.{i}.attn", f"text.blocks.{i}"]
        sites += ["text.pooled", "vision.stem"]
        for i in range(self.n_vision):
            sites += [f"vision.blocks.{i}.attn", f"vision.blocks.{i}"]
        for k in range(self.n_cross):
            sites += [f"cross.blocks.{k}.{s}" for s in (
                "t2v.attn", "v2t.attn", "text.attn", "vision.attn", "text", "vision")]
            sites.append(f"cross.blocks.{k}")
        sites.append("fusion.pooled")
        self._sites = sites
        self._streams = {
            s: [f"{s}.stem"]
            + [f"{s}.blocks.{i}" for i in range(n)]
            + [f"cross.blocks.{k}.{s}" for k in range(self.n_cross)]
            for s, n in (("text", self.n_text), ("vision", self.n_vision))
        }
        self._layer_sites = {"pair": self._streams["text"],
                             "text": self._streams["text"][:self.n_text + 1]}
        #: the region source (:mod:`vlprobe.models.regions`)
        options = self.spec.options.get("regions")
        if options is None:  # a `vlprobe train` checkpoint: the boxes it was trained with
            options = trained_regions(self.spec.checkpoint)
        self.regions = region_source(options, self.device, self.name)

    def stream_layer_sites(self, stream: str) -> list[str]:
        """Hidden-state sites of one stream in layer order (``"text"`` = ``layer_sites
        ("pair")``; ``"vision"``: stem, object-relationship blocks, cross-layer outputs)."""
        if stream not in self._streams:
            raise ConfigError(f"lxmert has streams text and vision, not {stream!r}")
        return list(self._streams[stream])

    def layer_index(self, site: str) -> int | None:
        for names in self._streams.values():
            if site in names:
                return names.index(site)
        return None

    def embedding_site(self, modality: str) -> str:
        if modality not in self.modalities:
            raise self.modality_error(modality)
        return "fusion.pooled" if modality == "pair" else "text.pooled"

    def max_text_length(self) -> int | None:
        limit = int(self.config.max_position_embeddings)
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < limit:
            limit = tok_max
        return limit

    def _preprocess_identity(self) -> dict[str, Any]:
        return {
            "text": {
                "max_length": self.max_text_length(),
                "padding": "longest/right",
                "tokenizer": type(self.tokenizer).__name__,
            },
            "regions": self.regions.identity(),
        }

    # -- inputs ------------------------------------------------------------------------
    def prepare(self, payloads: Sequence[Any], modality: str) -> Batch:
        """Text inputs + :meth:`_image_inputs`; ``extras["boxes"]`` ``[B, T_text + R, 4]``:
        each region's box in the ORIGINAL image over the ``[text; vision]`` sequence that
        ``trace.modality_tags`` describes (NaN at text and padding)."""
        if modality != "pair":
            return super().prepare(payloads, modality)  # raises: pairs only
        images, texts = split_pairs(payloads, self.family)
        inputs, n_truncated, offsets = self._text_inputs(texts)
        regions = self._regions(images)
        inputs.update(self._region_inputs(regions))
        boxes = region_token_boxes(inputs["input_ids"].shape[1], regions)
        return Batch("pair", inputs, n_truncated=n_truncated, offsets=offsets,
                     extras={"boxes": boxes})

    def _image_inputs(self, images: list[Any]) -> dict[str, Any]:
        """Regions of each pair: ``visual_feats [B, R, D_v]``, ``visual_pos [B, R, 4]``,
        ``visual_attention_mask [B, R]``."""
        return self._region_inputs(self._regions(images))

    def _region_inputs(self, regions: Any) -> dict[str, Any]:
        return {"visual_feats": regions.features, "visual_pos": regions.boxes,
                "visual_attention_mask": regions.mask}

    def _regions(self, images: Sequence[Any]) -> Any:
        """The checked :class:`~vlprobe.models.regions.RegionBatch` of ``images``."""
        regions = self.regions(images)
        want = int(self.config.visual_feat_dim)
        if regions.features.shape[-1] != want:
            raise ConfigError(
                f"lxmert: the regions are {regions.features.shape[-1]}-d features "
                f"({self.regions.describe()}) but the model's visual_feat_dim is {want}; choose "
                f"options.regions (a CNN site with {want} channels, or a regions file) that "
                "matches"
            )
        if int(self.config.visual_pos_dim) != 4:
            raise ConfigError(
                f"lxmert: visual_pos_dim is {self.config.visual_pos_dim}; regions give 4-d boxes"
            )
        return regions

    # -- running -----------------------------------------------------------------------
    def _hook_table(self) -> dict[str, HookTarget]:
        table = {
            "text.stem": HookTarget("embeddings"),
            "vision.stem": HookTarget("encoder.visn_fc"),
        }
        for i in range(self.n_text):
            table[f"text.blocks.{i}"] = HookTarget(f"encoder.layer.{i}")
        for i in range(self.n_vision):
            table[f"vision.blocks.{i}"] = HookTarget(f"encoder.r_layers.{i}")
        for k in range(self.n_cross):
            table[f"cross.blocks.{k}.text"] = HookTarget(f"encoder.x_layers.{k}")  # output 0
        return table

    def _attention_targets(self) -> dict[str, tuple[str, int]]:
        """attention site -> (``LxmertAttention`` module path, which call of it)."""
        out: dict[str, tuple[str, int]] = {}
        for i in range(self.n_text):
            out[f"text.blocks.{i}.attn"] = (f"encoder.layer.{i}.attention.self", 0)
        for i in range(self.n_vision):
            out[f"vision.blocks.{i}.attn"] = (f"encoder.r_layers.{i}.attention.self", 0)
        for k in range(self.n_cross):
            x = f"encoder.x_layers.{k}"
            out[f"cross.blocks.{k}.t2v.attn"] = (f"{x}.visual_attention.att", 0)
            out[f"cross.blocks.{k}.v2t.attn"] = (f"{x}.visual_attention.att", 1)
            out[f"cross.blocks.{k}.text.attn"] = (f"{x}.lang_self_att.self", 0)
            out[f"cross.blocks.{k}.vision.attn"] = (f"{x}.visn_self_att.self", 0)
        return out

    def _run(
        self, modality: str, inputs: dict[str, Any], want_attn: bool, computed: list[str]
    ) -> dict[str, Any]:
        model = self.model
        dtype = next(model.parameters()).dtype
        attn_sites = {s: t for s, t in self._attention_targets().items() if s in computed}
        if modality == "text":
            with _capture_calls(model, attn_sites, []) as (got, _), \
                    _last_language(model, self.n_text, computed, inputs) as pooled:
                self._run_language(inputs, dtype)
            got.update(pooled)
            return got
        vision_out = [s for s in computed if s.startswith("cross.") and s.endswith(".vision")]
        vision_out += [s for s in computed if s.startswith("cross.") and s.count(".") == 2]
        with _capture_calls(model, attn_sites, vision_out) as (got, shapes), \
                _last_language(model, self.n_text, computed, inputs) as pooled:
            out = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                token_type_ids=inputs.get("token_type_ids"),
                visual_feats=inputs["visual_feats"].to(dtype),
                visual_pos=inputs["visual_pos"].to(dtype),
                visual_attention_mask=inputs["visual_attention_mask"],
            )
        t, r = inputs["input_ids"].shape[1], inputs["visual_feats"].shape[1]
        expect = {"t2v": (t, r), "v2t": (r, t)}
        for site, (q, k) in shapes.items():
            direction = site.split(".")[-2]
            if direction in expect and (q, k) != expect[direction]:
                raise RuntimeError(  # transformers changed the call order of the cross layer
                    f"lxmert: {site} got queries x keys {q} x {k}, expected {expect[direction]}"
                )
        if "fusion.pooled" in computed:
            got["fusion.pooled"] = out.pooled_output
        got.update(pooled)
        return got

    def _run_language(self, inputs: dict[str, Any], dtype: Any) -> Any:
        """The language stream alone: ``model.embeddings`` and the L language layers with
        the additive padding mask ``LxmertModel`` builds; returns the last output
        ``[B, T, D]``."""
        import torch

        model = self.model
        ids = inputs["input_ids"]
        types = inputs.get("token_type_ids")  # zeros as LxmertModel makes them (its
        if types is None:  # embeddings' own default reads a buffer they lack)
            types = torch.zeros_like(ids)
        hidden = model.embeddings(ids, types)
        mask = inputs["attention_mask"][:, None, None, :].to(dtype)
        mask = (1.0 - mask) * torch.finfo(dtype).min
        for layer in model.encoder.layer:
            hidden = layer(hidden, mask)[0]
        return hidden

    def _modality_tags(self, batch: Batch, trace: Trace) -> None:
        import torch

        ids = batch.inputs["input_ids"]
        special = torch.isin(ids, torch.tensor(self._special_ids(), dtype=ids.dtype))
        text = torch.where(special, TAG_SPECIAL, TAG_TEXT)
        vmask = batch.inputs["visual_attention_mask"]
        set_two_stream_tags(trace, text, batch.inputs["attention_mask"],
                            torch.full_like(vmask, TAG_IMAGE), vmask)

    def _text_special_ids(self) -> list[int]:
        return self._special_ids()

    def _special_ids(self) -> list[int]:
        """Special-token ids ([CLS], [SEP], [PAD], [MASK]); [UNK] stands for a word: text."""
        tok = self.tokenizer
        return [i for i in tok.all_special_ids if i != tok.unk_token_id]


@contextmanager
def _last_language(
    model: Any, n_text: int, computed: list[str], inputs: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """``text.pooled`` where it is asked for: a hook on the last language layer (the
    embeddings when L = 0) whose output, mean-pooled over the real tokens, is put in the
    yielded dict (always removed)."""
    got: dict[str, Any] = {}
    if "text.pooled" not in computed:
        yield got
        return
    mask = inputs["attention_mask"]

    def hook(_m: Any, _args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        m = mask.to(hidden.dtype).unsqueeze(-1)
        got["text.pooled"] = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    path = f"encoder.layer.{n_text - 1}" if n_text else "embeddings"
    handle = model.get_submodule(path).register_forward_hook(hook)
    try:
        yield got
    finally:
        handle.remove()


@contextmanager
def _capture_calls(
    model: Any, attn_sites: Mapping[str, tuple[str, int]], vision_out: list[str]
) -> Iterator[tuple[dict[str, Any], dict[str, tuple[int, int]]]]:
    """Hooks for what a plain output hook cannot give (always removed).

    ``attn_sites``: site -> (attention module, call index): a pre-hook forces
    ``output_attentions=True`` on that ``LxmertAttention`` (callers read only element 0 unless
    they asked for weights, so outputs are unchanged) and a post-hook keeps element 1 of the
    wanted call. ``vision_out``: ``cross.blocks.{k}.vision`` = element 1 of cross layer k,
    ``cross.blocks.{k}`` = elements 0 and 1 concatenated over tokens ``[text; vision]``.
    Yields (site -> live tensor, attention site -> (query length, key length)).
    """
    got: dict[str, Any] = {}
    shapes: dict[str, tuple[int, int]] = {}
    by_module: dict[str, dict[int, str]] = {}
    for site, (path, call) in attn_sites.items():
        by_module.setdefault(path, {})[call] = site
    calls: dict[str, int] = {}
    handles = []

    def pre(path: str):
        def hook(_m: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if len(args) >= 4:
                args = (*args[:3], True, *args[4:])
            else:
                kwargs = {**kwargs, "output_attentions": True}
            return args, kwargs

        return hook

    def post(path: str):
        def hook(_m: Any, args: tuple, kwargs: dict, output: Any) -> None:
            n = calls.get(path, 0)
            calls[path] = n + 1
            site = by_module[path].get(n)
            if site is not None:
                query = args[0] if args else kwargs["hidden_states"]
                keys = args[1] if len(args) > 1 else kwargs["context"]
                shapes[site] = (int(query.shape[1]), int(keys.shape[1]))
                got[site] = output[1]

        return hook

    def vision_hook(site: str):
        def hook(_m: Any, _args: Any, output: Any) -> None:
            if site.endswith(".vision"):
                got[site] = output[1]
            else:  # the joint sequence [text; vision] of the layer
                import torch

                got[site] = torch.cat([output[0], output[1]], dim=1)

        return hook

    try:
        for path in by_module:
            module = model.get_submodule(path)
            handles.append(module.register_forward_pre_hook(pre(path), with_kwargs=True))
            handles.append(module.register_forward_hook(post(path), with_kwargs=True))
        for site in vision_out:
            k = site.split(".")[2]
            handles.append(model.get_submodule(f"encoder.x_layers.{k}").register_forward_hook(
                vision_hook(site)))
        yield got, shapes
        for path in by_module:  # the shared cross module runs twice, every other once
            want = 2 if path.endswith("visual_attention.att") else 1
            if calls.get(path, 0) != want:
                raise RuntimeError(f"lxmert: module {path} ran {calls.get(path, 0)} time(s) in "
                                   f"one forward; expected {want}")
    finally:
        for h in handles:
            h.remove()
