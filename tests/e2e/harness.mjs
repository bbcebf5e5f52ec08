// Shared by the browser tests: start `trainer serve` on a free port of 127.0.0.1, and launch
// Debian's headless Chromium (no browser download) with WebGPU on SwiftShader and the network
// kept quiet.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

export async function startServer(trainer) {
  const proc = spawn(trainer, ["serve", "--weights", "weights/mnist.safetensors", "--addr", "127.0.0.1:0", "--timeout", "1800"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  const addr = await new Promise((resolve, reject) => {
    const rl = createInterface({ input: proc.stderr });
    rl.on("line", (l) => { const m = l.match(/listening on (http:\/\/\S+)/); if (m) resolve(m[1]); });
    proc.on("exit", (c) => reject(new Error(`trainer serve exited with ${c}`)));
    setTimeout(() => reject(new Error("trainer serve did not start in 60 s")), 60_000);
  });
  return { addr, stop: () => proc.kill("SIGTERM") };
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
