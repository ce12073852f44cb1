# Shared set-up for the project's scripts: a light Python environment (no torch) with the
# ONNX Runtime library from the PyPI `onnxruntime` wheel. Sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UNCLIP_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

setup_python() {
  if [ ! -x "$PY" ]; then
    echo "setting up $VENV (numpy, onnxruntime, pillow, tokenizers, safetensors, pytest)" >&2
    python3 -m venv "$VENV"
  fi
  # Re-install only when the requirements changed since the last install.
  local stamp="$VENV/.requirements-light.sha256"
  local want
  want="$(sha256sum "$ROOT/tools/requirements-light.txt" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$PY" -m pip install --quiet --disable-pip-version-check -r "$ROOT/tools/requirements-light.txt"
    echo "$want" > "$stamp"
  fi
  export PYTHONPATH="$ROOT/tools${PYTHONPATH:+:$PYTHONPATH}"
  # The ONNX Runtime shared library shipped inside the wheel, for the Rust services.
  local lib
  lib="$(ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1 || true)"
  if [ -n "$lib" ]; then
    export UNCLIP_ORT_LIBRARY="${UNCLIP_ORT_LIBRARY:-$lib}"
  fi
}

# The web page's browser test: Debian's `chromium` (Playwright's own browser downloads are not
# used) and Playwright in the same venv. Idempotent; call after setup_python.
setup_browser() {
  if ! command -v chromium >/dev/null 2>&1; then
    echo "installing chromium (Debian package) for the web page test" >&2
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  fi
  export UNCLIP_CHROMIUM="${UNCLIP_CHROMIUM:-$(command -v chromium)}"
  local stamp="$VENV/.requirements-browser.sha256"
  local want
  want="$(sha256sum "$ROOT/tools/requirements-browser.txt" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$PY" -m pip install --quiet --disable-pip-version-check -r "$ROOT/tools/requirements-browser.txt"
    echo "$want" > "$stamp"
  fi
}
