"""Small helpers shared by the multimodal analyses (M1-M6). Each does one thing (the
zero-shot classifier itself is :mod:`vlprobe.analyses.multimodal.zeroshot_classifier`):

- :func:`require_towers`: AnalysisError unless a model has the towers an analysis needs
  (default: both an image and a text tower).
- :func:`embedding_requests`: the image-item and class-prompt/caption FeatureRequests at the
  models' final embedding sites (``vision.proj`` / ``text.proj``), one extraction each.
- :func:`unit_rows`: L2-normalised rows (errors on zero / non-finite rows).
- :func:`logit_params`: the model's logit scale and bias (+ a note where it has none).
- :func:`binomial_ci`: Clopper-Pearson interval of an accuracy.
- :func:`paired_embeddings`: unit image and caption embeddings of a paired split, images
  deduplicated by ``image_id``, with the image of every caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vlprobe.analyses.base import FeatureRequest, FeatureSource, LayerFeatures
from vlprobe.errors import AnalysisError


def require_towers(source: FeatureSource, analysis: str, model: str,
                   towers: Sequence[str] = ("image", "text")) -> None:
    """AnalysisError naming the model unless it accepts every input in ``towers`` (default:
    image and text, a dual encoder)."""
    modalities = tuple(source.model_modalities(model))
    missing = [m for m in towers if m not in modalities]
    if not missing:
        return
    if len(towers) == 2:
        need = ("compares images with texts in a joint embedding space, so it needs a dual "
                "encoder (clip, siglip, open_clip, aligned_dual)")
    else:
        need = f"needs an {towers[0]} tower"
    raise AnalysisError(
        f"{analysis}: model {model!r} ({'/'.join(modalities) or 'no input'}) has no "
        f"{' and no '.join(missing)} tower; this analysis {need}"
    )


def embedding_requests(
    source: FeatureSource, model: str, dataset: str, split: str,
    templates: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
) -> tuple[FeatureRequest, FeatureRequest]:
    """(image request, text request) at the model's final embedding sites.

    With ``templates``: the text side is the class-prompt view (one text per (class,
    template), class-major, ``class_names`` replacing the dataset's names when given);
    without: the split's own texts (captions). Only the embedding site is captured, so a
    prompt or an image costs one tower forward and one stored vector.
    """
    image_site = source.embedding_site(model, "image")
    text_site = source.embedding_site(model, "text")
    image = FeatureRequest(model, dataset, split, sites=(image_site,), modality="image")
    if templates is None:
        text = FeatureRequest(model, dataset, split, sites=(text_site,), modality="text")
    else:
        text = FeatureRequest(
            model, dataset, split, sites=(text_site,), view="class_prompts",
            templates=tuple(templates), modality="text",
            class_names=None if class_names is None else tuple(class_names),
        )
    return image, text


def only_site(feats: LayerFeatures, request: FeatureRequest) -> np.ndarray:
    """The ``[N, E]`` features of the request's single site."""
    site = request.sites[0] if request.sites else None
    if site not in feats.features:
        raise AnalysisError(f"model {request.model!r}: site {site!r} was not extracted "
                            f"(have {sorted(feats.features)})")
    return np.asarray(feats.features[site])


#: rows per chunk of :func:`unit_rows`.
UNIT_CHUNK = 4096


def unit_rows(x: np.ndarray, what: str, ids: Sequence[str] | None = None) -> np.ndarray:
    """``[N, E]`` float32 rows scaled to unit L2 norm (norms computed in float64).

    Raises AnalysisError naming ``what`` and the first bad item for a non-finite or all-zero
    row (it has no direction, so no cosine).
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise AnalysisError(f"{what}: expected [N, E] embeddings, got shape {x.shape}")
    out = np.empty(x.shape, dtype=np.float32)
    # in row chunks: the same row-wise float64 arithmetic (identical values) without a
    # float64 copy of the whole matrix (80,000 prompts x 512: 3x faster)
    for start in range(0, len(x), UNIT_CHUNK):
        rows = np.asarray(x[start:start + UNIT_CHUNK], dtype=np.float64)
        norms = np.linalg.norm(rows, axis=1)
        bad = ~np.isfinite(norms) | (norms == 0)
        if bad.any():  # count them all for the message
            every = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1)
            every = ~np.isfinite(every) | (every == 0)
            i = start + int(np.flatnonzero(bad)[0])
            item = ids[i] if ids is not None and i < len(ids) else f"row {i}"
            raise AnalysisError(f"{what}: {int(every.sum())} embedding(s) are all zeros or not "
                                f"finite (first: {item}); a cosine needs a finite direction")
        out[start:start + UNIT_CHUNK] = rows / norms[:, None]
    return out


def logit_params(source: FeatureSource, model: str) -> tuple[float, float | None, list[str]]:
    """``(scale, bias, notes)``: the model's image-text logits are ``scale * cos + bias``.

    A model without a learnt scale gets ``scale = 1``, no bias, and a note (ranks and
    accuracies do not depend on either; only the probabilities do).
    """
    getter = getattr(source, "logit_scale", None)
    params = getter(model) if getter is not None else None
    if not params:
        return 1.0, None, [f"model {model!r} has no logit scale; probabilities are softmaxes of "
                           "raw cosines (uncalibrated); ranks and accuracies are unaffected"]
    bias = params.get("bias")
    return float(params["scale"]), None if bias is None else float(bias), []


def binomial_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of a proportion ``successes / n``."""
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


@dataclass
class PairedEmbeddings:
    """Unit embeddings of a paired (image, caption) split.

    Attributes:
        images: ``[N_img, E]`` unit image embeddings, one per distinct image (first
            occurrence order). texts: ``[N_txt, E]`` unit caption embeddings, one per item.
        image_of_text: ``[N_txt]`` index into ``images`` of each caption's image.
        image_ids: N_img image ids. text_ids: N_txt item ids. captions: N_txt strings.
        image_site / text_site: where the embeddings were read.
    """

    images: np.ndarray
    texts: np.ndarray
    image_of_text: np.ndarray
    image_ids: list[str]
    text_ids: list[str]
    captions: list[str]
    image_site: str
    text_site: str


def paired_requests(source: FeatureSource, analysis: str, model: str, dataset: str,
                    split: str) -> tuple[FeatureRequest, FeatureRequest]:
    """The image and caption requests of a paired split (checks that it has captions)."""
    splits = source.splits(dataset)
    if split not in splits:
        raise AnalysisError(f"{analysis}: dataset {dataset!r} has no split {split!r}; "
                            f"available: {splits}")
    have = tuple(source.dataset_modalities(dataset))
    if "image" not in have or "text" not in have:
        raise AnalysisError(
            f"{analysis}: dataset {dataset!r} ({'/'.join(have)}) has no "
            f"{'captions' if 'text' not in have else 'images'}: image-text retrieval needs "
            "(image, caption) pairs, e.g. flickr8k (view: caption) or coco_captions "
            "(per: caption)"
        )
    return embedding_requests(source, model, dataset, split)


def paired_embeddings(source: FeatureSource, analysis: str, model: str, dataset: str,
                      split: str) -> PairedEmbeddings:
    """Read a paired split's image and caption embeddings (see :class:`PairedEmbeddings`).

    Items sharing an ``image_id`` descriptor share one image; without the descriptor every
    item is its own image. Fewer than 2 distinct images is an AnalysisError (retrieval among
    one candidate is trivial).
    """
    req_img, req_txt = paired_requests(source, analysis, model, dataset, split)
    f_img, f_txt = source.get(req_img), source.get(req_txt)
    if list(f_img.ids) != list(f_txt.ids):
        raise AnalysisError(f"{analysis}: model {model!r}: the image and text features of "
                            f"{dataset!r}/{split!r} are not aligned item by item")
    stimuli = source.stimuli(req_txt)
    if stimuli.texts is None:
        raise AnalysisError(f"{analysis}: dataset {dataset!r} split {split!r} has no captions")
    keys = stimuli.descriptors.get("image_id") or list(f_img.ids)
    index: dict[object, int] = {}
    image_of_text = np.fromiter((index.setdefault(k, len(index)) for k in keys), np.int64,
                                len(keys))
    if len(index) < 2:
        raise AnalysisError(f"{analysis}: dataset {dataset!r} split {split!r} has "
                            f"{len(index)} distinct image(s); retrieval needs at least 2")
    first = np.unique(image_of_text, return_index=True)[1]
    where = f"{analysis}: model {model!r} on {dataset!r}/{split!r}"
    img = only_site(f_img, req_img)[first]
    return PairedEmbeddings(
        images=unit_rows(img, f"{where} images", [str(keys[i]) for i in first]),
        texts=unit_rows(only_site(f_txt, req_txt), f"{where} captions", f_txt.ids),
        image_of_text=image_of_text,
        image_ids=[str(keys[i]) for i in first],
        text_ids=list(f_txt.ids),
        captions=list(stimuli.texts),
        image_site=req_img.sites[0],
        text_site=req_txt.sites[0],
    )
