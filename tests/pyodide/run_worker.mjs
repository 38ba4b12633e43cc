// Runs a Cloudflare Python Worker's fetch handler under real Pyodide in Node, offline.
//
//   node --experimental-wasm-stack-switching tests/pyodide/run_worker.mjs \
//     --worker examples/cloudflare/src/entry.py --package-dir lambda_analytics \
//     --wheel-dir tests/pyodide/.wheels --env '{"ANALYTICS_WRITE_KEY": "wk"}' --requests 1
//
// Prints one JSON line per Worker request on stdout; everything Python prints goes to stderr.
// Exits 1 on any Python exception or broken runtime rule (message on stderr), 2 on bad usage or
// a Node without JSPI.  A line is {"status", "headers", "body"} of the response and:
//   started, returned, settled   when the handler was called, when its Response came back, and
//                                when every promise given to ctx.waitUntil had settled
//                                (ms, this process's performance.now() clock)
//   returned_epoch_ms            Date.now() when the Response came back, to compare with
//                                another process's clock (never later than the true instant)
//   wait_until                   how many promises ctx.waitUntil was given
//   subrequests                  [{method, url, started, ended, status}] every fetch() the
//                                request made, from the handler or its waitUntil work
//
// Like the runtime: each request gets its own ctx, an ExecutionContext whose waitUntil takes a
// promise or a Python awaitable and is awaited after the response (at most 30 s); a request may
// make 50 subrequests (the free plan), the 51st fetch() fails; fetch() outside a request (at
// import time) fails.  The JSPI flag is what lets urllib3 (contrib/emscripten) block on the
// runtime's async fetch, as the Workers runtime does.  --package-dir may repeat; every *.whl in
// --wheel-dir is installed.  Request i (from 1) gets the body
// {"user_id": "user-i", "path": "/pages/i"}.

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

const launched = performance.now();
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

const SUBREQUEST_LIMIT = 50; // per request, free plan
const WAIT_UNTIL_LIMIT_MS = 30_000; // waitUntil work may run this long after the response

// Every subrequest goes through globalThis.fetch (urllib3's emscripten backend calls js.fetch):
// record each one against the Worker request that made it, and enforce the runtime's limits.
let current = null;
const realFetch = globalThis.fetch;
globalThis.fetch = function fetch(resource, init) {
  if (current === null) {
    return Promise.reject(new Error("fetch() outside a request: the runtime refuses I/O here"));
  }
  if (current.length >= SUBREQUEST_LIMIT) {
    return Promise.reject(new Error("Too many subrequests."));
  }
  const record = {
    method: init?.method ?? "GET",
    url: String(resource?.url ?? resource),
    started: performance.now(),
    ended: null,
    status: null,
  };
  current.push(record);
  const response = realFetch(resource, init);
  response.then(
    (answer) => Object.assign(record, { ended: performance.now(), status: answer.status }),
    () => Object.assign(record, { ended: performance.now() }),
  );
  return response;
};

// The runtime's ExecutionContext, as a Python Worker sees it.  A Python awaitable handed to
// waitUntil arrives as a borrowed PyProxy, destroyed when the call returns: workerd copies it
// first and destroys the copy once settled (patchWaitUntil in
// src/pyodide/python-entrypoint-helper.ts), and so does this one.
function makeContext(pending) {
  return {
    waitUntil(work) {
      const owned = typeof work?.copy === "function" ? work.copy() : work;
      pending.push(
        (async () => {
          try {
            await owned;
          } finally {
            owned?.destroy?.();
          }
        })(),
      );
    },
    passThroughOnException() {},
  };
}

function deadline(ms, what) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(what)), ms);
  });
  return { expired, cancel: () => clearTimeout(timer) };
}

const ready = performance.now();
const lines = [];
try {
  const harness = pyodide.pyimport("harness");
  const entry = harness.load("/worker", basename(args.worker, ".py"));
  for (const body of bodies) {
    const pending = [];
    const subrequests = (current = []);
    const started = performance.now();
    const response = JSON.parse(
      await harness.fetch(entry, makeContext(pending), env, JSON.stringify(body)),
    );
    const returned = performance.now();
    const returnedEpochMs = Date.now();
    const limit = deadline(
      WAIT_UNTIL_LIMIT_MS,
      "waitUntil work still running 30 s after the response",
    );
    const outcomes = await Promise.race([Promise.allSettled(pending), limit.expired]);
    limit.cancel();
    const settled = performance.now();
    current = null;
    const failed = outcomes.find((outcome) => outcome.status === "rejected");
    if (failed) throw failed.reason;
    lines.push(
      JSON.stringify({
        ...response,
        started,
        returned,
        settled,
        returned_epoch_ms: returnedEpochMs,
        wait_until: pending.length,
        subrequests,
      }),
    );
  }
  harness.check_threads();
} catch (error) {
  // A PythonError's message is the Python traceback; anything else is a broken rule or a bug.
  const isPython = error instanceof pyodide.ffi.PythonError;
  process.stderr.write(`${isPython ? error.message : (error?.stack ?? error)}\n`);
  process.exit(1);
}
const done = performance.now();

for (const line of lines) process.stdout.write(line + "\n");
const ms = (a, b) => `${Math.round(b - a)} ms`;
process.stderr.write(
  `run_worker: pyodide ${pyodide.version} loaded in ${ms(launched, loaded)}, ` +
    `setup ${ms(loaded, ready)}, ${count} request(s) in ${ms(ready, done)}, ` +
    `${Math.round(process.uptime() * 1000)} ms since node started\n`,
);
process.exit(0);
