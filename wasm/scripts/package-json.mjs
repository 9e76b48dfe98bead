// Prints the package.json of the npm package (wasm/pkg/) for the version given as argument.
// Node resolves the "node" condition to the CommonJS build, which is ready as soon as it is
// loaded; browsers and bundlers get the ES module build, which needs `await init()`.
const [version] = process.argv.slice(2);
if (!version) {
  console.error("usage: package-json.mjs VERSION");
  process.exit(2);
}

const node = { types: "./node/switchboard_wasm.d.ts", default: "./node/switchboard_wasm.js" };
const web = { types: "./web/switchboard_wasm.d.ts", default: "./web/switchboard_wasm.js" };

const pkg = {
  name: "switchboard-wasm",
  version,
  description:
    "In-memory pub/sub with the Switchboard node's routing rules and Phoenix V2 codec, compiled to WebAssembly, for frontend tests.",
  license: "MIT OR Apache-2.0",
  keywords: ["pubsub", "phoenix", "websocket", "testing", "wasm"],
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
