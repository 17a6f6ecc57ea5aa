"""Helpers shared by the single-stream fusion adapters (``vilt``, ``visual_bert``).

Both read ``[CLS] text [SEP] [PAD]...`` followed by image tokens in one sequence. This module
holds what they have in common: their base class :class:`SingleStreamFusion` (sites, hooks,
tokenizer), the BERT tokenizer of a fusion checkpoint (with a documented default), the
modality tags of the text part, and the fused-sequence boxes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from vlprobe.errors import ModelLoadError
from vlprobe.models._hf import HFAdapter
from vlprobe.models._hooks import HookTarget, dir_fingerprint
from vlprobe.models._towers import block_hooks
from vlprobe.models.hf_source import Source, hub_errors, looks_like_path
from vlprobe.models.hf_tokenizer import tokenizer_problem
from vlprobe.settings import expand_path

#: the tokenizer ViLT and VisualBERT were trained with; used when the checkpoint (or the
#: random_init config directory) ships no tokenizer files and ``options.tokenizer`` is unset.
DEFAULT_BERT_TOKENIZER = "google-bert/bert-base-uncased"


class SingleStreamFusion(HFAdapter):
    """Base of the single-stream fusion adapters (``vilt``, ``visual_bert``).

    Pairs (``visual_bert`` adds a text-only forward; ``vilt`` has none); one stack of fused
    blocks ``encoder.layer.{i}`` (``config.num_hidden_layers``) with the sites
    ``fusion.stem``, ``fusion.blocks.{i}`` (+ ``.attn``: the module :attr:`attn_module` inside
    a block) and ``fusion.pooled``; default pooling ``cls``; the
    BERT tokenizer of :func:`load_bert_tokenizer` (``options.tokenizer``).
    """

    default_pooling: ClassVar[str] = "cls"
    #: path of the self-attention module inside ``encoder.layer.{i}``.
    attn_module: ClassVar[str] = ""

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("pair",)

    def _setup(self) -> None:
        self._one_stack("fusion", "pair")
        self._tokenizer_source: dict[str, Any] = {}

    def _load_tokenizer(self) -> Any:
        revision = self.spec.revision if self.source.kind != "local" else None
        tok, ref = load_bert_tokenizer(
            self.name, self.source, revision, self.spec.options.get("tokenizer"),
            int(self.config.vocab_size),
        )
        self._tokenizer_source = ref
        return tok

    def _text_identity(self) -> dict[str, Any]:
        """The text part of :meth:`_preprocess_identity` (:func:`text_identity`)."""
        return text_identity(self.tokenizer, self._tokenizer_source, self.max_text_length())

    def _text_special_ids(self) -> list[int]:
        """[CLS] / [SEP]: the text tokens a pair's tags mark special (:func:`special_ids`)."""
        return sorted(special_ids(self.tokenizer))

    def _hook_table(self) -> dict[str, HookTarget]:
        return block_hooks("fusion", "encoder.layer", self.n_layers, self.attn_module)

    @staticmethod
    def _pooled(out: Any, computed: list[str]) -> dict[str, Any]:
        """``{"fusion.pooled": pooler output [B, D]}`` where it is asked for, else ``{}``."""
        return {"fusion.pooled": out.pooler_output} if "fusion.pooled" in computed else {}


def load_bert_tokenizer(
    name: str, source: Source, revision: str | None, option: str | None, vocab_size: int
) -> tuple[Any, dict[str, Any]]:
    """(tokenizer, its provenance for the identity) for a fusion checkpoint.

    Order: ``option`` (``options.tokenizer``: a local directory or a hub id) if set; else the
    checkpoint's own tokenizer files (local directory, or the hub repository); else
    :data:`DEFAULT_BERT_TOKENIZER`. A candidate that
    :func:`~vlprobe.models.hf_tokenizer.tokenizer_problem` objects to (a directory without
    tokenizer files, from which transformers would silently build an empty vocabulary) is
    skipped.

    The provenance is ``{"source": "checkpoint"}`` (its files are already in the identity),
    or ``{"source": <hub id>}``, or ``{"source": <directory>, "files": {name: sha256}}``.

    Raises:
        ModelLoadError: no usable tokenizer (naming every place tried), or a tokenizer with
            more ids than the model's ``vocab_size``.
    """
    from transformers import AutoTokenizer

    if option:
        candidates = [(str(option), None)]
    else:
        candidates = [(source.ref, revision), (DEFAULT_BERT_TOKENIZER, None)]
    tried = []
    for ref, rev in candidates:
        path = expand_path(ref)
        if path.is_dir():
            where = Source("local", str(path))
        elif path.exists() or looks_like_path(ref):
            tried.append(f"{ref} (not a tokenizer directory)")
            continue
        else:
            where = Source("hub", ref)
        try:
            with hub_errors(where, rev, "tokenizer"):
                tok = AutoTokenizer.from_pretrained(where.ref, revision=rev)
        except ModelLoadError as exc:
            tried.append(f"{ref} ({exc})")
            continue
        problem = tokenizer_problem(tok, vocab_size, path if where.kind == "local" else None)
        if problem:
            tried.append(f"{ref} ({problem})")
            continue
        if len(tok) > vocab_size:
            raise ModelLoadError(
                f"{name}: tokenizer {ref!r} has {len(tok)} ids but the model's vocab_size is "
                f"{vocab_size}; use the checkpoint's own tokenizer (options.tokenizer)"
            )
        tok.padding_side = "right"
        if ref == source.ref and not option:
            return tok, {"source": "checkpoint"}
        if where.kind == "local":
            return tok, {"source": str(path.resolve()), "files": dir_fingerprint(path)}
        return tok, {"source": ref}
    raise ModelLoadError(
        f"{name}: no usable tokenizer. Tried: {'; '.join(tried)}. Put the tokenizer files "
        "(vocab.txt or tokenizer.json) next to the config, or set options.tokenizer to a "
        "local tokenizer directory (a BERT WordPiece vocabulary) or a cached hub id"
    )


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokens a BERT tokenizer adds around a text (``[CLS]``, ``[SEP]``)."""
    ids = {tokenizer.cls_token_id, tokenizer.sep_token_id}
    return {int(i) for i in ids if i is not None}


def nan_boxes(batch: int, length: int) -> Any:
    """``[batch, length, 4]`` float32 boxes, all NaN (filled at image positions)."""
    import torch

    return torch.full((batch, length, 4), float("nan"), dtype=torch.float32)


def region_token_boxes(t_text: int, regions: Any) -> Any:
    """``Trace.extras["boxes"]`` of a ``[text; regions]`` sequence: ``[B, t_text + R, 4]``,
    each region's box normalised to the ORIGINAL image (``regions.image_boxes``, whatever frame
    the model reads its boxes in), NaN at text positions and padded regions."""
    b, r = regions.mask.shape
    boxes = nan_boxes(b, t_text + r)
    boxes[:, t_text:] = regions.image_boxes.masked_fill(regions.mask[..., None] == 0,
                                                        float("nan"))
    return boxes


def text_identity(
    tokenizer: Any, provenance: dict[str, Any], max_length: int | None
) -> dict[str, Any]:
    """The text preprocessing of a fusion model, for its identity."""
    return {
        "tokenizer": type(tokenizer).__name__,
        "tokenizer_source": provenance,
        "vocab": len(tokenizer),
        "max_length": max_length,
        "padding": "longest/right",
    }
