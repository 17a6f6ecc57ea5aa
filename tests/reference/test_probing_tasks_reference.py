"""The ten SentEval probing tasks generated from the reference treebanks (PTB WSJ sample and
UD English EWT). Prints the sizes; asserts non-trivial sizes, balance and disjoint splits."""

from __future__ import annotations

from collections import Counter

import pytest

from vlprobe.data.probing_tasks import TASKS, generate_all, read_corpus

SPLITS = ("train", "validation", "test")
# small by nature in a 3.9k-tree sample: 124 top-level S CC S sentences, 18 per TopConst class
MIN_TRAIN = {"TopConst": 200, "CoordInv": 60, "WC": 300, "ObjNum": 200}


@pytest.fixture(scope="module")
def ptb_tasks(reference_dir):
    path = reference_dir / "text" / "ptb_sample"
    if not path.is_dir():
        pytest.skip(f"no PTB sample in the reference kit ({path})")
    return generate_all(read_corpus(path), seed=0)


@pytest.fixture(scope="module")
def ud_tasks(reference_dir):
    path = reference_dir / "text" / "ud_english_ewt"
    if not path.is_dir():
        pytest.skip(f"no UD English EWT in the reference kit ({path})")
    return generate_all(read_corpus(path), seed=0)


def _report(name, tasks):
    print(f"\n{name}: task  train/validation/test  classes  per-class(train)  labels")
    for task in tasks.values():
        sizes = task.datasheet["sizes"]
        per = sorted(set(sizes["train"]["per_class"].values()))
        print(f"  {task.name:9s} {'/'.join(str(sizes[s]['total']) for s in SPLITS):>16s}  "
              f"{task.datasheet['n_classes']:4d}  {per}  {task.datasheet['label_quality'][:5]}")


def _check(task):
    sizes = task.datasheet["sizes"]
    assert sizes["train"]["total"] >= MIN_TRAIN.get(task.name, 500), task.name
    min_eval = 10 if task.name in MIN_TRAIN else 50
    assert sizes["validation"]["total"] >= min_eval, task.name
    assert sizes["test"]["total"] >= min_eval, task.name
    for split in SPLITS:
        counts = Counter(it.label for it in task.split_items(split))
        assert set(counts) == set(task.label_names), (task.name, split)
        assert len(set(counts.values())) == 1, (task.name, split)  # balanced
    ids = {s: {it.source_id for it in task.split_items(s)} for s in SPLITS}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    texts = {s: {it.text for it in task.split_items(s) if it.label in ("O",) or
                 task.datasheet["label_quality"] == "gold"} for s in SPLITS}
    assert not texts["train"] & texts["test"], task.name


def test_ptb_sample_tasks(ptb_tasks):
    _report("PTB WSJ sample", ptb_tasks)
    assert set(ptb_tasks) == set(TASKS)  # all ten from bracketed trees
    assert ptb_tasks["TopConst"].datasheet["n_classes"] == 20  # 19 sequences + OTHER
    assert ptb_tasks["TreeDepth"].label_names == [str(d) for d in range(5, 13)]
    assert ptb_tasks["SentLen"].datasheet["n_classes"] == 6
    assert ptb_tasks["Tense"].label_names == ["PAST", "PRES"]
    assert ptb_tasks["SubjNum"].label_names == ["NN", "NNS"]
    assert ptb_tasks["WC"].datasheet["n_classes"] >= 50
    for task in ptb_tasks.values():
        _check(task)


def test_ud_ewt_tasks(ud_tasks):
    _report("UD English EWT", ud_tasks)
    assert set(ud_tasks) == {"SentLen", "WC", "BShift", "Tense", "SubjNum", "ObjNum", "SOMO"}
    assert ud_tasks["Tense"].label_names == ["PAST", "PRES"]
    assert ud_tasks["SubjNum"].label_names == ["NN", "NNS"]
    assert ud_tasks["ObjNum"].label_names == ["NN", "NNS"]
    for task in ud_tasks.values():
        _check(task)
