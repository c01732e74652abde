#!/usr/bin/env bash
# GPU benchmark of gpf on one machine, under 5 minutes: install the project, then
# benchmarks/gpu_bench.py (its docstring lists what is measured).
#
#   bash benchmarks/gpu.sh [OUT_DIR] [gpu_bench.py options...]
#   bash benchmarks/gpu.sh /tmp/dry --device cpu --tiny      # CPU dry run of the same paths
#
# OUT_DIR defaults to $OUT, else ./gpu_bench_out. Results (results.json,
# results.md) are rewritten after every stage, so a run cut short keeps what it
# measured; install.log says how gpf was made importable.
#
# Needs no network: gpf is installed with `pip install --no-deps
# --no-build-isolation --no-index .` (setuptools must be importable; torch
# wheels for Python >= 3.12 depend on it). Wheels carried in .whl/ (e.g.
# webdataset, braceexpand, PyYAML) are installed first; gpf does not import
# webdataset, and only the `trainer` stage needs PyYAML. If pip cannot install
# into this Python (e.g. an externally managed one), gpf is imported from this
# checkout through a symlink named gpf on PYTHONPATH instead.
# PYTHON selects the interpreter (default python3).
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$repo/gpu_bench_out}
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then out=$1; shift; fi   # a first argument not an option
mkdir -p "$out" && out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
log="$out/install.log"
shim=$(mktemp -d "${TMPDIR:-/tmp}/gpf-shim.XXXXXX")

cd "$repo" || exit 2
{
  echo "== $(date -u +%FT%TZ) $($py -V 2>&1) at $(command -v "$py")"
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "== wheels from .whl/"
    $py -m pip install --no-deps --no-index .whl/*.whl \
      || $py -m pip install --no-deps --no-index --target "$shim" .whl/*.whl \
      || echo "could not install the wheels in .whl/ (going on without them)"
  fi
  echo "== gpf"
  $py -m pip install --no-deps --no-build-isolation --no-index . || echo "pip install of gpf failed"
} >"$log" 2>&1

if ! (cd / && PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}" $py -c "import gpf") >>"$log" 2>&1; then
  ln -s "$repo" "$shim/gpf"
  echo "gpf imported from the checkout through $shim/gpf" | tee -a "$log"
fi
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"

# The site-packages copy must win over the checkout's folder name: run from outside the repo.
cd "$out" || exit 2
$py "$repo/benchmarks/gpu_bench.py" --out "$out" "$@"
status=$?
echo "results: $out/results.md (exit $status)"
exit $status
