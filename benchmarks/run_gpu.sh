#!/usr/bin/env bash
# Every GPU check and benchmark in one go, on the GPU machine: one H100 or
# H200, Python 3.12, torch 2.11, triton 3.6, transformers, sentencepiece, tensorboard, pyyaml;
# no megatron-core, no network.
#
#   1. kernel tests     pytest tests/kernels, compiled on the GPU (no interpreter); the Lightning
#                       and InfLLM-V2 files run side by side (Triton compiles on the CPU)
#   2. hybrid           benchmarks/bench_hybrid.py: ~1B hybrid vs dense decoder, forward+backward
#                       at 32K and 128K tokens (bf16, full recomputation)
#   3. lightning        benchmarks/bench_lightning.py at full sizes (bf16, 4K..128K)
#   4. infllmv2         benchmarks/bench_infllmv2.py at full sizes (bf16, 4K..128K)
#   5. train            benchmarks/train_throughput.py (~1B Qwen3-shaped model, 20 steps, bf16)
#
# Each part runs even when an earlier one failed, under a time limit (PART_LIMIT below: 9.5
# minutes in all at worst, inside the device's 10-minute command limit; the parts most needed
# come first). Benchmarks write their JSON as rows complete where they can. Results go to $OUT
# (benchmarks/results when OUT is unset): each benchmark's JSON, the tests' JUnit XML, a log per
# part, environment.txt and run_gpu.json (exit status and seconds of every part); at the end the
# logs and XML are packed into logs.tar.gz (the device returns at most 8 files per call). The console
# shows each log's tail and the failed parts; the exit status is 1 when any part failed.
#
# Before, on the CPU machine (with network): the wheels the GPU machine lacks, for CPython 3.12.
# Nothing else is needed: transformers brings safetensors, tqdm, tokenizers and packaging;
# megatron-core's other imports (einops, psutil, boto3, nvtx, transformer-engine, apex) are
# optional; pyarrow, psutil, webdataset, PIL, av and soundfile are used only by data paths these
# parts do not run.
#
#   pip download --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
#       --abi cp312 --platform manylinux_2_28_x86_64 -d .whl \
#       megatron-core==0.16.1 pytest==9.0.3 iniconfig==2.3.0 pluggy==1.6.0 pygments==2.20.0
#
# .whl/ is git-ignored, so the device run must carry it; the machine's copy of the tree may lack
# .git, so pass the commit the results belong to (else the JSON says "unknown"):
#   run(command="GIT_COMMIT=<sha> bash benchmarks/run_gpu.sh", carry=[".whl"], timeout_s=600)
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
RESULTS="${OUT:-$ROOT/benchmarks/results}"
PY="${PYTHON:-python3}"
SITE="${SITE:-/tmp/site}"
declare -A PART_LIMIT=([kernel_tests]=120 [hybrid]=210 [lightning]=70 [infllmv2]=70 [train]=70)  # seconds
mkdir -p "$RESULTS"

# Missing packages from .whl/; the repository's packages under their installed import names
# (setup.py maps kernels/ -> omni_kernels, launch/ -> omni_launch, data_prep/ -> omni_data_prep).
mkdir -p "$SITE"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl
fi
ln -sfn "$ROOT/kernels" "$SITE/omni_kernels"
ln -sfn "$ROOT/launch" "$SITE/omni_launch"
ln -sfn "$ROOT/data_prep" "$SITE/omni_data_prep"
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

{
    date -u +%FT%TZ
    echo "commit ${GIT_COMMIT:-unknown}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "| torch",
torch.__version__, "| cuda", torch.version.cuda, "| triton", triton.__version__)'
    "$PY" -W ignore -c 'import megatron.core as mc, pytest; print("megatron-core", mc.__version__,
"| pytest", pytest.__version__)'
} > "$RESULTS/environment.txt" 2>&1
cat "$RESULTS/environment.txt"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "run_gpu.sh: no CUDA device; the full-size benchmarks need a GPU" >&2
    exit 2
fi

FAILED=()
STATUS=()

part() {  # part NAME COMMAND...: run under the part's time limit, log to $RESULTS/NAME.log
    local name="$1" start rc
    shift
    echo "=== $name (limit ${PART_LIMIT[$name]} s): $*"
    start=$SECONDS
    timeout --kill-after=10 "${PART_LIMIT[$name]}" "$@" > "$RESULTS/$name.log" 2>&1
    rc=$?
    tail -n 15 "$RESULTS/$name.log"
    if [ "$rc" -eq 0 ]; then
        echo "=== $name: ok ($((SECONDS - start)) s)"
    else
        [ "$rc" -eq 124 ] && echo "=== $name: TIMED OUT" || echo "=== $name: FAILED (exit $rc)"
        FAILED+=("$name")
    fi
    STATUS+=("\"$name\": {\"exit\": $rc, \"seconds\": $((SECONDS - start))}")
}

kernel_tests() {  # both test files at once; fails if either fails
    local pids=() rc=0 f
    for f in lightning infllmv2; do
        "$PY" -m pytest -q -p no:cacheprovider -rfE "tests/kernels/test_$f.py" \
            --junitxml="$RESULTS/kernel_tests_$f.xml" > "$RESULTS/kernel_tests_$f.log" 2>&1 &
        pids+=($!)
    done
    for f in "${!pids[@]}"; do
        wait "${pids[$f]}" || rc=1
    done
    tail -n 5 "$RESULTS"/kernel_tests_*.log
    return $rc
}
export -f kernel_tests
export PY RESULTS

part kernel_tests bash -c kernel_tests
part hybrid "$PY" benchmarks/bench_hybrid.py --timeout 120 --out "$RESULTS"
part lightning "$PY" benchmarks/bench_lightning.py --out "$RESULTS"
part infllmv2 "$PY" benchmarks/bench_infllmv2.py --out "$RESULTS"
part train "$PY" benchmarks/train_throughput.py --out "$RESULTS"

printf '{%s}\n' "$(IFS=,; echo "${STATUS[*]}")" > "$RESULTS/run_gpu.json"
# the device machine returns at most 8 files per call: logs and JUnit XML go into one archive
(cd "$RESULTS" && tar czf logs.tar.gz ./*.log ./*.xml 2>/dev/null && rm -f ./*.log ./*.xml)
echo "results in $RESULTS:"
ls "$RESULTS"
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "run_gpu.sh: FAILED parts: ${FAILED[*]}"
    exit 1
fi
echo "run_gpu.sh: all parts passed"
