#!/usr/bin/env bash
# The wheels that `wrapperdist sweep` needs on the lent GPU machine and that its image lacks.
#
#   scripts/device_bundle.sh [--python 3.12] [DEST]            build DEST (default: device_bundle/)
#   scripts/device_bundle.sh --check [--python 3.12] [--image-dir DIR] [DEST]
#                                                              prove that DEST resolves against the image
#
# The machine (KINDS.md, kind nvidia-h200) has Python 3.12 with PyTorch and some 200 packages, but no
# Ray, MLflow, pydantic or Optuna, and it cannot download anything. What it lacks travels with the
# working tree, at most 64 MiB for the two together, and is installed there by scripts/device_run.sh
# (`pip install --no-index --no-deps --target`). So the bundle must hold everything missing and
# nothing the image has: the target folder comes first on PYTHONPATH, and a second numpy or protobuf
# there would shadow the image's own.
#
# Build: let pip resolve the requirements below, with their dependencies, for the device's platform
# (CPython 3.12, manylinux x86-64), then delete the wheels whose project is on the image (the list
# in scripts/device_tools.py, from KINDS.md), and slim Ray's wheel (see SLIM_* there).
#
# Check: resolve the same requirements offline from DEST, with the image modelled by a second folder
# that holds only image packages, and only those the resolver asks for: start it empty, run
# `pip install --dry-run`, and while pip says "No matching distribution found for X", download X
# into that folder if X is an image package (else X is missing from the bundle: fail). When the
# resolution succeeds, its --report says which folder each distribution came from. That proves the
# bundle complete against the image's package *names*; the image's versions are known only in part
# (`device_tools.py constraints`), so device_run.sh checks the installed bundle against the real
# image again before the sweep (device_tools.py env-check).
#
# --python 3.11 builds the same thing for CPython 3.11 (this machine's), to rehearse the device run
# here with the same code path. Environment: HOST_PYTHON (default python3) runs pip and the helper
# (any 3.11+ with pip >= 22.2; the bundle does not depend on it); MANYLINUX_MAX (default 28): the
# newest glibc 2.N whose wheels are taken (KINDS.md does not give the image's glibc; 2.28 is what
# the wheels here need and what the device README's example names); KEEP_WORK=1 keeps the scratch
# folder (pip's logs and report). --check takes a few minutes: one resolution per image package.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOST_PYTHON=${HOST_PYTHON:-python3}
TOOLS=("$HOST_PYTHON" "$ROOT/scripts/device_tools.py")
LIMIT=$((64 * 1024 * 1024)) # what may travel to the device: working tree + carried paths

# What a sweep imports that the image lacks; versions pinned as in pyproject.toml.
REQUIREMENTS=(
    # Not ray[default]: that extra's packages (virtualenv, py-spy, opencensus, google-api-core...,
    # 10.4 MB more, measured) serve the dashboard and metrics agent, and would not fit; sweeps
    # start Ray with include_dashboard=False.
    "ray[tune,train]==2.60.0"
    # The client of mlflow==3.17.2 without its server and UI (Flask, gunicorn, graphene, docker...)
    "mlflow-skinny==3.17.2"
    # ...and what its SQLite store needs, which mlflow (not -skinny) declares; bounds as mlflow 3.17.2
    # has them. The store's model-registry tables import cryptography.fernet.
    "sqlalchemy>=1.4.0,<3" "alembic!=1.10.0,<2" "cryptography>=43.0.0,<51"
    "pydantic==2.14.4" "pydantic-core==2.50.5"
    "optuna==5.0.0"
)

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

MODE=build PY_VERSION=3.12 DEST="" IMAGE_DIR=""
while (($#)); do
    case $1 in
        --check) MODE=check ;;
        --python) PY_VERSION=${2:?--python needs a version}; shift ;;
        --python=*) PY_VERSION=${1#*=} ;;
        --image-dir) IMAGE_DIR=${2:?--image-dir needs a folder}; shift ;;
        -h | --help) usage ;;
        -*) echo "unknown option: $1" >&2; usage ;;
        *) DEST=$1 ;;
    esac
    shift
done
DEST=$(mkdir -p "${DEST:-$ROOT/device_bundle}" && cd "${DEST:-$ROOT/device_bundle}" && pwd)

# The machine's own pip configuration adds local wheel folders and mirrors (PIP_FIND_LINKS,
# pip.conf): the build should see the registry alone, and the check only the two folders it names.
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_NO_INDEX PIP_TARGET

# Wheels for the device's interpreter: CPython $PY_VERSION, x86-64, glibc 2.17 to 2.$MANYLINUX_MAX
# (pip matches each manylinux_2_N tag exactly, so each N is named; manylinux2014 brings 2010 and 1).
PLATFORM=(--only-binary=:all: --implementation cp --python-version "$PY_VERSION" --abi "cp${PY_VERSION/./}"
    --platform manylinux2014_x86_64)
for n in $(seq 17 "${MANYLINUX_MAX:-28}"); do PLATFORM+=(--platform "manylinux_2_${n}_x86_64"); done

