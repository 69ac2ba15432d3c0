#!/bin/bash
# Stage-2 seconds per step, encoding 64x64 shapes images on the fly vs training from cached latents
# (and from cached latents and text embeddings).
#
#   benchmarks/bench_cached_latents.sh RUN/autoencoder/checkpoints/last.ckpt [OUT]
#
# Caches the latents and text-encoder states of a shapes set at 64x64 (N_TRAIN 4000 + N_VAL 256
# images) with that autoencoder and the default config's text encoder, then runs
# `python -m ldm.train stage=diffusion` for SHORT (20) and for LONG (200) steps in each mode
# (onthefly, cached: data.cached_latents=true, cachedtext: also data.cached_text=true); the
# difference of the two wall times over LONG - SHORT steps is the per-step time without start-up,
# validation or data writing; the runs' logged throughput gives a second measure (the median of its
# rolling windows). Run from the repository root, alone on the machine.
set -euo pipefail
AE=$1
OUT=${2:-/tmp/cachebench}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
: > "$OUT/times.txt"
COMMON="stage=diffusion autoencoder.ckpt_path=$AE data.resolution=64 data.num_workers=1 trainer.sample_every_n_steps=0 trainer.enable_progress_bar=false"
N_TRAIN=${N_TRAIN:-4000}
N_VAL=${N_VAL:-256}
SHAPES="data=shapes data.root=$OUT/shapes64 data.num_train=$N_TRAIN data.num_val=$N_VAL"
$PY scripts/cache_latents.py --ckpt "$AE" --data shapes --data-root "$OUT/shapes64" --num-train "$N_TRAIN" \
    --num-val "$N_VAL" --resolution 64 --out "$OUT/lat64" --text > "$OUT/cache.log" 2>&1
LAST=$(printf "%06d" $(($(ls "$OUT"/lat64/train-*.tar | wc -l) - 1)))
LASTV=$(printf "%06d" $(($(ls "$OUT"/lat64/val-*.tar | wc -l) - 1)))
CACHED="data=webdataset data.cached_latents=true data.crop=center \"data.train_shards='$OUT/lat64/train-{000000..$LAST}.tar'\" \"data.val_shards='$OUT/lat64/val-{000000..$LASTV}.tar'\""
SHORT=${SHORT:-20}
LONG=${LONG:-200}
declare -A WALL
MODES="onthefly cached cachedtext"
for steps in $SHORT $LONG; do
  for mode in $MODES; do
    case $mode in
      onthefly) DATA="$SHAPES" ;;
      cached) DATA="$CACHED" ;;
      cachedtext) DATA="$CACHED data.cached_text=true" ;;
    esac
    start=$(date +%s.%N)
    eval "$PY" -m ldm.train $COMMON $DATA diffusion.max_steps=$steps "hydra.run.dir=$OUT/run-$mode-$steps" \
        > "$OUT/run-$mode-$steps.log" 2>&1
    WALL[$mode-$steps]=$(awk "BEGIN {print $(date +%s.%N) - $start}")
    echo "$mode $steps steps: ${WALL[$mode-$steps]} s" | tee -a "$OUT/times.txt"
  done
done
for mode in $MODES; do
  per_step=$(awk "BEGIN {print (${WALL[$mode-$LONG]} - ${WALL[$mode-$SHORT]}) / ($LONG - $SHORT)}")
  # The run's own log: train/device/batches_per_sec over rolling windows of trainer.throughput_window batches.
  logged=$($PY -c "import csv, statistics, sys
rates = [float(r['train/device/batches_per_sec']) for r in csv.DictReader(open(sys.argv[1]))
         if r.get('train/device/batches_per_sec')]
print(f'{1 / statistics.median(rates):.4f} s/step (median of {len(rates)} logged windows)' if rates else 'none logged')" \
    "$OUT/run-$mode-$LONG/logs/diffusion/metrics.csv")
  echo "$mode: $per_step s/step from wall times; $logged" | tee -a "$OUT/times.txt"
done
