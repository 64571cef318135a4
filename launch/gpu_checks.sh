#!/usr/bin/env bash
# The GPU checks in one call: `pytest -m gpu`, then `ganpaint bench` on configs/glcic_paper.yaml,
# eager and compiled, all three phases, synthetic and end to end (from shards packed here, with
# the ratio), each writing JSON and a profile of its top operators into OUT_DIR.
#
#   bash launch/gpu_checks.sh OUT_DIR        (default: $OUT, else gpu-checks/)
#
# Sized for one call of at most 10 minutes: the stage limits below add up to 520 s, plus set-up.
#
# Knobs (environment): STEPS (timed steps per phase, 20), WARMUP (3), MODES ("eager compiled"),
# SKIP_PYTEST=1, IMAGES (synthetic images packed at 384 px, 4800), WORKERS (loader workers per
# process; default the preset's), and a time limit per stage in seconds: PYTEST_S (180),
# EAGER_S (100), COMPILED_S (240). Every stage writes its files as it ends, so a run stopped at
# its limit still leaves the stages before it.
#
# Needs torch with CUDA, accelerate, opencv, pyyaml, rich, safetensors, pytest, plus webdataset,
# braceexpand and omegaconf. Where those three cannot be installed, carry them as wheels in .whl/
# at the repository root; this script installs them into /tmp/site:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
#     webdataset==1.0.2 braceexpand==0.1.7 omegaconf==2.4.0
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu-checks}}
mkdir -p "$OUT_DIR"
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
MODES=${MODES:-eager compiled}
IMAGES=${IMAGES:-4800}
SHARDS=${SHARDS:-/tmp/ganpaint-shards-384}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
missing=$(python3 -c '
import importlib.util as u
names = ["torch", "accelerate", "cv2", "yaml", "rich", "safetensors", "pytest", "webdataset",
         "braceexpand", "omegaconf"]
print(" ".join(n for n in names if u.find_spec(n) is None))')
if [ -n "$missing" ]; then
  echo "gpu_checks: missing Python packages: $missing (carry wheels in .whl/, see this script's header)"
  exit 2
fi
# At most 8 files come back from a device call: setup.log, pytest-gpu.log, bench.log and per
# mode bench-MODE.json and profile-MODE.txt.
python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"
print(torch.__version__, torch.cuda.get_device_name(0))' | tee "$OUT_DIR/setup.log" || exit 2
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv >>"$OUT_DIR/setup.log" 2>&1

# Shards for the end-to-end rows, packed on the CPU while the GPU tests run.
(
  [ -f "$SHARDS/manifest.json" ] || python3 -m ganpaint.cli shards --source synthetic \
    --count "$IMAGES" --size 384 --split-max-count 400 --workers "$(nproc)" --output "$SHARDS"
) >>"$OUT_DIR/setup.log" 2>&1 &
packing=$!

if [ "${SKIP_PYTEST:-0}" != 1 ]; then
  timeout "${PYTEST_S:-180}" python3 -m pytest -m gpu -q -p no:cacheprovider -rs \
    2>&1 | tee "$OUT_DIR/pytest-gpu.log" | tail -25
fi
wait "$packing" || { echo "gpu_checks: packing failed:"; tail -5 "$OUT_DIR/setup.log"; exit 1; }

for mode in $MODES; do
  compile=false
  [ "$mode" = compiled ] && compile=true
  limit=${EAGER_S:-100}
  [ "$mode" = compiled ] && limit=${COMPILED_S:-240}
  overrides=("run.compile=$compile")
  [ -n "${WORKERS:-}" ] && overrides+=("data.workers=$WORKERS")
  echo "== bench $mode (limit ${limit}s)"
  timeout "$limit" python3 -m ganpaint.cli bench --config configs/glcic_paper.yaml \
    "${overrides[@]}" --steps "$STEPS" --warmup "$WARMUP" --data "$SHARDS" --compare \
    --json "$OUT_DIR/bench-$mode.json" --profile "$OUT_DIR/profile-$mode.txt" \
    2>&1 | tee -a "$OUT_DIR/bench.log" | grep -v WARNING
done
ls -l "$OUT_DIR"
