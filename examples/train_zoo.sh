#!/usr/bin/env bash
# The whole zoo of issue 11 in one command: the four Flickr8k models trained in turn in ONE
# process that shares the activation store, so each frozen tower site is extracted once and
# read back by every later model (EfficientNet-Lite0's vision.head grid7 map feeds the
# captioner and both fusion models; the aligned model reads its own pooled sites):
#   M8 aligned dual encoder, the captioner, the single- and the two-stream fusion model.
#
#   VLPROBE_REFERENCE=/path/to/reference VLPROBE_MODELS=/path/to/models \
#     examples/train_zoo.sh [--set key=value ...] [--no-progress]
#
# Checkpoints go to $VLPROBE_MODELS/<name> (default ./vlprobe_models/<name>); per-model wall
# times, checkpoints and test metrics to $VLPROBE_MODELS/zoo_summary.json (rewritten after
# each model). Add examples/train_devise.yaml for the DeViSE baseline.
# Measured cold (empty activation store) on a 2-core CPU machine: 49 min (bench/RESULTS.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
models="${VLPROBE_MODELS:-vlprobe_models}"
mkdir -p "$models"
exec "${VLPROBE:-vlprobe}" train \
  "$here/train_aligned.yaml" \
  "$here/train_captioner.yaml" \
  "$here/train_fusion_single.yaml" \
  "$here/train_fusion_two.yaml" \
  --summary "$models/zoo_summary.json" "$@"
