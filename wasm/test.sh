#!/usr/bin/env bash
# End-to-end check of switchboard-wasm, from a fresh machine or a warm one:
#   1. installs what is missing (wasm32 target, nightly with rust-src, wasm-bindgen-cli at the
#      Cargo.lock version, npm devDependencies, chromium + chromedriver),
#   2. builds the npm package (build.sh: size budget and `env`-import check included),
#   3. native tests (the table of model digests), fmt and wasm32 clippy,
#   4. the wasm-bindgen tests in Node.js and in headless Chromium,
#   5. the packed package installed into js-test/ (npm project with phoenix, ws, Vitest, jsdom,
#      TypeScript): its `node --test` suites — FakeServer's WebSocket and helpers, and the
#      phoenix scenario against FakeServer (ES module and CommonJS) and against a real node
#      (built here) with the same observations —, the TypeScript declarations (tsc), and
#      README.md's Vitest example as it stands,
#   6. in headless Chromium, served from 127.0.0.1 on a free port: the phoenix scenario against
#      FakeServer (the same observations as in Node.js) and the example page.
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

step "native tests: model digests"
cargo test -p switchboard-wasm

step "rustfmt and clippy (wasm32)"
cargo fmt -p switchboard-wasm -- --check
cargo clippy -p switchboard-wasm --all-targets --target wasm32-unknown-unknown -- -D warnings

export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner

step "wasm-bindgen tests in Node.js"
cargo test -p switchboard-wasm --target wasm32-unknown-unknown --test node

step "wasm-bindgen tests in headless Chromium"
CHROMEDRIVER="$chromedriver" cargo test -p switchboard-wasm --target wasm32-unknown-unknown --test browser

step "build the node for the comparison run"
cargo build -p switchboard-node --bin switchboard
target_dir="$(cargo metadata --format-version 1 --no-deps |
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')"
export SWITCHBOARD_BIN="${SWITCHBOARD_BIN:-$target_dir/debug/switchboard}"

step "install the packed package into js-test/"
tests_dir="$wasm_dir/js-test"
# npm ci only when the lock changed since the last install (it reinstalls everything).
lock_hash="$(sha256sum "$tests_dir/package-lock.json" | cut -d' ' -f1)"
stamp="$tests_dir/node_modules/.switchboard-lock-sha256"
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_hash" ]; then
  (cd "$tests_dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_hash" >"$stamp"
fi
mkdir -p "$scratch/pack"
(cd "$wasm_dir/pkg" && npm pack --silent --pack-destination "$scratch/pack" >/dev/null)
tarball="$(ls "$scratch"/pack/switchboard-wasm-*.tgz)"
(cd "$tests_dir" && npm install --no-save --no-audit --no-fund --loglevel=error "$tarball")

step "node --test: FakeServer, and phoenix.js against FakeServer and a real node"
observations="$scratch/observations.json"
(cd "$tests_dir" && OBSERVATIONS_FILE="$observations" node --test ./*.test.mjs)

step "TypeScript declarations (tsc)"
(cd "$tests_dir" && npx --no-install tsc -p tsconfig.json)

step "README.md's Vitest example"
example_dir="$scratch/readme-example"
node "$wasm_dir/scripts/readme-example.mjs" "$wasm_dir/README.md" "$example_dir"
ln -s "$tests_dir/node_modules" "$example_dir/node_modules"
(cd "$example_dir" && ./node_modules/.bin/vitest run)

step "phoenix.js against FakeServer and the example page in headless Chromium"
port_file="$scratch/port"
python3 "$wasm_dir/scripts/serve.py" "$wasm_dir" "$port_file" &
server_pid=$!
for _ in $(seq 100); do
  [ -s "$port_file" ] && break
  sleep 0.1
done
[ -s "$port_file" ] || die "the static server did not start"
origin="http://127.0.0.1:$(cat "$port_file")"
# Prints the DOM of page $1 after headless Chromium ran it.
dump_dom() {
  mkdir -p "$scratch/chromium"
  timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-quic --no-first-run --disable-component-update --disable-sync \
    --user-data-dir="$scratch/chromium" --virtual-time-budget=30000 --dump-dom "$origin/$1" \
    2>>"$scratch/chromium.log" || true
}
dump_dom js-test/browser/index.html >"$scratch/scenario.html"
if ! grep -q 'data-status="ok"' "$scratch/scenario.html"; then
  sed -n '/<output/,/<\/output>/p' "$scratch/scenario.html" >&2 || true
  tail -n 20 "$scratch/chromium.log" >&2 || true
  die "the phoenix scenario did not finish in Chromium"
fi
node -e '
  const fs = require("fs");
  const dom = fs.readFileSync(process.argv[1], "utf8");
  const text = /OBSERVATIONS ([\s\S]*?) END/.exec(dom)[1]
    .replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, "\"").replace(/&amp;/g, "&");
  const browser = JSON.stringify(JSON.parse(text));
  const node = JSON.stringify(JSON.parse(fs.readFileSync(process.argv[2], "utf8")));
  if (browser !== node) {
    console.error("Chromium observed:\n" + browser + "\nNode.js observed:\n" + node);
    process.exit(1);
  }
  console.log(`[switchboard-wasm] Chromium observed what Node.js did (${JSON.parse(text).length} observations)`);
' "$scratch/scenario.html" "$observations"

dump_dom example/index.html >"$scratch/dom.html"
if grep -q 'data-status="ok"' "$scratch/dom.html" &&
  grep -q 'tab-2 room:lobby hello from wasm' "$scratch/dom.html" &&
  grep -q 'subscribers: 2' "$scratch/dom.html"; then
  say "example page: the message reached both tabs"
else
  sed -n '/<output/,/<\/output>/p' "$scratch/dom.html" >&2 || true
  tail -n 20 "$scratch/chromium.log" >&2 || true
  die "the example page did not show the delivered message"
fi

current_step="done"
say "all switchboard-wasm checks passed"
