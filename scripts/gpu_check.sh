#!/usr/bin/env bash
# One call that checks ldm on a CUDA GPU and measures it, within a time budget, into one folder.
#
#   scripts/gpu_check.sh [OUT_DIR]              on a GPU machine: at most 8 minutes
#   scripts/gpu_check.sh --dry-run [OUT_DIR]    the same steps on the CPU at tiny sizes (tests the plumbing)
#   scripts/gpu_check.sh --list                 the steps: timeout, minimum to start, expected seconds
#   scripts/gpu_check.sh --fetch-wheels [DIR]   (where PyPI is reachable) wheels of the dependencies that a
#                                               bare GPU image lacks, into DIR (default .whl/): carry them
# Options: --budget SECONDS (default 480; dry run 1200), --only STEP[,STEP...] (others are skipped).
#
# Steps run in order of value (environment, GPU tests, SD 2-base training MFU at 256 px, sampling at
# 512 px compiled, the diffusers comparison, then the rest), each under its own timeout. A failed
# step does not stop the next; a step is skipped, with the reason recorded, when what is left of the
# budget is below its minimum, or when what it needs (ldm.bench, diffusers, xformers) is missing.
#
# The folder (OUT_DIR, else $OUT, else ./gpu_check_out) receives at most 7 files, rewritten after each step:
#   summary.json, summary.md   every step: status, exit code, seconds, timeout, expected seconds, reason
#   env.txt                    date, commit, host, nvidia-smi, Python/torch/CUDA versions, pip freeze
#   steps.log                  every step's output
#   tests.xml                  JUnit XML of the GPU tests (pytest -m gpu)
#   bench.json                 each `python -m ldm.bench` result, by step name
#   compose.json               the compose suite's scores of the compose_gpu step's model
# Exit status: 0 when no step failed or timed out (skipped steps do not count), else 1.
#
# Environment: PYTHON (default .venv/bin/python when present, else python3); GPU_CHECK_BUDGET_S;
# GPU_CHECK_PYTEST_ARGS (more pytest arguments); GPU_CHECK_COMMIT (recorded when the checkout has no .git).
# Dependencies missing from the interpreter are installed from the wheels in .whl/ (see --fetch-wheels),
# else with pip install -e ".[dev]" where an index is reachable.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2

MODE=gpu
BUDGET_S="${GPU_CHECK_BUDGET_S:-}"
ONLY=""
OUT_DIR=""
WHEEL_DIR=".whl"
RESERVE_S=10  # kept back from the budget for the summary and a step's kill grace
# Dependencies that a bare CUDA image with PyTorch and Lightning may lack (checked by the install step).
WHEELS=(hydra-core omegaconf antlr4-python3-runtime webdataset braceexpand open_clip_torch ftfy wcwidth
  diffusers)
NEEDED_IMPORTS="import hydra, omegaconf, open_clip, webdataset, einops, pytorch_lightning, safetensors
import ldm.training.train, ldm.pipeline, ldm.convert"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

while (($#)); do
  case "$1" in
    --dry-run) MODE=dry-run ;;
    --list) MODE=list ;;
    --fetch-wheels) MODE=fetch-wheels ;;
    --budget) BUDGET_S="${2:?--budget needs a number of seconds}"; shift ;;
    --only) ONLY="${2:?--only needs a comma-separated list of steps}"; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) OUT_DIR="$1" ;;
  esac
  shift
done
if [[ -n "$BUDGET_S" && ! "$BUDGET_S" =~ ^[0-9]+$ ]]; then
  echo "error: the budget must be a whole number of seconds, got '$BUDGET_S'" >&2
  exit 2
fi

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PY="$PYTHON"

