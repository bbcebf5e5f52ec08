// The sampler in a Web Worker (copied into pkg/ by web/build.sh): the page thread stays free
// for input and painting while the model runs here. Each backend is its own bundle, imported
// only when chosen: the CPU one (./web.js) is small; the WebGPU one (./webgpu/web.js) is
// fetched only where a hardware adapter exists. On a cross-origin-isolated page (trainer serve
// sends COOP/COEP) the CPU backend uses ./threads/web.js, the same CPU bundle built with
// WebAssembly threads, on navigator.hardwareConcurrency threads; without isolation, or if
// that bundle is absent or fails to start, the single-threaded one.
//
// Messages in:  {type: "load", weights: Uint8Array, config: string, backend: "webgpu"|"cpu"}
//               (again for another model: the bundle stays, the old model is freed)
//               {type: "sample", options, grid: {pad, scale}}  (options as Sampler.sample takes them)
//               {type: "grid", pad, scale}  (the last result drawn again at another zoom)
//               {type: "cancel"}            (stops the running sample between two steps)
// Messages out: {type: "ready", backend, threads, classNames (one per class), imageSize}
//               {type: "progress", step, total, preview: {width, height, pixels} | null}
//               {type: "done", result, grid} | {type: "grid", grid} | {type: "cancelled"}
//               {type: "error", message}
const BUNDLES = { cpu: "./web.js", webgpu: "./webgpu/web.js" };

// The threads bundle with its pool started, or null (then the caller takes BUNDLES.cpu).
async function threadsBundle() {
  const threads = navigator.hardwareConcurrency || 1;
  if (!self.crossOriginIsolated || threads < 2) return null;
  try {
    const m = await import("./threads/web.js");
    await m.default();
    await m.initThreadPool(threads);
    return { m, threads };
  } catch {
    return null;
  }
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
        if (parallel) {
          started[data.backend] = parallel;
        } else {
          const m = await import(url);
          await m.default();
          started[data.backend] = { m, threads: 1 };
        }
      }
      const { m, threads } = started[data.backend];
      bundle = m;
      if (sampler) { sampler.free(); sampler = null; last = null; }
      sampler = await bundle.Sampler.create(data.weights, data.config, data.backend);
      self.postMessage({ type: "ready", backend: sampler.backend, threads, classNames: sampler.classNames, imageSize: sampler.imageSize });
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
