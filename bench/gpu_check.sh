#!/usr/bin/env bash
# The GPU check: the one script a session with a GPU machine runs there (one NVIDIA GPU, no network, an image with
# only Python 3.12, torch + CUDA, triton, lightning, torchmetrics and numpy). It must bring numbers back whatever
# else fails, so: timings first (cheap and most important first), tests last; every phase runs under its own
# timeout, and a failed phase is recorded (exit code, log tail) while the next one runs. The timeouts sum to under
# GPU_CHECK_BUDGET_S (default 450 s; the tests take what the phases before them left).
#
#   bash bench/gpu_check.sh              on the GPU machine (OUT defaults to bench/results)
#   bash bench/gpu_check.sh --rehearse   the same flow on CPU tensors through Triton's interpreter, at sliver sizes,
#                                        a few selected tests; 1-1.5 minutes on 2 cores (tests/test_gpu_check.py
#                                        runs it with the packages the image lacks blocked; a slow test: run it
#                                        with `pytest -m slow tests/test_gpu_check.py` before spending GPU time). OUT defaults to
#                                        ${TMPDIR:-/tmp}/hm2bp_gpu_rehearsal, so real results are never overwritten.
#
# Carry exactly: carry: ["bench/wheels"] (git-ignored, 1.8 MB). Fill it here first with `make gpu-wheels`, which
# downloads the pinned pure-Python wheels of bench/wheels.txt (pytest and what it needs) for Python 3.12. The script
# installs them with pip --no-index into a temporary folder for the test phase; without the folder that phase is a
# recorded failure (a skip in a rehearsal, whose tests then use the environment's pytest). Nothing else is carried:
# the data are made in memory, the kernels compile there.
#
# Phases and what they write under $OUT (each file atomically, as soon as it is measured; <phase>.log each):
#   env                       env.json: Python, torch, CUDA, triton, lightning, torchmetrics, numpy, the GPU
#   gpu_epoch                 gpu_epoch.json: the engine alone, 784-800-10 at T 400, batch 128 (random input trains);
#                             gpu_epoch_profile.txt: torch.profiler's table of 3 more steps (where the time goes)
#   gpu_epoch_bptt            gpu_epoch_bptt.json, gpu_epoch_bptt_profile.txt: the same network and data trained by
#                             BPTT (--rule bptt)
#   app_<row>                 gpu_app_<row>.json: one row of bench/gpu_app_epoch.py through SpikeData + HM2BPModule +
#                             Lightning, rows mnist_mlp, mnist_cnn, nmnist_mlp, emnist_mlp_400_400 (in-memory data);
#                             gpu_app_epoch.json: every row so far, rewritten after each, with the last one the
#                             paper table's GPU-hours; BENCHMARKS.md: the repo's, its gpu-app section then filled
#   wheels                    (installs bench/wheels)
#   tests                     the Triton kernels, split-TF32 GEMMs, no-host-read step and ops tests on CUDA tensors
#   summary.json              rewritten after every phase: status (ok, failed, timeout, skipped), exit code,
#                             seconds, timeout and, for a phase that is not ok, its log's tail
# Timed epochs stop after --max-seconds (25 s for the engine and mnist_mlp, 15 s for BPTT and the other rows; the
# samples trained so far count, and the result says "capped"). The exit code is 0 when no phase failed or timed out.
# Copied to bench/results/, gpu_app_epoch.json feeds the README: python -m hm2bp.report … --gpu-timing <it>.

cd "$(dirname "$0")/.." || exit 1
MODE=gpu
[ "${1:-}" = --rehearse ] && MODE=rehearsal
BUDGET=${GPU_CHECK_BUDGET_S:-450}
if [ -z "${PYTHON:-}" ]; then
    # the image's python on the GPU machine (.venv is not carried); this checkout's venv where there is one
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1  # the image has no pytest plugins; a dev venv's must not change the run
if [ "$MODE" = rehearsal ]; then
    OUT=${OUT:-${TMPDIR:-/tmp}/hm2bp_gpu_rehearsal}
    # before any Python starts: hm2bp.backend reads HM2BP_OPS at import, Triton its interpreter flag
    export TRITON_INTERPRET=1 HM2BP_OPS=triton
    DEVICE=cpu
    # slivers: the interpreter costs ~2 ms per program per time step, so batch 1 and T 8
    ENGINE_ARGS=(--samples 1 --batch 1 --steps 8)
    BPTT_ARGS=()
    APP_ARGS=(--scale 0.00001 --steps 8 --batch 1)
    SLACK=2  # the interpreter's speed varies with the machine's load; the timeouts only bound a hang here
    TESTS=(tests/test_triton.py::test_scan_threshold_ties_do_not_fire_and_one_above_does
           tests/test_triton.py::test_scan_degenerate_shapes_and_bad_input
           tests/test_ops.py::test_bad_backend)
