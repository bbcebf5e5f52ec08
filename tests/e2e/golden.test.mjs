// Browser vs native, in headless Chromium: the wasm bundles (pkg/web.js for the CPU, flex
// compiled to wasm; pkg/webgpu/web.js for WebGPU, SwiftShader here) sample the shipped weights
// for every golden case (a batch each: classes, count, guidance, seed, sampler) and must match the native golden samples made by
// tests/make-golden.sh within max |Δ| ≤ 2/255 per pixel; ᾱ and the DDIM timesteps computed in
// the browser must equal the native ones exactly. Prints timings for the README/notes.
//
// Usage: node tests/e2e/golden.test.mjs <trainer binary> [backends, default "cpu,webgpu"]
import { readFileSync } from "node:fs";
import { startServer, launch } from "./harness.mjs";

const [trainer, backendList = "cpu,webgpu"] = process.argv.slice(2);
const backends = backendList.split(",");

function npyValues(path) {
  const b = readFileSync(path);
  const hlen = b.readUInt16LE(8);
  const body = b.subarray(10 + hlen);
  return Array.from(new Float32Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.length)));
}
const toU8 = (v) => Math.round((Math.min(1, Math.max(-1, v)) + 1) * 127.5);

// The one list of golden cases (also read by tests/make-golden.sh and web/build.rs), and the
// weights they are sampled from (served from their folder: /weights/<file>).
const list = JSON.parse(readFileSync("tests/golden/cases.json", "utf8"));
const weightsFile = list.weights.split("/").pop();
const cases = list.cases.map((c) => ({
  classLabel: c.class, numImages: c.num, guidanceScale: c.guidance, seed: c.seed, sampler: c.sampler, karrasSigmas: c.karras_sigmas, steps: c.steps, backends: c.backends,
  file: `${c.name}.npy`, golden: npyValues(`tests/golden/${c.name}.npy`),
}));
const casesFor = (backend) => cases.filter((c) => c.backends.includes(backend));
const nativeAlphas = readFileSync("tests/golden/schedule-linear-1000.csv", "utf8")
  .trim().split("\n").slice(1).map((l) => Number(l.split(",")[3]));

const server = await startServer(trainer, { weights: list.weights });
const browser = await launch();
let failures = 0;
const fail = (msg) => { console.error(`FAIL: ${msg}`); failures++; };
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`[page] ${m.text()}`));
  await page.goto(`${server.addr}/healthz`);
  for (const backend of backends) {
    const result = await page.evaluate(async ({ backend, weightsFile, cases }) => {
      const m = await import(backend === "webgpu" ? "/pkg/webgpu/web.js" : "/pkg/web.js");
      await m.default();
      const weights = new Uint8Array(await (await fetch(`/weights/${weightsFile}`)).arrayBuffer());
      const config = await (await fetch(`/weights/${weightsFile.replace(/\.safetensors$/, ".json")}`)).text();
      const t0 = performance.now();
      const s = await m.Sampler.create(weights, config, backend);
      const createMs = performance.now() - t0;
      const out = [];
      for (const c of cases) {
        const r = await s.sample({ classLabel: c.classLabel, numImages: c.numImages, guidanceScale: c.guidanceScale, seed: c.seed, sampler: c.sampler, karrasSigmas: c.karrasSigmas, steps: c.steps }, null);
        out.push({ values: Array.from(r.values), pixels: Array.from(r.pixels), totalMs: r.totalMs, firstStepMs: r.firstStepMs, perStepMs: r.perStepMs });
      }
      return { backend: s.backend, createMs, out, alphas: s.alphasCumprod(), ts5: Array.from(s.timesteps("ddim", 5)), ts50: Array.from(s.timesteps("ddim", 50)), dpm10: Array.from(s.timesteps("dpmsolver++", 10)) };
    }, { backend, weightsFile, cases: casesFor(backend).map(({ golden, ...c }) => c) });
    console.log(`${backend}: model created in ${result.createMs.toFixed(0)} ms`);
    casesFor(backend).forEach((c, i) => {
      const r = result.out[i];
      let maxPx = 0, maxVal = 0;
      c.golden.forEach((g, j) => {
        maxPx = Math.max(maxPx, Math.abs(r.pixels[4 * j] - toU8(g)));
        maxVal = Math.max(maxVal, Math.abs(r.values[j] - g));
      });
      console.log(`${backend} class ${c.classLabel} × ${c.numImages} w ${c.guidanceScale} seed ${c.seed} ${c.sampler}${c.karrasSigmas ? " karras" : ""} steps ${c.steps}: ` +
        `max |Δpixel| ${maxPx}/255, max |Δvalue| ${maxVal.toExponential(2)}; ` +
        `total ${r.totalMs.toFixed(0)} ms, first step ${r.firstStepMs.toFixed(0)} ms, ${r.perStepMs.toFixed(1)} ms/step`);
      if (r.values.length !== c.golden.length || maxPx > 2) fail(`${backend} case ${c.file}: max pixel difference ${maxPx}`);
    });
    const badT = nativeAlphas.findIndex((a, t) => a !== result.alphas[t]);
    if (result.alphas.length !== 1000 || badT >= 0) fail(`${backend}: ᾱ differs from native at t = ${badT}`);
    if (JSON.stringify(result.ts5) !== JSON.stringify([800, 600, 400, 200, 0])) fail(`timesteps(5) = ${result.ts5}`);
    const expect50 = Array.from({ length: 50 }, (_, i) => 980 - 20 * i);
    if (JSON.stringify(result.ts50) !== JSON.stringify(expect50)) fail(`timesteps(50) = ${result.ts50}`);
    // DPM-Solver++'s own linspace rule: round(linspace(0, 999, 11))[::-1][:-1].
    const expectDpm = [999, 899, 799, 699, 599, 500, 400, 300, 200, 100];
    if (JSON.stringify(result.dpm10) !== JSON.stringify(expectDpm)) fail(`dpmsolver++ timesteps(10) = ${result.dpm10}`);
  }
} catch (e) {
  fail(e.message);
} finally {
  await browser.close();
  server.stop();
}
console.log(failures ? `golden test: ${failures} failure(s)` : "golden test passed");
process.exit(failures ? 1 : 0);
