#!/usr/bin/env bash
# Fill .triton_cache/ with our Triton kernels compiled for the lent GPU machine (sm_90, Triton
# 3.6.0 under Python 3.12), on this machine without a GPU; then carry it:
#
#   bash benchmarks/precompile.sh [precompile.py options, e.g. --families delta --shapes S]
#   run(command="bash benchmarks/run_on_device.sh ...", carry=[".whl", ".triton_cache"])
#
# Installs Triton 3.6.0 into a folder of its own (as compile_other_triton.sh does), fetches the
# cp312 wheel's libtriton.so (the device build, whose hash is part of Triton's cache key), runs
# benchmarks/precompile.py and keeps only each kernel's metadata and binary. Exits 2 on bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."
version=3.6.0
dir="${TRITON_ALT_DIR:-${TMPDIR:-/tmp}/mirasdsl-triton-$version}"
wheels="${TMPDIR:-/tmp}/mirasdsl-triton-$version-cp312"
cache="${CACHE:-.triton_cache}"
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
unset TRITON_INTERPRET
PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}" python benchmarks/precompile.py --cache "$cache" --libtriton "$lib" "$@"
python benchmarks/triton_cache.py slim "$cache"
echo "$cache: $(du -sh "$cache" | cut -f1) (the device tool carries 64 MiB in all, .whl/ included)"
