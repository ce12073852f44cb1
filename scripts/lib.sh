# Shared set-up for the project's scripts: a light Python environment (no torch) with the
# ONNX Runtime library from the PyPI `onnxruntime` wheel. Sourced, not run.
# shellcheck shell=bash
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
  local libs=("$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*)
  if [ -e "${libs[0]}" ]; then
    export UNCLIP_ORT_LIBRARY="${UNCLIP_ORT_LIBRARY:-${libs[0]}}"
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

# matplotlib for scripts/bench-load's plot (tools/requirements-plot.txt). Idempotent; call after
# setup_python.
setup_plot() {
  local stamp="$VENV/.requirements-plot.sha256"
  local want
  want="$(sha256sum "$ROOT/tools/requirements-plot.txt" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$PY" -m pip install --quiet --disable-pip-version-check -r "$ROOT/tools/requirements-plot.txt"
    echo "$want" > "$stamp"
  fi
}

# The release binaries of the stage services, the gateway and the `unclip` command.
build_release() {
  (cd "$ROOT" && cargo build --release -p unclip-clip -p unclip-prior -p unclip-decoder \
    -p unclip-gateway -p unclip-cli)
}

# Starts `unclip stack` in the background and waits until it serves:
#   start_stack UNCLIP LOG ARG...   (ARG: `unclip stack` flags, e.g. --model DIR --decoder-replicas 2)
# Sets STACK_PID (stop it with stop_stack) and GATEWAY (host:port). The stack's output goes to
# LOG, printed when it dies before serving.
start_stack() {
  local unclip="$1" log="$2"
  shift 2
  local info
  info="$(mktemp -u)"
  "$unclip" stack --listen-info "$info" "$@" > "$log" 2>&1 &
  STACK_PID=$!
  for _ in $(seq 900); do
    [ -f "$info" ] && break
    if ! kill -0 "$STACK_PID" 2>/dev/null; then
      cat "$log" >&2
      echo "error: \`unclip stack $*\` stopped before serving (log: $log)" >&2
      return 1
    fi
    sleep 0.2
  done
  if [ ! -f "$info" ]; then
    echo "error: \`unclip stack $*\` did not serve within 180 s (log: $log)" >&2
    return 1
  fi
  GATEWAY="$(sed -n 's|^gateway=http://||p' "$info")"
}

# Stops the stack of start_stack (it stops its services) and waits for it.
stop_stack() {
  if [ -n "${STACK_PID:-}" ]; then
    kill "$STACK_PID" 2>/dev/null || true
    wait "$STACK_PID" 2>/dev/null || true
    STACK_PID=""
  fi
}

# HTTP against gRPC on the gateway, one client (tools/unclip_tools/bench_http.py): starts a stack
# without the embedding cache (so every request runs every stage), runs the four ways
# interleaved, keeps the report as OUT/http.json and prints its table and ratios.
#   run_bench_http UNCLIP MODEL REQUESTS OUT
run_bench_http() {
  local unclip="$1" model="$2" requests="$3" out="$4"
  start_stack "$unclip" "$out/http-stack.log" --model "$model" --gateway-arg=--cache-memory-mb=0
  "$PY" -m unclip_tools.bench_http --gateway "$GATEWAY" --requests "$requests" --json > "$out/http.json" \
    || { stop_stack; return 1; }
  stop_stack
  "$PY" -m unclip_tools.bench_http --table "$out/http.json"
}
