# Shared by build.sh, test.sh and scripts/ensure-tools.sh (sourced, not run).
# shellcheck shell=bash
wasm_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
workspace_dir="$(cd "$wasm_dir/.." && pwd)"

say() { printf '\033[1m[switchboard-wasm]\033[0m %s\n' "$*" >&2; }
die() {
  printf '\033[1;31m[switchboard-wasm] FAILED:\033[0m %s\n' "$*" >&2
  exit 1
}