fetch_wheels() {  # here, where pip reaches an index: the versions installed here, for the GPU image's Python
  local dir="${1:-$WHEEL_DIR}" name version spec
  mkdir -p "$dir"
  for name in "${WHEELS[@]}"; do
    version="$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" \
      2>/dev/null)"
    spec="$name${version:+==$version}"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$dir" "$spec" ||
      "$PY" -m pip wheel -q --no-deps -w "$dir" "$spec" ||  # a pure-Python sdist (antlr4's): build it here
      { echo "error: no wheel for $spec" >&2; return 1; }
  done
  ls -l "$dir"
  du -sh "$dir"
}

if [[ "$MODE" == fetch-wheels ]]; then
  fetch_wheels "$OUT_DIR"
  exit
fi

if [[ "$MODE" == dry-run ]]; then
  BUDGET_S="${BUDGET_S:-1200}"
  # experiment=debug at 32 px, batch 2, one round, float32 on the CPU, nothing compiled
  BENCH_COMMON=(experiment=debug bench.device=cpu bench.precision=32 bench.rounds=1 bench.warmup=1
    "bench.samplers=[ddim]" bench.guidance_scale=7.5)
else
  BUDGET_S="${BUDGET_S:-480}"
  # SD 2-base with a randomly initialised text encoder (no download there) and without gradient
  # checkpointing (memory is plenty, and recomputation would cost MFU), in bf16
  BENCH_COMMON=(experiment=sd2_base conditioner.pretrained=null denoiser.use_checkpoint=false
    bench.device=cuda bench.precision=bf16 bench.rounds=10 bench.warmup=3 "bench.samplers=[ddim]"
    bench.guidance_scale=7.5)
fi

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled
if [[ "$MODE" != list ]]; then
  OUT_DIR="${OUT_DIR:-${OUT:-./gpu_check_out}}"
  mkdir -p "$OUT_DIR" || exit 2
  OUT_DIR="$(cd "$OUT_DIR" && pwd)"
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
  SITE="$WORK/site"  # where the install step puts missing packages (on PYTHONPATH from then on)
  mkdir -p "$WORK/bench" "$WORK/hydra"
  : >"$WORK/steps.tsv"
  : >"$OUT_DIR/steps.log"
  rm -f "$OUT_DIR"/{summary.json,summary.md,env.txt,tests.xml,bench.json,compose.json}
  export PY REPO SITE WHEEL_DIR NEEDED_IMPORTS MODE
  if "$PY" -c "" 2>/dev/null; then REPORT_PY="$PY"; else REPORT_PY=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# shellcheck disable=SC2317 # run through bash -c (exported)
versions() {  # the interpreter, torch, CUDA and the packages the steps use
  "$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
import torch
print("torch", torch.__version__, "| cuda", torch.version.cuda, "| cudnn", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"device {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
          f"{p.multi_processor_count} SMs")
if torch.cuda.is_available():
    print("bf16 supported:", torch.cuda.is_bf16_supported())
for name in ("triton", "xformers", "diffusers", "pytorch_lightning", "hydra", "omegaconf", "open_clip",
             "webdataset", "numpy", "safetensors"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "(no __version__)"))
    except Exception as error:  # noqa: BLE001 - any failure to import is the answer
        print(name, "not importable:", type(error).__name__, str(error).splitlines()[0][:120])
EOF
}

# shellcheck disable=SC2317 # run through bash -c (exported)
collect_env() {  # -> env.txt; fails only when the Python interpreter does
  local out="$1" rc
  {
    echo "## date"; date -u +%Y-%m-%dT%H:%M:%SZ
    echo "## commit"
    git -C "$REPO" rev-parse HEAD 2>/dev/null || echo "${GPU_CHECK_COMMIT:-unknown (no .git here)}"
    git -C "$REPO" status --short 2>/dev/null | head -20
    echo "## host"; uname -a; echo "cpus: $(nproc --all)"; free -g 2>/dev/null | head -2
    echo "## nvidia-smi"
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
      nvidia-smi
    else
      echo "nvidia-smi not found"
    fi
    echo "## versions"; versions; rc=$?
    echo "## pip freeze"; "$PY" -m pip freeze 2>&1
  } >"$out" 2>&1
  grep -E "^(python |torch |cuda available|device )" "$out"
  return "$rc"
}

