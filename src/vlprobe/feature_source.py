"""The runner's :class:`~vlprobe.analyses.base.FeatureSource`: stimuli + adapters + store.

It resolves a :class:`FeatureRequest` into (adapter, stimuli view, modality, sites, pooling),
extracts through the activation store (a cache hit costs no forward pass) and returns
:class:`LayerFeatures`. Datasets and models are loaded once, on first use.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from vlprobe.analyses.base import FeatureRequest, LayerFeatures
from vlprobe.config import RunConfig
from vlprobe.data import DatasetSpec, Stimuli, class_prompt_stimuli, load_dataset
from vlprobe.errors import ConfigError
from vlprobe.modality import resolve_modality
from vlprobe.models import ModelAdapter, ModelSpec, load_model


@dataclass
class ExtractionLog:
    """One extraction call, as recorded in ``run.json``."""

    model: str
    dataset: str
    split: str
    view: str
    modality: str
    n_items: int
    n_sites: int
    n_forward_batches: int
    n_items_computed: int
    n_truncated: int
    seconds_model: float
    seconds_total: float


@dataclass
class RunFeatureSource:
    """Feature access for analyses of one run (implements ``FeatureSource``)."""

    cfg: RunConfig
    progress: bool = True
    _datasets: dict[str, dict[str, Stimuli]] = field(default_factory=dict)
    _models: dict[str, ModelAdapter] = field(default_factory=dict)
    log: list[ExtractionLog] = field(default_factory=list)
    load_seconds: dict[str, float] = field(default_factory=dict)
    _prefetching: bool = False

    def __post_init__(self) -> None:
        from vlprobe.extract import ActivationStore
        from vlprobe.settings import cache_dir

        root = self.cfg.cache_dir or cache_dir()
        self.store = ActivationStore(root=_activation_root(root))

    # -- loading ---------------------------------------------------------------------
    def dataset_splits(self, dataset: str) -> dict[str, Stimuli]:
        """All splits of a configured dataset (loaded once)."""
        if dataset not in self._datasets:
            entry = self.cfg.datasets[dataset]
            spec = DatasetSpec(name=dataset, **asdict(entry))
            start = time.perf_counter()
            self._datasets[dataset] = load_dataset(spec)
            self.load_seconds[f"dataset:{dataset}"] = time.perf_counter() - start
        return self._datasets[dataset]

    def adapter(self, model: str) -> ModelAdapter:
        """The adapter of a configured model (built once; weights load lazily)."""
        if model not in self._models:
            entry = self.cfg.models[model]
            spec = ModelSpec(**asdict(entry))
            start = time.perf_counter()
            self._models[model] = load_model(spec, device=self.device)
            self.load_seconds[f"model:{model}"] = time.perf_counter() - start
        return self._models[model]

    # -- FeatureSource protocol -----------------------------------------------------------
    @property
    def device(self) -> str:
        """The run's torch device (``auto`` resolved): where analyses put their tensors."""
        return _device(self.cfg.device)

    def model_modalities(self, model: str) -> tuple[str, ...]:
        return tuple(self.adapter(model).modalities)

    def dataset_modalities(self, dataset: str) -> tuple[str, ...]:
        return next(iter(self.dataset_splits(dataset).values())).modalities

    def splits(self, dataset: str) -> list[str]:
        return list(self.dataset_splits(dataset))

    def layer_sites(self, model: str, modality: str) -> list[str]:
        return list(self.adapter(model).layer_sites(modality))

    def embedding_site(self, model: str, modality: str) -> str:
        return str(self.adapter(model).embedding_site(modality))

    def logit_scale(self, model: str) -> dict[str, float | None] | None:
        """The model's ``{"scale", "bias"}`` (dual encoders; loads the weights), else None."""
        method = getattr(self.adapter(model), "logit_scale", None)
        return None if method is None else dict(method())

    def attention_sites(self, model: str, modality: str) -> list[str]:
        from vlprobe.extract.attention import is_attention_site
        from vlprobe.modality import site_stream

        adapter = self.adapter(model)
        streams = adapter.streams_for(modality)
        return [s for s in adapter.sites() if is_attention_site(s) and site_stream(s) in streams]

    def stimuli(self, request: FeatureRequest) -> Stimuli:
        """The stimuli a request refers to (a split, or its class-prompt view)."""
        splits = self.dataset_splits(request.dataset)
        if request.split not in splits:
            raise ConfigError(
                f"dataset {request.dataset!r} has no split {request.split!r}; "
                f"it has {', '.join(splits)} (use test_fraction to carve a test split)"
            )
        stimuli = splits[request.split]
        if request.view == "class_prompts":
            return class_prompt_stimuli(stimuli, request.templates, request.class_names)
        if request.view != "items":
            raise ConfigError(f"unknown stimuli view {request.view!r}")
        return stimuli

    def resolve(self, request: FeatureRequest) -> tuple[ModelAdapter, Stimuli, str, list[str]]:
        """(adapter, stimuli, modality, sites) for a request."""
        adapter = self.adapter(request.model)
        stimuli = self.stimuli(request)
        modality = resolve_modality(
            adapter.modalities, stimuli.modalities, request.modality,
            model=request.model, dataset=request.dataset,
        )
        if request.sites is None:
            sites = [*adapter.layer_sites(modality), adapter.embedding_site(modality)]
        else:
            sites = list(request.sites)
            adapter.check_sites(sites)
        _check_attention(request, sites)
        return adapter, stimuli, modality, sites

    def get(self, request: FeatureRequest) -> LayerFeatures:
        """Features for ``request`` (pooled hidden states, attention statistics); extracted
        through the store (cached)."""
        from vlprobe.extract.attention import is_attention_site

        adapter, stimuli, modality, sites = self.resolve(request)
        attention = {s: list(request.attention) for s in sites if is_attention_site(s)}
        return self._features(request.model, adapter, stimuli, modality, sites,
                              request.pooling, attention,
                              (request.dataset, request.split, request.view))

    def extract(
        self, model: str, stimuli: Stimuli, modality: str, sites: tuple[str, ...],
        pooling: str | None = None,
    ) -> LayerFeatures:
        """Features of stimuli an analysis built (rendered images, label prompts, a subset),
        through the store like any split (logged with view ``"derived"``)."""
        adapter = self.adapter(model)
        modality = resolve_modality(
            adapter.modalities, stimuli.modalities, modality, model=model,
            dataset=stimuli.dataset,
        )
        sites = list(sites)
        adapter.check_sites(sites)
        return self._features(model, adapter, stimuli, modality, sites, pooling, {},
                              (stimuli.dataset, stimuli.split, "derived"))

    def _features(
        self, model: str, adapter: ModelAdapter, stimuli: Stimuli, modality: str,
        sites: list[str], pooling: str | None, attention: dict[str, list[str]],
        logged_as: tuple[str, str, str],
    ) -> LayerFeatures:
        """One extraction call (hidden sites pooled with ``pooling``, attention sites with
        their methods), read back from the store when cached, as LayerFeatures;
        ``logged_as`` = (dataset, split, view) of the extraction log entry."""
        from vlprobe.extract import extract_features
        from vlprobe.extract.attention import attention_layer_index, is_attention_site

        pooling = pooling or self.cfg.extraction.pooling
        result = extract_features(
            adapter,
            stimuli,
            modality=modality,
            sites=sites,
            pooling=pooling,
            attention=attention or None,
            store=self.store,
            batch_size=self.cfg.extraction.batch_size,
            shard_size=shard_size_for(self.cfg.extraction, modality, pooling, attention),
            bucket_by_length=self.cfg.extraction.bucket_by_length,
            progress=self.progress,
            raw_attention_limit_bytes=int(self.cfg.extraction.raw_attention_limit_gb * 1e9),
        )
        if self._prefetching or result.n_forward_batches:
            self.log.append(
                ExtractionLog(
                    model=model,
                    dataset=logged_as[0],
                    split=logged_as[1],
                    view=logged_as[2],
                    modality=modality,
                    n_items=len(stimuli),
                    n_sites=len(sites),
                    n_forward_batches=result.n_forward_batches,
                    n_items_computed=result.n_items_computed,
                    n_truncated=result.n_truncated,
                    seconds_model=result.seconds_model,
                    seconds_total=result.seconds_total,
                )
            )
        truncated_items = None
        if "span" in result.poolings.values() and not self._prefetching:
            # the store keeps only the count; which spans were cut comes from the tokenizer
            from vlprobe.extract.alignment import truncated_spans

            truncated_items = truncated_spans(
                adapter, stimuli.payloads("text", range(len(stimuli))),
                stimuli.descriptors["span_chars"],
            )
        layers = {
            name: (attention_layer_index(adapter, site) if is_attention_site(site)
                   else adapter.layer_index(site))
            for name, site in result.sites.items()
        }
        return LayerFeatures(
            features=result.features,
            layers=layers,
            labels=stimuli.labels,
            ids=list(stimuli.ids),
            label_names=stimuli.label_names,
            n_truncated=result.n_truncated,
            truncated_items=truncated_items,
            keys=dict(result.keys),
        )

    def feature_keys(self, request: FeatureRequest) -> dict[str, str]:
        """feature name -> store key of the features :meth:`get` returns for ``request``,
        without reading the store or running the model (loads the dataset and the adapter's
        identity: its tokenizer / processor, not its weights)."""
        from vlprobe.extract import feature_keys
        from vlprobe.extract.attention import is_attention_site

        adapter, stimuli, modality, sites = self.resolve(request)
        attention = {s: list(request.attention) for s in sites if is_attention_site(s)}
        return feature_keys(adapter, stimuli, modality=modality, sites=sites,
                            pooling=request.pooling or self.cfg.extraction.pooling,
                            attention=attention or None)

    def stimuli_key(self, request: FeatureRequest) -> str:
        """Hash of the identity (source, fingerprint, size) of :meth:`stimuli`'s items."""
        from vlprobe.extract import hash_key, stimuli_identity

        return hash_key(stimuli_identity(self.stimuli(request)))

    def model_key(self, model: str) -> str:
        """Hash of ``model``'s adapter identity (what enters every store key of it)."""
        from vlprobe.extract import hash_key

        return hash_key(self.adapter(model).identity())

    def group_requests(
        self, requests: list[FeatureRequest]
    ) -> tuple[list[ExtractionGroup], list[str]]:
        """Merge requests into extraction groups, one forward pass each.

        Requests of one (model, stimuli view, modality) are merged: their hidden-state sites
        per pooling (requests asking two poolings need one pass per pooling) and, joining
        the first of those passes, every attention site with the union of the methods asked
        of it. Returns the groups and the errors of requests that could not be resolved
        (unknown split, modality mismatch, ...).
        """
        from vlprobe.errors import VLProbeError
        from vlprobe.extract.attention import is_attention_site

        errors: list[str] = []
        merged: dict[tuple[Any, ...], dict[str, Any]] = {}
        for request in requests:
            try:
                _adapter, _stimuli, modality, sites = self.resolve(request)
            except VLProbeError as exc:
                errors.append(f"{request.model} on {request.dataset}/{request.split}: {exc}")
                continue
            key = (request.model, request.dataset, request.split, request.view,
                   request.templates, request.class_names, modality)
            entry = merged.setdefault(key, {"hidden": {}, "attention": {}})
            hidden = [s for s in sites if not is_attention_site(s)]
            if hidden:
                by_pooling = entry["hidden"].setdefault(request.pooling, [])
                by_pooling.extend(s for s in hidden if s not in by_pooling)
            for site in sites:
                if is_attention_site(site):
                    methods = entry["attention"].setdefault(site, [])
                    methods.extend(m for m in request.attention if m not in methods)
        groups = []
        for key, entry in merged.items():
            variants = list(entry["hidden"].items()) or [(None, [])]
            for i, (pooling, hidden) in enumerate(variants):
                attention = entry["attention"] if i == 0 else {}
                groups.append(ExtractionGroup(
                    model=key[0], dataset=key[1], split=key[2], view=key[3], templates=key[4],
                    class_names=key[5], modality=key[6], pooling=pooling,
                    hidden_sites=tuple(hidden),
                    attention=tuple((site, tuple(m)) for site, m in attention.items()),
                ))
        return groups, errors

    def extract_groups(self, groups: list[ExtractionGroup]) -> list[str]:
        """Extract each group of :meth:`group_requests` (one forward pass per group unless
        the store has it); later :meth:`get` calls are store hits. A group that fails (bad
        data, missing weights) does not stop the others; its error is returned (and raised
        again by the analyses that need it)."""
        from vlprobe.errors import VLProbeError

        errors: list[str] = []
        for group in groups:
            request = group.request()
            self._prefetching = True
            try:
                adapter, stimuli = self.adapter(group.model), self.stimuli(request)
                attention = {site: list(methods) for site, methods in group.attention}
                self._features(group.model, adapter, stimuli, group.modality,
                               [*group.hidden_sites, *attention], group.pooling, attention,
                               (group.dataset, group.split, group.view))
            except VLProbeError as exc:
                errors.append(f"{group.model} on {group.dataset}/{group.split}: {exc}")
            finally:
                self._prefetching = False
        return errors

    def prefetch(self, requests: list[FeatureRequest]) -> list[str]:
        """:meth:`group_requests` then :meth:`extract_groups`; all errors returned."""
        groups, errors = self.group_requests(requests)
        return errors + self.extract_groups(groups)

    def model_summary(self) -> dict[str, dict[str, Any]]:
        """Per loaded model: adapter, checkpoint (or ``random init``) and the hash of the
        adapter's identity (what enters every store key), for run.json."""
        from vlprobe.extract import hash_key

        out: dict[str, dict[str, Any]] = {}
        for name, adapter in self._models.items():
            entry = self.cfg.models[name]
            try:
                identity = adapter.identity()
            except Exception as exc:  # a model that failed to load: say why, keep the run
                out[name] = {"adapter": entry.adapter, "error": f"{type(exc).__name__}: {exc}"}
                continue
            checkpoint = (identity.get("checkpoint") or entry.checkpoint or entry.config
                          or ("random init" if entry.random_init else None))
            out[name] = {
                "adapter": entry.adapter,
                "checkpoint": checkpoint,
                "random_init": bool(entry.random_init),
                "identity_hash": hash_key(identity),
                "identity": identity,
            }
        return out

    def dataset_summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per loaded dataset and split: item count, classes, skipped items, and the items
        with the same content as items of an earlier split (``duplicates_of``: earlier split
        -> count and example id pairs) or dropped for it (``dropped_duplicates``), for
        run.json."""
        from vlprobe.data.duplicates import cross_split_duplicates

        summary: dict[str, dict[str, dict[str, Any]]] = {}
        for name, splits in self._datasets.items():
            summary[name] = {
                split: {
                    "n_items": len(stimuli),
                    "n_classes": len(stimuli.label_names) if stimuli.label_names else None,
                    "modalities": list(stimuli.modalities),
                    "fingerprint": stimuli.fingerprint(),
                    "skipped": len(stimuli.source.get("skipped") or []),
                    "duplicates_of": {},
                    "dropped_duplicates": stimuli.source.get("dropped_cross_split_duplicates"),
                }
                for split, stimuli in splits.items()
            }
            for dup in cross_split_duplicates(splits):
                summary[name][dup.split]["duplicates_of"][dup.other] = {
                    "count": dup.count, "examples": [list(e) for e in dup.examples]}
        return summary

    def forward_batches(self) -> int:
        """Total model forward passes performed so far in this run."""
        return sum(entry.n_forward_batches for entry in self.log)


@dataclass(frozen=True)
class ExtractionGroup:
    """Requests of one (model, stimuli view, modality) merged by
    :meth:`RunFeatureSource.group_requests`: one forward pass capturing the hidden-state
    sites (pooled with ``pooling``; None = the run's default) and the attention sites with
    their methods (``((site, (method, ...)), ...)``). Plain data: it can be shipped to
    another process."""

    model: str
    dataset: str
    split: str
    view: str
    templates: tuple[str, ...]
    class_names: tuple[str, ...] | None
    modality: str
    pooling: str | None
    hidden_sites: tuple[str, ...]
    attention: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def request(self) -> FeatureRequest:
        """A request for the group's stimuli view (its items; not its sites)."""
        return FeatureRequest(model=self.model, dataset=self.dataset, split=self.split,
                              view=self.view, templates=self.templates,
                              class_names=self.class_names, modality=self.modality)


def _check_attention(request: FeatureRequest, sites: list[str]) -> None:
    """Attention sites need methods, methods need attention sites (clear errors)."""
    from vlprobe.extract.attention import is_attention_site, methods_of, missing_methods

    attn = [s for s in sites if is_attention_site(s)]
    if attn and not request.attention:
        raise missing_methods(attn[0])
    if request.attention and not attn:
        raise ConfigError(
            f"request of {request.model!r} on {request.dataset!r} gives attention methods "
            f"{list(request.attention)} but none of its sites is an attention site (*.attn)"
        )
    for site in attn:
        methods_of(list(request.attention), site)


def _activation_root(root: Any):
    from pathlib import Path

    return Path(root).expanduser() / "activations"


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def shard_size_for(extraction: Any, modality: str, pooling: Any, attention: Any) -> int:
    """``extraction.text_shard_size`` for a text-only extraction of pooled vectors (length
    bucketing works within a shard: larger shards pad less), else ``extraction.shard_size``
    (token-level outputs and attention keep the smaller unit: their per-shard buffers grow
    with the tokens)."""
    token_level = pooling == "none" or (
        isinstance(pooling, dict) and "none" in pooling.values())
    if modality == "text" and not attention and not token_level:
        return extraction.text_shard_size
    return extraction.shard_size
