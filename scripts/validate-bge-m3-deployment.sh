#!/usr/bin/env bash
# Check a running BGE-M3 deployment (the upgrade guide's last step): the right model, 1024-dim vectors, p95 latency.
# Thin wrapper over `ovembed validate`; its exit code is this script's (0 all checks pass, 1 a check failed, 2 usage).
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") [URL] [extra 'ovembed validate' options...]"
    echo "  URL     the service (default: http://localhost:8019)"
    echo "  checks  --expect-model BAAI/bge-m3 --expect-dim 1024 --max-p95-ms 200 (later options override)"
    echo "  e.g.    $(basename "$0") http://embed.internal:8019 --queries 500 --json"
    echo "  env     OVEMBED=/path/to/ovembed overrides the binary (default: ovembed, else .venv/bin/ovembed)"
}

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
esac

url="http://localhost:8019"
if [[ $# -gt 0 && "$1" != -* ]]; then url="$1"; shift; fi
if [[ "${1:-}" == "--" ]]; then shift; fi

source "$(dirname "${BASH_SOURCE[0]}")/find-ovembed.sh"

exec "$ovembed" validate --url "$url" --expect-model BAAI/bge-m3 --expect-dim 1024 --max-p95-ms 200 "$@"
