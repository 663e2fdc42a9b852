#!/usr/bin/env bash
# Run the kernel benchmark on the lent GPU machine, from the repository root.
#
#   device tool: run(command="bash benchmarks/run_on_device.sh", carry=[".whl"], timeout_s=600)
#
# 1. installs the peer wheels carried in .whl/ (fla-core, titans-pytorch and what they need;
#    pydantic for the end-to-end specs) into /tmp/site: the machine has no package registry;
# 2. lays mirasdsl out as pyproject maps it (kernels/ -> mirasdsl.kernels, search/ ->
#    mirasdsl.search) under /tmp/mirasdsl_pkg, without building anything;
# 3. optionally (RUN_GPU_TESTS=1, or =quick without the gpu_long ones) runs the GPU-marked
#    kernel tests (GPU_TESTS_K=expr: -k expr);
# 4. optionally (PROFILE=gla,delta,...) writes a kernel-time table of ours to $OUT/profile.txt;
# 5. runs benchmarks/kernels.py, which writes kernels.json, kernels.md (and log.txt here)
#    under $OUT. Extra arguments go to kernels.py (e.g. --shapes S --families gla,delta).
#
# BUDGET_S (default 540) stops starting new cases so the call ends inside the 10-minute limit;
# skipped cases are listed as such. Split a long run with --shapes S / --shapes L. A case that
# kills the CUDA context (illegal memory access) ends kernels.py there; the families it did not
# reach run again in a new process into $OUT/rerun (RERUN_BUDGET_S, default 240).
#
# BASELINE=<name>: afterwards, the same cases of ours again with the kernels of another commit,
# carried in .baseline/<name>/ (made by `bash benchmarks/make_baseline.sh <commit>`), into
# $OUT/baseline/: a before/after of one change on one machine in one call.
#
# Compiled kernels and autotuning results (TRITON_CACHE_AUTOTUNING) are cached in
# /tmp/triton_cache and packed into $OUT/triton_cache.tar.gz at the end (when under 40 MB). Unpack
# it into .triton_cache/ (ignored) and carry it on the next call: fla's first calls compiled and
# autotuned for 110-260 s each on a fresh machine (the archive may also be put into .triton_cache/
# as it is). Before the first call, `bash benchmarks/precompile.sh` puts ours and fla's kernels,
# compiled on the CPU for this machine's Triton, there; kernels.py's last line says how many
# kernels came from the cache.
set -uo pipefail
REPO="$(pwd)"
OUT="${OUT:-/tmp/mirasdsl_bench}"
mkdir -p "$OUT"
SITE=/tmp/site
PKG=/tmp/mirasdsl_pkg

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl || { echo "wheel install failed" >&2; exit 1; }
else
    echo "no .whl/ carried: peers will be reported unavailable" >&2
fi

rm -rf "$PKG" && mkdir -p "$PKG"
cp -r mirasdsl "$PKG/"
cp -r kernels "$PKG/mirasdsl/kernels"
if [ -d search ]; then cp -r search "$PKG/mirasdsl/search"; fi
export PYTHONPATH="$PKG:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=/tmp/triton_cache
export TRITON_CACHE_AUTOTUNING=1
mkdir -p "$TRITON_CACHE_DIR"
if [ -d .triton_cache ]; then  # kernel folders, and/or archives: precompile.sh's, an earlier call's
    cp -r .triton_cache/. "$TRITON_CACHE_DIR"/ && echo "triton cache carried: $(du -sh .triton_cache | cut -f1)"
    for archive in "$TRITON_CACHE_DIR"/*.tar.gz; do
        [ -e "$archive" ] && tar -xzf "$archive" -C "$TRITON_CACHE_DIR" && rm -f "$archive"
    done
    python3 benchmarks/triton_cache.py relocate "$TRITON_CACHE_DIR"  # its kernels list their files by path
fi
pack_cache() {  # leave the cache for the next call (the machine is released when idle)
    tar -czf "$OUT/triton_cache.tar.gz" -C "$TRITON_CACHE_DIR" . 2>/dev/null
    local size; size=$(stat -c %s "$OUT/triton_cache.tar.gz" 2>/dev/null || echo 0)
    if [ "$size" -gt 40000000 ]; then
        rm -f "$OUT/triton_cache.tar.gz"; echo "triton cache not packed: $size bytes"
    else
        echo "triton cache packed: $size bytes in triton_cache.tar.gz"
    fi
}
trap pack_cache EXIT

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true

if [ "${RUN_GPU_TESTS:-0}" != "0" ]; then
    # RUN_GPU_TESTS=1: every GPU test (about 7 minutes on an H100); =quick: without gpu_long
    MARK="gpu"; [ "$RUN_GPU_TESTS" = "quick" ] && MARK="gpu and not gpu_long"
    # from /tmp, so the repository's own mirasdsl/ (without kernels/) does not shadow the copy
    (cd /tmp && python3 -m pytest -q -rfE -m "$MARK" -p no:cacheprovider --timeout=240 ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} "$REPO/tests/kernels" \
        2>&1 | tee "$OUT/gpu_tests.txt")
fi

if [ -n "${PROFILE:-}" ]; then
    python3 benchmarks/profile_kernels.py --families "$PROFILE" --out "$OUT" 2>&1 | tail -n 400
fi

python3 benchmarks/kernels.py --out "$OUT" --budget-s "${BUDGET_S:-540}" "$@" 2>&1 \
    | tee "$OUT/log.txt"
status="${PIPESTATUS[0]}"
if [ -s "$OUT/rerun_families.txt" ]; then  # a CUDA error killed the context: the rest, in a new process
    echo "== rerun in a new process: $(cat "$OUT/rerun_families.txt")"
    python3 benchmarks/kernels.py --out "$OUT/rerun" --budget-s "${RERUN_BUDGET_S:-240}" "$@" \
        --families "$(cat "$OUT/rerun_families.txt")" 2>&1 | tail -n 60
fi

if [ -n "${BASELINE:-}" ]; then  # the same cases of ours with another commit's kernels
    base=".baseline/$BASELINE"
    if [ ! -d "$base/kernels" ]; then
        echo "BASELINE=$BASELINE: no $base/kernels carried (bash benchmarks/make_baseline.sh <commit>)" >&2
        exit 2
    fi
    PKG_B=/tmp/mirasdsl_pkg_baseline
    rm -rf "$PKG_B" && mkdir -p "$PKG_B"
    cp -r "$base/mirasdsl" "$PKG_B/" && cp -r "$base/kernels" "$PKG_B/mirasdsl/kernels"
    if [ -d "$base/search" ]; then cp -r "$base/search" "$PKG_B/mirasdsl/search"; fi
    echo "== baseline $BASELINE ($(cat "$base/COMMIT" 2>/dev/null || echo '?'))"
    PYTHONPATH="$PKG_B:$SITE" python3 benchmarks/kernels.py --out "$OUT/baseline" \
        --budget-s "${BASELINE_BUDGET_S:-240}" "$@" --impls ours --no-e2e 2>&1 | tail -n 40
fi
exit "$status"
