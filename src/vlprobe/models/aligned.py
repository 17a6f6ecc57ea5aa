"""``aligned_dual``: a dual encoder trained by ``vlprobe train`` (M8) from two frozen towers.

``checkpoint`` is the directory ``vlprobe train`` wrote (:mod:`vlprobe.train.checkpoint`). The
adapter rebuilds both frozen towers from the specs recorded there and puts the trained heads
on top. It behaves as a dual encoder everywhere:

- every site of the image tower and of the text tower, under their own names;
- ``vision.proj`` / ``text.proj``: the heads' outputs ``[B, E]`` (L2-normalise for cosine);
- :meth:`logit_scale`: the learnt temperature (no bias);
- the image tower's differentiable path, extended through the image head.

Default poolings and text limits are the towers' own; the identity holds the checkpoint's
file hashes and both towers' identities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from vlprobe.errors import ConfigError, ModelLoadError
from vlprobe.models._trained import load_tower, open_checkpoint
from vlprobe.models.base import Batch, ModelAdapter, ModelSpec, Trace

_PROJ = {"image": "vision.proj", "text": "text.proj"}
_TAIL_PREFIXES = ("image_tower.", "text_tower.")


def _load_tails(directory: Path, config: dict[str, Any], towers: dict[str, Any]) -> None:
    """Fine-tuned last blocks (``unfreeze_last > 0``; tensors ``<modality>_tower.<name in the
    tower's model>``) go into the freshly built towers."""
    if not any(config[f"{m}_tower"].get("unfreeze_last") for m in towers):
        return
    from vlprobe.train.checkpoint import load_tensors
    from vlprobe.train.tails import load_tail_state

    tensors = load_tensors(directory, config)
    for modality, tower in towers.items():
        prefix = f"{modality}_tower."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if config[f"{modality}_tower"].get("unfreeze_last") and not state:
            raise ModelLoadError(f"aligned_dual: {directory}: the {modality} tower was "
                                 "fine-tuned (unfreeze_last) but its blocks are missing")
        if state:
            load_tail_state(tower, state, f"aligned_dual checkpoint {directory}")


class AlignedDualAdapter(ModelAdapter):
    """Two frozen towers + the trained projection heads of ``vlprobe train``."""

    family: ClassVar[str] = "aligned_dual"
    summary: ClassVar[str] = "dual encoder trained by `vlprobe train` (frozen towers + heads)"

    @classmethod
    def offline_status(cls) -> tuple[bool, str]:
        return (True, "checkpoint: a directory written by `vlprobe train` (towers must load)")

    def __init__(self, spec: ModelSpec, directory: Path, config: dict[str, Any],
                 towers: dict[str, ModelAdapter], device: str) -> None:
        super().__init__(spec)
        self.directory = directory
        self.config = config
        self.towers = towers
        self.device = device
        self._heads: Any = None

    @classmethod
    def load(cls, spec: ModelSpec, device: str = "cpu") -> AlignedDualAdapter:
        directory, config = open_checkpoint(spec, "aligned_dual")
        towers = {
            modality: load_tower(config, key, modality, device, "aligned_dual")
            for modality, key in (("image", "image_tower"), ("text", "text_tower"))
        }
        _load_tails(directory, config, towers)
        return cls(spec, directory, config, towers, device)

    # -- the trained part --------------------------------------------------------------
    @property
    def heads(self) -> Any:
        if self._heads is None:
            from vlprobe.train.checkpoint import load_tensors
            from vlprobe.train.heads import aligned_heads

            c = self.config
            heads = aligned_heads(int(c["image_dim"]), int(c["text_dim"]),
                                  int(c["head"]["embed_dim"]), c["head"]["kind"],
                                  int(c["head"]["hidden"]))
            tensors = {k: v for k, v in load_tensors(self.directory, c).items()
                       if not k.startswith(_TAIL_PREFIXES)}
            try:
                heads.load_state_dict(tensors)
            except RuntimeError as exc:
                raise ModelLoadError(
                    f"aligned_dual: {self.directory}: tensors do not fit the head: {exc}"
                ) from None
            self._heads = heads.eval().to(self.device)
        return self._heads

    def logit_scale(self) -> dict[str, float | None]:
        """``{"scale": exp(logit_scale), "bias": None}``."""
        return {"scale": float(self.heads.logit_scale.detach().exp()), "bias": None}

    def _feed(self, modality: str) -> tuple[list[str], str | None]:
        tower = self.config["image_tower" if modality == "image" else "text_tower"]
        return list(tower["sites"]), tower["pooling"]

    # -- description -------------------------------------------------------------------
    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image", "text")

    def sites(self) -> list[str]:
        return [*self.towers["image"].sites(), "vision.proj",
                *self.towers["text"].sites(), "text.proj"]

    def layer_sites(self, modality: str) -> list[str]:
        return self.towers[modality].layer_sites(modality)

    def embedding_site(self, modality: str) -> str:
        return _PROJ[modality]

    def pooling_for(self, modality: str) -> str:
        return self.towers[modality].pooling_for(modality)

    def max_text_length(self) -> int | None:
        return self.towers["text"].max_text_length()

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        return self.towers["text"].text_lengths(texts)

    def identity(self) -> dict[str, Any]:
        from vlprobe.models._hooks import dir_fingerprint

        return {
            "adapter": "aligned_dual",
            "checkpoint": str(self.directory.resolve()),
            "files": dir_fingerprint(self.directory),
            "towers": {m: t.identity() for m, t in self.towers.items()},
        }

    # -- running -----------------------------------------------------------------------
    def prepare(self, payloads: Sequence[Any], modality: str) -> Batch:
        if modality not in self.modalities:
            raise ConfigError(f"aligned_dual takes image or text input, not {modality}")
        return self.towers[modality].prepare(payloads, modality)

    def forward(self, batch: Batch, sites: Sequence[str]) -> Trace:
        import torch

        from vlprobe.pooling import pool

        self.check_sites(sites)
        modality = batch.modality
        proj = _PROJ[modality]
        feed, pooling = self._feed(modality)
        tower_sites = [s for s in sites if s != proj]
        need = list(dict.fromkeys([*tower_sites, *(feed if proj in sites else [])]))
        trace = self.towers[modality].forward(batch, need)
        if proj in sites:
            default = pooling or self.pooling_for(modality)
            parts = [
                pool(trace.hidden[s], "none" if trace.hidden[s].ndim == 2 else default,
                     attention_mask=trace.attention_mask, eos_index=trace.eos_index)
                for s in feed
            ]
            x = torch.cat([torch.as_tensor(p) for p in parts], dim=1).to(self.device)
            with torch.no_grad():
                head = self.heads.embed_image if modality == "image" else self.heads.embed_text
                trace.hidden[proj] = head(x).float().cpu()
        for s in set(need) - set(sites):
            trace.hidden.pop(s, None)
        return trace

    # -- the differentiable path (image tower + image head) ----------------------------
    def image_pixels(self, images: Sequence[Any]) -> Any:
        return self.towers["image"].image_pixels(images)

    def normalize_pixels(self, pixels: Any) -> Any:
        return self.towers["image"].normalize_pixels(pixels)

    def forward_differentiable(self, pixels: Any, sites: Sequence[str]) -> dict[str, Any]:
        import torch

        tower = self.towers["image"]
        feed, pooling = self._feed("image")
        want = [s for s in sites if s != "vision.proj"]
        out = tower.forward_differentiable(pixels, list(dict.fromkeys([*want, *feed])))
        if "vision.proj" in sites:
            parts = []
            for s in feed:
                x = out[s]
                if x.ndim == 4:
                    x = x.mean(dim=(2, 3))
                elif x.ndim == 3:
                    how = pooling or tower.pooling_for("image")
                    if how not in ("cls", "mean"):
                        raise ConfigError(
                            f"aligned_dual: the differentiable path pools {s!r} with cls or "
                            f"mean only, not {how!r}"
                        )
                    x = x[:, 0] if how == "cls" else x.mean(dim=1)
                parts.append(x.float())
            out["vision.proj"] = self.heads.embed_image(torch.cat(parts, dim=1))
        return {s: out[s] for s in sites}
