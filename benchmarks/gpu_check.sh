#!/usr/bin/env bash
# The GPU check: the CUDA tests, then SASRec on Amazon Toys to its best validation epoch, on
# one CUDA GPU with no package registry, in under 8 minutes. Two steps:
#
#   bash benchmarks/gpu_check.sh --prepare DIR   # where PyPI is reachable: wheels + the data
#   bash benchmarks/gpu_check.sh [--wheels DIR]  # on the GPU machine, offline
#
# --prepare downloads the wheels of benchmarks/gpu_check.requirements.txt for CPython 3.12
# on manylinux x86_64 (GPU_CHECK_PYTHON_VERSION for another) into DIR, fails if they exceed
# 60 MB, and copies the Amazon Toys file with its MANIFEST.json into DIR/data (--no-data:
# not). torch is not among them: the GPU machine's Python brings its CUDA build.
#
# The run needs that Python ($PYTHON, default python3) and DIR (default .gpu-check in the
# checkout). Without a CUDA GPU it says so and exits 0. Otherwise it makes a virtualenv that
# sees that Python's packages (torch), installs the wheels from DIR only, runs the tests
# marked `cuda`, then benchmarks/gpu_check.py, and prints the total time. Exit status: 0 when
# the tests pass and the training ran on the GPU, 1 otherwise, 2 for bad usage or set-up.
#
#   --data DIR      the folder holding amazon-toys-s3rec/ (else $RECSYS_DATASETS, DIR/data,
#                   ../shared/data beside the checkout)
#   --smoke         every step on the CPU with one epoch: proves the wheels and the path,
#                   measures nothing, writes no results
#   -- ARGS         passed to benchmarks/gpu_check.py (e.g. -- --set amp=true)
#
# GPU_CHECK_SECONDS (default 450) is the time the whole run may take; the training gets what
# the install and the tests leave of it, less 90 s for loading and the test ranking.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REQUIREMENTS="$REPO/benchmarks/gpu_check.requirements.txt"
TOYS="amazon-toys-s3rec/Amazon_Toys_and_Games.txt"
PYTHON=${PYTHON:-python3}
PY_VERSION=${GPU_CHECK_PYTHON_VERSION:-3.12}
LIMIT_BYTES=60000000
TOTAL_SECONDS=${GPU_CHECK_SECONDS:-450}
TEST_SECONDS=150
AFTER_TRAINING_SECONDS=90
MAX_TRAINING_SECONDS=300

