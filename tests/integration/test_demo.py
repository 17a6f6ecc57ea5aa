"""The demo config end to end on the real packaged models (a smaller Fashion-MNIST subset)."""

from __future__ import annotations

import pytest

from vlprobe.config import parse_config
from vlprobe.demo import check_demo_requirements, demo_config_dict
from vlprobe.results.records import read_result_table, read_run
from vlprobe.runner import run


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    missing = check_demo_requirements()
    if missing:
        pytest.skip("demo requirements missing: " + "; ".join(missing))
    data = demo_config_dict()
    data["output_dir"] = str(tmp_path_factory.mktemp("runs"))
    data["datasets"]["fashion_mnist"]["subsample"] = {"train": 300, "test": 150}
    cfg = parse_config(data)
    with pytest.MonkeyPatch.context() as patch:  # module scope: set up before the autouse cache
        patch.setenv("VLPROBE_CACHE", str(tmp_path_factory.mktemp("cache")))
        first = run(cfg, progress=False)
        second = run(cfg, progress=False)
    return first, second


def test_demo_runs_every_analysis(demo_run):
    run_dir, _ = demo_run
    record = read_run(run_dir)
    assert record["status"] == "ok", record["analyses"]
    assert (run_dir / "report.html").stat().st_size > 10_000
    probe = read_result_table(run_dir, "probe_efficientnet_fashion_mnist")
    # EfficientNet-Lite0 has stem + 16 blocks + head = 18 layers; deep layers separate
    # Fashion-MNIST classes far above chance (0.1)
    assert probe["layer"].nunique() == 18
    assert probe["value"].max() > 0.6
    rsa = read_result_table(run_dir, "rsa_fashion_mnist")
    assert {"efficientnet", "minilm", "smollm2"} <= set(rsa["model"])
    # one distance for all three models: the text models get 80 prompts per class (CLIP's
    # ImageNet templates), so their RDMs are Welch-t RDMs like EfficientNet's
    assert set(rsa["distance"]) == set(rsa["distance_b"]) == {"welch_t"}
    assert set(rsa["metric"]) == {"spearman", "pearson"}
    notes = record["analyses"]["rsa_fashion_mnist"]["notes"]
    assert any("RDM distance welch_t for every model" in n for n in notes)
    text = read_result_table(run_dir, "probe_text_polarity")
    assert set(text["model"]) == {"minilm", "smollm2"}


def test_second_run_performs_no_forward_pass(demo_run):
    first, second = demo_run
    assert first == second
    assert read_run(second)["forward_batches"] == 0
