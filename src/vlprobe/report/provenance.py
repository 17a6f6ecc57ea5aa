"""The report's provenance section: what went in (models, data), what ran (versions, seed,
git), what it cost (timings, forward passes, cache hits) and how to reproduce it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from vlprobe.report.style import e, kv_table
from vlprobe.report.tables import constants_html, fmt, frame_html, split_constant


def models_table(record: dict[str, Any]) -> str:
    """One row per model: adapter, checkpoint, identity hash (what every store key holds)."""
    models = record.get("models") or {}
    configured = (record.get("config") or {}).get("models") or {}
    rows = []
    for name in dict.fromkeys([*configured, *models]):
        info, cfg = models.get(name, {}), configured.get(name, {})
        rows.append({
            "model": name,
            "adapter": info.get("adapter") or cfg.get("adapter"),
            "checkpoint": info.get("checkpoint") or cfg.get("checkpoint") or cfg.get("config")
            or ("random init" if cfg.get("random_init") else "packaged weights"),
            "identity hash": info.get("identity_hash") or info.get("error") or "not loaded",
        })
    return frame_html(pd.DataFrame(rows)) if rows else ""


def datasets_table(record: dict[str, Any]) -> str:
    """One row per dataset split: items, classes, fingerprint, skips, truncations."""
    truncated: dict[tuple[str, str], list[str]] = {}
    for t in record.get("truncations") or []:
        truncated.setdefault((t["dataset"], t["split"]), []).append(
            f"{t['model']}: {t['n_truncated']} of {t['n_items']}"
            + (f" ({t['view']})" if t.get("view") not in (None, "items") else ""))
    rows = []
    for name, splits in (record.get("datasets") or {}).items():
        for split, info in splits.items():
            found = sum(d.get("count", 0) for d in (info.get("duplicates_of") or {}).values())
            dropped = (info.get("dropped_duplicates") or {}).get("n", 0)
            rows.append({
                "dataset": name, "split": split, "items": info.get("n_items"),
                "classes": info.get("n_classes"), "fingerprint": info.get("fingerprint"),
                "skipped (unreadable)": info.get("skipped") or 0,
                "cross-split duplicates": f"{dropped} dropped" if dropped else found,
                "texts truncated": "; ".join(truncated.get((name, split), [])) or "none",
            })
    return frame_html(pd.DataFrame(rows)) if rows else "<p class=muted>no dataset loaded</p>"


def work_table(record: dict[str, Any]) -> str:
    """Per analysis: status, result cache, seconds, features read."""
    rows = []
    for name, info in (record.get("analyses") or {}).items():
        inputs = info.get("inputs") or []
        rows.append({
            "analysis": name, "status": info.get("status"),
            "result": info.get("cache") or "-",
            "seconds (this run)": info.get("seconds"),
            "seconds (computing)": info.get("compute_seconds"),
            "features read": len(inputs),
        })
    return frame_html(pd.DataFrame(rows)) if rows else ""


def extraction_table(record: dict[str, Any]) -> str:
    rows = record.get("extractions") or []
    if not rows:
        return ("<p class=muted>no extraction in this run: every analysis result came from "
                "the result cache, so no features were needed</p>")
    frame = pd.DataFrame(rows)
    keep = [c for c in ("model", "dataset", "split", "view", "modality", "n_items", "n_sites",
                        "n_forward_batches", "n_items_computed", "n_truncated",
                        "seconds_model", "seconds_total") if c in frame.columns]
    varying, constant = split_constant(frame[keep])
    return constants_html(constant) + frame_html(varying)


def run_facts(record: dict[str, Any]) -> dict[str, Any]:
    cache = record.get("cache") or {}
    timings = record.get("timings") or {}
    return {
        "run id": record.get("run_id"),
        "config hash": record.get("config_hash"),
        "seed": record.get("seed"),
        "started / finished": f"{record.get('started', '')} / {record.get('finished', '')}",
        "total seconds": timings.get("total_s"),
        "model forward batches": record.get("forward_batches"),
        "analysis results": (f"{cache.get('results_reused', 0)} from the result cache, "
                             f"{cache.get('results_computed', 0)} computed"
                             + (" (--force)" if record.get("forced") else ""))
        if cache else None,
        "extraction groups": (f"{cache.get('extraction_groups', 0)} needed, "
                              f"{cache.get('extraction_groups_from_store', 0)} fully from the "
                              "activation store") if cache else None,
        "git": record.get("git") or "not a git checkout",
        "platform": (record.get("host") or {}).get("platform"),
        "config file": record.get("config_path"),
    }


def versions_line(record: dict[str, Any]) -> str:
    versions = record.get("versions") or {}
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def timings_table(record: dict[str, Any]) -> str:
    flat = _flatten(record.get("timings") or {})
    return kv_table({k: fmt(v) for k, v in flat.items()}) if flat else ""


def provenance_html(record: dict[str, Any], run_dir: Path) -> list[str]:
    """The provenance and reproduction sections."""
    parts = ["<h2 id=provenance>Provenance</h2>", kv_table(run_facts(record)),
             f"<p class=small><b>Versions:</b> {e(versions_line(record))}</p>",
             "<h3>Models</h3>", models_table(record),
             "<h3>Datasets</h3>", datasets_table(record),
             "<h3>Analyses: cache and time</h3>", work_table(record),
             "<h3>Extraction (model forward passes)</h3>", extraction_table(record)]
    timings = timings_table(record)
    if timings:
        parts += ["<details><summary>Timings (seconds)</summary>", timings, "</details>"]
    config_yaml = run_dir / "config.yaml"
    if config_yaml.is_file():
        parts.append("<details><summary>Resolved configuration</summary>"
                     f"<pre>{e(config_yaml.read_text())}</pre></details>")
    parts += ["<h2 id=reproduce>How to reproduce</h2>",
              f"<pre>{e(_reproduce(record, run_dir))}</pre>"]
    return parts


def _reproduce(record: dict[str, Any], run_dir: Path) -> str:
    versions = record.get("versions", {})
    torch = str(versions.get("torch", "2.13.0")).split("+")[0]
    git = f"   # source commit {record['git']}" if record.get("git") else ""
    return "\n".join([
        "# same library versions as this run:",
        f"pip install torch=={torch} transformers=={versions.get('transformers', '')}",
        f"pip install 'vlprobe=={versions.get('vlprobe', '')}'{git}",
        f"vlprobe run {run_dir / 'config.yaml'}",
    ])


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
