// End-to-end: `trainer serve` serves index.html, pkg/ and the weights on 127.0.0.1; headless
// Chromium opens the page, picks a class and seed, clicks Generate, and the canvas pixels must
// match the native golden sample (max |Δ| ≤ 2/255).
//
// Usage: node tests/e2e/page.test.mjs <trainer binary> [backend]
import { readFileSync } from "node:fs";
import { startServer, startStatic, launch } from "./harness.mjs";

// The backend defaults to the page's own choice ("auto"): it must not pick a software WebGPU
// adapter (SwiftShader here) over its CPU-wasm path; pass "cpu" or "webgpu" to force one.
const [trainer, backendArg = "auto"] = process.argv.slice(2);
const backend = backendArg === "auto" ? "" : backendArg;
// The golden case marked `page` in the one list (tests/golden/cases.json).
const pageCase = JSON.parse(readFileSync("tests/golden/cases.json", "utf8")).cases.find((c) => c.page);
const golden = `tests/golden/${pageCase.name}.npy`;

function npyValues(path) {
  const b = readFileSync(path);
  const hlen = b.readUInt16LE(8);
  const body = b.subarray(10 + hlen);
  return new Float32Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.length));
}
const toU8 = (v) => Math.round((Math.min(1, Math.max(-1, v)) + 1) * 127.5);

const server = await startServer(trainer);
const browser = await launch();
let failed = false;
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`[page] ${m.text()}`));
  await page.goto(`${server.addr}/${backend ? `?backend=${backend}` : ""}`);
  await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
  if (await page.evaluate(() => document.body.dataset.ready) !== "1") {
    throw new Error(`page failed to load: ${await page.textContent("#status")}`);
  }
  // The page runs the model the server serves, keyed by its content hash.
  const served = await (await fetch(`${server.addr}/v1/model`)).json();
  const used = await page.evaluate(() => document.body.dataset.model);
  if (used !== served.sha256) throw new Error(`the page loaded ${used}, the server serves ${served.sha256}`);
  if (!backend) {
    // What the browser offers: a software adapter must have sent the page to CPU-wasm, saying why.
    const adapter = await page.evaluate(async () => {
      const a = navigator.gpu && await navigator.gpu.requestAdapter();
      const i = (a && a.info) || {};
      return a ? { fallback: !!(a.isFallbackAdapter || i.isFallbackAdapter), name: `${i.vendor} ${i.architecture} ${i.device} ${i.description}` } : null;
    });
    const ready = await page.textContent("#status");
    console.log(`adapter: ${JSON.stringify(adapter)}; page: ${ready}`);
    const software = !adapter || adapter.fallback || /swiftshader|llvmpipe|lavapipe|software/i.test(adapter.name);
    if (software && !/Ready on cpu\./.test(ready)) throw new Error(`a software or missing adapter must give CPU-wasm: ${ready}`);
    if (adapter && software && !ready.includes("software")) throw new Error(`the page does not say why it chose the CPU: ${ready}`);
  }
  await page.selectOption("#class", pageCase.class === null ? "none" : String(pageCase.class));
  await page.fill("#seed", String(pageCase.seed));
  await page.selectOption("#sampler", pageCase.sampler);
  await page.setChecked("#karras", pageCase.karras_sigmas);
  await page.fill("#steps", String(pageCase.steps));
  await page.evaluate((w) => { const g = document.getElementById("guidance"); g.value = String(w); g.dispatchEvent(new Event("input")); }, pageCase.guidance);
  await page.click("#generate");
  await page.waitForFunction(() => document.body.dataset.done, null, { timeout: 900_000 });
  const statusText = await page.textContent("#status");
  console.log(statusText);
  if (await page.evaluate(() => document.body.dataset.done) !== "1") throw new Error(statusText);
  const pixels = await page.evaluate(() => {
    const c = document.getElementById("final");
    return Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data);
  });
  const expected = npyValues(golden);
  let maxDiff = 0;
  for (let i = 0; i < expected.length; i++) maxDiff = Math.max(maxDiff, Math.abs(pixels[4 * i] - toU8(expected[i])));
  console.log(`page canvas vs native golden: max |Δ| = ${maxDiff}/255 over ${expected.length} pixels`);
  if (pixels.length !== 4 * expected.length || maxDiff > 2) throw new Error(`canvas differs from the golden image (max |Δ| ${maxDiff})`);
  // The settings went into the URL, and the URL gives them back.
  const url = new URL(page.url());
  const want = { sampler: pageCase.sampler, steps: String(pageCase.steps), class: String(pageCase.class), seed: String(pageCase.seed), karras: pageCase.karras_sigmas ? "1" : "0" };
  for (const [k, v] of Object.entries(want)) {
    if (url.searchParams.get(k) !== v) throw new Error(`URL ${url.search}: ${k} should be ${v}`);
  }
  const again = await browser.newPage();
  await again.goto(url.href);
  await again.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
  const form = await again.evaluate(() => ({ sampler: document.getElementById("sampler").value, steps: document.getElementById("steps").value, class: document.getElementById("class").value, seed: document.getElementById("seed").value, karras: document.getElementById("karras").checked ? "1" : "0" }));
  if (JSON.stringify(form) !== JSON.stringify(want)) throw new Error(`the URL's settings came back as ${JSON.stringify(form)}`);
  // A long run is cancelled between steps, while the page thread stays free (sampling runs in
  // the worker).
  await again.selectOption("#sampler", "ddim");
  await again.fill("#steps", "200");
  await again.click("#generate");
  await again.waitForFunction(() => Number(document.getElementById("progress").value) >= 3, null, { timeout: 120_000 });
  const gap = await again.evaluate(() => new Promise((resolve) => {
    let last = performance.now(), max = 0, n = 0;
    const tick = () => { const t = performance.now(); max = Math.max(max, t - last); last = t; if (++n < 40) setTimeout(tick, 0); else resolve(max); };
    setTimeout(tick, 0);
  }));
  await again.click("#cancel");
  await again.waitForFunction(() => document.body.dataset.done, null, { timeout: 120_000 });
  const cancelled = await again.evaluate(() => [document.body.dataset.done, Number(document.getElementById("progress").value)]);
  console.log(`cancel: ${await again.textContent("#status")} (page thread's longest pause while sampling: ${gap.toFixed(1)} ms)`);
  if (cancelled[0] !== "cancelled" || !(cancelled[1] < 200)) throw new Error(`cancel did not stop the run: ${cancelled}`);
  // On a plain static host (no /v1/model) the page runs the shipped files.
  const files = await startStatic();
  try {
    const plain = await browser.newPage();
    await plain.goto(`${files.addr}/?backend=cpu`);
    await plain.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
    const loaded = await plain.evaluate(() => [document.body.dataset.ready, document.body.dataset.model]);
    if (loaded[0] !== "1" || loaded[1] !== "weights/mnist.safetensors") throw new Error(`static host: ${loaded} (${await plain.textContent("#status")})`);
  } finally {
    files.stop();
  }
  console.log("page test passed");
} catch (e) {
  console.error(`page test FAILED: ${e.message}`);
  failed = true;
} finally {
  await browser.close();
  server.stop();
}
process.exit(failed ? 1 : 0);