die() {
    echo "gpu_check: error: $*" >&2
    exit 2
}
say() { echo "gpu_check: $*"; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

# --- arguments ---------------------------------------------------------------------------
MODE=run
WHEELS=${GPU_CHECK_WHEELS:-$REPO/.gpu-check}
DATA=""
WITH_DATA=1
SMOKE=0
DRIVER_ARGS=()
while (($#)); do
    case "$1" in
        --prepare)
            (($# >= 2)) || die "--prepare needs a folder"
            MODE=prepare
            WHEELS=$2
            shift 2
            ;;
        --wheels)
            (($# >= 2)) || die "--wheels needs a folder"
            WHEELS=$2
            shift 2
            ;;
        --data)
            (($# >= 2)) || die "--data needs a folder"
            DATA=$2
            shift 2
            ;;
        --no-data) WITH_DATA=0 && shift ;;
        --smoke) SMOKE=1 && shift ;;
        -h | --help) usage && exit 0 ;;
        --)
            shift
            DRIVER_ARGS=("$@")
            break
            ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

wheel_bytes() {
    local total=0 file
    for file in "$1"/*.whl; do
        [[ -e $file ]] || continue
        total=$((total + $(wc -c <"$file")))
    done
    echo "$total"
}

megabytes() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }

find_data() {
    local place
    for place in "$@"; do
        if [[ -n $place && -f $place/$TOYS ]]; then
            (cd "$place" && pwd)
            return 0
        fi
    done
    return 1
}

# --- step 1: where a registry is reachable -------------------------------------------------
prepare() {
    "$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (set PYTHON)"
    mkdir -p "$WHEELS"
    WHEELS=$(cd "$WHEELS" && pwd)
    local stale
    stale=$(find "$WHEELS" -maxdepth 1 -name '*.whl' | wc -l)
    if ((stale)); then
        say "removing the $stale wheels of an earlier --prepare from $WHEELS"
        find "$WHEELS" -maxdepth 1 -name '*.whl' -delete
    fi
    say "downloading wheels for CPython $PY_VERSION, manylinux x86_64, into $WHEELS"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$WHEELS" \
        --only-binary=:all: --implementation cp --python-version "$PY_VERSION" \
        --abi "cp${PY_VERSION/./}" --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -r "$REQUIREMENTS"
    local bundled
    bundled=$(find "$WHEELS" -maxdepth 1 -name '*.whl' -printf '%f\n' |
        grep -Ei '^(torch|nvidia|triton)[-_]' || true)
    [[ -z $bundled ]] || die "these belong to the GPU machine's torch, not here: $bundled"
    local bytes count
    bytes=$(wheel_bytes "$WHEELS")
    count=$(find "$WHEELS" -maxdepth 1 -name '*.whl' | wc -l)
    find "$WHEELS" -maxdepth 1 -name '*.whl' -printf '%s %f\n' | sort -k2 |
        awk '{ printf "  %8.1f MB  %s\n", $1 / 1e6, $2 }'
    say "$count wheels, $(megabytes "$bytes") (limit $(megabytes $LIMIT_BYTES))"
    if ((bytes > LIMIT_BYTES)); then
        echo "gpu_check: error: the wheels exceed $(megabytes $LIMIT_BYTES)" >&2
        exit 1
    fi
    if ((WITH_DATA)); then
        local root
        if root=$(find_data "$DATA" "${RECSYS_DATASETS:-}" "$REPO/../shared/data"); then
            install -D -m 0644 "$root/$TOYS" "$WHEELS/data/$TOYS"
            [[ ! -f $root/MANIFEST.json ]] || install -m 0644 "$root/MANIFEST.json" "$WHEELS/data/"
            say "copied $TOYS ($(megabytes "$(wc -c <"$root/$TOYS")")) into $WHEELS/data"
        else
            say "no $TOYS found (--data, RECSYS_DATASETS, ../shared/data): bring it separately"
        fi
    fi
    say "next, on the GPU machine: bash benchmarks/gpu_check.sh --wheels <this folder>"
}

# --- step 2: on the GPU machine -------------------------------------------------------------
# Prints "cuda", "no-cuda" or "no-torch", then torch's version and the device's name.
probe() {
    "$PYTHON" - <<'EOF' 2>/dev/null || echo "no-torch"
try:
    import torch
except Exception:
    print("no-torch")
else:
    ok = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if ok else ""
    print("cuda" if ok else "no-cuda", torch.__version__, torch.version.cuda or "-", name)
EOF
}

gpu_listed() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'
}

run() {
    local started=$SECONDS state version cuda name
    read -r state version cuda name <<<"$(probe)"
    if ((SMOKE)); then
        [[ $state != no-torch ]] || die "$PYTHON cannot import torch (set PYTHON)"
        say "smoke run: every step on the CPU, one epoch, no results written"
    elif [[ $state != cuda ]]; then
        if gpu_listed; then
            echo "gpu_check: error: nvidia-smi lists a GPU, but $PYTHON's torch" \
                "(${version:-not importable}) cannot use it" >&2
            exit 1
        fi
        echo "no CUDA GPU here: nothing to check"
        exit 0
    else
        say "$name, torch $version (CUDA $cuda), $("$PYTHON" -V 2>&1)"
        "$PYTHON" - <<'EOF' || say "warning: torch is older than 2.11, which the check expects"
import sys, torch
major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
sys.exit((major, minor) < (2, 11))
EOF
    fi

    [[ -d $WHEELS ]] || die "no wheel folder at $WHEELS: run 'bash benchmarks/gpu_check.sh" \
        "--prepare DIR' where PyPI is reachable, bring DIR here, pass --wheels DIR"
    WHEELS=$(cd "$WHEELS" && pwd)
    local tag pip_wheel data
    tag=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    compgen -G "$WHEELS/numpy-*-$tag-*.whl" >/dev/null ||
        die "$WHEELS has no wheels for this Python ($tag): prepare with" \
            "GPU_CHECK_PYTHON_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    pip_wheel=$(compgen -G "$WHEELS/pip-*.whl" | head -n 1) || die "no pip wheel in $WHEELS"
    data=$(find_data "$DATA" "${RECSYS_DATASETS:-}" "$WHEELS/data" "$REPO/../shared/data") ||
        die "no $TOYS under --data, RECSYS_DATASETS, $WHEELS/data or ../shared/data"

    # A virtualenv of our wheels that also sees every package of $PYTHON (its torch), after
    # its own: a .pth file lists $PYTHON's site folders (works for a system, conda or venv
    # Python alike). pip runs from its wheel, so the Python needs neither pip nor ensurepip.
    local venv site
    SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/recsys-gpu-check.XXXXXX")
    trap 'rm -rf "$SCRATCH"' EXIT
    venv=$SCRATCH/venv
    "$PYTHON" -m venv --without-pip "$venv"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PYTHON" - >"$site/_gpu_check_base.pth" <<'EOF'
import os, site
folders = site.getsitepackages()
if site.ENABLE_USER_SITE:
    folders.append(site.getusersitepackages())
print("\n".join(f for f in folders if os.path.isdir(f)))
EOF
    say "installing $(find "$WHEELS" -maxdepth 1 -name '*.whl' | wc -l) wheels from $WHEELS" \
        "(no index)"
    PIP_CONFIG_FILE=/dev/null "$venv/bin/python" "$pip_wheel/pip" --isolated install --quiet \
        --no-index --find-links "$WHEELS" --only-binary=:all: --no-cache-dir \
        --disable-pip-version-check --no-warn-script-location -r "$REQUIREMENTS"
    "$venv/bin/python" -c 'import torch' || die "torch does not import in the check's virtualenv"

    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 # only our pytest-timeout, not $PYTHON's plugins
    cd "$REPO"

    local failed=0 tests rc
    tests=$(grep -rlE 'mark\.cuda\b' tests --include='*.py' | sort || true)
    if [[ -z $tests ]]; then
        say "no test carries the cuda marker: no CUDA tests to run"
    else
        say "CUDA tests (pytest -m cuda) in: $(echo "$tests" | tr '\n' ' ')"
        rc=0
        # shellcheck disable=SC2086  # one argument per file
        timeout "$TEST_SECONDS" "$venv/bin/python" -m pytest -p pytest_timeout -p no:cacheprovider \
            -m cuda -q $tests || rc=$?
        case $rc in
            0) say "CUDA tests passed" ;;
            5) say "warning: no test was selected by -m cuda" ;;
            124) say "CUDA tests FAILED: still running after ${TEST_SECONDS}s" && failed=1 ;;
            *) say "CUDA tests FAILED (pytest exit status $rc)" && failed=1 ;;
        esac
    fi

    local left budget
    left=$((TOTAL_SECONDS - (SECONDS - started) - AFTER_TRAINING_SECONDS))
    budget=$((left < MAX_TRAINING_SECONDS ? left : MAX_TRAINING_SECONDS))
    local driver=("$venv/bin/python" benchmarks/gpu_check.py --data-root "$data")
    if ((SMOKE)); then
        driver+=(--device cpu --max-epochs 1 --no-results)
    elif ((budget < 60)); then
        say "training FAILED: only ${left}s left of GPU_CHECK_SECONDS=$TOTAL_SECONDS"
        failed=1
        driver=()
    else
        driver+=(--budget-seconds "$budget")
    fi
    if ((${#driver[@]})); then
        "${driver[@]}" "${DRIVER_ARGS[@]}" || {
            say "training FAILED"
            failed=1
        }
    fi

    local total=$((SECONDS - started))
    say "total $((total / 60)) min $((total % 60)) s$( ((total <= 480)) || echo ': over the 8-minute target')"
    exit "$failed"
}

if [[ $MODE == prepare ]]; then
    prepare
else
    run
fi
