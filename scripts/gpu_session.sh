#!/usr/bin/env bash
# One lent-GPU call (device tool): train the bundled model, measure a FLUX.1-dev-shaped training step, run
# `fluxsr bench` with FLUX.1-dev-shaped random weights. Each part has its own time limit so one failure cannot eat
# the others. Carry: .whl (diffusers wheel), .cache_carry (lpips_vgg.safetensors), .gpu_data (training photos).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=$PWD/src:/tmp/site FLUXSR_HOME=$PWD/.cache_carry HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" | tee -a "$OUT/gpu.txt"

# 1. the bundled model (time-limited stages; steps actually run are in the logs)
B=/tmp/bundled
timeout ${T_BUNDLED:-300} python3 scripts/train_bundled.py --data .gpu_data --run $B \
  --set pretrain.vae.time_limit=${VAE_S:-60} --set pretrain.teacher.time_limit=${TEACHER_S:-70} \
  --set train.time_limit=${STUDENT_S:-100} --set train.validate_every=0 --set train.checkpoint_every=100000 \
  > "$OUT/bundled.log" 2>&1
echo "bundled exit $?" | tee -a "$OUT/gpu.txt"
( cd $B && tar cf "$OUT/bundled.tar" report.json vae/log.csv teacher/log.csv student/log.csv student/final ) 2>>"$OUT/gpu.txt"

# 2. one FLUX.1-dev-shaped training step at 1024^2 with the full loss (random weights, LoRA rank 64)
F=/tmp/fluxtrain
SETS="--set model.base=flux-dev-random --set pairs.count=1 --set pairs.steps=1 --set pairs.source=teacher \
  --set train.steps=6 --set train.log_every=1 --set train.validate_every=0 --set train.checkpoint_every=100000 -q"
( timeout ${T_FLUX:-110} python3 -m fluxsr.cli gen-pairs --config configs/flux-dev.yaml --out $F/pairs $SETS && \
  timeout ${T_FLUX:-110} python3 -m fluxsr.cli train --config configs/flux-dev.yaml --pairs $F/pairs --out $F/run \
  $SETS ) > "$OUT/fluxtrain.log" 2>&1
echo "fluxtrain exit $?" | tee -a "$OUT/gpu.txt"
cp $F/run/log.csv "$OUT/fluxtrain.csv" 2>/dev/null

# 3. fluxsr bench with FLUX.1-dev shapes (teacher: 2 steps run, scaled to 28)
timeout ${T_BENCH:-130} python3 -m fluxsr.cli bench --model flux-dev-random --sizes 512,1024,2048,4096 \
  --repeat 3 --rows fluxsr,teacher,bicubic --teacher-run-steps 2 --teacher-max-size 1024 \
  --json "$OUT/bench.json" --markdown "$OUT/bench.md" > "$OUT/bench.log" 2>&1
echo "bench exit $?" | tee -a "$OUT/gpu.txt"
tail -5 "$OUT/bundled.log" "$OUT/fluxtrain.log" "$OUT/bench.log"
