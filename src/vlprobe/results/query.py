"""Query the tidy tables of many runs together with DuckDB (optional extra ``query``).

Every analysis table of every run under a root is exposed as one view ``results``
(columns unioned by name), so a sweep is one SQL statement::

    vlprobe query "SELECT model, layer, value FROM results WHERE analysis='layer_probe'"
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vlprobe.errors import VLProbeError


def query_runs(sql: str, root: str | Path) -> pd.DataFrame:
    """Run ``sql`` over the view ``results`` (all result tables under ``root``)."""
    try:
        import duckdb
    except ImportError:
        raise VLProbeError("querying runs needs DuckDB: pip install 'vlprobe[query]'") from None
    root = Path(root)
    files = sorted(p for p in root.glob("*/results/*.parquet") if "__" not in p.name)
    if not files:
        raise VLProbeError(f"no result tables under {root} (run `vlprobe run CONFIG` first)")
    con = duckdb.connect()
    file_list = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    con.execute(
        f"CREATE VIEW results AS SELECT * FROM read_parquet([{file_list}], union_by_name=true)"
    )
    try:
        return con.execute(sql).df()
    except duckdb.Error as exc:
        raise VLProbeError(f"query failed: {exc}") from None


def load_all_results(root: str | Path) -> pd.DataFrame:
    """Every result row under ``root`` as one DataFrame (pandas only, no DuckDB)."""
    files = sorted(p for p in Path(root).glob("*/results/*.parquet") if "__" not in p.name)
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
