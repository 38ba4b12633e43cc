// Runs a Cloudflare Python Worker's fetch handler under real Pyodide in Node, offline.
//
//   node --experimental-wasm-stack-switching tests/pyodide/run_worker.mjs \
//     --worker examples/cloudflare/src/entry.py --package-dir lambda_analytics \
//     --wheel-dir tests/pyodide/.wheels --env '{"ANALYTICS_WRITE_KEY": "wk"}' --requests 1
//
// Prints one JSON line per response on stdout ({"status", "headers", "body"}); everything
// Python prints goes to stderr. Exits 1 on any Python exception (traceback on stderr), 2 on
// bad usage or a Node without JSPI.
//
// The JSPI flag is what lets urllib3 (contrib/emscripten) block on the runtime's async fetch,
// as the Workers runtime does. --package-dir may repeat; every *.whl in --wheel-dir is
// installed. Request i (from 1) gets the body {"user_id": "user-i", "path": "/pages/i"}.

import { readFileSync, readdirSync, statSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { loadPyodide } from "pyodide";

const here = dirname(fileURLToPath(import.meta.url));

function fail(message, code = 2) {
  process.stderr.write(`run_worker: ${message}\n`);
  process.exit(code);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      worker: { type: "string" },
      "package-dir": { type: "string", multiple: true, default: [] },
      "wheel-dir": { type: "string" },
      env: { type: "string", default: "{}" },
      requests: { type: "string", default: "1" },
    },
  }));
} catch (error) {
  fail(error.message);
}
if (!args.worker) fail("--worker PATH is required");
const count = Number(args.requests);
if (!Number.isInteger(count) || count < 1) fail("--requests must be a positive integer");
if (typeof WebAssembly.Suspender !== "function" && typeof WebAssembly.Suspending !== "function") {
  fail("this Node has no JSPI: run it with --experimental-wasm-stack-switching (Node < 24)");
}

// Copy instead of mounting: Pyodide must not write its .pyc files into the work tree.
function copyTree(FS, from, to) {
  FS.mkdirTree(to);
  for (const name of readdirSync(from)) {
    if (name === "__pycache__" || name === "node_modules") continue;
    const source = join(from, name);
    if (statSync(source).isDirectory()) copyTree(FS, source, `${to}/${name}`);
    else FS.writeFile(`${to}/${name}`, readFileSync(source));
  }
}

const started = performance.now();
const toStderr = (line) => process.stderr.write(line + "\n");
const pyodide = await loadPyodide({ stdout: toStderr, stderr: toStderr });
const loaded = performance.now();

const site = pyodide.runPython("import site; site.getsitepackages()[0]");
if (args["wheel-dir"]) {
  const wheels = readdirSync(args["wheel-dir"]).filter((name) => name.endsWith(".whl"));
  if (wheels.length === 0) fail(`no .whl file in ${args["wheel-dir"]}`);
  for (const wheel of wheels) {
    // A Uint8Array, not Node's Buffer: Pyodide rejects Buffer as an unknown typed array.
    pyodide.unpackArchive(new Uint8Array(readFileSync(join(args["wheel-dir"], wheel))), "wheel");
  }
}
for (const dir of args["package-dir"]) {
  copyTree(pyodide.FS, resolve(dir), `${site}/${basename(resolve(dir))}`);
}
for (const name of ["workers.py", "harness.py"]) {
  pyodide.FS.writeFile(`${site}/${name}`, readFileSync(join(here, name)));
}
copyTree(pyodide.FS, dirname(resolve(args.worker)), "/worker");

const bodies = Array.from({ length: count }, (_, i) => ({
  user_id: `user-${i + 1}`,
  path: `/pages/${i + 1}`,
}));
// A JS object, so the Worker sees a JsProxy with attribute access, like the runtime's env.
const env = JSON.parse(args.env);
const ready = performance.now();
let lines;
try {
  const harness = pyodide.pyimport("harness");
  lines = await harness.run("/worker", basename(args.worker, ".py"), env, JSON.stringify(bodies));
} catch (error) {
  // A PythonError's message is the Python traceback; anything else is a bug of this runner.
  const isPython = error instanceof pyodide.ffi.PythonError;
  process.stderr.write(`${isPython ? error.message : (error?.stack ?? error)}\n`);
  process.exit(1);
}
const done = performance.now();

for (const line of lines) process.stdout.write(line + "\n");
const ms = (a, b) => `${Math.round(b - a)} ms`;
process.stderr.write(
  `run_worker: pyodide ${pyodide.version} loaded in ${ms(started, loaded)}, ` +
    `setup ${ms(loaded, ready)}, ${count} request(s) in ${ms(ready, done)}, ` +
    `${Math.round(process.uptime() * 1000)} ms since node started\n`,
);
process.exit(0);
