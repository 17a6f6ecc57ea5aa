"""V8 ``feature_vis``: feature visualisation by activation maximisation
(:mod:`~vlprobe.analyses.vision.featvis`: Fourier image, decorrelated colour, jitter / scale /
rotate robustness, Adam).

Each entry of ``targets`` names an objective and the units it visualises, for every model:

- ``{objective: channel, site: vision.blocks.10, units: [0, 1, 2, 3]}``: one image per channel
  (``neuron``: the unit at the central position instead of its mean over positions);
- ``{objective: layer, site: ...}``: DeepDream on a whole layer (one image);
- ``{objective: class, units: [1, 207, 430]}``: class logits of the model's own head
  (``site`` defaults to ``logits_site``, ``vision.logits``); each image is also classified by
  the model (``self_top1``, ``self_probability``: does the model see its class in it?);
- ``{objective: direction, prompts: ["a photo of a dog."]}``: a dual encoder's image embedding
  (``site`` defaults to the model's embedding site, ``vision.proj``) made to point along each
  prompt's text embedding; ``vectors: FILE.npy`` (``[n, D]``) gives directions directly.

``site`` may be a site name, ``last`` (the image tower's last layer, the default) or
``embedding``. Works for CNN and ViT image towers and for the image tower of dual encoders; a
model without an image tower, a unit index out of range or an unknown site is a
:class:`~vlprobe.errors.ConfigError`. ``n_diverse`` > 1 optimises that many images per unit
with Lucid's diversity term (``diversity`` weight). The analysis reads no dataset items (the
dataset's class names, where they fit the head, label the class images).

Table: per image ``objective_initial`` / ``objective_final`` (the objective on the random
start and on the final, untransformed image) and, for class images, ``self_top1`` /
``self_probability``. Figures: one grid per (model, target).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.vision import featvis as fv
from vlprobe.analyses.vision.attack import model_adapter
from vlprobe.errors import AnalysisError, ConfigError

KINDS = (*fv.OBJECTIVES, "class")


def _check_target(i: int, t: Any) -> dict[str, Any]:
    where = f"feature_vis: targets[{i}]"
    if not isinstance(t, dict):
        raise ConfigError(f"{where} must be a mapping such as {{objective: channel, units: "
                          f"[0, 1]}}, got {t!r}")
    unknown = sorted(set(t) - {"objective", "site", "units", "prompts", "vectors"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: objective, site, units, "
                          "prompts, vectors")
    kind = t.get("objective")
    if kind not in KINDS:
        raise ConfigError(f"{where}: objective must be one of {', '.join(KINDS)}, got {kind!r}")
    if t.get("site") is not None and not isinstance(t["site"], str):
        raise ConfigError(f"{where}: site must be a site name, 'last' or 'embedding'")
    units = t.get("units")
    if kind in ("channel", "neuron", "class"):
        if not isinstance(units, list) or not units or not all(
                isinstance(u, int) and not isinstance(u, bool) for u in units):
            raise ConfigError(f"{where}: objective {kind} needs units: a non-empty list of "
                              f"integer indices, got {units!r}")
        if min(units) < 0:
            raise ConfigError(f"{where}: unit indices must be >= 0, got {units}")
    if kind == "direction":
        prompts, vectors = t.get("prompts"), t.get("vectors")
        if (prompts is None) == (vectors is None):
            raise ConfigError(f"{where}: objective direction needs prompts (a list of texts) "
                              "or vectors (a .npy file), not both")
        if prompts is not None and (not isinstance(prompts, list) or not prompts
                                    or not all(isinstance(p, str) and p.strip()
                                               for p in prompts)):
            raise ConfigError(f"{where}: prompts must be a non-empty list of texts")
    return dict(t)


class FeatureVis(Analysis):
    """Activation maximisation (V8); see the module docstring.

    Params:
        targets: list of objectives (see the module docstring).
        size: image side in pixels (None = the model's own input size).
        steps, lr: Adam steps and learning rate (512, 0.05).
        fft, decorrelate, transforms, decay_power, jitter: the parameterisation and the
            robustness transforms (Fourier, decorrelated colour, on; 1.0; 8 px).
        n_diverse, diversity: images per unit and the weight of Lucid's diversity term.
        batch_size: images optimised at once. logits_site: the class objective's site.
    """

    name: ClassVar[str] = "feature_vis"
    catalogue: ClassVar[tuple[str, ...]] = ("V8",)
    summary: ClassVar[str] = ("Feature visualisation: channel / neuron / layer / class / "
                              "text-direction objectives, Fourier image, robustness transforms")
    defaults: ClassVar[dict[str, Any]] = {
        "targets": [{"objective": "channel", "site": "last", "units": [0, 1, 2, 3]}],
        "size": None,
        "steps": 512,
        "lr": 0.05,
        "fft": True,
        "decorrelate": True,
        "transforms": True,
        "decay_power": 1.0,
        "jitter": 8.0,
        "n_diverse": 1,
        "diversity": 0.0,
        "batch_size": 8,
        "logits_site": "vision.logits",
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        if not isinstance(p["targets"], list) or not p["targets"]:
            raise ConfigError("feature_vis: targets must be a non-empty list of objectives")
        self.targets = [_check_target(i, t) for i, t in enumerate(p["targets"])]
        for key, low, none in (("size", 16, True), ("steps", 0, False), ("n_diverse", 1, False),
                               ("batch_size", 1, False)):
            v = p[key]
            if not (v is None and none) and (isinstance(v, bool) or not isinstance(v, int)
                                              or v < low):
                raise ConfigError(f"feature_vis: {key} must be an integer >= {low}"
                                  f"{' or null' if none else ''}, got {v!r}")
        for key in ("lr", "decay_power", "jitter", "diversity"):
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v) \
                    or v < 0 or (key == "lr" and v == 0):
                raise ConfigError(f"feature_vis: {key} must be a number >= 0"
                                  f"{' (> 0)' if key == 'lr' else ''}, got {v!r}")
        for key in ("fft", "decorrelate", "transforms"):
            if not isinstance(p[key], bool):
                raise ConfigError(f"feature_vis: {key} must be true or false, got {p[key]!r}")

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        for model in self.models:
            model_adapter(source, model, self.name)
        return []

    # -- resolving targets against a model -------------------------------------------------
    def _site(self, adapter: Any, target: dict[str, Any]) -> str:
        site = target.get("site")
        kind = target["objective"]
        if site is None:
            site = {"class": self.params["logits_site"]}.get(
                kind, "embedding" if kind == "direction" else "last")
        if site == "last":
            site = adapter.layer_sites("image")[-1]
        elif site == "embedding":
            site = adapter.embedding_site("image")
        adapter.check_sites([site])
        return site

    def _directions(self, adapter: Any, model: str, target: dict[str, Any]) -> tuple[
            np.ndarray, list[str]]:
        from vlprobe.settings import expand_path

        if target.get("prompts") is not None:
            if "text" not in adapter.modalities:
                raise ConfigError(f"feature_vis: model {model!r} has no text tower; a direction "
                                  "from prompts needs a dual encoder (or give vectors)")
            site = adapter.embedding_site("text")
            batch = adapter.prepare(list(target["prompts"]), "text")
            vectors = np.asarray(adapter.forward(batch, [site]).hidden[site], dtype=np.float32)
            return vectors, [f"'{p}'" for p in target["prompts"]]
        path = expand_path(str(target["vectors"]))
        if not path.is_file():
            raise ConfigError(f"feature_vis: vectors file {target['vectors']!r} does not exist")
        vectors = np.atleast_2d(np.load(path)).astype(np.float32)
        if vectors.ndim != 2:
            raise ConfigError(f"feature_vis: {path} must hold [n, D] direction vectors")
        return vectors, [f"{path.name}[{i}]" for i in range(len(vectors))]

    def objectives(self, adapter: Any, model: str, size: tuple[int, int],
                   class_names: list[str] | None) -> list[tuple[int, fv.Objective]]:
        """(target index, objective) for every image to optimise (one per unit)."""
        import torch

        sites = {i: self._site(adapter, t) for i, t in enumerate(self.targets)}
        with torch.no_grad():
            probe = torch.full((1, 3, *size), 0.5)
            try:
                acts = adapter.forward_differentiable(probe, list(dict.fromkeys(sites.values())))
            except (ValueError, RuntimeError) as exc:  # e.g. a ViT at another image size
                raise ConfigError(f"feature_vis: model {model!r} cannot run on {size[0]} x "
                                  f"{size[1]} px images ({exc}); leave size null for the "
                                  "model's own input size") from None
        out = []
        for i, t in enumerate(self.targets):
            site, kind = sites[i], t["objective"]
            shape = tuple(acts[site].shape[1:])
            n = fv.n_units(shape)
            if kind == "layer":
                out.append((i, fv.Objective("layer", site, label=f"{site} (layer)")))
            elif kind == "direction":
                vectors, labels = self._directions(adapter, model, t)
                if vectors.shape[1] != n:
                    raise ConfigError(f"feature_vis: targets[{i}]: direction vectors have "
                                      f"{vectors.shape[1]} dims but site {site!r} of model "
                                      f"{model!r} has {n}")
                out += [(i, fv.Objective("direction", site, vector=v, label=lab))
                        for v, lab in zip(vectors, labels)]
            else:
                if kind == "class" and len(shape) != 1:
                    raise ConfigError(f"feature_vis: targets[{i}]: class objectives need a "
                                      f"logits site [B, K]; {site!r} has shape {list(shape)}")
                bad = [u for u in t["units"] if u >= n]
                if bad:
                    raise ConfigError(f"feature_vis: targets[{i}]: unit(s) {bad} out of range: "
                                      f"site {site!r} of model {model!r} has {n} channels "
                                      f"(0..{n - 1})")
                names = class_names if kind == "class" and class_names and \
                    len(class_names) == n else None
                for u in t["units"]:
                    label = f"{names[u]} ({u})" if names else f"{site} #{u}"
                    out.append((i, fv.Objective("channel" if kind == "class" else kind, site,
                                                unit=u, label=label)))
        return out

    # -- running ---------------------------------------------------------------------------
    def run(self, source: FeatureSource) -> Result:
        import pandas as pd
        import torch

        from vlprobe.analyses.vision.plots import plot_feature_grid
        from vlprobe.analyses.vision.wordnet import readable_names

        p = self.params
        class_names = None
        splits = source.splits(self.dataset)
        if any(t["objective"] == "class" for t in self.targets) and splits:
            names = source.stimuli(FeatureRequest(self.models[0], self.dataset,
                                                  splits[0])).label_names
            class_names = readable_names(names)
        rows: list[dict[str, Any]] = []
        figures: dict[str, Any] = {}
        for m, model in enumerate(self.models):
            adapter = model_adapter(source, model, self.name)
            if p["size"] is None:
                size = tuple(adapter.image_pixels([_gray()]).shape[-2:])
            else:
                size = (int(p["size"]), int(p["size"]))
            planned = self.objectives(adapter, model, size, class_names)
            images: dict[int, list[tuple[np.ndarray, str]]] = {}
            per_chunk = max(1, int(p["batch_size"]) // int(p["n_diverse"]))
            for c in range(0, len(planned), per_chunk):
                chunk = planned[c:c + per_chunk]
                seed = int(np.random.SeedSequence([self.seed, m, c]).generate_state(1)[0])
                res = fv.visualize(
                    adapter, [o for _, o in chunk], size, steps=int(p["steps"]),
                    lr=float(p["lr"]), seed=seed, fft=p["fft"], decorrelate=p["decorrelate"],
                    transforms=p["transforms"], decay_power=float(p["decay_power"]),
                    n_diverse=int(p["n_diverse"]), diversity=float(p["diversity"]),
                    jitter=float(p["jitter"]), device=str(getattr(adapter, "device", "cpu")))
                for k in range(len(res.images)):
                    i, obj = chunk[k // int(p["n_diverse"])]
                    copy = k % int(p["n_diverse"])
                    kind = self.targets[i]["objective"]
                    base = {"analysis": self.name, "model": model, "dataset": self.dataset,
                            "layer": adapter.layer_index(obj.site), "site": obj.site,
                            "objective": kind, "target": i, "unit": obj.unit, "copy": copy,
                            "label": obj.label, "size": int(size[0]), "steps": int(p["steps"]),
                            "seed": self.seed}
                    rows.append({**base, "metric": "objective_initial",
                                 "value": float(res.initial[k])})
                    rows.append({**base, "metric": "objective_final",
                                 "value": float(res.final[k])})
                    if kind == "class":
                        with torch.no_grad():
                            logits = adapter.forward_differentiable(
                                torch.as_tensor(res.images[k:k + 1]), [obj.site])[obj.site][0]
                        logits = logits.detach().float()
                        prob = torch.softmax(logits, 0)
                        rows.append({**base, "metric": "self_top1",
                                     "value": float(int(logits.argmax()) == obj.unit)})
                        rows.append({**base, "metric": "self_probability",
                                     "value": float(prob[obj.unit])})
                    images.setdefault(i, []).append((res.images[k], obj.label))
            for i, shown in images.items():
                t = self.targets[i]
                figures[f"featvis_{model}_{i}_{t['objective']}"] = plot_feature_grid(
                    [im for im, _ in shown], [lab for _, lab in shown],
                    title=f"{model}: {t['objective']} visualisations "
                          f"({size[0]} px, {p['steps']} steps)")
        if not rows:
            raise AnalysisError("feature_vis: nothing to visualise")
        notes = [f"feature_vis: Fourier parameterisation {p['fft']}, decorrelated colour "
                 f"{p['decorrelate']}, robustness transforms {p['transforms']}; images start "
                 "from seeded noise"]
        return Result(analysis=self.name, catalogue=self.catalogue, table=pd.DataFrame(rows),
                      figures=figures, params=dict(p), notes=notes)


def _gray() -> Any:
    from PIL import Image

    return Image.new("RGB", (64, 64), (128, 128, 128))
