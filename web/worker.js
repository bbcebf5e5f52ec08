// The sampler in a Web Worker (copied into pkg/ by web/build.sh): the page thread stays free
// for input and painting while the model runs here. Each backend is its own bundle, imported
// only when chosen: the CPU one (./web.js) is small; the WebGPU one (./webgpu/web.js) is
// fetched only where a hardware adapter exists. On a cross-origin-isolated page (trainer serve
// sends COOP/COEP) the CPU backend uses ./threads/web.js, the same CPU bundle built with
// WebAssembly threads and relaxed SIMD, on navigator.hardwareConcurrency threads; without
// isolation, or if that bundle is absent or fails to start, a single-threaded one: where the
// browser has relaxed SIMD ./relaxed/web.js, else ./web.js (baseline SIMD128: every current
// browser).
//
// Messages in:  {type: "load", weights: Uint8Array, config: string, backend: "webgpu"|"cpu"}
//               (again for another model: the bundle stays, the old model is freed)
//               {type: "sample", options, grid: {pad, scale}}  (options as Sampler.sample takes them)
//               {type: "grid", pad, scale}  (the last result drawn again at another zoom)
//               {type: "cancel"}            (stops the running sample between two steps)
// Messages out: {type: "ready", backend, threads, simd ("relaxed" or "baseline": which CPU build
//               runs; the WebGPU bundle counts as baseline), classNames (one per class), imageSize,
//               channels}
//               {type: "progress", step, total, preview: {width, height, pixels} | null}
//               {type: "done", result, grid} | {type: "grid", grid} | {type: "cancelled"}
//               {type: "error", message}
const BUNDLES = { cpu: "./web.js", webgpu: "./webgpu/web.js" };
// The CPU bundle built with relaxed SIMD, for browsers that validate it.
const RELAXED_CPU = "./relaxed/web.js";

// Whether this browser runs WebAssembly relaxed SIMD (Chrome/Edge 114+): validates a function
// made of three v128.const and one f32x4.relaxed_madd. The threads bundle is built with it
// (fused multiply-add in the convolution product), so a browser without it would fail to
// compile that bundle: it is not even downloaded there.
function relaxedSimd() {
  const v128 = [0xfd, 0x0c, ...new Array(16).fill(0)];
  const body = [0x00, ...v128, ...v128, ...v128, 0xfd, 0x85, 0x02, 0x0b];
  return WebAssembly.validate(new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0, // magic, version
    1, 5, 1, 0x60, 0, 1, 0x7b, // one type: () -> v128
    3, 2, 1, 0, // one function of that type
    10, body.length + 2, 1, body.length, ...body, // its code
  ]));
}

// The threads bundle with its pool started, or null (then the caller takes a single-threaded
// one).
async function threadsBundle() {
  const threads = navigator.hardwareConcurrency || 1;
  if (!self.crossOriginIsolated || threads < 2 || !relaxedSimd()) return null;
  try {
    const m = await import("./threads/web.js");
    await m.default();
    await m.initThreadPool(threads);
    return { m, threads, simd: "relaxed" };
  } catch {
    return null;
  }
}

// A single-threaded bundle for `backend`: for the CPU the relaxed-SIMD build where the browser
// has relaxed SIMD (falling back to the baseline one if it is absent or fails to start).
async function singleBundle(backend) {
  if (backend === "cpu" && relaxedSimd()) {
    try {
      const m = await import(RELAXED_CPU);
      await m.default();
      return { m, threads: 1, simd: "relaxed" };
    } catch {
      // The baseline bundle below.
    }
  }
  const m = await import(BUNDLES[backend]);
  await m.default();
  return { m, threads: 1, simd: "baseline" };
}

// The bundle started per backend (a bundle, and above all its thread pool, starts once).
const started = {};
let bundle = null;
let sampler = null;
let last = null;
let cancelled = false;

const grid = (r, { pad, scale }) => bundle.gridRgba(r.values, r.channels, r.width, r.cols, pad, scale);

self.onmessage = async ({ data }) => {
  try {
    if (data.type === "load") {
      const url = BUNDLES[data.backend];
      if (!url) throw new Error(`unknown backend \`${data.backend}\` (expected webgpu or cpu)`);
      if (!started[data.backend]) {
        const parallel = data.backend === "cpu" ? await threadsBundle() : null;
        started[data.backend] = parallel || await singleBundle(data.backend);
      }
      const { m, threads, simd } = started[data.backend];
      bundle = m;
      if (sampler) { sampler.free(); sampler = null; last = null; }
      sampler = await bundle.Sampler.create(data.weights, data.config, data.backend);
      self.postMessage({ type: "ready", backend: sampler.backend, threads, simd, classNames: sampler.classNames, imageSize: sampler.imageSize, channels: sampler.channels });
    } else if (data.type === "sample") {
      cancelled = false;
      // Returning false from the progress callback ends the run; the sampler yields to this
      // worker's event loop between steps, so a "cancel" message is seen in time.
      const result = await sampler.sample(data.options, (step, total, preview) => {
        self.postMessage({ type: "progress", step, total, preview });
        return !cancelled;
      });
      last = result;
      self.postMessage({ type: "done", result, grid: grid(result, data.grid) });
    } else if (data.type === "grid") {
      if (!last) throw new Error("nothing sampled yet");
      self.postMessage({ type: "grid", grid: grid(last, data) });
    } else if (data.type === "cancel") {
      cancelled = true;
    }
  } catch (e) {
    const message = e.message || String(e);
    self.postMessage(message === "cancelled" ? { type: "cancelled" } : { type: "error", message });
  }
};
