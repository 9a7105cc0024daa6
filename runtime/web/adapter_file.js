// Reading onnxruntime's .onnx_adapter files (FlatBuffers, file identifier TORT; schema
// onnxruntime/lora/adapter_format): model_version and each parameter's name, dims, type and data.
// Every offset is bounds-checked: a damaged file is refused, never read past its end.

const TYPES = { 1: ['float32', Float32Array], 10: ['float16', Uint16Array] };

export function readAdapter(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fail = (why) => { throw new Error(`not a readable .onnx_adapter file (${why})`); };
  const u32 = (at) => (at >= 0 && at + 4 <= bytes.byteLength ? view.getUint32(at, true) : fail('offset out of range'));
  if (bytes.byteLength < 8 || String.fromCharCode(...bytes.subarray(4, 8)) !== 'TORT') fail('missing the TORT identifier');
  // a table at `pos`: field `index` is at pos + vtable[4 + 2 * index] (0: absent)
  const field = (pos, index) => {
    const vtable = pos - view.getInt32(pos, true);
    const slot = 4 + 2 * index;
    if (vtable < 0 || vtable + 4 > bytes.byteLength) fail('bad vtable');
    return slot < view.getUint16(vtable, true) ? view.getUint16(vtable + slot, true) : 0;
  };
  const vector = (pos, index, itemSize) => {
    const o = field(pos, index);
    if (!o) return [0, 0];
    const at = pos + o + u32(pos + o);
    const count = u32(at);
    if (at + 4 + count * itemSize > bytes.byteLength) fail('a vector runs past the end of the file');
    return [at + 4, count];
  };
  const root = u32(0);
  const mv = field(root, 2);
  const modelVersion = mv ? view.getInt32(root + mv, true) : 0;
  const params = {};
  const [start, count] = vector(root, 3, 4);
  for (let i = 0; i < count; i++) {
    const p = start + 4 * i + u32(start + 4 * i);
    const [nameAt, nameLen] = vector(p, 0, 1);
    const name = new TextDecoder().decode(bytes.subarray(nameAt, nameAt + nameLen));
    const [dimsAt, ndim] = vector(p, 1, 8);
    const dims = Array.from({ length: ndim }, (_, k) => Number(view.getBigInt64(dimsAt + 8 * k, true)));
    const t = field(p, 2);
    const code = t ? view.getInt32(p + t, true) : 0;
    if (!TYPES[code]) fail(`parameter '${name}': data type code ${code} (fp32 and fp16 are read)`);
    const [type, Array_] = TYPES[code];
    const [dataAt, nbytes] = vector(p, 3, 1);
    // copied: the typed array must be aligned to its element size
    const data = new Array_(bytes.slice(dataAt, dataAt + nbytes).buffer);
    if (data.length !== dims.reduce((a, b) => a * b, 1)) fail(`parameter '${name}': ${data.length} values for dims ${dims}`);
    params[name] = { dims, type, data };
  }
  return { modelVersion, params };
}
