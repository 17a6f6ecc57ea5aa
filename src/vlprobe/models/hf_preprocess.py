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


def _size_field(size: Any, key: str) -> int | None:
    """``size[key]`` of a processor's ``size`` / ``crop_size`` (a dict, or transformers 5's
    ``SizeDict``); None where unset."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def processor_window(processor: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)``: the pixels of a ``width x height`` image that a
    transformers image processor keeps (its output, hence every feature map, covers exactly
    this window), in the image's own pixel coordinates.

    Cases (transformers' own geometry: resize, then ``top = int((H - h) / 2)``):

    - no centre crop: the whole image (a resize to ``height x width`` or of the shorter side
      keeps all of it);
    - ``do_center_crop`` after a resize of the shorter side to ``size["shortest_edge"]``
      (CLIP, BiT) or to ``size["height"] x size["width"]``: the crop ``crop_size``;
    - ConvNeXt-style ``crop_pct`` (e.g. ``microsoft/resnet-50``): a shorter side below 384 is
      resized to ``int(shortest_edge / crop_pct)``, then the centre ``shortest_edge`` square
      is cut; 384 and above are warped whole.

    Raises:
        ConfigError: for any other geometry (named), rather than guessing.
    """
    from vlprobe.errors import ConfigError

    size = getattr(processor, "size", None) or {}
    shortest = _size_field(size, "shortest_edge")
    crop_pct = getattr(processor, "crop_pct", None)
    whole = (0.0, 0.0, float(width), float(height))
    if crop_pct is not None and shortest is not None:  # ConvNeXt-style
        if shortest >= 384:
            return whole
        resized = _resize_shorter(width, height, int(shortest / crop_pct))
        return _centre_crop(width, height, resized, (shortest, shortest))
    if not getattr(processor, "do_center_crop", False):
        return whole
    crop = getattr(processor, "crop_size", None) or {}
    crop_hw = (_size_field(crop, "height"), _size_field(crop, "width"))
    h, w = _size_field(size, "height"), _size_field(size, "width")
    if None not in crop_hw and shortest is not None:
        return _centre_crop(width, height, _resize_shorter(width, height, shortest), crop_hw)
    if None not in crop_hw and h is not None and w is not None:
        return _centre_crop(width, height, (h, w), crop_hw)
    raise ConfigError(
        f"image processor {type(processor).__name__}: cannot tell which part of an image it "
        f"keeps (size {size}, crop_size {crop}); give a processor that resizes without a "
        "crop, or one with crop_size and size shortest_edge / height + width"
    )


def _resize_shorter(width: int, height: int, shortest: int) -> tuple[int, int]:
    """``(h, w)`` after resizing the shorter side to ``shortest`` (transformers'
    ``get_resize_output_image_size`` with ``default_to_square=False``)."""
    short, long = min(width, height), max(width, height)
    new_long = int(shortest * long / short)
    return (shortest, new_long) if height <= width else (new_long, shortest)


def _centre_crop(
    width: int, height: int, resized: tuple[int, int], crop: tuple[int, int]
) -> tuple[float, float, float, float]:
    """The original-image window of a ``crop`` (h, w) centre crop of the image resized to
    ``resized`` (h, w); clipped to the image where the crop is larger (padding)."""
    (rh, rw), (ch, cw) = resized, crop
    top, left = int((rh - ch) / 2.0), int((rw - cw) / 2.0)
    sy, sx = height / rh, width / rw
    return (
        max(0.0, left * sx), max(0.0, top * sy),
        min(float(width), (left + cw) * sx), min(float(height), (top + ch) * sy),
    )
