// The sampler in a Web Worker (copied into pkg/ by web/build.sh): the page thread stays free
// for input and painting while the model runs here.
//
// Messages in:  {type: "load", weights: Uint8Array, config: string, backend: "webgpu"|"cpu"}
//               {type: "sample", options}   (options as Sampler.sample takes them)
//               {type: "cancel"}            (stops the running sample between two steps)
// Messages out: {type: "ready", backend, numClasses, imageSize}
//               {type: "progress", step, total, preview: Uint8ClampedArray | null}
//               {type: "done", result} | {type: "cancelled"} | {type: "error", message}
import init, { Sampler } from "./web.js";

let sampler = null;
let cancelled = false;

self.onmessage = async ({ data }) => {
  try {
    if (data.type === "load") {
      await init();
      sampler = await Sampler.create(data.weights, data.config, data.backend);
      self.postMessage({ type: "ready", backend: sampler.backend, numClasses: sampler.numClasses, imageSize: sampler.imageSize });
    } else if (data.type === "sample") {
      cancelled = false;
      // Returning false from the progress callback ends the run; the sampler yields to this
      // worker's event loop between steps, so a "cancel" message is seen in time.
      const result = await sampler.sample(data.options, (step, total, preview) => {
        self.postMessage({ type: "progress", step, total, preview });
        return !cancelled;
      });
      self.postMessage({ type: "done", result });
    } else if (data.type === "cancel") {
      cancelled = true;
    }
  } catch (e) {
    const message = e.message || String(e);
    self.postMessage(message === "cancelled" ? { type: "cancelled" } : { type: "error", message });
  }
};
