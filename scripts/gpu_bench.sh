#!/usr/bin/env bash
# One device call: `fluxsr bench` on FLUX.1-dev-shaped random weights (bf16), with the Real-ESRGAN x4plus and
# multi-step teacher rows measured on the same GPU in the same run, then the fast paths.
#
# Run from the repository root, through the device tool (~6-7 min of device time with the machine's start):
#   run(command="bash scripts/gpu_bench.sh", carry=[".whl"], timeout_s=420, kind="nvidia-h200")
# Carried (ignored by git):
#   .whl/diffusers-0.42.1-py3-none-any.whl      (the image has torch 2.11 + everything else fluxsr imports)
#   .whl/torchao-0.18.0-*.whl (optional, 3.4 MB: `pip download torchao==0.18.0 --no-deps -d .whl`) for the fp8 step;
#   only its Python float8 path is used (torch._scaled_mm), so a C++-extension mismatch with torch 2.11 is harmless
#   .cache_carry/ (optional, FLUXSR_HOME): with realesrgan_x4plus.safetensors there the Real-ESRGAN rows use the
#   real weights; without it they run the same RRDBNet untrained (same cost, row "realesrgan (random weights)").
#   Mind the 64 MiB carry limit: the wheel is 6.4 MB, the Real-ESRGAN file 33.5 MB.
# Writes to $OUT: log.txt, summary.md (all tables), and one JSON per step (main.json, fast.json, ...).
# Steps in order of importance, each under its own timeout inside a total budget (BUDGET seconds, default 340,
# setup included); a step that no longer fits is skipped and says so. JSON is updated after every row:
#   main   : 512, 1024, 4096 x {fluxsr, teacher (4 Euler steps run, scaled to 28), realesrgan, bicubic}, eager
#   fast   : 1024 and 4096 with regional compile + compiled channels-last VAE, tiles 1088/64 (16 tiles at 4096^2
#            instead of 25; at 1024^2 the one tile is the image, as in main) and the planner capped at 40 GiB
#   fp8    : 1024, regional compile + torchao float8 linears (skipped with a note when torchao is not carried)
#   text64 : 1024, eager, 64 cached text tokens instead of 512
#   flash  : 1024, eager, SDPA forced to the flash backend
#   batch1 / batch4 : 2048, eager, 512/64 tiles (25 of them), one tile per forward pass vs four
#   graphs : 1024, regional compile in reduce-overhead mode (CUDA graphs)
#
# Low-VRAM rows (issue #13), a separate call: `bash scripts/gpu_bench.sh lowvram` (BUDGET=540, timeout_s=600;
# TO BE MEASURED: no GPU run yet). scripts/lowvram_bench.py upscales one 1024^2 image to 4096^2 on FLUX.1-dev-shaped
# random weights (bf16) under a budget enforced with torch.cuda.set_per_process_memory_fraction (24 GiB, 12 GiB),
# with --offload model/blocks/auto and --quantize none/int8/fp8 (torchao from .whl for those rows), two runs per row
# (the first warms up). Rows in order of importance; the table (time against the unconstrained 'base' row, peak
# allocated GiB) goes to summary.md. Targets: within 24 GiB at <= 1.5x base; within 12 GiB it completes.
# CPU smoke test: PY=.venv/bin/python MODEL=tiny REQUIRE_CUDA=0 LOWVRAM_EXTRA="--device cpu --size 16" ... lowvram
set -u
set -o pipefail
OUT=${OUT:-$PWD/gpu_bench_out}
BUDGET=${BUDGET:-340}
PY=${PY:-python3}                 # overrides for a CPU smoke test of this script:
MODEL=${MODEL:-flux-dev-random}   #   PY=.venv/bin/python MODEL=tiny REQUIRE_CUDA=0 EXTRA="--sizes 32 --repeat 1"
REQUIRE_CUDA=${REQUIRE_CUDA:-1}
EXTRA=${EXTRA:-}
LOWVRAM_EXTRA=${LOWVRAM_EXTRA:-}
SITE=${SITE:-/tmp/site}
SITE_FP8=${SITE_FP8:-$SITE-fp8}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

install() {  # install TARGET WHEEL...
    local target=$1
    shift
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@" ||
        { echo "pip install of $* failed"; return 1; }
}

setup() {
    install "$SITE" .whl/diffusers-*.whl || return 1
    # torchao only on the fp8 step's path: diffusers imports it whenever it is importable
    if compgen -G ".whl/torchao-*.whl" >/dev/null; then install "$SITE_FP8" .whl/torchao-*.whl || return 1; fi
    export PYTHONPATH=$PWD/src:$SITE
    export FLUXSR_HOME=$PWD/.cache_carry
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
    REQUIRE_CUDA=$REQUIRE_CUDA SITE_FP8=$SITE_FP8 "$PY" - <<'EOF'
import importlib.util, os, sys
import torch
import diffusers
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (cuda {torch.version.cuda}), "
      f"diffusers {diffusers.__version__} from {os.path.dirname(diffusers.__file__)}")
if os.environ["REQUIRE_CUDA"] == "1" or torch.cuda.is_available():
    assert torch.cuda.is_available(), "no CUDA device"
    p = torch.cuda.get_device_properties(0)
    print(f"{p.name}: {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
          f"cudnn {torch.backends.cudnn.version()}")
