#!/usr/bin/env bash
# shellcheck disable=SC2317  # the parts' functions are called through part(), which shellcheck does not follow
# The one command run on the lent GPU machine, from the repository root:
#
#   scripts/device_run.sh SPEC [--set PATH=VALUE ...]      e.g. sweeps/gpu_check.yaml
#
# through the device tool with the bundle carried (it is git-ignored, so `carry` must name it):
#   run(command="scripts/device_run.sh sweeps/gpu_check.yaml", carry=["device_bundle"], timeout_s=...)
#
# The image has PyTorch but no Ray, MLflow, pydantic or Optuna: scripts/device_bundle.sh built them
# as wheels (device_bundle/). This installs them into a folder outside the carried tree, puts it
# and the repository on PYTHONPATH (wrapperdist itself is not installed), runs the sweep into an
# MLflow SQLite store under $OUT, then writes the report, a throughput summary and Ray's logs.
# Each part writes under $OUT as it finishes, so a run cut short still leaves what was done.
#
# $OUT (default ./device_out) ends with at most 8 files, as the device tool hands back no more
# (nor anything over 16 MiB, or more than two folders down), so folders are packed at the end:
#   run.log             everything printed here, the sweep's output included
#   device.txt          machine, GPU (nvidia-smi), Python/torch, the bundle's check against the
#                       image (device_tools.py env-check), and each part's exit status
#   mlflow.db           the MLflow store (MLFLOW_TRACKING_URI=sqlite:///$OUT/mlflow.db)
#   throughput.json/.md per stage run: steps, wall time, steps/s (read back from the store)
#   reports.tar.gz      analysis/report.py's figures and report.md
#   mlartifacts.tar.gz  the runs' artifacts (plots, reports) up to 15 MiB, checkpoints (*.pt) left out
#   ray_logs.tar.gz     Ray's session logs, each file's last 256 KiB (less if that packs over 16 MiB)
#
# Environment: PYTHON (default python3: the image's, which has torch), BUNDLE (default
# ./device_bundle), DEVICE_WORK (default a new /tmp/wrapperdist-device.*: the installed bundle,
# the sweep's stage store and Ray's temp dir; removed at the end unless DEVICE_KEEP_WORK=1),
# SWEEP_TIMEOUT (seconds: the sweep is stopped with SIGTERM after that, so the report, throughput
# and logs still get written inside the device call's limit), DEVICE_PACK=0 (leave folders unpacked).
# Exit status: non-zero if installing, the sweep, the report or the throughput summary failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if (($# < 1)) || [[ $1 == -* ]]; then
    sed -n '3,5p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
SPEC=$1
shift

PYTHON=${PYTHON:-python3}
BUNDLE=${BUNDLE:-$ROOT/device_bundle}
OUT=${OUT:-$ROOT/device_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd) # absolute: it goes into a sqlite:/// URI and the children's environment
WORK=${DEVICE_WORK:-$(mktemp -d /tmp/wrapperdist-device.XXXXXX)}
mkdir -p "$WORK"
TARGET=$WORK/site
TOOLS=("$PYTHON" "$ROOT/scripts/device_tools.py")
MAX_FILE=$((16 * 1024 * 1024)) # the largest file the device tool hands back

declare -A STATUS=()
ORDER=()
# part NAME COMMAND...: run one part, note its exit status, go on whatever it was. Under `||`
# bash ignores set -e inside COMMAND, so the part functions below stop on failure themselves.
part() {
    local name=$1 start=$SECONDS rc=0
    shift
    echo "== $name"
    "$@" || rc=$?
    STATUS[$name]=$rc
    ORDER+=("$name")
    echo "== $name: exit $rc, $((SECONDS - start)) s"
}
ok() { [[ ${STATUS[$1]:-1} == 0 ]]; }

machine() {
    {
        echo "# machine ($(date -u +%FT%TZ))"
        uname -a
        echo "cpus: $(nproc)"
        free -g 2>/dev/null || true
        echo
        echo "# nvidia-smi"
        if command -v nvidia-smi >/dev/null; then
            nvidia-smi || true
            nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
        else
            echo "not found"
        fi
        echo
        echo "# python ($PYTHON)"
        "$PYTHON" -c 'import sys, torch
print(sys.executable, sys.version)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "devices", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
    } >>"$OUT/device.txt" 2>&1
}

