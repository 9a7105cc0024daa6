// phi4edge bundles on onnxruntime-web: reads a bundle by docs/bundle-format.md (manifest checks,
// graphs with their external data, .onnx_adapter files) and runs greedy generation from prompt ids.
// The tokenizer and image/audio preprocessing are not ported: callers give prompt ids and the
// encoders' inputs (tests/web, scripts/webgpu_check.py take them from the Python runtime).
import { readAdapter } from './adapter_file.js';

export const FORMAT = 'phi4edge-bundle';
// `requires` names this reader implements ("webgpu-decoder": export/webgpu.py, docs/webgpu.md)
export const FEATURES = new Set(['media-inputs', 'webgpu-decoder']);

export class BundleError extends Error {}

/** Open the bundle at `base` (a URL ending in /): its manifest, checked, and file fetching. */
export async function openBundle(base) {
  const manifest = await (await fetchOk(`${base}manifest.json`)).json();
  if (manifest.format !== FORMAT) throw new BundleError(`${base}: not a ${FORMAT} (field 'format')`);
  if (manifest.format_version !== 1) throw new BundleError(`${base}: format_version ${manifest.format_version}: this reader implements 1`);
  const unknown = (manifest.requires || []).filter((r) => !FEATURES.has(r));
  if (unknown.length) throw new BundleError(`${base}: field 'requires' lists '${unknown[0]}', which this reader does not implement`);
  return new Bundle(base, manifest);
}

async function fetchOk(url) {
  const res = await fetch(url);
  if (!res.ok) throw new BundleError(`${url}: HTTP ${res.status}`);
  return res;
}

export class Bundle {
  constructor(base, manifest) {
    this.base = base;
    this.manifest = manifest;
  }

  /** A listed file's bytes, refused unless its size is the manifest's. */
  async file(name) {
    const entry = this.manifest.files[name];
    if (!entry) throw new BundleError(`${this.base}: '${name}' is not listed in the manifest's 'files'`);
    const bytes = new Uint8Array(await (await fetchOk(this.base + name)).arrayBuffer());
    if (bytes.byteLength !== entry.size) {
      throw new BundleError(`${this.base}${name}: ${bytes.byteLength} bytes, the manifest says ${entry.size}`);
    }
    return bytes;
  }

  /** A session for graph `kind` ("decoder", "vision", "speech") with its external data. */
  async session(ort, kind, options) {
    const part = this.manifest[kind];
    if (!part) throw new BundleError(`${this.base}: this bundle has no ${kind} graph`);
    const dataName = `${part.graph}.data`;
    const externalData = this.manifest.files[dataName] ? [{ path: dataName, data: await this.file(dataName) }] : [];
    return ort.InferenceSession.create(await this.file(part.graph), { ...options, externalData });
  }

  get webgpuDecoder() {
    return (this.manifest.requires || []).includes('webgpu-decoder');
  }
}

const argmax = (values) => values.reduce((best, v, i) => (v > values[best] ? i : best), 0);

/** The decoder with a KV cache that grows by the previous call's present tensors. */
export class Decoder {
  /** `options`: session options; `runOptions`: each run's (e.g. a log severity of its own). */
  static async load(ort, bundle, options, runOptions = {}) {
    const decoder = new Decoder(ort, bundle, await bundle.session(ort, 'decoder', options));
    decoder.runOptions = runOptions;
    return decoder;
  }

  constructor(ort, bundle, session) {
    Object.assign(this, { ort, bundle, session });
    const cfg = bundle.manifest.model.config;
    this.cfg = cfg;
    this.media = Object.keys(bundle.manifest.decoder.media || {});
    this.adapters = {};
    // LoRA inputs this session takes: with 'webgpu-decoder' they are plain inputs (onnxruntime-web
    // feeds inputs only, and lists no initializer among them)
    this.lora = session.inputNames.filter((n) => n.startsWith('lora.'));
    this.baseLora = Object.fromEntries(this.lora.map((n) => [n, this.zeros(n)]));
  }

