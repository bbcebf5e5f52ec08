// End-to-end: `trainer serve` serves index.html, pkg/ and the weights on 127.0.0.1; headless
// Chromium opens the page, sets the golden `page` case (a 16-image grid), clicks Generate, and
// the canvas must be that batch laid out as `trainer sample` lays out grids (max |Δ| ≤ 2/255);
// then: another zoom, the PNG download, the URL round trip, Cancel, drawing and the three edits
// (make a drawing real, vary an image, erase and fill) against `trainer sample` on the same
// inputs, a plain static host, and a retrained model (new content hash) that must replace the
// cached weights.
//
// Usage: [PAGE_SCREENSHOT=out.png] node tests/e2e/page.test.mjs <trainer binary> [backend]
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync as mkdtemp, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { startServer, startStatic, launch } from "./harness.mjs";

// The backend defaults to the page's own choice ("auto"): it must not pick a software WebGPU
// adapter (SwiftShader here) over its CPU-wasm path; pass "cpu" or "webgpu" to force one.
const [trainer, backendArg = "auto"] = process.argv.slice(2);
const backend = backendArg === "auto" ? "" : backendArg;
// The golden case marked `page` in the one list (tests/golden/cases.json), and the weights the
// goldens are sampled from: the shipped file the page loads (the f16 one), which the server
// serves here.
const list = JSON.parse(readFileSync("tests/golden/cases.json", "utf8"));
const pageCase = list.cases.find((c) => c.page);
const goldenWeights = list.weights;
const goldenConfig = goldenWeights.replace(/\.safetensors$/, ".json");
const shippedName = goldenWeights.split("/").pop().replace(/\.safetensors$/, "");
const golden = `tests/golden/${pageCase.name}.npy`;

function npyValues(path) {
  const b = readFileSync(path);
  const hlen = b.readUInt16LE(8);
  const body = b.subarray(10 + hlen);
  return new Float32Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.length));
}
const toU8 = (v) => Math.round((Math.min(1, Math.max(-1, v)) + 1) * 127.5);

// The grid `trainer sample --scale <zoom> --pad 2` writes for a batch of 28×28 images, in grey
// levels: `cols` columns, 2 grey (96) pixels between and around the cells.
function expectedGrid(values, cols, zoom, pad = 2, size = 28) {
  const n = values.length / (size * size);
  const cell = size * zoom;
  const width = cols * (cell + pad) + pad, height = Math.ceil(n / cols) * (cell + pad) + pad;
  const grey = new Uint8Array(width * height).fill(96);
  for (let k = 0; k < n; k++) {
    const x0 = pad + (k % cols) * (cell + pad), y0 = pad + Math.floor(k / cols) * (cell + pad);
    for (let y = 0; y < cell; y++) {
      for (let x = 0; x < cell; x++) {
        grey[(y0 + y) * width + x0 + x] = toU8(values[k * size * size + Math.floor(y / zoom) * size + Math.floor(x / zoom)]);
      }
    }
  }
  return { width, height, grey };
}

// Max |Δ| between the page's final canvas and the expected grid (Infinity if the sizes differ).
async function canvasDiff(page, values, cols, zoom) {
  const want = expectedGrid(values, cols, zoom);
  const got = await page.evaluate(() => {
    const c = document.getElementById("final");
    return { width: c.width, height: c.height, rgba: Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data) };
  });
  if (got.width !== want.width || got.height !== want.height) {
    console.log(`canvas ${got.width}×${got.height}, expected ${want.width}×${want.height}`);
    return Infinity;
  }
  let max = 0;
  want.grey.forEach((g, i) => { for (let ch = 0; ch < 3; ch++) max = Math.max(max, Math.abs(got.rgba[4 * i + ch] - g)); });
  return max;
}

// Scratch directories, removed when the test ends.
const scratch = [];
const mkdtempSync = (prefix) => { const d = mkdtemp(prefix); scratch.push(d); return d; };