install_bundle() {
    compgen -G "$BUNDLE/*.whl" >/dev/null || { echo "no wheels in $BUNDLE (scripts/device_bundle.sh builds them)"; return 1; }
    rm -rf "$TARGET"
    # --no-deps: the bundle holds what the image lacks and nothing else; --no-compile: modules are
    # compiled on first import (most of Ray's never are), which saves the time of compiling them all.
    "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
        --target "$TARGET" "$BUNDLE"/*.whl || return
    du -sh "$TARGET"
}

env_check() {
    { echo; echo "# the bundle against this image"; "${TOOLS[@]}" env-check "$TARGET"; } >>"$OUT/device.txt" 2>&1
    local rc=$?
    sed -n '/# the bundle against/,$p' "$OUT/device.txt"
    return "$rc"
}

sweep() {
    local limit=()
    [[ -n ${SWEEP_TIMEOUT:-} ]] && limit=(timeout --signal=TERM --kill-after=60 "$SWEEP_TIMEOUT")
    # our storage_path first: a --set storage_path=... of the caller's comes later and wins
    "${limit[@]}" "$PYTHON" -m wrapperdist.cli sweep "$SPEC" --set "storage_path=$WORK/ray_results" "$@"
}

ray_logs() {
    local logs
    logs=$(find "$WORK/ray" -maxdepth 2 -type d -name logs -path '*session_2*' 2>/dev/null | sort | tail -1)
    [[ -n $logs ]] || { echo "no Ray session logs under $WORK/ray"; return 0; }
    cp -a "$logs/." "$WORK/ray_logs" 2>/dev/null || true # a copy: Ray may still be writing
    # text compresses well: up to 96 MiB of it, each file's end; shorter ends until it fits in 16 MiB
    local tail
    for tail in 262144 65536 16384; do
        "${TOOLS[@]}" pack "$WORK/ray_logs" "$OUT/ray_logs.tar.gz" --tail "$tail" --max-bytes $((96 * 1024 * 1024)) ||
            return
        (($(stat -c %s "$OUT/ray_logs.tar.gz") <= MAX_FILE)) && return 0
    done
    rm -f "$OUT/ray_logs.tar.gz"
    echo "Ray's logs do not pack into 16 MiB: left out"
}

pack_folders() {
    # figures (PNG) do not compress: at most 15 MiB read into each, so that it comes back
    if [[ -d $OUT/reports ]]; then
        "${TOOLS[@]}" pack "$OUT/reports" "$OUT/reports.tar.gz" --max-bytes $((15 * 1024 * 1024)) &&
            rm -rf "$OUT/reports"
    fi
    if [[ -d $OUT/mlartifacts ]]; then
        "${TOOLS[@]}" pack "$OUT/mlartifacts" "$OUT/mlartifacts.tar.gz" --exclude '*.pt' \
            --max-bytes $((15 * 1024 * 1024)) && rm -rf "$OUT/mlartifacts"
    fi
    local f
    for f in "$OUT"/*; do
        [[ -f $f ]] && (($(stat -c %s "$f") > MAX_FILE)) && echo "warning: $f is over 16 MiB: the device tool will not hand it back"
    done
    return 0
}

main() {
    echo "device_run: $SPEC $* (OUT=$OUT, work=$WORK)"
    part machine machine
    part install install_bundle
    if ok install; then
        export PYTHONPATH="$ROOT:$TARGET${PYTHONPATH:+:$PYTHONPATH}" PATH="$TARGET/bin:$PATH"
        export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db"
        export RAY_TMPDIR=$WORK # Ray's session dir (its logs) under $WORK/ray, not a shared /tmp/ray
        export PYTHONUNBUFFERED=1
        part env-check env_check
        local experiment
        experiment=$("${TOOLS[@]}" experiment "$SPEC" "$@" 2>/dev/null) || experiment=wrapperdist
        echo "MLflow experiment: $experiment"
        part sweep sweep "$@"
        part report "$PYTHON" analysis/report.py --experiment "$experiment" --out "$OUT/reports"
        part throughput "${TOOLS[@]}" throughput "$MLFLOW_TRACKING_URI" "$experiment" "$OUT"
    fi
    part ray-logs ray_logs
    [[ ${DEVICE_PACK:-1} == 0 ]] || part pack pack_folders
    local name failed=0 summary=""
    for name in "${ORDER[@]}"; do
        summary+="$name=${STATUS[$name]} "
        # the env check is advice (the sweep shows whether it mattered); logs and packing too
        [[ $name =~ ^(install|sweep|report|throughput)$ && ${STATUS[$name]} != 0 ]] && failed=1
    done
    printf '\n# parts (exit status)\n%s\n' "$summary" >>"$OUT/device.txt"
    echo "device_run: $summary-> $( ((failed)) && echo FAILED || echo ok ); in $OUT: $(find "$OUT" -mindepth 1 -maxdepth 1 -printf '%f ')"
    [[ ${DEVICE_KEEP_WORK:-0} == 1 ]] || rm -rf "$WORK"
    return "$failed"
}

main "$@" 2>&1 | tee -a "$OUT/run.log"
exit "${PIPESTATUS[0]}"