# shellcheck disable=SC2317 # run through bash -c (exported)
install_deps() {  # make NEEDED_IMPORTS importable: wheels from WHEEL_DIR into SITE, else pip install -e
  if "$PY" -c "$NEEDED_IMPORTS"; then
    echo "every dependency is importable: nothing to install"
    return 0
  fi
  if compgen -G "$WHEEL_DIR/*.whl" >/dev/null; then
    echo "installing the wheels of $WHEEL_DIR into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEEL_DIR"/*.whl || return
    if PYTHONPATH="$SITE:$PYTHONPATH" "$PY" -c "$NEEDED_IMPORTS"; then
      PYTHONPATH="$SITE:$PYTHONPATH" versions
      return 0
    fi
  fi
  echo "trying pip install -e .[dev] (needs a package index)"
  "$PY" -m pip install -q --retries 0 --timeout 10 -e ".[dev]" || return
  "$PY" -c "$NEEDED_IMPORTS"
}
# shellcheck disable=SC2317 # run through bash -c (exported)
compose_run() {  # compose_run WORK OUT [overrides...]: experiment=compose_gpu, both stages, then the suite
  local work="$1" out="$2"
  shift 2
  local eval_args=()
  [[ "$MODE" == dry-run ]] && eval_args=(--n_per_prompt 1 --steps 2 --device cpu)
  "$PY" -m ldm.train experiment=compose_gpu "data.root=$work/data" "hydra.run.dir=$work/run" "$@" &&
    "$PY" -m ldm.eval --suite compose --ckpt "$work/run/checkpoints/last.ckpt" --out "$out" "${eval_args[@]}"
}

export -f versions collect_env install_deps compose_run

# ---- the step runner ---------------------------------------------------------------------------------
FAILED=0

record() {  # name status exit_code seconds timeout_s expected_s reason command...
  local name="$1" status="$2" rc="$3" seconds="$4" timeout_s="$5" expected="$6" reason="$7"
  shift 7
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$seconds" "$timeout_s" "$expected" \
    "$reason" "$*" >>"$WORK/steps.tsv"
  "$REPORT_PY" "$REPO/scripts/gpu_check_report.py" --records "$WORK/steps.tsv" --bench-dir "$WORK/bench" \
    --out "$OUT_DIR" --mode "$MODE" --budget "$BUDGET_S" --elapsed "$SECONDS" --python "$PY" \
    --commit "$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo "${GPU_CHECK_COMMIT:-unknown}")" ||
    echo "warning: the summary could not be written" >&2
}

selected() {  # is step $1 in --only (or is there no --only)?
  [[ -z "$ONLY" || ",$ONLY," == *",$1,"* ]]
}

blocked() {  # why step $1, which needs at least $2 seconds, cannot start now (nothing when it can)
  local left=$((BUDGET_S - SECONDS - RESERVE_S))
  if ! selected "$1"; then
    echo "not selected by --only"
  elif ((left < $2)); then
    echo "budget: ${left}s of ${BUDGET_S}s left, the step needs at least ${2}s"
  fi
}

skip() {  # name expected_s reason command...
  local name="$1" expected="$2" reason="$3"
  shift 3
  echo "[gpu_check +${SECONDS}s] $name: skipped ($reason)"
  record "$name" skipped - - - "$expected" "$reason" "$@"
}

# step NAME TIMEOUT_S MIN_S EXPECTED_S -- COMMAND...: run COMMAND under min(TIMEOUT_S, what is left of
# the budget), if at least MIN_S is left; EXPECTED_S is its expected duration on an H200 (for the record).
step() {
  local name="$1" timeout_s="$2" min_s="$3" expected="$4"
  shift 5
  if [[ "$MODE" == list ]]; then
    printf '%-30s %9s %6s %10s   %s\n' "$name" "$timeout_s" "$min_s" "$expected" "$*"
    return
  fi
  local why
  why="$(blocked "$name" "$min_s")"
  if [[ -n "$why" ]]; then
    skip "$name" "$expected" "$why" "$@"
    return
  fi
  local left=$((BUDGET_S - SECONDS - RESERVE_S))
  local limit=$((timeout_s < left ? timeout_s : left)) start=$SECONDS rc status
  echo "[gpu_check +${SECONDS}s] $name: start (timeout ${limit}s)"
  printf '\n===== %s (+%ss, timeout %ss): %s\n' "$name" "$SECONDS" "$limit" "$*" >>"$OUT_DIR/steps.log"
  timeout --kill-after=5 "$limit" "$@" >>"$OUT_DIR/steps.log" 2>&1
  rc=$?
  case "$rc" in
    0) status=ok ;;
    124 | 137) status=timeout; FAILED=1 ;;
    *) status=failed; FAILED=1 ;;
  esac
  printf '===== %s: %s, exit code %s, %ss\n' "$name" "$status" "$rc" "$((SECONDS - start))" \
    >>"$OUT_DIR/steps.log"
  echo "[gpu_check +${SECONDS}s] $name: $status (exit code $rc, $((SECONDS - start))s)"
  if [[ -d "$SITE" && ":$PYTHONPATH:" != *":$SITE:"* ]]; then export PYTHONPATH="$SITE:$PYTHONPATH"; fi
  local reason=""
  [[ "$status" == timeout ]] && reason="stopped after ${limit}s"
  record "$name" "$status" "$rc" "$((SECONDS - start))" "$limit" "$expected" "$reason" "$@"
}

declare -A MISSING=()  # what a bench step may need -> why it is not there ("" once found importable)
probe() {  # fill MISSING once: ldm.bench, diffusers, xformers
  [[ -v MISSING[bench] ]] && return
  local unknown="could not be checked"
  MISSING=([bench]="$unknown" [diffusers]="$unknown" [xformers]="$unknown")
  local key why
  while IFS=$'\t' read -r key why; do
    MISSING[$key]="$why"
  done < <(timeout 120 "$PY" - <<'EOF'
import importlib
for key, module in (("bench", "ldm.bench"), ("diffusers", "diffusers"), ("xformers", "xformers.ops")):
    try:
        importlib.import_module(module)
        print(f"{key}\t")
    except Exception as error:  # noqa: BLE001 - any failure to import is the answer
        message = (str(error).splitlines() or [""])[0][:160]
        print(f"{key}\t{module} is not importable ({type(error).__name__}: {message})")
EOF
  )
}

# bench NAME TIMEOUT_S MIN_S EXPECTED_S PARTS RESOLUTION BATCH_SIZES COMPILE CHANNELS_LAST ATTENTION COMPARE [CUDA_GRAPHS]
bench() {
  local name="$1" timeout_s="$2" min_s="$3" expected="$4" parts="$5" resolution="$6" batches="$7"
  local compile="$8" channels_last="$9" attention="${10}" compare="${11}" cuda_graphs="${12:-false}"
  if [[ "$MODE" == dry-run ]]; then resolution=32 batches="[2]" compile=false cuda_graphs=false; fi
  local command=("$PY" -m ldm.bench "${BENCH_COMMON[@]}" "bench.parts=$parts" "bench.resolution=$resolution"
    "bench.batch_sizes=$batches" "bench.compile=$compile" "bench.channels_last=$channels_last"
    "bench.attention=$attention" "bench.compare=$compare" "bench.cuda_graphs=$cuda_graphs")
  if [[ "$MODE" != list ]]; then
    command+=("bench.out=$WORK/bench/$name.json" "hydra.run.dir=$WORK/hydra/$name")
  fi
  if [[ "$MODE" != list && -z "$(blocked "$name" "$min_s")" ]]; then
    probe
    local need
    for need in bench $([[ "$compare" == diffusers ]] && echo diffusers) \
      $([[ "$attention" == xformers ]] && echo xformers); do
      if [[ -n "${MISSING[$need]}" ]]; then
        skip "$name" "$expected" "${MISSING[$need]}" "${command[@]}"
        return
      fi
    done
  fi
  step "$name" "$timeout_s" "$min_s" "$expected" -- "${command[@]}"
}

# ---- the steps, in order of value ---------------------------------------------------------------------
if [[ "$MODE" == list ]]; then
  printf '%-30s %9s %6s %10s   %s\n' step timeout_s min_s expected_s command
else
  echo "[gpu_check] $MODE: budget ${BUDGET_S}s, python $PY, writing to $OUT_DIR"
fi
#    name                         timeout min expected
# shellcheck disable=SC2016 # $1 is the inner shell's argument
step env                             60     1     10 -- bash -c 'collect_env "$1"' _ "${OUT_DIR:-OUT}/env.txt"
step install                        180     5     15 -- bash -c install_deps
# shellcheck disable=SC2086 # GPU_CHECK_PYTEST_ARGS splits into several arguments on purpose
step gpu_tests                      270    60    180 -- "$PY" -m pytest -m gpu tests/gpu \
  tests/training/test_ddp_equivalence.py -p no:cacheprovider -q -rs --junitxml="${OUT_DIR:-OUT}/tests.xml" \
  ${GPU_CHECK_PYTEST_ARGS:-}
#     name                         timeout min expected parts  px  batches  compile c-last attention compare [graphs]
bench bench_256_train                150    60     60 "[train]" 256 "[16,64]" false false sdpa none
bench bench_512_sample_compile       270   150    180 "[sample]" 512 "[1]" true true sdpa none
bench bench_512_sample_cudagraphs    270   150    180 "[sample]" 512 "[1]" true true sdpa none true
bench compare_diffusers_512_sample   180    60     60 "[sample]" 512 "[1]" false false sdpa diffusers
bench compare_diffusers_256_train    180    60     60 "[train]" 256 "[16]" false false sdpa diffusers
bench bench_512_sample               120    45     40 "[sample]" 512 "[1,8]" false false sdpa none
bench bench_512_sample_xformers      120    45     40 "[sample]" 512 "[1,8]" false false xformers none
bench bench_256_train_compile        300   150    150 "[train]" 256 "[64]" true true sdpa none
bench bench_512_train                150    60     60 "[train]" 512 "[8,16]" false false sdpa none
bench bench_256_train_xformers       150    60     50 "[train]" 256 "[16,64]" false false xformers none
bench bench_512_sample_compile_b8    270   150    150 "[sample]" 512 "[8]" true true sdpa none
bench bench_512_autoencoder          120    45     40 "[autoencoder]" 512 "[1,8]" false false sdpa none
bench bench_256_sample               120    45     40 "[sample]" 256 "[1,8]" false false sdpa none
# The compose world's GPU preset (issue 19), both stages and the compose suite: last in order of value,
# so it runs in the default budget only if time is left; `--only compose_gpu` runs it alone (~4 min).
COMPOSE_ARGS=()
if [[ "$MODE" == dry-run ]]; then
  COMPOSE_ARGS=(trainer.accelerator=cpu autoencoder.max_steps=2 diffusion.max_steps=2 diffusion.batch_size=2
    autoencoder.batch_size=2 data.num_train=64 data.num_val=16 data.num_workers=0 trainer.sample_every_n_steps=0)
fi
# shellcheck disable=SC2016 # $1, $2 are the inner shell's arguments
step compose_gpu                     420   240    240 -- bash -c 'compose_run "$@"' _ "${WORK:-WORK}/compose" \
  "${OUT_DIR:-OUT}/compose.json" "${COMPOSE_ARGS[@]}"

[[ "$MODE" == list ]] && exit 0
echo "[gpu_check +${SECONDS}s] done; summary in $OUT_DIR/summary.md"
cat "$OUT_DIR/summary.md" 2>/dev/null
exit "$FAILED"