// `trainer sample` on the served weights with `args` → its values (`--npy`).
function nativeSample(args) {
  const dir = mkdtempSync(join(tmpdir(), "rust-ddpm-edit-"));
  const npy = join(dir, "out.npy");
  execFileSync(trainer, ["sample", "--weights", goldenWeights, ...args, "--npy", npy, "--out", join(dir, "out.png")], { stdio: ["ignore", "ignore", "pipe"] });
  return npyValues(npy);
}

// Saves what clicking `button` downloads; returns the file's path.
async function downloaded(page, button, name) {
  const [d] = await Promise.all([page.waitForEvent("download"), page.click(button)]);
  const path = join(mkdtempSync(join(tmpdir(), "rust-ddpm-edit-")), name);
  copyFileSync(await d.path(), path);
  return path;
}

// Dispatches one stroke of pointer events of `type` ("pen", "touch") through model-pixel points.
async function stroke(page, type, points) {
  await page.evaluate(([type, points]) => {
    const c = document.getElementById("sketch");
    const r = c.getBoundingClientRect();
    const at = ([x, y]) => ({ clientX: r.left + (x / c.width) * r.width, clientY: r.top + (y / c.height) * r.height });
    const fire = (name, p) => c.dispatchEvent(new PointerEvent(name, { ...at(p), pointerId: 7, pointerType: type, isPrimary: true, button: 0, buttons: 1, bubbles: true, pressure: 0.5 }));
    fire("pointerdown", points[0]);
    for (const p of points.slice(1)) fire("pointermove", p);
    fire("pointerup", points[points.length - 1]);
  }, [type, points]);
}

// The drawing's pixels (grey levels) and how many are masked.
const sketchState = (page) => page.evaluate(() => {
  const c = document.getElementById("sketch");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const grey = [], red = [];
  for (let i = 0; i < d.length; i += 4) { grey.push(d[i + 1]); red.push(d[i] !== d[i + 1]); }
  return { grey, masked: red.filter(Boolean).length };
});

