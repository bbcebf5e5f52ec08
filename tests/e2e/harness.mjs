// Shared by the browser tests: start `trainer serve` on a free port of 127.0.0.1, and launch
// Debian's headless Chromium (no browser download) with WebGPU on SwiftShader and the network
// kept quiet.
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { extname, join, normalize } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

// `trainer serve --weights <weights>` on `addr` (a free port by default). `stop()` resolves once
// the process has exited (its port is free again).
export async function startServer(trainer, { weights = "weights/mnist.safetensors", addr: listen = "127.0.0.1:0" } = {}) {
  const proc = spawn(trainer, ["serve", "--weights", weights, "--addr", listen, "--timeout", "1800"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  const exited = new Promise((resolve) => proc.on("exit", resolve));
  const addr = await new Promise((resolve, reject) => {
    const rl = createInterface({ input: proc.stderr });
    rl.on("line", (l) => { const m = l.match(/listening on (http:\/\/\S+)/); if (m) resolve(m[1]); });
    proc.on("exit", (c) => reject(new Error(`trainer serve exited with ${c}`)));
    setTimeout(() => reject(new Error("trainer serve did not start in 60 s")), 60_000);
  });
  return { addr, stop: () => { proc.kill("SIGTERM"); return exited; } };
}

// A plain static file server of the repository root on 127.0.0.1 (no /v1 API): what a user gets
// from copying index.html, pkg/ and weights/ to any static host.
// With `isolated`, every answer carries COOP/COEP, so the page is cross-origin isolated
// (SharedArrayBuffer, WebAssembly threads), as `trainer serve` serves it.
export async function startStatic(root = ".", { isolated = false } = {}) {
  const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json" };
  const isolation = isolated ? { "cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp" } : {};
  const server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname)).replace(/^(\.\.[/\\])+/, "");
    try {
      const file = path === "/" ? "index.html" : path;
      const body = await readFile(join(root, file));
      res.writeHead(200, { "content-type": types[extname(file)] || "application/octet-stream", ...isolation });
      res.end(body);
    } catch {
      res.writeHead(404, isolation);
      res.end("not found");
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { addr: `http://127.0.0.1:${server.address().port}`, stop: () => server.close() };
}

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    timeout: 120_000,
    args: ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking",
      "--disable-component-update", "--disable-quic", "--disable-dev-shm-usage", "--no-first-run",
      "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost"],
  });
}
