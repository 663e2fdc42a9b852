#!/usr/bin/env bash
# Fill .triton_cache/precompiled.tar.gz with the Triton kernels the benchmark launches, ours and
# fla's, compiled for the lent GPU machine (sm_90, Triton 3.6.0 under Python 3.12) on this
# machine without a GPU; then carry it:
#
#   bash benchmarks/precompile.sh [precompile.py options, e.g. --families delta --shapes S]
#   run(command="bash benchmarks/run_on_device.sh ...", carry=[".whl", ".triton_cache"])
#
# Installs Triton 3.6.0 into a folder of its own (as compile_other_triton.sh does), fetches the
# cp312 wheel's libtriton.so (the device build, whose hash is part of Triton's cache key),
# installs fla-core from .whl/ beside it (NO_PEERS=1: ours only), runs benchmarks/precompile.py,
# keeps each kernel's metadata and binary, and packs them (run_on_device.sh unpacks every
# .triton_cache/*.tar.gz). About 5 minutes for ours, as much again for fla's, on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
version=3.6.0
tmp="${TMPDIR:-/tmp}"
dir="${TRITON_ALT_DIR:-$tmp/mirasdsl-triton-$version}"
wheels="$tmp/mirasdsl-triton-$version-cp312"
stage="$tmp/mirasdsl-precompiled"
if [ ! -d "$dir/triton" ]; then
  python -m pip install -q --no-deps --target "$dir" "triton==$version"
fi
lib="$wheels/triton/_C/libtriton.so"
if [ ! -f "$lib" ]; then
  mkdir -p "$wheels"
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 -d "$wheels" "triton==$version"
  python -c "import glob, sys, zipfile; zipfile.ZipFile(glob.glob(sys.argv[1] + '/triton-*-cp312-*.whl')[0]).extract('triton/_C/libtriton.so', sys.argv[1])" "$wheels"
fi
path="$dir"
peers=()
if [ "${NO_PEERS:-0}" = "0" ] && ls .whl/fla_core-*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-deps --target "$tmp/mirasdsl-fla" .whl/fla_core-*.whl .whl/einops-*.whl
  path="$path:$tmp/mirasdsl-fla"
  peers=(--peers)
fi
rm -rf "$stage"
unset TRITON_INTERPRET
PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}" python benchmarks/precompile.py --cache "$stage" --libtriton "$lib" \
  "${peers[@]}" "$@"
# register transposes of matmul results (what Triton 3.4-3.7.0 miscompiled on sm_90): reported here,
# while the IR is still in the cache; fla's kernels may show some, ours should not
python benchmarks/triton_cache.py hazards "$stage" || echo "precompile.sh: see the HAZARD lines above"
python benchmarks/triton_cache.py slim "$stage"
mkdir -p .triton_cache
tar -czf .triton_cache/precompiled.tar.gz -C "$stage" .
echo ".triton_cache/precompiled.tar.gz: $(du -h .triton_cache/precompiled.tar.gz | cut -f1) (the device tool carries 64 MiB in all, .whl/ included)"
