"""V5 ``reconstruction_probe``: how much pixel information does a layer keep?

Protocol (SCIENCE.md V5; seed 000 §3.3, fig 7):

1. Features of the image tower at a few layers (default: 4 evenly spaced layers ending at the
   last one, like the paper's 4 stages), pooled to a coarse ``g x g`` spatial map
   (``grid<g>`` pooling: ``[N, C*g*g]`` in the store, ``[N, C, g, g]`` here).
2. Targets: the dataset's own images, centre-cropped to a square and resized to
   ``image_size`` (PIL bilinear, antialiased), RGB (or luma) in [0, 1], *before* any model
   normalisation.
3. Per (model, layer) a small convolutional decoder (1x1 conv to ``width`` channels, then
   upsample x2 + 3x3 conv + ReLU stages up to ``image_size``, final 3x3 conv + sigmoid;
   :func:`~vlprobe.estimators.decoder.build_decoder`) is
   trained with Adam on MSE, input channels standardised with training statistics, early
   stopping on a validation split carved from train (never test; checked on item ids; test
   images with the same bytes as train images are counted in the notes).
4. Reported on the test split: MSE per pixel and PSNR (``10 log10(1 / MSE)``), next to two
   reference levels: ``mean_image_mse`` (predict the mean training image: no information)
   and ``mean_colour_mse`` (each test image's own mean colour: colour without layout).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses._common import (
    assert_disjoint_ids,
    check_finite,
    check_layer_spec,
    fit_standardizer,
    run_device,
    select_layer_sites,
    split_pair_duplicates,
)
from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.vision.plots import plot_mse_vs_layer, plot_reconstruction_examples
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.estimators.decoder import fit_decoder

__all__ = ["ReconstructionProbe", "default_layer_indices", "load_targets"]


def load_targets(stimuli: Any, size: int, grayscale: bool = False) -> np.ndarray:
    """Every image of ``stimuli``: square centre crop, PIL bilinear (antialiased) resize to
    ``size``, RGB or luma ("L") scaled to [0, 1]: ``[N, 3 or 1, size, size]`` float32."""
    from PIL import Image

    out = np.empty((len(stimuli), 1 if grayscale else 3, size, size), dtype=np.float32)
    for i in range(len(stimuli)):
        img = stimuli.payloads("image", [i])[0].convert("L" if grayscale else "RGB")
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
        img = img.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        out[i] = arr[None] if grayscale else arr.transpose(2, 0, 1)
    return out



def default_layer_indices(n_layers: int, k: int = 4) -> list[int]:
    """``k`` evenly spaced layer indices ending at the last layer ``n_layers - 1``, skipping
    layer 0 (the embedding output) when there are more layers: 13 layers -> 3, 6, 9, 12."""
    last = n_layers - 1
    if last <= 0:
        return [0]
    if last <= k:
        return list(range(1, last + 1))
    return sorted({round(last * (i + 1) / k) for i in range(k)})


class ReconstructionProbe(Analysis):
    """Reconstruction of the input image from frozen intermediate feature maps (V5).

    Params:
        train_split / test_split: split names (``"train"`` / ``"test"``).
        layers: ``None`` (default: 4 evenly spaced layers, see :func:`default_layer_indices`),
            ``"all"``, ``"last"``, an int or a list of layer indices (negative from the end).
        grid: side ``g`` of the pooled feature map (7); the store key holds ``grid<g>``.
        image_size: side of the reconstructed image (32). grayscale: luma targets (False).
        epochs: maximum training epochs (30); patience: early-stopping patience on val (5).
        batch_size (64), lr (2e-3), weight_decay (0.0), width (32, decoder channels after
            the 1x1 conv; halved per upsampling stage, at least 16; CPU-sized).
        val_fraction: fraction of train carved out for validation (0.2).
        max_train: use at most this many train items (seeded choice), ``None`` = all.
        n_examples: test images shown in the examples figure (6).
        x_axis: ``"relative"`` (layer / deepest layer of that model) or ``"layer"``.

    The decoders train on the run's device (``FeatureSource.device``). Torch's thread count
    is the process's (set ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` outside: one
    thread is fastest for these small convolutions on a busy CPU).
    """

    name: ClassVar[str] = "reconstruction_probe"
    catalogue: ClassVar[tuple[str, ...]] = ("V5",)
    summary: ClassVar[str] = "Conv decoder reconstructs the input from a frozen feature map"
    defaults: ClassVar[dict[str, Any]] = {
        "train_split": "train",
        "test_split": "test",
        "layers": None,
        "grid": 7,
        "image_size": 32,
        "grayscale": False,
        "epochs": 30,
        "patience": 5,
        "batch_size": 64,
        "lr": 2e-3,
        "weight_decay": 0.0,
        "width": 32,
        "val_fraction": 0.2,
        "max_train": None,
        "n_examples": 6,
        "x_axis": "relative",
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        ints = ("grid", "image_size", "epochs", "patience", "batch_size", "width", "n_examples")
        for key in ints:
            if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1:
                raise ConfigError(f"{self.name}: {key} must be a positive int, got {p[key]!r}")
        mt = p["max_train"]
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 2):
            raise ConfigError(f"{self.name}: max_train must be None or an int >= 2, got {mt!r}")
        if not 0.0 < float(p["val_fraction"]) < 1.0:
            raise ConfigError(f"{self.name}: val_fraction must be in (0, 1), got "
                              f"{p['val_fraction']}")
        if not float(p["lr"]) > 0 or not float(p["weight_decay"]) >= 0:
            raise ConfigError(f"{self.name}: lr must be > 0 and weight_decay >= 0")
        if not isinstance(p["grayscale"], bool):
            raise ConfigError(f"{self.name}: grayscale must be true or false")
        if p["x_axis"] not in ("relative", "layer"):
            raise ConfigError(f"{self.name}: x_axis must be 'relative' or 'layer'")
        if p["train_split"] == p["test_split"]:
            raise ConfigError(f"{self.name}: train_split and test_split must differ")
        check_layer_spec(self.name, "layers", p["layers"], ("all", "last"), allow_none=True)

    # ----------------------------------------------------------------------------------------
    def _sites(self, source: FeatureSource) -> dict[str, list[str]]:
        """model -> the image-tower layer sites to decode; clear errors for non-image input."""
        if "image" not in source.dataset_modalities(self.dataset):
            raise AnalysisError(
                f"{self.name}: dataset {self.dataset!r} has no images "
                f"({'/'.join(source.dataset_modalities(self.dataset))} items); "
                "reconstruction needs image inputs"
            )
        splits = source.splits(self.dataset)
        for split in (self.params["train_split"], self.params["test_split"]):
            if split not in splits:
                raise AnalysisError(f"{self.name}: dataset {self.dataset!r} has no split "
                                    f"{split!r}; available: {splits}")
        out = {}
        for model in self.models:
            if "image" not in source.model_modalities(model):
                raise AnalysisError(
                    f"{self.name}: model {model!r} has no image tower "
                    f"({'/'.join(source.model_modalities(model))} only); it cannot be probed "
                    "for image reconstruction"
                )
            names = source.layer_sites(model, "image")  # index = catalogue layer index
            out[model] = select_layer_sites(
                {name: i for i, name in enumerate(names)}, self.params["layers"], model,
                default=default_layer_indices(len(names)), analysis=self.name)
        return out

    def _request(self, model: str, split: str, sites: list[str] | None) -> FeatureRequest:
        return FeatureRequest(
            model, self.dataset, split, sites=tuple(sites) if sites else None,
            pooling=f"grid{int(self.params['grid'])}", modality="image",
        )

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        p = self.params
        return [
            self._request(m, p[s], sites)
            for m, sites in self._sites(source).items()
            for s in ("train_split", "test_split")
        ]

    # ----------------------------------------------------------------------------------------
    def _carve(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Seeded (fit, val) index arrays of the train split (``max_train`` applied first)."""
        n = len(ids)
        if n < 2:
            raise AnalysisError(
                f"{self.name}: split {self.params['train_split']!r} of dataset "
                f"{self.dataset!r} has {n} item(s); a decoder needs at least 2 (fit + val)"
            )
        order = np.random.default_rng(self.seed).permutation(n)
        if self.params["max_train"] is not None:
            order = order[: int(self.params["max_train"])]
        n_val = round(float(self.params["val_fraction"]) * len(order))
        n_val = min(len(order) - 1, max(1, n_val))
        return np.sort(order[n_val:]), np.sort(order[:n_val])  # disjoint slices of one order

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        p = self.params
        g, size = int(p["grid"]), int(p["image_size"])
        plan = self._sites(source)
        notes = split_pair_duplicates(source, self.name, self.models[0], self.dataset,
                                      p["train_split"], p["test_split"])
        targets: dict[str, tuple[list[str], np.ndarray]] = {}
        for split in (p["train_split"], p["test_split"]):
            stim = source.stimuli(FeatureRequest(self.models[0], self.dataset, split))
            targets[split] = (list(stim.ids), load_targets(stim, size, bool(p["grayscale"])))
        ids_all, y_all = targets[p["train_split"]]
        ids_te, yte = targets[p["test_split"]]
        tr, va = self._carve(ids_all)
        ids_tr, ids_va = [ids_all[i] for i in tr], [ids_all[i] for i in va]
        assert_disjoint_ids(ids_tr, ids_va, f"the training part of split {p['train_split']!r}",
                            "the validation split carved from it (duplicate item ids?)")
        assert_disjoint_ids(ids_va, ids_te, "validation split", f"split {p['test_split']!r}")
        assert_disjoint_ids(ids_tr, ids_te, f"split {p['train_split']!r}",
                            f"split {p['test_split']!r}")
        ytr, yva = y_all[tr], y_all[va]
        mean_img = ytr.mean(axis=0, keepdims=True)
        base_mse = float(np.mean((yte - mean_img) ** 2))
        colour_mse = float(np.mean((yte - yte.mean(axis=(2, 3), keepdims=True)) ** 2))
        notes.append(
            f"{self.name}: reference levels on the test split: mean training image MSE "
            f"{base_mse:.5f} (PSNR {_psnr(base_mse):.2f} dB, no information), each test image's "
            f"own mean colour MSE {colour_mse:.5f} (PSNR {_psnr(colour_mse):.2f} dB). Targets are "
            "the dataset images (square centre crop); a model whose preprocessing crops "
            "further never saw the border pixels."
        )
        rows: list[dict[str, Any]] = []
        examples: dict[str, np.ndarray] = {}
        still: list[str] = []
        for model, sites in plan.items():
            ftr = source.get(self._request(model, p["train_split"], sites))
            fte = source.get(self._request(model, p["test_split"], sites))
            for what, f, ids in (("train", ftr, ids_all), ("test", fte, ids_te)):
                if list(f.ids) != ids:
                    raise AnalysisError(f"{self.name}: model {model!r}: {what} feature rows do "
                                        "not match the dataset items (ids differ)")
            for site in sites:
                a, b = _as_grid(ftr.features[site], g, model, site), _as_grid(
                    fte.features[site], g, model, site)
                check_finite(a, model, site)
                check_finite(b, model, site)
                mean, scale = fit_standardizer(a[tr].transpose(0, 2, 3, 1).reshape(-1, a.shape[1]))
                norm = [((x - mean[None, :, None, None]) / scale[None, :, None, None]).astype(
                    np.float32) for x in (a[tr], a[va], b)]
                fit = fit_decoder(
                    (norm[0], ytr), (norm[1], yva), (norm[2], yte), epochs=int(p["epochs"]),
                    patience=int(p["patience"]), batch_size=int(p["batch_size"]),
                    lr=float(p["lr"]), weight_decay=float(p["weight_decay"]),
                    width=int(p["width"]), seed=self.seed, n_keep=int(p["n_examples"]),
                    device=run_device(source),
                )
                if fit.best_epoch == fit.epochs_run == int(p["epochs"]):
                    still.append(f"{model}/{site}")
                layer = ftr.layers.get(site)
                examples[f"{model} L{layer}"] = fit.examples
                base = {
                    "analysis": self.name, "model": model, "dataset": self.dataset,
                    "layer": layer, "site": site, "n_train": len(tr), "n_val": len(va),
                    "n_test": len(ids_te), "grid": g, "image_size": size,
                    "channels": int(a.shape[1]), "epochs": fit.epochs_run,
                    "best_epoch": fit.best_epoch, "val_mse": fit.val_mse,
                    "mean_image_mse": base_mse, "mean_colour_mse": colour_mse, "seed": self.seed,
                }
                rows.append({**base, "metric": "mse", "value": fit.test_mse})
                rows.append({**base, "metric": "psnr", "value": _psnr(fit.test_mse)})
        if still:
            notes.append(
                f"{self.name}: {len(still)} decoder(s) still improved on val at the last epoch "
                f"({', '.join(still[:6])}{' ...' if len(still) > 6 else ''}); raise 'epochs' "
                "for converged numbers"
            )
        table = pd.DataFrame(rows)
        k = min(int(p["n_examples"]), len(yte))
        figures = {
            "mse_vs_layer": plot_mse_vs_layer(
                table, base_mse, x=p["x_axis"],
                title=f"Reconstruction from frozen features ({self.dataset})"),
            "examples": plot_reconstruction_examples(
                yte[:k], examples,
                title=f"Test reconstructions ({self.dataset}, grid {g}, {size} px)"),
        }
        return Result(analysis=self.name, catalogue=self.catalogue, table=table,
                      figures=figures, params=dict(p), notes=notes)


def _psnr(mse: float) -> float:
    """PSNR in dB of pixel values in [0, 1]."""
    return float(10.0 * np.log10(1.0 / max(mse, 1e-12)))


def _as_grid(x: np.ndarray, g: int, model: str, site: str) -> np.ndarray:
    """``[N, C*g*g]`` -> ``[N, C, g, g]``, or an error naming a site that is no grid."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % (g * g):
        raise AnalysisError(
            f"model {model!r} site {site!r}: features of shape {tuple(x.shape)} are not a "
            f"grid{g} map ([N, C*{g}*{g}]); is the site a CNN map or ViT token grid?"
        )
    return x.reshape(x.shape[0], x.shape[1] // (g * g), g, g)
