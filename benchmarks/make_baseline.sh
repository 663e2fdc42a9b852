#!/usr/bin/env bash
# Lay out another commit's package and kernels in .baseline/<name>/ (ignored by git), for
# `BASELINE=<name> bash benchmarks/run_on_device.sh ...`, which then times the same cases of ours
# with those kernels on the same machine in the same call (carry ".baseline" with the device tool).
#
#   bash benchmarks/make_baseline.sh COMMIT [NAME]      # NAME defaults to COMMIT
#
# e.g. the delta rule's backward as one kernel, before the split:  make_baseline.sh f59a5ca fused
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "make_baseline.sh: error: usage: bash benchmarks/make_baseline.sh COMMIT [NAME]" >&2
  exit 2
fi
commit="$1"
name="${2:-$1}"
if ! git rev-parse --verify --quiet "$commit^{commit}" >/dev/null; then
  echo "make_baseline.sh: error: '$commit' is not a commit of this repository" >&2
  exit 2
fi
dir=".baseline/$name"
rm -rf "$dir" && mkdir -p "$dir"
git archive "$commit" mirasdsl kernels search | tar -x -C "$dir"
git rev-parse "$commit" > "$dir/COMMIT"
echo "$dir: $(cat "$dir/COMMIT") ($(du -sh "$dir" | cut -f1))"
