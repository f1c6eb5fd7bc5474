// A worker that runs one model on onnxruntime-web (wasm) for the Python "web" backend.
//
// It speaks runtimes/worker/wire.py over stdin/stdout: a message is a 4-byte little-endian length, a UTF-8
// JSON header, then the raw little-endian bytes of each tensor listed in header.tensors.
// Requests: load {model, threads, graph_optimization, extra}, run {outputs, tensors}, close.
// Replies: {ok: true, seconds, tensors} or {ok: false, error}.

import { ORT_WEB_VERSION, createInferenceSession, importOrt, readBytes } from './edgetx.mjs';

// stdout carries the protocol: anything a library logs goes to stderr instead.
console.log = console.info = console.debug = console.error;

const ARRAYS = {
  float32: Float32Array, float16: Uint16Array, int64: BigInt64Array, int32: Int32Array,
  int8: Int8Array, uint8: Uint8Array, bool: Uint8Array,
};

/** Reads exact byte counts from an async-iterable stream of Buffers. */
class Reader {
  constructor(stream) {
    this.iterator = stream[Symbol.asyncIterator]();
    this.buffer = Buffer.alloc(0);
    this.pending = [];
    this.size = 0;
  }

  /** The next `count` bytes, or null at end of stream before any of them. */
  async read(count) {
    while (this.size < count) {
      const { value, done } = await this.iterator.next();
      if (done) {
        if (this.size === 0) return null;
        throw new Error(`stdin closed with ${count - this.size} of ${count} bytes still to read`);
      }
      this.pending.push(value);
      this.size += value.length;
    }
    if (this.buffer.length < count) {
      this.buffer = Buffer.concat([this.buffer, ...this.pending]);
      this.pending = [];
    }
    const out = this.buffer.subarray(0, count);
    this.buffer = this.buffer.subarray(count);
    this.size -= count;
    return out;
  }
}

async function readMessage(reader, ort) {
  const prefix = await reader.read(4);
  if (prefix === null) return null;
  const header = JSON.parse((await reader.read(prefix.readUInt32LE(0))).toString('utf8'));
  const tensors = {};
  for (const { name, dtype, shape } of header.tensors ?? []) {
    const Array_ = ARRAYS[dtype];
    if (!Array_) throw new Error(`tensor ${name}: dtype ${dtype} is not supported`);
    const count = shape.reduce((a, b) => a * b, 1);
    const raw = await reader.read(count * Array_.BYTES_PER_ELEMENT);
    const copy = new Uint8Array(raw.length); // aligned, owned storage for the typed array
    copy.set(raw);
    tensors[name] = new ort.Tensor(dtype, new Array_(copy.buffer), shape);
  }
  return { header, tensors };
}

function writeMessage(header, tensors = {}) {
  const specs = [];
  const blobs = [];
  for (const [name, tensor] of Object.entries(tensors)) {
    specs.push({ name, dtype: tensor.type, shape: tensor.dims });
    const data = tensor.data;
    blobs.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  }
  const body = Buffer.from(JSON.stringify({ ...header, tensors: specs }), 'utf8');
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32LE(body.length, 0);
  return new Promise((resolve) => process.stdout.write(Buffer.concat([prefix, body, ...blobs]), resolve));
}

async function serve() {
  const ort = await importOrt();
  const reader = new Reader(process.stdin);
  let session = null;
  for (;;) {
    let message;
    try {
      message = await readMessage(reader, ort);
    } catch (e) {
      await writeMessage({ ok: false, error: `bad request: ${e.message}` });
      return;
    }
    if (message === null) return;
    const { header, tensors } = message;
    try {
      if (header.op === 'close') {
        await writeMessage({ ok: true });
        return;
      } else if (header.op === 'load') {
        session = await createInferenceSession(await readBytes(header.model), {
          numThreads: header.threads, graphOptimization: header.graph_optimization, extra: header.extra,
        });
        await writeMessage({
          ok: true, outputs: session.outputNames,
          runtime: `onnxruntime-web ${ort.env.versions?.web ?? ORT_WEB_VERSION} (wasm)`,
          machine: `node ${process.version}`,
        });
      } else if (header.op === 'run') {
        if (!session) throw new Error('run before load');
        const names = header.outputs ?? session.outputNames;
        const started = performance.now();
        const outputs = await session.run(tensors, names);
        const seconds = (performance.now() - started) / 1000;
        await writeMessage({ ok: true, seconds }, Object.fromEntries(names.map((n) => [n, outputs[n]])));
      } else {
        throw new Error(`unknown op ${JSON.stringify(header.op)}`);
      }
    } catch (e) {
      await writeMessage({ ok: false, error: e instanceof Error ? `${e.name}: ${e.message}` : String(e) });
    }
  }
}

serve().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
