"""Image preprocessing of the transformers adapters: the checkpoint's own image processor, a
documented fallback for bare configs, and the parameters that go into a model's identity.

The differentiable path (:meth:`~vlprobe.models.base.ModelAdapter.image_pixels`) runs the same
processor with ``do_normalize=False`` and applies :func:`processor_mean_std` in torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlprobe.models.hf_source import Source, hub_errors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PREPROCESS_KEYS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
    "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb",
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "value"):  # enums (PIL resampling)
        return _jsonable(value.value)
    return str(value)


def processor_identity(processor: Any) -> dict[str, Any]:
    """The preprocessing parameters of a transformers image processor that change numbers."""
    d = processor.to_dict() if hasattr(processor, "to_dict") else dict(vars(processor))
    out = {k: _jsonable(d[k]) for k in _PREPROCESS_KEYS if k in d}
    out["class"] = type(processor).__name__.removesuffix("Pil")
    return out


def default_image_processor(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Any:
    """The documented fallback preprocessing for a bare config (random_init without a
    ``preprocessor_config.json``): bilinear resize to ``image_size``², rescale to [0, 1],
    normalise with the standard ImageNet mean / std. PIL/numpy only (no torchvision)."""
    try:
        from transformers import ViTImageProcessorPil as Proc  # transformers >= 5
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ViTImageProcessor as Proc
    return Proc(
        do_resize=True,
        size={"height": int(image_size), "width": int(image_size)},
        resample=2,
        do_rescale=True,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
    )


def load_image_processor(source: Source, revision: str | None) -> Any | None:
    """The checkpoint's own image processor, or None where it has none."""
    from transformers import AutoImageProcessor

    if source.is_local and not (Path(source.ref) / "preprocessor_config.json").is_file():
        return None
    with hub_errors(source, revision, "image processor"):
        try:
            return AutoImageProcessor.from_pretrained(source.ref, revision=revision)
        except OSError:
            if source.kind == "random":
                return None
            raise


def to_rgb(images: Sequence[Any]) -> list[Any]:
    out = []
    for im in images:
        if hasattr(im, "mode") and im.mode != "RGB":
            im = im.convert("RGB")
        out.append(im)
    return out


def processor_mean_std(processor: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per RGB channel that ``processor`` normalises with (identity where it
    does not normalise)."""
    if not getattr(processor, "do_normalize", True):
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean = processor.image_mean
    std = processor.image_std
    mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(m) for m in mean]
    std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(v) for v in std]
    return tuple(mean), tuple(std)