WORK=$(mktemp -d)
trap '[[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"' EXIT
"${TOOLS[@]}" image-names >"$WORK/image.txt"
"${TOOLS[@]}" constraints --python "$PY_VERSION" >"$WORK/constraints.txt"

# a project name as pip compares them (PEP 503), from a requirement or a wheel's file name
project_of() {
    local n=${1##*/}
    n=${n%%[<>=!~;[@ ]*}
    [[ $n == *.whl ]] && n=${n%%-*}
    n=${n,,}
    echo "${n//[_.]/-}"
}
on_image() { grep -qx "$(project_of "$1")" "$WORK/image.txt"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

# Bytes of what travels to the device besides carried paths: tracked and untracked-not-ignored
# files (the device tool's rule), less anything under DEST, which is counted as the bundle.
tree_bytes() {
    local total=0 f rel_dest=${DEST#"$ROOT"/}
    while IFS= read -r -d '' f; do
        [[ $DEST != "$ROOT" && $f == "$rel_dest"/* ]] && continue
        [[ -f $ROOT/$f && ! -L $ROOT/$f ]] && total=$((total + $(stat -c %s "$ROOT/$f")))
    done < <(git -C "$ROOT" ls-files -z --cached --others --exclude-standard)
    echo "$total"
}

build() {
    echo "resolving for CPython $PY_VERSION: ${REQUIREMENTS[*]}"
    "$HOST_PYTHON" -m pip download -q --dest "$WORK/all" -c "$WORK/constraints.txt" "${PLATFORM[@]}" \
        "${REQUIREMENTS[@]}"
    rm -f "$DEST"/*.whl # one version of each project: pip refuses two
    local whl image=()
    for whl in "$WORK"/all/*.whl; do
        if on_image "$whl"; then
            image+=("$(basename "$whl")")
        elif [[ $(project_of "$whl") == ray ]]; then
            "${TOOLS[@]}" slim "$whl" "$DEST"
        else
            mv "$whl" "$DEST/"
        fi
    done
    echo "left out, on the image already (${#image[@]}): ${image[*]}"
    echo "bundle (${DEST}):"
    find "$DEST" -maxdepth 1 -name '*.whl' -printf '  %10s  %f\n' | sort -k2
    local bundle tree
    bundle=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
    tree=$(tree_bytes)
    echo "bundle: $(find "$DEST" -name '*.whl' | wc -l) wheels, $bundle bytes ($(mib "$bundle"))"
    echo "working tree that travels: $tree bytes ($(mib "$tree"))"
    echo "together: $((bundle + tree)) bytes ($(mib $((bundle + tree)))) of $LIMIT (64 MiB)"
    if ((bundle + tree > LIMIT)); then
        echo "FAILED: over the 64 MiB that may travel to the device" >&2
        return 1
    fi
}

check() {
    compgen -G "$DEST/*.whl" >/dev/null || { echo "no wheels in $DEST: build it first" >&2; return 1; }
    local image_dir=${IMAGE_DIR:-$WORK/image} req name round
    mkdir -p "$image_dir"
    declare -A fetched=()
    for round in $(seq 1 100); do
        # --ignore-requires-python: pip 23 checks the wheels' Requires-Python against the Python
        # that runs it, not --python-version, at the end of a dry run; classify checks it instead.
        if "$HOST_PYTHON" -m pip install --dry-run --ignore-installed --ignore-requires-python \
            --no-index --find-links "$DEST" \
            --find-links "$image_dir" --target "$WORK/target" --report "$WORK/report.json" \
            -c "$WORK/constraints.txt" "${PLATFORM[@]}" "${REQUIREMENTS[@]}" >"$WORK/pip.log" 2>&1; then
            echo "resolved for CPython $PY_VERSION in $round round(s)"
            "${TOOLS[@]}" classify --python "$PY_VERSION" "$WORK/report.json" "$DEST" "$image_dir"
            return
        fi
        if ! req=$("${TOOLS[@]}" missing "$WORK/pip.log" "$DEST" "$image_dir"); then
            cat "$WORK/pip.log" >&2
            echo "FAILED: the resolution failed, and not for a missing package" >&2
            return 1
        fi
        name=$(project_of "$req")
        if ! on_image "$name"; then
            echo "FAILED: $req is needed, and neither in the bundle nor on the image" >&2
            return 1
        fi
        if [[ -n ${fetched[$name]:-} ]]; then
            cat "$WORK/pip.log" >&2
            echo "FAILED: $req: the image's $name (as modelled: $(ls "$image_dir")) does not satisfy it" >&2
            return 1
        fi
        echo "  asks for $req: on the image; modelled by its wheel"
        "$HOST_PYTHON" -m pip download -q --no-deps --dest "$image_dir" -c "$WORK/constraints.txt" \
            "${PLATFORM[@]}" "$req"
        fetched[$name]=1
    done
    echo "FAILED: no resolution after $round rounds" >&2
    return 1
}

"$MODE"
