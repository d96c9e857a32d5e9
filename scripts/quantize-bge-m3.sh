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

# Run from a checkout without activating the venv: fall back to the project's .venv.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ovembed="${OVEMBED:-ovembed}"
if [[ -z "${OVEMBED:-}" ]] && ! command -v ovembed >/dev/null 2>&1; then
    if [[ -x .venv/bin/ovembed ]]; then
        ovembed=".venv/bin/ovembed"
    elif [[ -x "$repo_root/.venv/bin/ovembed" ]]; then
        ovembed="$repo_root/.venv/bin/ovembed"
    else
        echo "error: 'ovembed' is not on PATH and no .venv/bin/ovembed was found; run 'make install' or set OVEMBED" >&2
        exit 2
    fi
fi

exec "$ovembed" quantize "$model" --output "$output" "$@"