fp8 = os.environ["SITE_FP8"]
print("torchao:", f"carried ({fp8})" if os.path.isdir(os.path.join(fp8, "torchao")) else "not carried (fp8 skipped)")
w = os.path.join(os.environ["FLUXSR_HOME"], "realesrgan_x4plus.safetensors")
print("realesrgan weights:", w if os.path.isfile(w) else "not carried (rows use random weights, same cost)")
EOF
}

step() {  # step NAME MAX_SECONDS BENCH_ARGS...   (STEP_PATH=DIR step ... adds DIR to the import path)
    local name=$1 max=$2 path=${STEP_PATH:+$PYTHONPATH:$STEP_PATH}
    shift 2
    local left=$((BUDGET - SECONDS))
    if ((left < 40)); then
        echo "== $name: skipped, ${left}s of the budget left"
        return
    fi
    ((max > left)) && max=$left
    echo "== $name: limit ${max}s, ${SECONDS}s elapsed"
    PYTHONPATH=${path:-$PYTHONPATH} timeout --signal=INT --kill-after=15 "$max" "$PY" -m fluxsr.cli bench --model "$MODEL" \
        --json "$OUT/$name.json" --markdown "/tmp/$name.md" "$@" $EXTRA
    echo "== $name: exit $? at ${SECONDS}s"
    { echo "## $name: $*"; echo; cat "/tmp/$name.md" 2>/dev/null || echo "(no table: see $name.json, log.txt)"; echo; } \
        >>"$OUT/summary.md"
}

lowvram_row() {  # lowvram_row NAME MAX_SECONDS ROW_ARGS...   (STEP_PATH=DIR: torchao's folder on the path)
    local name=$1 max=$2 path=${STEP_PATH:+$PYTHONPATH:$STEP_PATH}
    shift 2
    local left=$((BUDGET - SECONDS))
    if ((left < 60)); then
        echo "== lowvram $name: skipped, ${left}s of the budget left"
        return
    fi
    ((max > left)) && max=$left
    echo "== lowvram $name: limit ${max}s, ${SECONDS}s elapsed"
    PYTHONPATH=${path:-$PYTHONPATH} timeout --signal=INT --kill-after=15 "$max" "$PY" scripts/lowvram_bench.py row \
        --name "$name" --model "$MODEL" --json "$OUT/lowvram-$name.json" "$@" $LOWVRAM_EXTRA
    echo "== lowvram $name: exit $? at ${SECONDS}s"
}

lowvram() {
    setup || return 1
    lowvram_row base 90
    lowvram_row 24g-auto 120 --budget 24GiB --offload auto
    lowvram_row 12g-blocks 150 --budget 12GiB --offload blocks
    lowvram_row 24g-blocks 150 --budget 24GiB --offload blocks
    lowvram_row 24g-model 120 --budget 24GiB --offload model
    STEP_PATH=$SITE_FP8 lowvram_row 24g-int8 150 --budget 24GiB --offload auto --quantize int8
    STEP_PATH=$SITE_FP8 lowvram_row 12g-int8 150 --budget 12GiB --offload auto --quantize int8
    STEP_PATH=$SITE_FP8 lowvram_row 24g-fp8 150 --budget 24GiB --offload auto --quantize fp8
    STEP_PATH=$SITE_FP8 lowvram_row 12g-fp8-blocks 150 --budget 12GiB --offload blocks --quantize fp8
    STEP_PATH=$SITE_FP8 lowvram_row 12g-int8-blocks 150 --budget 12GiB --offload blocks --quantize int8
    {
        echo "## lowvram: FLUX.1-dev-shaped random weights, 1024^2 -> 4096^2, set_per_process_memory_fraction"
        echo
        "$PY" scripts/lowvram_bench.py table "$OUT"/lowvram-*.json
        echo
    } | tee -a "$OUT/summary.md"
    echo "== done in ${SECONDS}s"
}

main() {
    setup || return 1
    step main 150 --sizes 512,1024,4096 --repeat 3 --rows fluxsr,teacher,realesrgan,bicubic \
        --teacher-steps 28 --teacher-run-steps 4 --write-ext jpg
    step fast 200 --sizes 1024,4096 --repeat 3 --rows fluxsr --compile --compile-vae --channels-last-vae \
        --tile 1088 --overlap 64 --max-memory 40GiB --write-ext jpg
    STEP_PATH=$SITE_FP8 step fp8 120 --sizes 1024 --repeat 3 --rows fluxsr --compile --fp8 --write-ext jpg
    step text64 40 --sizes 1024 --repeat 3 --rows fluxsr --text-len 64 --write-ext jpg
    step flash 40 --sizes 1024 --repeat 3 --rows fluxsr --sdpa flash --write-ext jpg
    step batch1 40 --sizes 2048 --repeat 3 --rows fluxsr --tile 512 --overlap 64 --tile-batch 1 --write-ext jpg
    step batch4 40 --sizes 2048 --repeat 3 --rows fluxsr --tile 512 --overlap 64 --tile-batch 4 --write-ext jpg
    step graphs 120 --sizes 1024 --repeat 3 --rows fluxsr --compile --compile-mode reduce-overhead --write-ext jpg
    echo "== done in ${SECONDS}s"
}

case ${1:-speed} in
speed) main ;;
lowvram) lowvram ;;
*) echo "usage: scripts/gpu_bench.sh [speed|lowvram]" ;;
esac 2>&1 | tee "$OUT/log.txt"
