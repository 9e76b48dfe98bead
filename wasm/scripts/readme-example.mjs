// Writes the files of README.md's examples into a directory, so the test suite runs them as
// they stand: every fenced code block right after a `<!-- file: NAME -->` line becomes NAME.
// Fails when the README has none.
//
// usage: node readme-example.mjs README.md OUT_DIR
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";

const [readme, outDir] = process.argv.slice(2);
if (!readme || !outDir) {
  console.error("usage: node readme-example.mjs README.md OUT_DIR");
  process.exit(2);
}
const text = readFileSync(readme, "utf8");
const pattern = /<!-- file: ([\w.-]+) -->\n```[a-z]*\n([\s\S]*?)\n```/g;
mkdirSync(outDir, { recursive: true });
const written = [];
for (const [, name, body] of text.matchAll(pattern)) {
  writeFileSync(join(outDir, basename(name)), `${body}\n`);
  written.push(name);
}
if (written.length === 0) {
  console.error(`${readme} has no <!-- file: NAME --> code blocks`);
  process.exit(1);
}
console.log(`[switchboard-wasm] README example: ${written.join(", ")}`);
