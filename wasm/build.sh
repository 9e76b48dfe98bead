#!/usr/bin/env bash
# Builds the npm package of switchboard-wasm into wasm/pkg/:
#   pkg/web/   wasm-bindgen --target web     (ES module; call `await init()` first)
#   pkg/node/  wasm-bindgen --target nodejs  (CommonJS; ready on require/import)
#   pkg/*/index.js, index.d.ts  the entry points: FakeServer (js/fake-server.js) around each
#              build, and the codec (scripts/package-js.mjs)
#   pkg/package.json, pkg/README.md
# then optimises each .wasm with binaryen's wasm-opt -Oz (npm package; Debian's is broken),
# checks that the module imports nothing from `env` and that it stays within the size budget,
# and prints the gzipped size. `npm install /path/to/wasm/pkg` installs the result.
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/scripts/common.sh"
pkg_dir="$wasm_dir/pkg"
# The gzipped size budget of the .wasm, in bytes (70 KiB): the build fails above it.
max_gzip_bytes=$((70 * 1024))

bash "$wasm_dir/scripts/ensure-tools.sh"

target_dir="$(cd "$workspace_dir" && cargo metadata --format-version 1 --no-deps |
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')"

# The module is built with nightly Rust, for size: the standard library is rebuilt for it
# (`-Zbuild-std`, `optimize_for_size`), a panic is a bare trap (`immediate-abort`: on
# wasm32-unknown-unknown a panic message goes nowhere anyway, so nothing visible is lost) and
# panics carry no file and line (`-Zlocation-detail=none`). Together about 12 KB gzipped, a
# sixth of the budget. Its own target directory keeps these flags away from the workspace's
# stable builds. Size settings for this build only, so the server's release profile is
# untouched: one codegen unit, fat LTO and opt-level z for every crate of the module (the
# core's serde_json included), no debug info.
wasm_target_dir="$target_dir/wasm-size"
say "cargo +nightly build --release --target wasm32-unknown-unknown -p switchboard-wasm (-Zbuild-std)"
(cd "$workspace_dir" &&
  RUSTFLAGS="-Zlocation-detail=none -Zunstable-options -Cpanic=immediate-abort" \
    cargo +nightly build --release --target wasm32-unknown-unknown -p switchboard-wasm \
    -Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size \
    --target-dir "$wasm_target_dir" \
    --config 'profile.release.lto = "fat"' \
    --config 'profile.release.codegen-units = 1' \
    --config 'profile.release.opt-level = "z"' \
    --config 'profile.release.debug = false')
raw_wasm="$wasm_target_dir/wasm32-unknown-unknown/release/switchboard_wasm.wasm"

rm -rf "$pkg_dir"
mkdir -p "$pkg_dir"
for target in web nodejs; do
  out="$pkg_dir/${target%js}"
  say "wasm-bindgen --target $target -> ${out#"$wasm_dir"/}"
  wasm-bindgen --target "$target" --out-dir "$out" --out-name switchboard_wasm "$raw_wasm"
  # --zero-filled-memory: the module defines its own memory, which starts zeroed.
  (cd "$wasm_dir" && npx --no-install wasm-opt -Oz --converge --strip-producers \
    --strip-target-features --zero-filled-memory \
    "$out/switchboard_wasm_bg.wasm" -o "$out/switchboard_wasm_bg.opt.wasm")
  mv "$out/switchboard_wasm_bg.opt.wasm" "$out/switchboard_wasm_bg.wasm"
done
# Each build directory says how Node should read its .js files.
echo '{ "type": "module" }' >"$pkg_dir/web/package.json"
echo '{ "type": "commonjs" }' >"$pkg_dir/node/package.json"

version="$(cd "$workspace_dir" && cargo metadata --format-version 1 --no-deps |
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).packages.find(p=>p.name==="switchboard-wasm").version))')"
node "$wasm_dir/scripts/package-js.mjs" "$pkg_dir"
node "$wasm_dir/scripts/package-json.mjs" "$version" >"$pkg_dir/package.json"
cp "$wasm_dir/README.md" "$pkg_dir/README.md"

node "$wasm_dir/scripts/check-wasm.mjs" "$max_gzip_bytes" "$pkg_dir/web/switchboard_wasm_bg.wasm" "$pkg_dir/node/switchboard_wasm_bg.wasm"
say "package ready: $pkg_dir (npm install $pkg_dir)"
