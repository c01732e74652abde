#!/usr/bin/env bash
# Replace Pillow by pillow-simd (6-10x faster resizing) when it can be built here
# and reads every format the Pillow it replaces reads (AVIF excepted; the
# comparison is `python -m gpf.env_info pil-choice`, see env_info.py).
# Must run last: torchvision depends on the `pillow` distribution, so any later
# `pip install` would bring Pillow back. Whatever happens, one line says which
# PIL is kept and why, and the script exits 0.
# Set GPF_NO_PILLOW_SIMD=1 to keep plain Pillow.
# GPF_PILLOW_SIMD_BUILD_ARGS: extra `pip wheel` arguments for the build,
# e.g. "-C webp=disable" (scripts/check_install_without_webp.sh uses it).
set -uo pipefail
PY=${1:-.venv/bin/python}
APT_HEADERS="libjpeg62-turbo-dev zlib1g-dev libpng-dev libwebp-dev libtiff-dev liblcms2-dev libopenjp2-7-dev"
read -r -a BUILD_ARGS <<<"${GPF_PILLOW_SIMD_BUILD_ARGS:-}"

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
  echo "gpf setup: missing headers ($missing ); keeping Pillow. On Debian/Ubuntu: apt-get install $APT_HEADERS"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! "$PY" -m gpf.env_info pil-features >"$work/current.json" 2>"$work/err"; then
  echo "gpf setup: cannot list the formats of the active PIL; keeping Pillow. $(tail -1 "$work/err")"
  exit 0
fi
CFLAGS_NOTE="cc"
if grep -q -m1 -w avx2 /proc/cpuinfo 2>/dev/null; then
  export CC="cc -mavx2"
  CFLAGS_NOTE="cc -mavx2"
fi
PILLOW_VERSION=$("$PY" -c "import PIL; print(PIL.__version__)" 2>/dev/null || echo "")
echo "gpf setup: building pillow-simd with CC='$CFLAGS_NOTE'${BUILD_ARGS[*]:+ ${BUILD_ARGS[*]}} to compare with Pillow $PILLOW_VERSION"
if ! "$PY" -m pip wheel -q --no-cache-dir --no-deps --no-binary :all: "${BUILD_ARGS[@]}" -w "$work/wheel" \
    pillow-simd >"$work/build.log" 2>&1; then
  echo "gpf setup: pillow-simd failed to build; keeping Pillow $PILLOW_VERSION. Last lines of the build log:"
  tail -5 "$work/build.log"
  exit 0
fi
if ! "$PY" -m pip install -q --no-deps --target "$work/site" "$work"/wheel/*.whl >"$work/err" 2>&1 \
    || ! PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m gpf.env_info pil-features \
         >"$work/candidate.json" 2>"$work/err"; then
  echo "gpf setup: the pillow-simd build does not load; keeping Pillow $PILLOW_VERSION. $(tail -1 "$work/err")"
  exit 0
fi
"$PY" -m gpf.env_info pil-choice "$work/current.json" "$work/candidate.json"
case $? in
  0) ;;
  3) exit 0 ;;
  *) echo "gpf setup: could not compare the formats of pillow-simd and Pillow; keeping Pillow $PILLOW_VERSION"
     exit 0 ;;
esac

"$PY" -m pip uninstall -q -y pillow
if "$PY" -m pip install -q --no-deps "$work"/wheel/*.whl; then
  "$PY" - "$CFLAGS_NOTE" <<'PYEOF'
import sys, pathlib, PIL
(pathlib.Path(PIL.__file__).parent / "GPF_BUILD_INFO").write_text("CC=" + sys.argv[1] + "\n")
PYEOF
  if "$PY" -c "from PIL import Image, features; import io; Image.new('RGB',(8,8)).save(io.BytesIO(),'JPEG'); assert features.check('jpg')"; then
    echo "gpf setup: pillow-simd installed, replacing Pillow $PILLOW_VERSION"
    exit 0
  fi
fi
echo "gpf setup: pillow-simd did not work; restoring Pillow $PILLOW_VERSION"
"$PY" -m pip uninstall -q -y pillow-simd
"$PY" -m pip install -q "pillow${PILLOW_VERSION:+==$PILLOW_VERSION}"
exit 0
