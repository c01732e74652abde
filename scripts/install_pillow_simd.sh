#!/usr/bin/env bash
# Replace Pillow by pillow-simd (6-10x faster resizing) when it can be built here.
# Must run last: torchvision depends on the `pillow` distribution, so any later
# `pip install` would bring Pillow back. On failure Pillow is kept, with a message.
# Set GPF_NO_PILLOW_SIMD=1 to keep plain Pillow.
set -uo pipefail
PY=${1:-.venv/bin/python}

if [ "${GPF_NO_PILLOW_SIMD:-0}" = "1" ]; then
  echo "gpf setup: GPF_NO_PILLOW_SIMD=1, keeping Pillow"
  exit 0
fi
if "$PY" -c "import importlib.metadata as m; m.version('Pillow-SIMD')" 2>/dev/null; then
  echo "gpf setup: pillow-simd already installed"
  exit 0
fi
if ! command -v cc >/dev/null 2>&1; then
  echo "gpf setup: no C compiler; keeping Pillow (slower resizing). Install gcc to get pillow-simd."
  exit 0
fi
missing=""
for h in jpeglib.h zlib.h png.h; do
  if ! echo "#include <$h>" | cc -E - >/dev/null 2>&1; then missing="$missing $h"; fi
done
if [ -n "$missing" ]; then
  echo "gpf setup: missing headers ($missing ); keeping Pillow. On Debian/Ubuntu:"
  echo "  apt-get install libjpeg62-turbo-dev zlib1g-dev libpng-dev libwebp-dev libtiff-dev liblcms2-dev"
  exit 0
fi
CFLAGS_NOTE="cc"
if grep -q -m1 -w avx2 /proc/cpuinfo 2>/dev/null; then
  export CC="cc -mavx2"
  CFLAGS_NOTE="cc -mavx2"
fi
PILLOW_VERSION=$("$PY" -c "import PIL; print(PIL.__version__)" 2>/dev/null || echo "")
echo "gpf setup: building pillow-simd with CC='$CFLAGS_NOTE' (replaces Pillow $PILLOW_VERSION)"
log=$(mktemp)
if "$PY" -m pip wheel -q --no-cache-dir --no-deps --no-binary :all: -w "$log.d" pillow-simd >"$log" 2>&1; then
  "$PY" -m pip uninstall -q -y pillow
  if "$PY" -m pip install -q --no-deps "$log.d"/*.whl; then
    "$PY" - "$CFLAGS_NOTE" <<'PYEOF'
import sys, pathlib, PIL
(pathlib.Path(PIL.__file__).parent / "GPF_BUILD_INFO").write_text("CC=" + sys.argv[1] + "\n")
PYEOF
    if "$PY" -c "from PIL import Image, features; import io; Image.new('RGB',(8,8)).save(io.BytesIO(),'JPEG'); assert features.check('jpg')"; then
      echo "gpf setup: pillow-simd installed"
      rm -rf "$log" "$log.d"; exit 0
    fi
  fi
  echo "gpf setup: pillow-simd did not work; restoring Pillow $PILLOW_VERSION"
  "$PY" -m pip uninstall -q -y pillow-simd
  "$PY" -m pip install -q "pillow${PILLOW_VERSION:+==$PILLOW_VERSION}"
else
  echo "gpf setup: pillow-simd failed to build; keeping Pillow. Last lines of the build log:"
  tail -5 "$log"
fi
rm -rf "$log" "$log.d"
exit 0
