#!/usr/bin/env bash
# Quantize BGE-M3 to a static-INT8 OpenVINO model folder (the upgrade guide's step 1).
# Thin wrapper over `ovembed quantize`; its exit code is this script's (0 ok, 1 a check failed, 2 usage error).
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") [MODEL] [OUTPUT] [-- extra 'ovembed quantize' options...]"
    echo "  MODEL   hub id or local folder (default: BAAI/bge-m3)"
    echo "  OUTPUT  model folder to write (default: models/bge-m3-int8)"
    echo "  e.g.    $(basename "$0") ./bge-m3 models/bge-m3-int8 --model-id BAAI/bge-m3"
    echo "  env     OVEMBED=/path/to/ovembed overrides the binary (default: ovembed, else .venv/bin/ovembed)"
}

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
esac

# Positional MODEL/OUTPUT only until the first option, so `script --precision fp16` keeps both defaults.
model="BAAI/bge-m3"
output="models/bge-m3-int8"
if [[ $# -gt 0 && "$1" != -* ]]; then model="$1"; shift; fi
if [[ $# -gt 0 && "$1" != -* ]]; then output="$1"; shift; fi
if [[ "${1:-}" == "--" ]]; then shift; fi

source "$(dirname "${BASH_SOURCE[0]}")/find-ovembed.sh"

exec "$ovembed" quantize "$model" --output "$output" "$@"
