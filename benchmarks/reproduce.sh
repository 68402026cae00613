#!/usr/bin/env bash
# Reproduce benchmarks/RESULTS.md: train (if needed) on every SMILEsmileD crop, export fp32 +
# INT8 (both flavours) + FP16, bench everything with the full suite, render RESULTS.md.
#
#   usage: benchmarks/reproduce.sh [RUN_DIR] [WORK_DIR]
#     RUN_DIR   run trained on the full set (default runs/full; trained here when missing,
#               about 15 minutes on 2 cores)
#     WORK_DIR  export, bench output and golden file (default benchmarks/work, git-ignored)
#
# The export uses --force: RESULTS.md reports the INT8 models whatever their agreement (the
# export would otherwise refuse to write a model below its 98% gate). Timings on a shared
# machine are noisy; the bench interleaves every model in one process so ratios hold, and
# records the load average beside the figures.
set -uo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/full}
WORK=${2:-benchmarks/work}
BIN=.venv/bin
# torch's OpenMP pool sleeps instead of spinning between calls: on a loaded machine a spinning
# pool turns a 30 ms forward pass into seconds (the bench sets this itself when torch is not
# yet imported; the export's torch reference benefits too).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
set -e
if [ ! -f "$RUN/checkpoint.pt" ]; then
    "$BIN/edge-smw" train --data smiles --out "$RUN"
fi
"$BIN/edge-smw" export "$RUN" --out "$WORK/export" --int8 --fp16 --report --force --quiet
uptime
set +e
"$BIN/edge-smw" bench "$WORK/export" --checkpoint "$RUN" --suite full --out "$WORK/bench" \
    --golden save "$WORK/golden.npz"
status=$?
set -e
"$BIN/python" benchmarks/render_results.py "$WORK/bench" --export "$WORK/export" \
    --reproduce "benchmarks/reproduce.sh $RUN $WORK"
exit "$status"  # 1 when a gate failed (the figures are written either way)