else
    OUT=${OUT:-bench/results}
    unset TRITON_INTERPRET
    export HM2BP_OPS=auto
    DEVICE=cuda
    SLACK=1
    ENGINE_ARGS=(--max-seconds 25)
    BPTT_ARGS=(--max-seconds 15)  # the later one wins
    APP_ARGS=()
    TESTS=(tests/test_triton.py tests/test_triton_path.py tests/test_host_sync.py tests/test_ops.py)
fi
ROWS=(mnist_mlp mnist_cnn nmnist_mlp emnist_mlp_400_400)
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)-$$
mkdir -p "$OUT" || exit 1
# nothing from an earlier run may pass for this one's
rm -f "$OUT"/{env,gpu_epoch,gpu_epoch_bptt,summary}.json "$OUT"/gpu_app_*.json "$OUT"/{env,gpu_epoch,gpu_epoch_bptt,wheels,tests}.log \
    "$OUT"/app_*.log "$OUT"/gpu_epoch{,_bptt}_profile.txt
SITE=$(mktemp -d)  # the carried wheels go here, not into the image's (or a dev venv's) site-packages
trap 'rm -rf "$SITE"' EXIT
# integer milliseconds: bash arithmetic, as the image may lack bc
now_ms() { echo $(($(date +%s%N) / 1000000)); }
since() { local ms=$(($(now_ms) - $1)); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)); }  # seconds since ms $1
START=$(now_ms)
RECORDS=()  # one "name status rc seconds timeout" per phase

summary() {  # rewrite $OUT/summary.json (atomically) from RECORDS; stdlib only, so it works when hm2bp does not
    "$PYTHON" - "$OUT" "$MODE" "$RUN_ID" "$START" "$BUDGET" "${RECORDS[@]}" <<'EOF'
import json, os, sys, tempfile, time
out, mode, run_id, start, budget, *records = sys.argv[1:]
phases = []
for rec in records:
    name, status, rc, seconds, limit = rec.split()
    phase = {"name": name, "status": status, "rc": int(rc), "seconds": float(seconds), "timeout_s": int(limit),
             "log": f"{name}.log"}
    if status != "ok":
        try:
            with open(os.path.join(out, phase["log"]), errors="replace") as f:
                phase["tail"] = "".join(f.readlines()[-20:])
        except OSError as err:
            phase["tail"] = f"(no log: {err})"
    phases.append(phase)
data = {"mode": mode, "run_id": run_id, "budget_s": int(budget), "seconds": time.time() - int(start) / 1000,
        "ok": [p["name"] for p in phases if p["status"] == "ok"],
        "failed": [p["name"] for p in phases if p["status"] in ("failed", "timeout")],
        "skipped": [p["name"] for p in phases if p["status"] == "skipped"], "phases": phases}
fd, tmp = tempfile.mkstemp(dir=out, prefix=".summary.", suffix=".tmp")
with os.fdopen(fd, "w") as f:
    json.dump(data, f, indent=2)
os.replace(tmp, os.path.join(out, "summary.json"))
EOF
}

record() {  # record NAME STATUS RC SECONDS TIMEOUT, print it, refresh the summary
    RECORDS+=("$1 $2 $3 $4 $5")
    printf '[gpu_check] %-26s %-8s rc %-3s %7ss (timeout %ss)\n' "$1" "$2" "$3" "$4" "$5"
    if [ "$2" != ok ] && [ -f "$OUT/$1.log" ]; then tail -n 15 "$OUT/$1.log" | sed 's/^/    /'; fi
    summary || echo "[gpu_check] could not write $OUT/summary.json"
}

phase() {  # phase NAME TIMEOUT_S COMMAND...: run it under timeout with its output in $OUT/NAME.log, then record it
    local name=$1 limit=$2 t0 rc status
    shift 2
    t0=$(now_ms)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    record "$name" "$status" "$rc" "$(since "$t0")" "$limit"
}

