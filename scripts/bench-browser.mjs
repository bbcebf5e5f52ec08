// Times sampling in headless Chromium (Debian's, through tests/e2e/harness.mjs): for each
// bundle directory given, a fresh page starts a module Web Worker that loads `<dir>/web.js`
// (and, for a threads bundle, starts its thread pool), creates a sampler on `--backend`
// and runs 50-step DDIM + guidance (w = 3) at each batch size, rounds interleaved across the
// bundles so drift hits them alike. Prints one line per run and the medians. Not a test.
//
// Usage: node scripts/bench-browser.mjs [--backend cpu|webgpu] [--batches 1,16] [--steps 50]
//          [--rounds 3] DIR...   (DIR: a wasm-bindgen --target web output, e.g. pkg, pkg/webgpu)
import { resolve } from "node:path";
import { launch, startStatic } from "../tests/e2e/harness.mjs";

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const [v] = args.splice(i, 2).slice(1);
  return v;
};
const backend = opt("backend", "cpu");
const batches = opt("batches", "1,16").split(",").map(Number);
const steps = Number(opt("steps", "50"));
const rounds = Number(opt("rounds", "3"));
const dirs = args.map((d) => resolve(d));
if (!dirs.length) {
  console.error("usage: node scripts/bench-browser.mjs [--backend cpu|webgpu] [--batches 1,16] [--steps 50] [--rounds 3] DIR...");
  process.exit(2);
}
const weights = resolve("weights/mnist.safetensors");
const config = resolve("weights/mnist.json");

// Cross-origin isolated, so a threads bundle (pkg/threads) can start its Web Workers.
const files = await startStatic("/", { isolated: true });
const browser = await launch();
const runs = [];
try {
  for (let round = 0; round < rounds; round++) {
    for (const dir of dirs) {
      const page = await browser.newPage();
      await page.goto(`${files.addr}/`); // any page of the server's origin (a 404 is fine)
      // In a module Web Worker, as the page samples (a threads bundle can block there; the
      // page thread may only spin).
      const r = await page.evaluate(async (params) => {
        const code = `self.onmessage = async ({ data: { dir, weights, config, backend, batches, steps } }) => {
          try {
            const t0 = performance.now();
            const m = await import(location.origin + dir + "/web.js");
            await m.default();
            const threads = m.initThreadPool ? navigator.hardwareConcurrency : 1;
            if (m.initThreadPool) await m.initThreadPool(threads);
            const w = new Uint8Array(await (await fetch(location.origin + weights)).arrayBuffer());
            const c = await (await fetch(location.origin + config)).text();
            const s = await m.Sampler.create(w, c, backend);
            const loadMs = performance.now() - t0;
            const out = [];
            for (const b of batches) {
              const r = await s.sample({ classLabel: 7, numImages: b, guidanceScale: 3, seed: 42, sampler: "ddim", steps }, null);
              out.push({ batch: b, totalMs: r.totalMs, firstStepMs: r.firstStepMs, perStepMs: r.perStepMs });
            }
            self.postMessage({ loadMs, out, threads });
          } catch (e) {
            self.postMessage({ error: String(e && e.stack || e) });
          }
        };`;
        const worker = new Worker(URL.createObjectURL(new Blob([code], { type: "text/javascript" })), { type: "module" });
        const result = await new Promise((resolve) => { worker.onmessage = ({ data }) => resolve(data); worker.onerror = (e) => resolve({ error: e.message }); worker.postMessage(params); });
        worker.terminate();
        if (result.error) throw new Error(result.error);
        return result;
      }, { dir, weights, config, backend, batches, steps });
      await page.close();
      for (const o of r.out) {
        runs.push({ dir, ...o });
        console.log(`round ${round} ${dir} ${backend} (${r.threads} thread${r.threads > 1 ? "s" : ""}) batch ${o.batch}: load ${r.loadMs.toFixed(0)} ms, total ${o.totalMs.toFixed(0)} ms, first step ${o.firstStepMs.toFixed(0)} ms, ${o.perStepMs.toFixed(1)} ms/step`);
      }
    }
  }
} finally {
  await browser.close();
  files.stop();
}
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
console.log(`\nmedians over ${rounds} rounds (${steps}-step DDIM + guidance, ${backend}):`);
for (const b of batches) {
  const base = median(runs.filter((r) => r.dir === dirs[0] && r.batch === b).map((r) => r.perStepMs));
  for (const dir of dirs) {
    const mine = runs.filter((r) => r.dir === dir && r.batch === b);
    const per = median(mine.map((r) => r.perStepMs));
    console.log(`  batch ${b} ${dir}: ${per.toFixed(1)} ms/step, total ${median(mine.map((r) => r.totalMs)).toFixed(0)} ms, first step ${median(mine.map((r) => r.firstStepMs)).toFixed(0)} ms (${(per / base).toFixed(2)}× ${dirs[0]})`);
  }
}
