"""Caption metrics of the COCO caption evaluation code (package ``pycocoevalcap``, extra
``captions``): BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D as that package computes it), over
one candidate and several references per image.

Tokenisation follows the COCO evaluation: the Stanford PTB tokenizer (Java, the jar that
pycocoevalcap ships), lowercased, punctuation tokens removed, for candidates and references
alike. Java is needed by the PTB tokenizer and by METEOR. Without Java:

- METEOR is skipped (``None`` in the scores, a note says why);
- BLEU, ROUGE-L and CIDEr are still computed, on :func:`simple_ptb_tokenize`, a Python
  approximation of PTB tokenisation + punctuation removal (a note says so). On the Flickr8k
  captions it gives the same tokens as the Java tokenizer for almost every caption (see the
  test); scores are comparable to, not identical with, the official ones.

SPICE is never computed: it needs Stanford CoreNLP models that pycocoevalcap downloads on
first use (there is no network here); a note says so.

Scores are pycocoevalcap's raw values: BLEU / METEOR / ROUGE-L in [0, 1], CIDEr in [0, 10]
(papers print 100 x these: "BLEU-4 19.5" is 0.195 here).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vlprobe.errors import ConfigError, DataError

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
#: tokens the COCO evaluation drops after PTB tokenisation (pycocoevalcap's PUNCTUATIONS)
PUNCTUATION = ("''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",",
               ":", "-", "--", "...", ";")
SPICE_NOTE = ("SPICE not computed: it needs Stanford CoreNLP models that pycocoevalcap "
              "downloads on first use (offline here)")


@dataclass
class CaptionScores:
    """Corpus-level caption metrics.

    Attributes:
        scores: metric name (:data:`METRICS`) -> value, ``None`` where not computed.
        per_image: metric name -> per-image scores in the order of the candidates' keys
            (BLEU / CIDEr / ROUGE-L / METEOR as pycocoevalcap returns them).
        tokenizer: ``"ptb"`` (Java Stanford PTB) or ``"python"`` (:func:`simple_ptb_tokenize`).
        notes: what was skipped or approximated, and why.
    """

    scores: dict[str, float | None]
    per_image: dict[str, list[float]] = field(default_factory=dict)
    tokenizer: str = "ptb"
    notes: list[str] = field(default_factory=list)


def java_available() -> bool:
    """True when a ``java`` executable is on PATH and runs."""
    java = shutil.which("java")
    if java is None:
        return False
    try:
        return subprocess.run([java, "-version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _package_dir() -> Path:
    try:
        import pycocoevalcap.bleu.bleu  # (a namespace package: import a module)
    except ImportError as exc:
        raise ConfigError(
            "caption metrics need package pycocoevalcap: pip install 'vlprobe[captions]' "
            "(or pip install pycocoevalcap)"
        ) from exc
    import pycocoevalcap

    return Path(next(iter(pycocoevalcap.__path__)))


# -- tokenisation -------------------------------------------------------------------------------
def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Java Stanford PTB tokenisation of each text (lowercased, ``-preserveLines``), then the
    COCO punctuation removal; one string per text.

    The same command as pycocoevalcap's ``PTBTokenizer``, run on a temporary file of our own
    (its wrapper writes the file into the installed package directory, which may be
    read-only or shared by concurrent runs)."""
    jar = _package_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    lines = [str(t).replace("\n", " ").replace("\r", " ") for t in texts]
    with tempfile.TemporaryDirectory(prefix="vlprobe_ptb_") as tmp:
        path = Path(tmp) / "sentences.txt"
        path.write_text("\n".join(lines), encoding="utf-8")
        out = subprocess.run(
            ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
             "-preserveLines", "-lowerCase", str(path)],
            capture_output=True, check=False,
        )
    if out.returncode != 0:
        raise DataError(f"PTB tokenizer failed: {out.stderr.decode(errors='replace')[-400:]}")
    got = out.stdout.decode("utf-8").split("\n")[: len(lines)]
    if len(got) != len(lines):
        raise DataError(f"PTB tokenizer returned {len(got)} lines for {len(lines)} texts")
    drop = set(PUNCTUATION)
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in drop) for line in got]


# contractions PTB splits off ("dog's" -> "dog 's", "don't" -> "do n't")
_CLITIC = re.compile(r"(?i)(\w)('s|'re|'ve|'ll|'d|'m|n't)\b")
# PTB writes brackets as -LRB- etc.; lowercased they are not in the COCO punctuation list
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-",
             "]": "-rsb-"}
_CANNOT = re.compile(r"\bcannot\b")
_SPLIT = re.compile(r"\.\.\.|--|[A-Za-z0-9]+(?:[-'./&][A-Za-z0-9]+)*|'[a-z]+|\S")


