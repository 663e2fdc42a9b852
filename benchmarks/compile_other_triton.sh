#!/usr/bin/env bash
# Compile every Triton kernel of mirasdsl for sm_90 (H100) with another Triton release, on a
# machine without a GPU. Default 3.6.0: the lent GPU machine's Triton, where CI installs the
# newest. The release goes into its own folder (not the environment's Triton) and is put first
# on PYTHONPATH for these runs only.
#
#   bash benchmarks/compile_other_triton.sh [VERSION]     # e.g. 3.6.0
#
# Prints each kernel launch and autotune candidate with its shared memory; exits 1 if any
# candidate is rejected (did not compile, or more than an H100 block's 227 KB), 2 on bad usage.
set -euo pipefail
version="${1:-3.6.0}"
if ! [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
  echo "compile_other_triton.sh: error: VERSION must look like 3.6.0, got '$version'" >&2
  exit 2
fi
dir="${TRITON_ALT_DIR:-${TMPDIR:-/tmp}/mirasdsl-triton-$version}"
if [ ! -d "$dir/triton" ]; then
  python -m pip install -q --no-deps --target "$dir" "triton==$version"
fi
export PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
python -c "import triton; print('triton', triton.__version__, 'from', triton.__file__)"
for check in "delta.compile_check --dk 128 --dv 128" "gla.compile_check --dtype bfloat16" \
             "gla.compile_check --dtype float32" "deep_memory.compile_check"; do
  echo "== mirasdsl.kernels.$check"
  # shellcheck disable=SC2086  # the check's arguments split on purpose
  python -m mirasdsl.kernels.$check | tee -a "$out"
done
viable=$(grep -c " shared " "$out" || true)
rejected=$(grep -c " rejected " "$out" || true)
echo "triton $version: $viable candidates compile for sm_90 within shared memory, $rejected rejected"
[ "$rejected" -eq 0 ]
