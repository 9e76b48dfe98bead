// Prints the package.json of the npm package (wasm/pkg/) for the version given as argument.
// Node resolves the "node" condition to the CommonJS build, which is ready as soon as it is
// loaded; browsers and bundlers get the ES module build, which needs `await init()`. Each
// build's entry point is its index.js (scripts/package-js.mjs), around wasm-bindgen's output.
const [version] = process.argv.slice(2);
if (!version) {
  console.error("usage: package-json.mjs VERSION");
  process.exit(2);
}

const node = { types: "./node/index.d.ts", default: "./node/index.js" };
const web = { types: "./web/index.d.ts", default: "./web/index.js" };

const pkg = {
  name: "switchboard-wasm",
  version,
  description:
    "A fake Switchboard server for testing frontend code that uses the phoenix client: the node's own protocol engine compiled to WebAssembly, behind a browser-like WebSocket.",
  license: "MIT OR Apache-2.0",
  keywords: ["phoenix", "websocket", "testing", "fake", "mock", "pubsub", "wasm"],
  main: node.default,
  module: web.default,
  types: node.types,
  exports: {
    ".": { node, browser: web, default: web },
    "./node": node,
    "./web": web,
    "./web/switchboard_wasm_bg.wasm": "./web/switchboard_wasm_bg.wasm",
    "./package.json": "./package.json",
  },
  files: ["node/", "web/", "README.md"],
  engines: { node: ">=18" },
};

console.log(JSON.stringify(pkg, null, 2));