async function editTests(browser, addr) {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`[edit] ${m.text()}`));
  const seed = 11, num = 2;
  await page.goto(`${addr}/?${backend ? `backend=${backend}&` : ""}class=none&num=${num}&seed=${seed}&sampler=ddim&steps=20&eta=0&zoom=3`);
  await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
  const zoom = 3, cols = num;
  const run = async (button) => {
    await page.evaluate(() => { document.body.dataset.done = ""; });
    await page.click(button);
    await page.waitForFunction(() => document.body.dataset.done, null, { timeout: 600_000 });
    const text = await page.textContent("#status");
    if (await page.evaluate(() => document.body.dataset.done) !== "1") throw new Error(`${button}: ${text}`);
    return text;
  };
  // A mouse stroke: the stem of a 1, down the middle column.
  const box = await page.locator("#sketch").boundingBox();
  const at = (x, y) => [box.x + (x / 28) * box.width, box.y + (y / 28) * box.height];
  await page.mouse.move(...at(14, 5));
  await page.mouse.down();
  for (let y = 6; y <= 23; y += 2) await page.mouse.move(...at(14, y));
  await page.mouse.up();
  // A pen stroke: its flag, up and to the left.
  await stroke(page, "pen", [[14, 6], [12, 8], [10, 10]]);
  const drawn = await sketchState(page);
  const lit = drawn.grey.filter((g) => g === 255).length;
  const stem = [6, 10, 14, 18, 22].every((y) => drawn.grey[y * 28 + 14] === 255);
  console.log(`drawing: ${lit} white pixels after a mouse and a pen stroke`);
  if (!stem || !(lit > 30 && lit < 200) || drawn.grey[10 * 28 + 10] !== 255) throw new Error(`the strokes did not draw as expected (${lit} white pixels)`);
  // A touch stroke, then Undo: the drawing is as before.
  await stroke(page, "touch", [[3, 25], [25, 25]]);
  if ((await sketchState(page)).grey.filter((g) => g === 255).length <= lit) throw new Error("the touch stroke drew nothing");
  await page.click("#undo");
  if (JSON.stringify((await sketchState(page)).grey) !== JSON.stringify(drawn.grey)) throw new Error("Undo did not restore the drawing");
  // Make it real (SDEdit from the drawing, no class) against trainer sample --init-image.
  await page.evaluate(() => { const s = document.getElementById("strength"); s.value = "0.6"; s.dispatchEvent(new Event("input")); });
  console.log(`make it real: ${await run("#real")}`);
  const drawing = await downloaded(page, "#downloadSketch", "drawing.png");
  const common = ["--class", "none", "--num", String(num), "--seed", String(seed)];
  const real = nativeSample(["--init-image", drawing, "--strength", "0.6", ...common, "--sampler", "ddim", "--steps", "20", "--eta", "0"]);
  const realDiff = await canvasDiff(page, real, cols, zoom);
  console.log(`make it real vs trainer sample --init-image: max |Δ| = ${realDiff}/255`);
  if (realDiff > 2) throw new Error(`"Make it real" differs from the CLI (max |Δ| ${realDiff})`);
  // Vary: pick the second image of the grid, vary it; the CLI varies the same pixels (the page
  // puts the picked image into the drawing, whose PNG it downloads).
  const cell = 28 * zoom + 2;
  await page.locator("#final").click({ position: { x: 2 + cell + 40, y: 2 + 40 } });
  if (await page.evaluate(() => document.body.dataset.selected) !== "1") throw new Error("a click on the second image did not select it");
  console.log(`vary: ${await run("#vary")}`);
  await page.click("#toSketch");
  const picked = await downloaded(page, "#downloadSketch", "picked.png");
  const vary = nativeSample(["--init-image", picked, "--strength", "0.6", ...common, "--sampler", "ddim", "--steps", "20", "--eta", "0"]);
  const varyDiff = await canvasDiff(page, vary, cols, zoom);
  console.log(`vary vs trainer sample --init-image: max |Δ| = ${varyDiff}/255`);
  if (varyDiff > 2) throw new Error(`"Vary" differs from the CLI (max |Δ| ${varyDiff})`);
  // Erase and fill: the picked image is in the drawing and the mask tool is chosen; touch
  // strokes mask the lower half; RePaint fills it, against trainer sample --mask.
  if (await page.inputValue("#tool") !== "mask") throw new Error("Erase and fill did not pick the mask tool");
  await page.evaluate(() => { const b = document.getElementById("brush"); b.value = "8"; b.dispatchEvent(new Event("input")); });
  for (const y of [16, 20, 24, 27]) await stroke(page, "touch", [[0, y], [27, y]]);
  const { masked } = await sketchState(page);
  if (!(masked > 200 && masked < 500)) throw new Error(`the mask covers ${masked} pixels, not about the lower half`);
  for (const [id, v] of [["fillSteps", "20"], ["jumpLength", "5"], ["jumpNSample", "2"]]) await page.fill(`#${id}`, v);
  console.log(`fill: ${await run("#fill")}`);
  const mask = await downloaded(page, "#downloadMask", "mask.png");
  const fill = nativeSample(["--init-image", picked, "--mask", mask, ...common, "--steps", "20", "--eta", "0", "--jump-length", "5", "--jump-n-sample", "2"]);
  const fillDiff = await canvasDiff(page, fill, cols, zoom);
  console.log(`fill vs trainer sample --mask: max |Δ| = ${fillDiff}/255 (${masked} pixels masked)`);
  if (fillDiff > 2) throw new Error(`"Fill the mask" differs from the CLI (max |Δ| ${fillDiff})`);
  await page.close();
}