echo "[gpu_check] $MODE run $RUN_ID: results in $OUT, python $PYTHON"
phase env $((40 * SLACK)) "$PYTHON" - "$OUT/env.json" "$MODE" <<'EOF'
import shutil, subprocess, sys
import lightning, numpy, torch, torchmetrics, triton
from hm2bp.io import atomic_write_json
cuda = torch.cuda.is_available()
info = {"mode": sys.argv[2], "python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
        "triton": triton.__version__, "lightning": lightning.__version__, "torchmetrics": torchmetrics.__version__,
        "numpy": numpy.__version__, "cuda_available": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None}
print(info)
atomic_write_json(sys.argv[1], info)
if sys.argv[2] == "gpu":
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi"], check=False)  # driver and memory in the log
    assert cuda, "no CUDA device"
EOF

phase gpu_epoch $((75 * SLACK)) "$PYTHON" bench/gpu_epoch.py --device "$DEVICE" "${ENGINE_ARGS[@]}" \
    --out "$OUT/gpu_epoch.json" --profile "$OUT/gpu_epoch_profile.txt"
phase gpu_epoch_bptt $((45 * SLACK)) "$PYTHON" bench/gpu_epoch.py --device "$DEVICE" --rule bptt \
    "${ENGINE_ARGS[@]}" "${BPTT_ARGS[@]}" --out "$OUT/gpu_epoch_bptt.json" --profile "$OUT/gpu_epoch_bptt_profile.txt"

cp BENCHMARKS.md "$OUT/BENCHMARKS.md"  # the rows fill its gpu-app section, not the checkout's
# per row: the phase's timeout, and the timed epoch's cap within it (after start-up, data, warm-up and compilation)
declare -A ROW_TIMEOUT=([mnist_mlp]=70 [mnist_cnn]=55 [nmnist_mlp]=55 [emnist_mlp_400_400]=45)
declare -A ROW_CAP=([mnist_mlp]=25 [mnist_cnn]=15 [nmnist_mlp]=15 [emnist_mlp_400_400]=15)
for row in "${ROWS[@]}"; do
    phase "app_$row" $((ROW_TIMEOUT[$row] * SLACK)) "$PYTHON" bench/gpu_app_epoch.py --device "$DEVICE" --rows "$row" \
        "${APP_ARGS[@]}" --max-seconds "${ROW_CAP[$row]}" --out "$OUT/gpu_app_epoch.json" --row-dir "$OUT" \
        --run-id "$RUN_ID" --benchmarks "$OUT/BENCHMARKS.md"
done

if [ -d bench/wheels ]; then
    phase wheels 30 "$PYTHON" -m pip install --quiet --no-index --find-links bench/wheels --target "$SITE" \
        -r bench/wheels.txt
elif [ "$MODE" = rehearsal ]; then
    echo "bench/wheels is absent (make gpu-wheels fills it); the rehearsal's tests use the environment's pytest" \
        >"$OUT/wheels.log"
    record wheels skipped 0 0 30
else
    echo "bench/wheels is absent: fill it with make gpu-wheels and carry it; pytest cannot run" >"$OUT/wheels.log"
    record wheels failed 1 0 30
fi

LEFT=$((BUDGET - ($(now_ms) - START) / 1000))  # the tests take what is left of the budget
[ "$LEFT" -lt 30 ] && LEFT=30
# -v: one line per test, so a log cut short by the timeout still says which passed
phase tests "$LEFT" env PYTHONPATH="$SITE:$PYTHONPATH" "$PYTHON" -m pytest -v -p no:cacheprovider "${TESTS[@]}"

echo "[gpu_check] $MODE run $RUN_ID done in $(since "$START") s:"
printf '  %-26s %-8s %4s %9s %8s\n' phase status rc seconds timeout
for rec in "${RECORDS[@]}"; do
    # shellcheck disable=SC2086
    printf '  %-26s %-8s %4s %9s %8s\n' $rec
done
echo "[gpu_check] summary: $OUT/summary.json"
for rec in "${RECORDS[@]}"; do
    case $rec in *" failed "* | *" timeout "*) exit 1 ;; esac  # the exit code says whether every phase went well
done
