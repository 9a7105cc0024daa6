// The page side of check.mjs: runs a cases file's greedy prompts on onnxruntime-web's WebGPU EP.
import * as ort from '../node_modules/onnxruntime-web/dist/ort.webgpu.min.mjs';
import { Decoder, openBundle } from '../phi4edge.js';

ort.env.wasm.wasmPaths = new URL('../node_modules/onnxruntime-web/dist/', import.meta.url).href;
ort.env.logLevel = 'error';
const OPTIONS = { executionProviders: ['webgpu'], logSeverityLevel: 3 };
// node placement is logged at verbose severity when a session is created (check.mjs reads it); a
// verbose session also logs every kernel it runs, so it is made once for that and released
const VERBOSE = { ...OPTIONS, logSeverityLevel: 0 };

const TYPED = { float32: Float32Array, int64: BigInt64Array };

async function tensor(base, spec) {
  const bytes = await (await fetch(base + spec.file)).arrayBuffer();
  return new ort.Tensor(spec.dtype, new TYPED[spec.dtype](bytes), spec.dims);
}

async function adapterInfo() {
  const adapter = await navigator.gpu?.requestAdapter();
  if (!adapter) throw new Error('navigator.gpu offers no WebGPU adapter');
  const { vendor, architecture, device, description, subgroupMinSize, subgroupMaxSize } = adapter.info;
  return { vendor, architecture, device, description, subgroupMinSize, subgroupMaxSize };
}

window.runCases = async (casesUrl) => {
  const spec = await (await fetch(casesUrl)).json();
  const base = new URL('.', casesUrl).href;
  const results = { adapter: await adapterInfo(), cases: [] };
  for (const [bundleName, dir] of Object.entries(spec.bundles)) {
    const bundle = await openBundle(new URL(dir, base).href);
    console.log(`@@session ${bundleName} decoder`);
    await (await bundle.session(ort, 'decoder', VERBOSE)).release();
    const decoder = await Decoder.load(ort, bundle, OPTIONS);
    const encoders = {};
    for (const c of spec.cases.filter((x) => x.bundle === bundleName)) {
      const t0 = performance.now();
      let tokens, error = null;
      try {
        const media = {};
        if (c.encoder) {
          const { graph, inputs, output, feed } = c.encoder;
          if (!encoders[graph]) {
            console.log(`@@session ${bundleName} ${graph}`);
            encoders[graph] = await bundle.session(ort, graph, OPTIONS);
          }
          const feeds = {};
          for (const [name, s] of Object.entries(inputs)) feeds[name] = await tensor(base, s);
          media[feed] = (await encoders[graph].run(feeds))[output];
        }
        tokens = await decoder.greedy(c.ids, { media, adapter: c.adapter, maxNewTokens: c.max_new_tokens });
      } catch (e) {
        error = String(e.message || e).slice(0, 400);
      }
      results.cases.push({ name: c.name, bundle: bundleName, tokens, error, seconds: (performance.now() - t0) / 1000 });
      console.log(`@@done ${bundleName} ${c.name} ${error ? 'error' : tokens.length + ' tokens'} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    }
  }
  return results;
};
window.ready = true;
