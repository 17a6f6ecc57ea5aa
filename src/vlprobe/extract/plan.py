"""What one extraction call computes: its sites, each hidden-state site's pooling, each
attention site's methods, and the resulting outputs (one store entry and one feature each).

Output names: a hidden-state site's output is named by the site (``"fusion.blocks.3"``, pooled
``[N, D]``); an attention site gives one output per method, named ``"<site>@<reducer>"``
(``[N, H, ...]`` float32), ``"<site>@raw"`` and ``"<site>@raw_tags"`` (ragged; see
:mod:`vlprobe.extract.attention`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vlprobe.errors import ConfigError
from vlprobe.extract.attention import (
    RAW,
    RAW_TAGS,
    attention_output,
    companion_sites,
    is_attention_site,
    resolve_attention,
)
from vlprobe.extract.keys import hash_key, make_key_dict, stimuli_identity
from vlprobe.extract.reducers import reducer_of
from vlprobe.modality import check_sites_for
from vlprobe.modality import resolve_modality as modality_rule
from vlprobe.pooling import check_pooling, grid_size, is_pooled_site


@dataclass(frozen=True)
class Output:
    """One output of an extraction call (= one store entry).

    Attributes:
        name: the feature name (the site for hidden states; ``site@method`` for attention).
        site: the captured site.
        method: the pooling (hidden states), ``reduce:<name>``, ``raw`` or ``raw_tags``.
        kind: the store entry kind (``dense`` or ``ragged``).
        dtype: the store entry dtype (``float32`` or ``float16``).
    """

    name: str
    site: str
    method: str
    kind: str = "dense"
    dtype: str = "float32"


def resolve_sites(adapter: Any, modality: str, sites: Sequence[str] | None) -> list[str]:
    """Requested sites (default: every layer of the tower plus its embedding site)."""
    if sites is None:
        out = list(adapter.layer_sites(modality))
        emb = adapter.embedding_site(modality)
        if emb in adapter.sites() and emb not in out:
            out.append(emb)
    else:
        if isinstance(sites, str):
            sites = [sites]
        out = list(dict.fromkeys(sites))
    if not out:
        raise ConfigError("no sites to extract")
    adapter.check_sites(out)
    check = getattr(adapter, "check_modality_sites", None)
    if check is not None:  # a ModelAdapter: its own streams per modality
        check(modality, out)
    else:
        check_sites_for(modality, out, getattr(adapter, "family", "model"))
    return out


def resolve_pooling(
    adapter: Any,
    sites: Sequence[str],
    pooling: str | Mapping[str, str] | None,
    modality: str | None = None,
) -> dict[str, str]:
    """Pooling per hidden-state site.

    A string (or None = the adapter's default for the tower, ``adapter.pooling_for(modality)``
    / ``adapter.default_pooling``) applies to hidden-state sites; embedding / logits sites
    (already ``[B, D]``) get ``"none"``. A dict sets sites explicitly; sites it does not name
    get the defaults. ``grid<g>`` (e.g. ``grid7``, a ``g x g`` spatial map stored as
    ``[N, C*g*g]``) is accepted for image towers only.
    """
    default = None
    if modality is not None and hasattr(adapter, "pooling_for"):
        default = adapter.pooling_for(modality)
    default = default or getattr(adapter, "default_pooling", None) or "mean"
    explicit: dict[str, str] = {}
    if isinstance(pooling, Mapping):
        unknown = sorted(set(pooling) - set(sites))
        if unknown:
            raise ConfigError(f"pooling given for site(s) not requested: {', '.join(unknown)}")
        explicit = dict(pooling)
    elif pooling is not None:
        default = pooling
    out = {}
    for site in sites:
        method = explicit.get(site) or ("none" if is_pooled_site(site) else default)
        try:
            check_pooling(method)
        except ConfigError as exc:
            raise ConfigError(f"site {site!r}: {exc}") from None
        if grid_size(method) is not None and modality == "text":
            raise ConfigError(
                f"pooling {method!r} (a spatial grid) applies to image feature maps / patch "
                f"tokens, not to the text tower (site {site!r})"
            )
        out[site] = method
    return out


def resolve_outputs(
    adapter: Any,
    modality: str,
    sites: Sequence[str] | None,
    pooling: str | Mapping[str, Any] | None,
    attention: Any = None,
) -> list[Output]:
    """The outputs of one extraction call, in site order.

    ``pooling``: a hidden-state pooling for every hidden-state site, or a dict site -> method
    where an attention site's value is one attention method or a list of them. ``attention``:
    the methods of the attention sites that the ``pooling`` dict does not name: one method or
    a list for every attention site, or a dict site -> method(s).

    Raises:
        ConfigError: unknown site / pooling / method, an attention site without a method, an
            attention method given as the hidden-state pooling.
    """
    site_list = resolve_sites(adapter, modality, sites)
    attn_sites = [s for s in site_list if is_attention_site(s)]
    hidden = [s for s in site_list if not is_attention_site(s)]
    from_pooling: dict[str, Any] = {}
    hidden_pooling: Any = pooling
    if isinstance(pooling, Mapping):
        unknown = sorted(set(pooling) - set(site_list))
        if unknown:
            raise ConfigError(f"pooling given for site(s) not requested: {', '.join(unknown)}")
        hidden_pooling = {s: m for s, m in pooling.items() if not is_attention_site(s)}
        from_pooling = {s: m for s, m in pooling.items() if is_attention_site(s)}
    elif isinstance(pooling, str) and (pooling == RAW or reducer_of(pooling) is not None):
        raise ConfigError(
            f"pooling {pooling!r} is an attention method; pooling names the hidden-state "
            f"pooling. Give attention methods with attention={pooling!r} (every attention "
            "site) or a pooling dict entry {site: [methods]}"
        )
    poolings = resolve_pooling(adapter, hidden, hidden_pooling, modality) if hidden else {}
    methods = resolve_attention(attn_sites, from_pooling, attention)
    for site, ms in methods.items():  # reducers reading token vectors: the model has them?
        extra = companion_sites(site, ms)
        absent = [s for s in extra if s not in adapter.sites()]
        if absent:
            raise ConfigError(
                f"attention site {site!r}: {', '.join(ms)} needs the token vectors at "
                f"{', '.join(absent)}, which model {getattr(adapter, 'family', '?')!r} does "
                "not have"
            )
    outputs: list[Output] = []
    for site in site_list:
        if site in poolings:
            outputs.append(Output(site, site, poolings[site]))
            continue
        for method in methods[site]:
            if method == RAW:
                outputs.append(Output(attention_output(site, RAW), site, RAW, "ragged", "float16"))
                outputs.append(
                    Output(attention_output(site, RAW_TAGS), site, RAW_TAGS, "ragged", "float32")
                )
            else:
                outputs.append(Output(attention_output(site, method), site, method))
    return outputs


def resolve_modality(adapter: Any, stimuli: Any, modality: str | None) -> str:
    """The modality to run (:func:`vlprobe.modality.resolve_modality` on this model and data)."""
    return modality_rule(
        adapter.modalities, stimuli.modalities, modality,
        model=getattr(adapter, "family", type(adapter).__name__), dataset=stimuli.dataset,
    )


def _key_dicts(
    adapter: Any, stimuli: Any, modality: str, outputs: Sequence[Output]
) -> dict[str, dict[str, Any]]:
    """output name -> store key dict of one extraction (the outputs in order)."""
    ident = adapter.identity()
    stim_ident = stimuli_identity(stimuli)
    return {
        out.name: make_key_dict(ident, stim_ident, modality=modality, site=out.site,
                                pooling=out.method)
        for out in outputs
    }


def feature_keys(
    adapter: Any,
    stimuli: Any,
    *,
    modality: str | None = None,
    sites: Sequence[str] | None = None,
    pooling: str | Mapping[str, str] | None = None,
    attention: Any = None,
) -> dict[str, str]:
    """output name -> the store key that :func:`extract_features` with the same arguments
    reads or writes, computed without touching the store or running the model (a paired
    set's image side is keyed on its distinct images, as extraction does)."""
    modality = resolve_modality(adapter, stimuli, modality)
    shared = stimuli.unique_images() if modality == "image" else None
    if shared is not None:
        stimuli = shared[0]
    outputs = resolve_outputs(adapter, modality, sites, pooling, attention)
    return {name: hash_key(kd) for name, kd in _key_dicts(adapter, stimuli, modality,
                                                          outputs).items()}