  /** Rank-1 zeros for a LoRA input: the base model (WebGPU rejects the rank-0 product). */
  zeros(name) {
    const [, module, which] = name.match(/^lora\.layers\.\d+\.(\w+)\.(A|B)$/) || [];
    const cfg = this.cfg;
    const io = { qkv_proj: [cfg.hidden_size, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim],
      o_proj: [cfg.hidden_size, cfg.hidden_size], gate_up_proj: [cfg.hidden_size, 2 * cfg.intermediate_size],
      down_proj: [cfg.intermediate_size, cfg.hidden_size] }[module];
    if (!io) throw new BundleError(`decoder input '${name}' is not a LoRA A/B input`);
    const dims = which === 'A' ? [io[0], 1] : [1, io[1]];
    const dtype = this.bundle.manifest.decoder.lora === 'fp16' ? 'float16' : 'float32';
    const data = dtype === 'float16' ? new Uint16Array(dims[0] * dims[1]) : new Float32Array(dims[0] * dims[1]);
    return new this.ort.Tensor(dtype, data, dims);
  }

  /** Map adapter `name`'s tensors (the bundle's adapters/NAME.onnx_adapter), checked against the base. */
  async adapter(name) {
    if (this.adapters[name]) return this.adapters[name];
    const entry = this.bundle.manifest.adapters?.[name];
    if (!entry) throw new BundleError(`adapter '${name}' is not in this bundle`);
    if (!this.lora.length) {
      throw new BundleError(`${this.bundle.base}: the decoder's LoRA inputs have initializer defaults, which ` +
        "onnxruntime-web cannot feed; export the bundle's WebGPU form (phi4edge export --target webgpu)");
    }
    const { modelVersion, params } = readAdapter(await this.bundle.file(entry.file));
    const base = parseInt(this.bundle.manifest.model.base_id.slice(0, 7), 16);
    if (modelVersion !== base) throw new BundleError(`adapter '${name}' was exported for another base model`);
    const tensors = {};
    for (const [pname, p] of Object.entries(params)) {
      if (!this.lora.includes(pname)) throw new BundleError(`adapter '${name}': '${pname}' matches no LoRA input`);
      tensors[pname] = new this.ort.Tensor(p.type, p.data, p.dims);
    }
    this.adapters[name] = tensors;
    return tensors;
  }

  /** Greedy tokens after `ids`; `media` holds feature tensors for the placeholder ids. */
  async greedy(ids, { media = {}, adapter = null, maxNewTokens = 24, eos = this.bundle.manifest.generation.eos_token_ids } = {}) {
    const { ort, cfg } = this;
    const lora = { ...this.baseLora, ...(adapter ? await this.adapter(adapter) : {}) };
    const empty = new ort.Tensor('float32', new Float32Array(0), [0, cfg.hidden_size]);
    let past = {};
    for (let i = 0; i < cfg.num_layers; i++) {
      for (const kind of ['key', 'value']) {
        past[`past_key_values.${i}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [1, cfg.num_kv_heads, 0, cfg.head_dim]);
      }
    }
    const tokens = [];
    let step = Array.from(ids);
    let total = 0;
    for (let n = 0; n < maxNewTokens; n++) {
      total += step.length;
      const feeds = { input_ids: new ort.Tensor('int64', BigInt64Array.from(step.map(BigInt)), [1, step.length]),
        attention_mask: new ort.Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]), ...past, ...lora };
      for (const name of this.media) feeds[name] = (n === 0 && media[name]) || empty;
      const out = await this.session.run(feeds, this.runOptions);
      const token = argmax(out.logits.data);
      tokens.push(token);
      past = {};
      for (const [key, value] of Object.entries(out)) {
        if (key.startsWith('present.')) past[key.replace('present.', 'past_key_values.')] = value;
      }
      if (eos.includes(token)) break;
      step = [token];
    }
    return tokens;
  }
}
