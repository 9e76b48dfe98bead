// Checks built .wasm modules: nothing imported from `env` (the core must stay free of
// undefined host symbols; a stray libc or `extern "C"` call shows up there), every import from
// the wasm-bindgen glue, and the gzipped size within the budget (at most MAX_GZIP_BYTES).
// Prints what it measured and exits non-zero on any failure.
//
// usage: node check-wasm.mjs MAX_GZIP_BYTES FILE.wasm...
import { readFileSync } from "node:fs";
import { gzipSync, constants } from "node:zlib";

const [maxArg, ...files] = process.argv.slice(2);
const max = Number(maxArg);
if (!Number.isInteger(max) || files.length === 0) {
  console.error("usage: node check-wasm.mjs MAX_GZIP_BYTES FILE.wasm...");
  process.exit(2);
}

let failed = false;
const fail = (message) => {
  console.error(`\x1b[1;31m[switchboard-wasm] FAILED:\x1b[0m ${message}`);
  failed = true;
};

for (const file of files) {
  const bytes = readFileSync(file);
  const imports = WebAssembly.Module.imports(new WebAssembly.Module(bytes));
  const modules = [...new Set(imports.map((entry) => entry.module))];
  const fromEnv = imports.filter((entry) => entry.module === "env");
  const gzipped = gzipSync(bytes, { level: constants.Z_BEST_COMPRESSION }).length;
  const kib = (n) => (n / 1024).toFixed(1);
  console.log(
    `[switchboard-wasm] ${file}: ${bytes.length} bytes, ${gzipped} bytes gzipped ` +
      `(${kib(gzipped)} KiB of a ${kib(max)} KiB budget); ${imports.length} imports, ` +
      `from ${modules.join(", ") || "nothing"}; ${fromEnv.length} from env`,
  );
  if (fromEnv.length > 0) {
    fail(`${file} imports from env: ${fromEnv.map((entry) => entry.name).join(", ")}`);
  }
  const foreign = modules.filter((name) => name !== "env" && !name.endsWith("_bg.js") && name !== "wbg");
  if (foreign.length > 0) {
    fail(`${file} imports from modules other than the wasm-bindgen glue: ${foreign.join(", ")}`);
  }
  if (gzipped > max) {
    fail(`${file} is ${gzipped} bytes gzipped; the budget is at most ${max}`);
  }
}
process.exit(failed ? 1 : 0);
