#!/usr/bin/env bash
# End-to-end check of switchboard-wasm, from a fresh machine or a warm one:
#   1. installs what is missing (wasm32 target, wasm-bindgen-cli at the Cargo.lock version,
#      npm devDependencies, chromium + chromedriver),
#   2. builds the npm package (build.sh: size budget and `env`-import check included),
#   3. native tests (the table of model digests, the session table), fmt and wasm32 clippy,
#   4. the wasm-bindgen tests in Node.js and in headless Chromium,
#   5. `node --test` against the packed package installed into a scratch project,
#   6. the example page in headless Chromium, served from 127.0.0.1 on a free port.
# Exits non-zero, naming the step, on the first failure.
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/scripts/common.sh"

current_step="setup"
step() {
  current_step="$*"
  say "== $current_step"
}

scratch="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT
trap 'die "step \"$current_step\" failed (exit $?)"' ERR

step "install missing tools"
bash "$wasm_dir/scripts/ensure-tools.sh" --browser
chromedriver="$(command -v chromedriver)"

step "build the npm package (size and import checks)"
bash "$wasm_dir/build.sh"

cd "$workspace_dir"

step "native tests: model digests and session table"
cargo test -p switchboard-wasm

step "rustfmt and clippy (wasm32)"
cargo fmt -p switchboard-wasm -- --check
cargo clippy -p switchboard-wasm --all-targets --target wasm32-unknown-unknown -- -D warnings

export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner

step "wasm-bindgen tests in Node.js"
cargo test -p switchboard-wasm --target wasm32-unknown-unknown --test node

step "wasm-bindgen tests in headless Chromium"
CHROMEDRIVER="$chromedriver" cargo test -p switchboard-wasm --target wasm32-unknown-unknown --test browser

step "node --test against the installed package"
mkdir -p "$scratch/pack" "$scratch/project"
(cd "$wasm_dir/pkg" && npm pack --silent --pack-destination "$scratch/pack" >/dev/null)
tarball="$(ls "$scratch"/pack/switchboard-wasm-*.tgz)"
cp "$wasm_dir"/js-test/*.test.mjs "$scratch/project/"
(
  cd "$scratch/project"
  echo '{ "name": "switchboard-wasm-user", "private": true, "type": "module" }' >package.json
  npm install --no-audit --no-fund --no-package-lock "$tarball"
  node --test
)

step "example page in headless Chromium"
port_file="$scratch/port"
python3 "$wasm_dir/scripts/serve.py" "$wasm_dir" "$port_file" &
server_pid=$!
for _ in $(seq 100); do
  [ -s "$port_file" ] && break
  sleep 0.1
done
[ -s "$port_file" ] || die "the static server did not start"
url="http://127.0.0.1:$(cat "$port_file")/example/index.html"
mkdir -p "$scratch/chromium"
timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-quic --no-first-run --disable-component-update --disable-sync \
  --user-data-dir="$scratch/chromium" --virtual-time-budget=10000 --dump-dom "$url" \
  >"$scratch/dom.html" 2>"$scratch/chromium.log" || true
if grep -q 'data-status="ok"' "$scratch/dom.html" &&
  grep -q 'tab-2 room:lobby hello from wasm' "$scratch/dom.html" &&
  grep -q 'delivered: 2' "$scratch/dom.html"; then
  say "example page: the message reached both tabs ($(grep -o 'delivered: [0-9][0-9]*' "$scratch/dom.html"))"
else
  sed -n '/<output/,/<\/output>/p' "$scratch/dom.html" >&2 || true
  tail -n 20 "$scratch/chromium.log" >&2 || true
  die "the example page at $url did not show the delivered message"
fi

current_step="done"
say "all switchboard-wasm checks passed"
