"""The analysis contract.

An analysis is a class registered in :mod:`vlprobe.analyses` with a catalogue id (V1, R1, ...).
The runner first asks it which features it needs (:meth:`Analysis.requests`), extracts all of
them with one forward pass per (model, stimuli), then calls :meth:`Analysis.run` with a
:class:`FeatureSource` that reads the cached activations. ``run`` returns a :class:`Result`:
a tidy table plus figures.

Tidy tables have one row per measured number and at least the columns
``analysis, model, dataset, layer, site, metric, value``; optional ``ci_low, ci_high, se,
n, seed`` and analysis-specific columns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    from vlprobe.data.stimuli import Stimuli

TIDY_COLUMNS = ("analysis", "model", "dataset", "layer", "site", "metric", "value")


@dataclass(frozen=True)
class FeatureRequest:
    """Features one analysis needs: pooled hidden states and / or attention statistics.

    Attributes:
        model: model key in the run config.
        dataset: dataset key in the run config.
        split: split name, e.g. ``"train"``.
        sites: sites to capture; ``None`` = every hidden-state layer of the tower that matches
            the stimuli modality (``layer_sites``) plus its embedding site. Attention sites
            (``*.attn``, e.g. from :meth:`FeatureSource.attention_sites`) need ``attention``.
        pooling: pooling method of the hidden-state sites (``cls``, ``eos``, ``mean``,
            ``last``, ``none``, ``grid<g>`` = a ``g x g`` spatial map stored as
            ``[N, C*g*g]``) or ``None`` for the adapter's default.
        attention: methods computed for every attention site of ``sites``:
            ``"reduce:<reducer>"`` (a registered streaming reducer,
            :func:`vlprobe.extract.reducers.reducer_names`: ``mass``, ``cls_mass``,
            ``max_image_to_text``, ``entropy``, ``distance``...) and / or ``"raw"`` (the
            attention of each item's real tokens, float16, for small stimulus sets). Each
            gives one feature named ``"<site>@<reducer>"`` / ``"<site>@raw"``
            (:func:`vlprobe.extract.attention.attention_output`).
        view: ``"items"`` (the dataset's own items) or ``"class_prompts"`` (one sentence per
            (class, template) built from ``templates``; how text models enter RSA).
        templates: class prompt templates for ``view="class_prompts"``, e.g.
            ``("a photo of a {}.",)``.
        class_names: for ``view="class_prompts"``: the names put into the templates, one per
            class index (they replace the dataset's ``label_names``; zero-shot uses CLIP's
            curated ImageNet names this way); None = the dataset's own names.
        modality: which tower to run (``"image"``/``"text"``), ``None`` = the stimuli's
            modality (when the model accepts only one of the stimuli's modalities).
    """

    model: str
    dataset: str
    split: str
    sites: tuple[str, ...] | None = None
    pooling: str | None = None
    view: str = "items"
    templates: tuple[str, ...] = ("a photo of a {}.",)
    modality: str | None = None
    attention: tuple[str, ...] = ()
    class_names: tuple[str, ...] | None = None


@dataclass
class LayerFeatures:
    """Features of one (model, stimuli) for several sites.

    Attributes:
        features: feature name -> values. A hidden-state site -> ``[N, D]`` float32 (pooled);
            an attention reducer ``"<site>@<reducer>"`` -> float32 ``[N, H, ...]`` (e.g.
            ``@entropy`` ``[N, H]``, ``@mass`` ``[N, H, 3, 3]``); ``"<site>@raw"`` -> a
            RaggedArray of float16 ``[H, Tq_i, Tk_i]`` (real tokens only) with
            ``"<site>@raw_tags"`` (see :mod:`vlprobe.extract.attention`).
        layers: feature name -> catalogue layer index (None for non-layer sites such as
            embeddings); an attention feature gets the index of the block it belongs to
            (``fusion.blocks.3.attn@entropy`` -> 4, like ``fusion.blocks.3``).
        labels: ``[N]`` int64 labels of the stimuli (or None).
        ids: N item ids.
        label_names: class names or None.
        n_truncated: number of texts truncated at the model's maximum length.
        truncated_items: ``[N]`` bool, True where the model's maximum length cut the item
            (``span`` pooling: its span, fully or partly), or None when the source does not
            say (it is computed for ``span`` pooling only).
        keys: site -> activation-store key of the entry the features were read from (empty
            when they did not come from the store); the analysis-result cache keys on them.
    """

    features: dict[str, Any]
    layers: dict[str, int | None]
    labels: np.ndarray | None
    ids: list[str]
    label_names: list[str] | None = None
    n_truncated: int = 0
    truncated_items: np.ndarray | None = None
    keys: dict[str, str] = field(default_factory=dict)

    def layer_sites(self) -> list[str]:
        """Hidden-state sites that are layers, in layer order (attention features excluded)."""
        sites = [s for s, i in self.layers.items() if i is not None and "@" not in s]
        return sorted(sites, key=lambda s: self.layers[s])  # type: ignore[arg-type,return-value]

    def attention_features(self, method: str) -> list[str]:
        """Names of the features of attention ``method`` (``"reduce:entropy"`` or
        ``"entropy"``, ``"raw"``), in layer order, e.g.
        ``["fusion.blocks.0.attn@entropy", "fusion.blocks.1.attn@entropy", ...]``."""
        suffix = "@" + method.removeprefix("reduce:")
        names = [n for n in self.features if n.endswith(suffix)]
        return sorted(names, key=lambda n: (self.layers.get(n) is None, self.layers.get(n) or 0))


class FeatureSource(Protocol):
    """What an analysis sees of the extracted activations (and of the run).

    Attributes:
        device: the run's torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``; the config's
            ``device`` with ``auto`` resolved). Analyses that train torch modules put their
            tensors there (``vlprobe.analyses._common.run_device``); they never pick a
            device, or change any other process-wide setting, themselves.
    """

    device: str

    def get(self, request: FeatureRequest) -> LayerFeatures:
        """Pooled features for ``request`` (read from the activation store)."""
        ...

    def model_modalities(self, model: str) -> tuple[str, ...]:
        """Modalities the model accepts."""
        ...

    def dataset_modalities(self, dataset: str) -> tuple[str, ...]:
        """Payload modalities of the dataset's items."""
        ...

    def adapter(self, model: str) -> Any:
        """The model's adapter, for analyses that run the model themselves through its
        differentiable image path (V6 PGD, V8 feature visualisation); weights load lazily."""
        ...

    def splits(self, dataset: str) -> list[str]:
        """Split names the dataset has."""
        ...

    def layer_sites(self, model: str, modality: str) -> list[str]:
        """Hidden-state sites of ``model``'s ``modality`` tower in layer order (index =
        catalogue layer index), without loading any stimuli or running the model."""
        ...

    def embedding_site(self, model: str, modality: str) -> str:
        """The site of ``model``'s final embedding for ``modality`` (``vision.proj`` /
        ``text.proj`` for dual encoders), without running the model."""
        ...

    def logit_scale(self, model: str) -> dict[str, float | None] | None:
        """``{"scale", "bias"}`` of a model whose image-text logits are
        ``scale * cos(image, text) + bias`` (dual encoders), or None for a model without
        them. Loads the model's weights."""
        ...

    def attention_sites(self, model: str, modality: str) -> list[str]:
        """Attention sites (``*.attn``) that a ``modality`` batch of ``model`` produces, in
        the model's site order (e.g. ``fusion.blocks.{i}.attn``; LXMERT's
        ``cross.blocks.{k}.t2v.attn`` / ``.v2t.attn``), without running the model."""
        ...

    def stimuli(self, request: FeatureRequest) -> Stimuli:
        """The items behind ``request`` (same order and ids as :meth:`get`'s features), for
        analyses that need the raw payloads (V5 reconstructs the input images)."""
        ...

    def extract(
        self, model: str, stimuli: Stimuli, modality: str, sites: tuple[str, ...],
        pooling: str | None = None,
    ) -> LayerFeatures:
        """Pooled features of stimuli the analysis built itself (images with words rendered
        on them, label prompts, a subset of a split), through the activation store like any
        split: the key holds the stimuli's fingerprint (content digests), so a second run is
        a cache hit. ``sites`` are explicit; ``pooling`` None = the adapter's default."""
        ...


@dataclass
class Result:
    """What one analysis returns.

    Attributes:
        analysis: analysis name (e.g. ``"layer_probe"``).
        catalogue: catalogue ids (e.g. ``("V1",)``).
        table: tidy ``pandas.DataFrame`` (see module docstring for columns).
        figures: name -> matplotlib Figure.
        params: the resolved parameters (recorded with the table).
        notes: human-readable remarks for the report (fallbacks taken, truncation counts...).
        extra_tables: other named tables (e.g. an RDM matrix in long form).
    """

    analysis: str
    catalogue: tuple[str, ...]
    table: Any
    figures: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra_tables: dict[str, Any] = field(default_factory=dict)


class Analysis(ABC):
    """Base class of analyses. ``params`` are validated in ``__init__`` (unknown keys -> error).

    Class attributes:
        name: registry name, e.g. ``"layer_probe"``.
        catalogue: catalogue ids, e.g. ``("V1",)``.
        summary: one line for ``vlprobe analyses``.
        defaults: parameter name -> default value. Unknown parameter names are an error.
        version: the analysis' own version (default ``"1"``), part of the analysis-result
            cache key (:mod:`vlprobe.results.cache`). **Bump it whenever a change to the
            analysis changes its numbers, tables or figures** (a new default, a fixed bug, a
            different solver): results cached by the old code are then recomputed. The
            vlprobe version is in the key too, so a release invalidates every cached result.

    An analysis must read everything it depends on through the :class:`FeatureSource`
    (features, stimuli) or its ``params``: the result cache keys on exactly these (and the
    seed, versions and device). Inputs found by name in ``params`` (a packaged corpus, a
    reference-kit file) are keyed by that name, not their content.
    """

    name: ClassVar[str] = ""
    catalogue: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    version: ClassVar[str] = "1"

    def __init__(
        self, models: list[str], dataset: str, params: dict[str, Any] | None = None, seed: int = 0
    ) -> None:
        from vlprobe.errors import ConfigError

        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            import difflib

            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, list(self.defaults), n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                f"analysis {self.name!r}: unknown parameter(s) {', '.join(hints)}; "
                f"known: {', '.join(sorted(self.defaults)) or 'none'}"
            )
        self.models = list(models)
        self.dataset = dataset
        self.params = {**self.defaults, **params}
        self.seed = seed

    @abstractmethod
    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        """Features needed (the runner extracts them all before :meth:`run`)."""

    @abstractmethod
    def run(self, source: FeatureSource) -> Result:
        """Compute the result from cached features."""