def simple_ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """A Python approximation of :func:`ptb_tokenize` (used without Java): lowercase, split
    clitics and punctuation off words (hyphenated words and decimals stay whole, "cannot" ->
    "can not", brackets become ``-lrb-`` etc., as in lowercased PTB), drop the COCO
    punctuation tokens and double quotes."""
    drop = {*PUNCTUATION, '"'}  # PTB turns double quotes into `` and '', both dropped
    out = []
    for text in texts:
        text = _CLITIC.sub(r"\1 \2", _CANNOT.sub("can not", str(text).lower()))
        toks = [_BRACKETS.get(t, t) for t in _SPLIT.findall(text) if t not in drop]
        toks = [t[:-1] if t.endswith(".") and len(t) > 1 and t.count(".") == 1 else t
                for t in toks]
        out.append(" ".join(toks))
    return out


# -- scores -------------------------------------------------------------------------------------
def _as_lists(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]
              ) -> tuple[list[str], list[str], list[list[str]]]:
    keys = list(candidates)
    if not keys:
        raise DataError("caption metrics: no candidates")
    missing = [k for k in keys if k not in references]
    if missing:
        raise DataError(f"caption metrics: no references for {missing[:3]}")
    refs = []
    for k in keys:
        r = [str(x) for x in references[k]]
        if not r:
            raise DataError(f"caption metrics: image {k!r} has no references")
        refs.append(r)
    return keys, [str(candidates[k]) for k in keys], refs


def caption_metrics(
    candidates: Mapping[str, str], references: Mapping[str, Sequence[str]], *,
    meteor: bool = True, java: bool | None = None,
) -> CaptionScores:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of one candidate per image against its references.

    Args:
        candidates: image key -> generated caption.
        references: image key -> reference captions (every candidate key needs some).
        meteor: compute METEOR (a Java process that loads a 60 MB paraphrase table: about a
            minute on a busy 2-core machine); False skips it with a note.
        java: whether Java may be used; None = :func:`java_available`.
    """
    return score_runs({"run": candidates}, references, meteor=meteor, java=java)["run"]


def score_runs(
    runs: Mapping[str, Mapping[str, str]], references: Mapping[str, Sequence[str]], *,
    meteor: bool = True, java: bool | None = None,
) -> dict[str, CaptionScores]:
    """:func:`caption_metrics` of several candidate sets (e.g. greedy and beam search) on
    the same references: one tokenisation pass and one METEOR process for all."""
    _package_dir()
    java = java_available() if java is None else java
    notes = [SPICE_NOTE]
    tokenize, tokenizer = (ptb_tokenize, "ptb") if java else (simple_ptb_tokenize, "python")
    if not java:
        notes.append("Java not found: PTB tokenisation approximated in Python "
                     "(simple_ptb_tokenize); BLEU / ROUGE-L / CIDEr comparable, not identical, "
                     "to the official Java tokenisation")
    if meteor and not java:
        notes.append("METEOR skipped: it needs Java (not found)")
    elif not meteor:
        notes.append("METEOR skipped (meteor=False)")
    listed = {name: _as_lists(c, references) for name, c in runs.items()}
    flat = [t for keys, cands, refs in listed.values() for t in (*cands, *(r for rs in refs
                                                                             for r in rs))]
    tokens = iter(tokenize(flat))
    scorer = _meteor_scorer() if meteor and java else None
    out = {}
    try:
        for name, (keys, _, refs) in listed.items():
            res = {k: [next(tokens)] for k in keys}
            gts = {k: [next(tokens) for _ in rs] for k, rs in zip(keys, refs)}
            scores, per_image = _score(gts, res, scorer)
            out[name] = CaptionScores(scores, per_image, tokenizer, list(notes))
    finally:
        if scorer is not None:
            _stop(scorer)
    return out


def _score(gts: dict, res: dict, meteor: object | None
           ) -> tuple[dict[str, float | None], dict[str, list[float]]]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    scores: dict[str, float | None] = {"METEOR": None}
    per_image: dict[str, list[float]] = {}
    bleu, bleu_img = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        scores[f"BLEU-{n + 1}"] = float(bleu[n])
        per_image[f"BLEU-{n + 1}"] = [float(x) for x in bleu_img[n]]
    if meteor is not None:
        value, img = meteor.compute_score(gts, res)
        scores["METEOR"], per_image["METEOR"] = float(value), [float(x) for x in img]
    rouge, rouge_img = Rouge().compute_score(gts, res)
    scores["ROUGE-L"], per_image["ROUGE-L"] = float(rouge), [float(x) for x in rouge_img]
    cider, cider_img = Cider().compute_score(gts, res)
    scores["CIDEr"], per_image["CIDEr"] = float(cider), [float(x) for x in cider_img]
    return {m: scores[m] for m in METRICS}, per_image


def _meteor_scorer() -> object:
    """pycocoevalcap's METEOR 1.5: one Java process (stop it with :func:`_stop`)."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def _stop(scorer: object) -> None:
    proc = scorer.meteor_p
    if proc.poll() is None:
        proc.stdin.close()
        proc.kill()
        proc.wait()
