#!/usr/bin/env bash
# Installs what building and testing switchboard-wasm needs, when it is missing:
#   - the wasm32-unknown-unknown Rust target (stable, for the wasm tests and clippy),
#   - a nightly toolchain with the rust-src component (build.sh rebuilds the standard library
#     for the size-budgeted module),
#   - wasm-bindgen-cli at exactly the wasm-bindgen version in Cargo.lock,
#   - the npm devDependencies of wasm/ (binaryen's wasm-opt), with `npm ci`,
#   - with --browser: chromium and chromedriver (apt-get).
# Run by build.sh and test.sh; safe to run on its own.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

need_browser=0
for arg in "$@"; do
  case "$arg" in
    --browser) need_browser=1 ;;
    *) die "ensure-tools.sh: unknown argument $arg" ;;
  esac
done

command -v cargo >/dev/null || die "cargo is not installed (install Rust with rustup)"

if command -v rustup >/dev/null; then
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    say "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  fi
  if ! rustup toolchain list | grep -q '^nightly'; then
    say "installing the nightly toolchain (build.sh builds the module with it)"
    rustup toolchain install nightly --profile minimal
  fi
  if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    say "adding rust-src to nightly (-Zbuild-std)"
    rustup component add rust-src --toolchain nightly
  fi
fi

# The CLI must be exactly the version of the wasm-bindgen crate in Cargo.lock.
lock_version="$(awk '
  /^\[\[package\]\]/ { name = "" }
  /^name = "wasm-bindgen"$/ { name = "wasm-bindgen" }
  /^version = / && name == "wasm-bindgen" { gsub(/"/, "", $3); print $3; exit }
' "$workspace_dir/Cargo.lock")"
[ -n "$lock_version" ] || die "no wasm-bindgen in $workspace_dir/Cargo.lock"
installed_version="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)"
if [ "$installed_version" != "$lock_version" ]; then
  say "installing wasm-bindgen-cli $lock_version (found '${installed_version:-none}'; takes a few minutes)"
  # Not --locked: the CLI's own lock pins a crate version the registry no longer has.
  cargo install wasm-bindgen-cli --version "$lock_version" --force
fi
command -v wasm-bindgen-test-runner >/dev/null || die "wasm-bindgen-test-runner is not on PATH (~/.cargo/bin)"

command -v node >/dev/null && command -v npm >/dev/null || {
  say "installing Node.js and npm"
  apt-get update && apt-get install -y nodejs npm
}
if [ ! -x "$wasm_dir/node_modules/.bin/wasm-opt" ]; then
  say "installing the build's npm devDependencies (npm ci)"
  (cd "$wasm_dir" && npm ci --no-audit --no-fund)
fi

if [ "$need_browser" = 1 ]; then
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    say "installing chromium and chromium-driver"
    apt-get update && apt-get install -y chromium chromium-driver
  fi
  # The example page check serves wasm/ with Python's http.server.
  if ! command -v python3 >/dev/null; then
    say "installing python3"
    apt-get update && apt-get install -y python3
  fi
fi
