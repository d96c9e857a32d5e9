# Sourced by the scripts here: sets $ovembed to the CLI to run, so they work from a checkout
# without an activated venv. $OVEMBED overrides; then `ovembed` on PATH; then the project's .venv.
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
