#!/usr/bin/env bash
# Serve a model the way a user runs kvd: the kvd daemon and the gateway in
# sidecar mode, both stopped on Ctrl-C. Used by `make run`.
#
#   tools/run.sh MODEL_DIR [gateway flags...]
set -euo pipefail
model=${1:?usage: run.sh MODEL_DIR [gateway flags...]}
shift
bin=$(dirname "$0")/../bin
sock=${KVD_SOCKET:-}
if [ -z "$sock" ]; then
  if [ -n "${XDG_RUNTIME_DIR:-}" ]; then sock=$XDG_RUNTIME_DIR/kvd.sock; else sock=/tmp/kvd-$(id -u)/kvd.sock; fi
fi
"$bin/kvd" serve --model "$model" --socket "$sock" --kv-memory "${KV_MEMORY:-256MiB}" &
kvd=$!
trap 'kill -INT $kvd 2>/dev/null; wait $kvd 2>/dev/null' EXIT
trap 'exit 0' INT TERM
"$bin/gateway" --model "$model" --kvd-socket "$sock" --listen "${LISTEN:-127.0.0.1:8080}" "$@"
