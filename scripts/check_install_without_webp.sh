#!/usr/bin/env bash
# Run scripts/install_pillow_simd.sh in a throw-away venv with WebP disabled in
# the pillow-simd build, and check that Pillow is kept, still reads WebP, and
# that one line names WEBP and libwebp-dev.
#
# The venv holds only what `python -m gpf.env_info pil-features` imports
# (Pillow, numpy; click for the `gpf --version` line) and gpf itself as a
# symlink to this checkout: no torch, nothing installed into the checkout.
#
# Usage: bash scripts/check_install_without_webp.sh [--all]
#   --all  also: the plain build (whatever headers this machine has), and a venv
#          whose Pillow is built here from source, so pillow-simd loses nothing
#          and must be installed.
# Exits non-zero when a check fails. PYTHON picks the interpreter (python3).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
export PYTHONDONTWRITEBYTECODE=1
tmp=$(mktemp -d /tmp/gpf-check-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
failures=0

# make_venv NAME PIP_ARGS...: a venv with numpy, click, the given Pillow and gpf; prints its python.
make_venv() {
  local venv="$tmp/$1"
  shift
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q numpy click "$@" >&2
  ln -s "$REPO" "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/gpf"
  echo "$venv/bin/python"
}

# describe PY: the active PIL and the formats it reads, as `gpf --version` and pil-features show them.
describe() {
  "$1" - <<'PYEOF'
import sys, types
for name in ("torch", "torchvision"):  # gpf --version asks their versions; this venv has no torch
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__version__ = "(not installed)"
sys.modules["torch"].cuda = types.SimpleNamespace(is_available=lambda: False)
from gpf.cli.main import _version_text
from gpf.env_info import pil_formats
print("  gpf --version:", next(l for l in _version_text().splitlines() if l.startswith("PIL:")))
print("  reads:", " ".join(name for name, ok in pil_formats().items() if ok))
PYEOF
}

# expect WHAT COMMAND...: run a check, report it, count a failure.
expect() {
  local what=$1
  shift
  if "$@"; then echo "  ok: $what"; else echo "  FAILED: $what"; failures=$((failures + 1)); fi
}

flavour_is() { [ "$("$1" -c 'from gpf.env_info import pil_flavour; print(pil_flavour()["flavour"])')" = "$2" ]; }
reads() { "$1" -c "import sys; from gpf.env_info import pil_formats; sys.exit(not pil_formats()['$2'])"; }
says() { grep -q -- "$2" "$1"; }
one_line() { [ "$(grep -c -- "$2" "$1")" = 1 ]; }

# scenario NAME PY BUILD_ARGS: run the install script as `make` does, with the given build arguments.
scenario() {
  local name=$1 py=$2 args=$3 log="$tmp/$1.log"
  echo
  echo "=== $name: GPF_PILLOW_SIMD_BUILD_ARGS='$args'"
  echo "before:"
  describe "$py"
  echo "\$ bash scripts/install_pillow_simd.sh"
  GPF_PILLOW_SIMD_BUILD_ARGS="$args" bash "$REPO/scripts/install_pillow_simd.sh" "$py" 2>&1 | tee "$log" | sed 's/^/  | /'
  echo "after:"
  describe "$py"
}

echo "gpf check: install_pillow_simd.sh in throw-away venvs under $tmp ($("$PYTHON" --version))"
echo "headers here: $(for h in webp/encode.h tiff.h openjpeg-2.5/openjpeg.h avif/avif.h lcms2.h; do
  if echo "#include <$h>" | cc -E - >/dev/null 2>&1; then printf '%s ' "$h"; else printf 'no-%s ' "$h"; fi; done)"
PY=$(make_venv wheel pillow)

scenario webp-disabled "$PY" "-C webp=disable"
log="$tmp/webp-disabled.log"
expect "Pillow kept" flavour_is "$PY" Pillow
expect "WebP still read" reads "$PY" WEBP
expect "one line says Pillow is kept" one_line "$log" "keeping Pillow"
expect "the line names WEBP" says "$log" "WEBP ("
expect "the line names libwebp-dev" says "$log" "apt-get install .*libwebp-dev"

if [ "${1:-}" = "--all" ]; then
  scenario plain "$PY" ""
  expect "Pillow kept or pillow-simd reads all (plain)" bash -c \
    "grep -q 'keeping Pillow' '$tmp/plain.log' || grep -q 'pillow-simd installed' '$tmp/plain.log'"
  expect "WebP still read (plain)" reads "$PY" WEBP

  version=$("$PY" -c "import PIL; print(PIL.__version__)")
  echo
  echo "building Pillow $version from source for the last scenario"
  SRC=$(make_venv source --no-binary pillow "pillow==$version")
  scenario pillow-from-source "$SRC" ""
  log="$tmp/pillow-from-source.log"
  expect "pillow-simd installed" says "$log" "pillow-simd installed"
  expect "gpf sees pillow-simd" flavour_is "$SRC" pillow-simd
fi

echo
if [ "$failures" = 0 ]; then echo "gpf check: all checks passed"; else echo "gpf check: $failures check(s) FAILED"; fi
exit $((failures > 0))