let server = await startServer(trainer, { weights: goldenWeights });
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
  // trainer serve sends COOP/COEP: an isolated page runs the threads bundle (when built) on
  // every core.
  const [threads, cores] = await page.evaluate(() => [Number(document.body.dataset.threads), navigator.hardwareConcurrency]);
  const threadsBuilt = existsSync("pkg/threads/web.js");
  console.log(`page: ${threads} thread(s), ${cores} core(s), threads bundle ${threadsBuilt ? "built" : "not built"}`);
  if (!backend && threadsBuilt && cores > 1 && threads !== cores) throw new Error(`the isolated page runs ${threads} thread(s), not ${cores}`);
  // Chromium has relaxed SIMD: the CPU bundle with fused multiply-add runs (and the golden
  // comparison below checks its pixels).
  const simd = await page.evaluate(() => document.body.dataset.simd);
  const relaxedBuilt = threadsBuilt || existsSync("pkg/relaxed/web.js");
  if (!backend && relaxedBuilt && simd !== "relaxed") throw new Error(`Chromium runs the ${simd} SIMD build, not the relaxed one`);
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
    if (software && !/Ready on cpu( \([^)]*\))?:/.test(ready)) throw new Error(`a software or missing adapter must give CPU-wasm: ${ready}`);
    if (adapter && software && !ready.includes("software")) throw new Error(`the page does not say why it chose the CPU: ${ready}`);
  }
  await page.selectOption("#class", pageCase.class === null ? "none" : String(pageCase.class));
  await page.fill("#num", String(pageCase.num));
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
  // One row per class for "all", else at most 8 columns (trainer sample's layout).
  const expected = npyValues(golden);
  const cols = pageCase.class === "all" ? pageCase.num : Math.min(pageCase.num, 8);
  const zoom = Number(await page.inputValue("#zoom"));
  const maxDiff = await canvasDiff(page, expected, cols, zoom);
  console.log(`page canvas (${expected.length / 784} images, zoom ${zoom}) vs native golden: max |Δ| = ${maxDiff}/255`);
  if (maxDiff > 2) throw new Error(`canvas differs from the golden grid (max |Δ| ${maxDiff})`);
  // PAGE_SCREENSHOT=docs/page.png (scripts/screenshot-page.sh): the README's picture of the page after this run.
  if (process.env.PAGE_SCREENSHOT) await page.screenshot({ path: process.env.PAGE_SCREENSHOT, fullPage: true });
  // Another zoom redraws the same grid without sampling again.
  await page.evaluate(() => { document.body.dataset.done = ""; });
  await page.selectOption("#zoom", "2");
  await page.waitForFunction(() => document.getElementById("final").width === 8 * (56 + 2) + 2, null, { timeout: 60_000 });
  const zoomDiff = await canvasDiff(page, expected, cols, 2);
  if (zoomDiff > 2) throw new Error(`the zoom-2 grid differs from the golden grid (max |Δ| ${zoomDiff})`);
  // "Download PNG" saves the canvas: a PNG of the grid's size.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  const png = readFileSync(await download.path());
  const [pw, ph] = [png.readUInt32BE(16), png.readUInt32BE(20)];
  console.log(`download: ${download.suggestedFilename()} (${pw}×${ph}, ${png.length} bytes)`);
  if (png.toString("latin1", 1, 4) !== "PNG" || pw !== 8 * (56 + 2) + 2 || ph !== 2 * (56 + 2) + 2 || !download.suggestedFilename().endsWith(".png")) {
    throw new Error(`the download is not the grid's PNG (${download.suggestedFilename()}, ${pw}×${ph})`);
  }
  // The settings went into the URL, and the URL gives them back.
  const url = new URL(page.url());
  const want = { sampler: pageCase.sampler, steps: String(pageCase.steps), class: pageCase.class === null ? "none" : String(pageCase.class), num: String(pageCase.num), seed: String(pageCase.seed), karras: pageCase.karras_sigmas ? "1" : "0", zoom: "2" };
  for (const [k, v] of Object.entries(want)) {
    if (url.searchParams.get(k) !== v) throw new Error(`URL ${url.search}: ${k} should be ${v}`);
  }
  const again = await browser.newPage();
  await again.goto(url.href);
  await again.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
  const form = await again.evaluate(() => {
    const v = (id) => document.getElementById(id).value;
    return { sampler: v("sampler"), steps: v("steps"), class: v("class"), num: v("num"), seed: v("seed"), karras: document.getElementById("karras").checked ? "1" : "0", zoom: v("zoom") };
  });
  if (JSON.stringify(form) !== JSON.stringify(want)) throw new Error(`the URL's settings came back as ${JSON.stringify(form)}`);
  // A long run is cancelled between steps, while the page thread stays free (sampling runs in
  // the worker).
  await again.selectOption("#sampler", "ddim");
  await again.fill("#num", "1");
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
  // Sampling runs in the worker: the page thread never stalls for a step (≈ 40–600 ms here).
  if (!(gap < 250)) throw new Error(`the page thread paused ${gap.toFixed(0)} ms while sampling`);
  // Draw, vary, erase and fill: strokes of synthetic pointer events (mouse, pen, touch) on the
  // drawing, each edit run in the page, and the same edit run natively by `trainer sample` on
  // the PNGs the page downloads (its drawing, its mask): the grids must agree (≤ 2/255).
  await editTests(browser, server.addr);
  // "One of each class" and a select value the page lacks, from the URL.
  const all = await browser.newPage();
  await all.goto(`${server.addr}/?backend=cpu&class=all&num=2&zoom=5&sampler=nope`);
  await all.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
  const allForm = await all.evaluate(() => ["class", "num", "zoom", "sampler"].map((id) => document.getElementById(id).value));
  if (JSON.stringify(allForm) !== JSON.stringify(["all", "2", "3", "sde-dpmsolver++"])) throw new Error(`?class=all&num=2&zoom=5&sampler=nope gave ${allForm}`);
  await all.close();
  // On a plain static host (no /v1/model) the page runs the shipped files (the f16 copy where
  // there is one), and its model picker offers every shipped model found: here MNIST and a
  // second model whose config names its classes and that has no f16 copy (the MNIST weights
  // under the Fashion-MNIST name and class names, so this test does not depend on which
  // weights are shipped).
  const root = mkdtempSync(join(tmpdir(), "rust-ddpm-static-"));
  for (const f of ["index.html", "pkg"]) symlinkSync(resolve(f), join(root, f));
  mkdirSync(join(root, "weights"));
  for (const f of ["mnist.safetensors", "mnist.json", "mnist.fp16.safetensors", "mnist.fp16.json"]) symlinkSync(resolve("weights", f), join(root, "weights", f));
  symlinkSync(resolve("weights/mnist.safetensors"), join(root, "weights/fashion-mnist.safetensors"));
  const clothes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];
  const named = { ...JSON.parse(readFileSync("weights/mnist.json", "utf8")), class_names: clothes };
  writeFileSync(join(root, "weights/fashion-mnist.json"), JSON.stringify(named));
  const files = await startStatic(root);
  const ready = (p) => p.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
  try {
    const plain = await browser.newPage();
    await plain.goto(`${files.addr}/?backend=cpu`);
    await ready(plain);
    const loaded = await plain.evaluate(() => [document.body.dataset.ready, document.body.dataset.model, document.body.dataset.threads]);
    if (loaded[0] !== "1" || loaded[1] !== "weights/mnist.fp16.safetensors") throw new Error(`static host: ${loaded} (${await plain.textContent("#status")})`);
    // Not cross-origin isolated: the single-threaded bundle.
    if (loaded[2] !== "1") throw new Error(`static host without COOP/COEP runs ${loaded[2]} threads`);
    // …with relaxed SIMD where the browser has it (Chromium does).
    const simd = await plain.evaluate(() => document.body.dataset.simd);
    if (existsSync("pkg/relaxed/web.js") && simd !== "relaxed") throw new Error(`static host runs the ${simd} SIMD build, not the relaxed one`);
    const options = (id) => plain.evaluate((id) => [...document.getElementById(id).options].map((o) => o.value), id);
    if (JSON.stringify(await options("model")) !== JSON.stringify(["mnist", "fashion-mnist"])) throw new Error(`model picker: ${await options("model")}`);
    // Pick the other model: it loads, its classes are listed by name, a sample runs, and the
    // URL keeps the choice.
    await plain.selectOption("#class", "3");
    await plain.selectOption("#model", "fashion-mnist");
    await plain.waitForFunction(() => document.body.dataset.ready === "1" && document.body.dataset.model === "weights/fashion-mnist.safetensors", null, { timeout: 300_000 });
    const texts = await plain.evaluate(() => [...document.getElementById("class").options].map((o) => o.textContent));
    if (texts[2] !== "1: Trouser" || texts[10] !== "9: Ankle boot" || texts.length !== 12) throw new Error(`classes of the picked model: ${texts}`);
    if (await plain.inputValue("#class") !== "3") throw new Error(`the picked class was not kept: ${await plain.inputValue("#class")}`);
    if (!plain.url().includes("model=fashion-mnist")) throw new Error(`the URL lacks the model: ${plain.url()}`);
    await plain.fill("#num", "1");
    await plain.fill("#steps", "2");
    await plain.click("#generate");
    await plain.waitForFunction(() => document.body.dataset.done, null, { timeout: 300_000 });
    if (await plain.evaluate(() => document.body.dataset.done) !== "1") throw new Error(`sampling the picked model: ${await plain.textContent("#status")}`);
    // A link to it opens it.
    const linked = await browser.newPage();
    await linked.goto(`${files.addr}/?backend=cpu&model=fashion-mnist&class=9`);
    await ready(linked);
    const form = await linked.evaluate(() => [document.body.dataset.model, document.getElementById("class").selectedOptions[0].textContent]);
    if (JSON.stringify(form) !== JSON.stringify(["weights/fashion-mnist.safetensors", "9: Ankle boot"])) throw new Error(`?model=fashion-mnist&class=9 gave ${form}`);
    console.log(`static host: models ${await options("model")}, picked fashion-mnist: ${await plain.textContent("#status")}`);
    await plain.close();
    await linked.close();
  } finally {
    files.stop();
  }
  // A retrained model under the same URL: the server's content hash changes, so the page must
  // fetch the new weights and drop the cached old ones. Same port = same origin = same cache.
  const dir = mkdtempSync(join(tmpdir(), "rust-ddpm-page-"));
  const retrained = readFileSync(goldenWeights);
  const dataStart = 8 + Number(retrained.readBigUInt64LE(0));
  retrained[dataStart] ^= 1; // the lowest mantissa bit of the first weight
  writeFileSync(join(dir, `${shippedName}.safetensors`), retrained);
  copyFileSync(goldenConfig, join(dir, `${shippedName}.json`));
  const oldHash = served.sha256;
  const { port } = new URL(server.addr);
  await server.stop();
  server = await startServer(trainer, { weights: join(dir, `${shippedName}.safetensors`), addr: `127.0.0.1:${port}` });
  const fresh = await (await fetch(`${server.addr}/v1/model`)).json();
  if (fresh.sha256 === oldHash) throw new Error("the retrained weights kept the old hash");
  await page.goto(`${server.addr}/?backend=cpu`);
  await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
  const cached = await page.evaluate(async () => {
    const cache = await caches.open("rust-ddpm-weights-v1");
    const entries = [];
    for (const req of await cache.keys()) {
      const body = await (await cache.match(req)).arrayBuffer();
      const digest = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", body)), (b) => b.toString(16).padStart(2, "0")).join("");
      entries.push({ url: req.url, digest });
    }
    return { model: document.body.dataset.model, entries };
  });
  const wantDigest = createHash("sha256").update(retrained).digest("hex");
  console.log(`retrained model: page runs ${cached.model.slice(0, 12)}…, cache ${JSON.stringify(cached.entries.map((e) => [new URL(e.url).search.slice(0, 20), e.digest.slice(0, 12)]))}`);
  if (cached.model !== fresh.sha256) throw new Error(`after the model changed the page runs ${cached.model}, the server serves ${fresh.sha256}`);
  if (cached.entries.length !== 1 || cached.entries[0].digest !== wantDigest || !cached.entries[0].url.includes(fresh.sha256)) {
    throw new Error(`the weight cache should hold the retrained weights only: ${JSON.stringify(cached.entries)}`);
  }
  console.log("page test passed");
} catch (e) {
  console.error(`page test FAILED: ${e.message}`);
  failed = true;
} finally {
  await browser.close();
  server.stop();
  for (const d of scratch) rmSync(d, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
