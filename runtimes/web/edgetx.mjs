// edgetx web runtime: load a bundle's variant on onnxruntime-web (wasm), run it, generate text.
//
//   import { loadBundle, Session, generate } from './edgetx.mjs';
//   const bundle = await loadBundle('dist/edgetx-gpt', { variant: 'int4' });
//   const session = await Session.create(bundle, { numThreads: 1 });
//   const result = await generate(session, new TextEncoder().encode('def fib(n):'), { maxNewTokens: 64 });
//
// The generation loop is the Python Generator's (runtimes/generate.py): the prompt runs once with an
// empty KV cache (prefill), then one token per step with the cache the previous step returned;
// attention_mask is all ones over past + new tokens, position_ids count on from the cache's length.
// Node is what is tested; in a browser the same module works with `readBytes` using fetch and
// 'onnxruntime-web' mapped by an import map or a bundler.

const ORT_WEB_VERSION = '1.30.0';
const PAST_PREFIX = 'past_key_values.';
const PRESENT_PREFIX = 'present.';
const isNode = typeof process !== 'undefined' && Boolean(process.versions?.node);

/**
 * Read a file (Node) or URL (browser) as bytes. The only place the runtime touches storage.
 * @param {string} path
 * @returns {Promise<Uint8Array>}
 */
export async function readBytes(path) {
  if (isNode) {
    const { readFile } = await import('node:fs/promises');
    return new Uint8Array(await readFile(path));
  }
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status} ${response.statusText}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function sha256Hex(bytes) {
  if (isNode) {
    const { createHash } = await import('node:crypto');
    return createHash('sha256').update(bytes).digest('hex');
  }
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

const packages = new Map();

/**
 * An npm package of the runtime (onnxruntime-web, ajv). In Node it comes from `$EDGETX_WEB_PACKAGES/node_modules`
 * when that is set (the Python backend sets it), else from a normal `import`, else from the environment
 * `edgetx provision web` fills (`$EDGETX_HOME/web/env`, default `~/.cache/edgetx/web/env`). ESM ignores
 * NODE_PATH, so the folder is resolved explicitly.
 * @param {string} name
 * @returns {Promise<any>}
 */
function importPackage(name) {
  if (!packages.has(name)) packages.set(name, loadPackage(name));
  return packages.get(name);
}

/** The onnxruntime-web module (see importPackage). */
export function importOrt() {
  return importPackage('onnxruntime-web');
}

function loadPackage(name) {
  return (async () => {
    if (!isNode) return import(name);
    const { createRequire } = await import('node:module');
    const { pathToFileURL } = await import('node:url');
    const { homedir } = await import('node:os');
    const fromRoot = async (root) => {
      const entry = createRequire(`${root}/package.json`).resolve(name);
      const mod = await import(pathToFileURL(entry).href);
      return mod.default ?? mod;
    };
    const root = process.env.EDGETX_WEB_PACKAGES;
    if (root) {
      try {
        return await fromRoot(root);
      } catch (e) {
        throw new Error(`${name} is not installed in EDGETX_WEB_PACKAGES=${root} (${e.message.split('\n')[0]}); ` +
          'run `edgetx provision web`');
      }
    }
    try {
      return await import(name);
    } catch {
      try {
        return await fromRoot(`${process.env.EDGETX_HOME || `${homedir()}/.cache/edgetx`}/web/env`);
      } catch {
        throw new Error(`${name} not found: run \`edgetx provision web\` ` +
          '(or npm install it beside this file)');
      }
    }
  })();
}

function bundlePath(dir, rel) {
  if (!rel || rel.startsWith('/') || rel.includes('\\') || rel.split('/').includes('..')) {
    throw new Error(`${dir}/manifest.json: path ${JSON.stringify(rel)} must be relative and stay inside the bundle`);
  }
  return `${String(dir).replace(/\/+$/, '')}/${rel}`;
}

const SCHEMA_VERSION = 2;
// Older schema versions this runtime reads, each migrated to the next (edgetx/bundle/manifest.py does the same).
const MIGRATIONS = {
  1: (manifest) => {
    if (manifest.golden) delete manifest.golden.kind;
    const note = manifest.provenance?.logits_to_keep;
    if (note !== undefined) {
      delete manifest.provenance.logits_to_keep;
      const record = { pass: 'logits-to-keep', modified: note === 'added', ...(note === 'added' ? {} : { skipped: String(note) }) };
      manifest.provenance.graph_edits = [...(manifest.provenance.graph_edits ?? []), record];
    }
    manifest.schema_version = 2;
    return manifest;
  },
};

let validatorPromise = null;

/**
 * The published manifest schema (edgetx/bundle/manifest.schema.json), compiled with ajv. In Node it is read
 * from the installed edgetx package (edgetx/runtimes/web -> edgetx/bundle) or the source checkout
 * (runtimes/web -> edgetx/bundle); a page passes `schemaUrl` to loadBundle.
 * @param {string | URL} [schemaUrl]
 */
function manifestValidator(schemaUrl) {
  validatorPromise ??= (async () => {
    const candidates = schemaUrl ? [new URL(schemaUrl, isNode ? `file://${process.cwd()}/` : location.href)]
      : [new URL('../../bundle/manifest.schema.json', import.meta.url),
         new URL('../../edgetx/bundle/manifest.schema.json', import.meta.url)];
    let text = null;
    for (const url of candidates) {
      try {
        text = new TextDecoder().decode(await readBytes(isNode ? (await import('node:url')).fileURLToPath(url) : url.href));
        break;
      } catch { /* try the next layout */ }
    }
    if (text === null) throw new Error(`the manifest schema is not at ${candidates.map(String).join(' or ')}`);
    const Ajv2020 = await importPackage('ajv/dist/2020.js');
    const ajv = new Ajv2020({ allErrors: false, strict: false, verbose: true });
    return ajv.compile(JSON.parse(text));
  })();
  return validatorPromise;
}

/** io.inputs[0], variants['fp32'].formats: a JSON pointer as edgetx names places in the manifest. */
function location(pointer) {
  const parts = pointer.split('/').slice(1).map((p) => p.replaceAll('~1', '/').replaceAll('~0', '~'));
  let text = '';
  parts.forEach((part, i) => {
    if (/^\d+$/.test(part)) text += `[${part}]`;
    else if ((i === 1 && ['variants', 'files', 'bench'].includes(parts[0])) || !/^[A-Za-z_]\w*$/.test(part)) {
      text += `['${part}']`;
    } else text += text ? `.${part}` : part;
  });
  return text || 'the manifest';
}

/**
 * A manifest at the current schema version, checked against the published schema: older versions are
 * migrated, a bad one is an Error naming the place and what was expected.
 * @param {object} manifest
 * @param {string} where
 * @param {string | URL} [schemaUrl]
 */
export async function checkManifest(manifest, where, schemaUrl) {
  if (manifest === null || typeof manifest !== 'object' || Array.isArray(manifest)) {
    throw new Error(`${where}: expected a JSON object at the top level`);
  }
  let version = manifest.schema_version;
  if (version !== SCHEMA_VERSION && !MIGRATIONS[version]) {
    throw new Error(`${where}: schema_version ${JSON.stringify(version)} is not one this runtime reads ` +
      `(it reads ${[...Object.keys(MIGRATIONS), SCHEMA_VERSION].join(', ')}); rebuild the bundle or upgrade edgetx`);
  }
  while (version !== SCHEMA_VERSION) {
    manifest = MIGRATIONS[version](manifest);
    version = manifest.schema_version;
  }
  const validate = await manifestValidator(schemaUrl);
  if (!validate(manifest)) {
    const [error] = validate.errors;
    const expected = error.parentSchema?.errorMessage ?? error.message;
    throw new Error(`${where}: ${location(error.instancePath)} ${expected}, got ${JSON.stringify(error.data)?.slice(0, 200)}`);
  }
  return manifest;
}

/**
 * Read a bundle's manifest (checked against the published schema) and one variant's model bytes,
 * checking the file's sha256.
 * @param {string} dir bundle folder (Node) or base URL (browser)
 * @param {{variant?: string, verify?: boolean, schemaUrl?: string}} [options]
 * @returns {Promise<{dir: string, manifest: object, variant: string, file: string, modelBytes: Uint8Array}>}
 */
export async function loadBundle(dir, { variant = 'fp32', verify = true, schemaUrl } = {}) {
  const manifestPath = bundlePath(dir, 'manifest.json');
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(await readBytes(manifestPath)));
  } catch (e) {
    throw new Error(`${manifestPath}: cannot read the bundle manifest (${e.message}); is ${dir} an edgetx bundle?`);
  }
  manifest = await checkManifest(manifest, manifestPath, schemaUrl);
  const entry = manifest.variants?.[variant];
  if (!entry) {
    const known = Object.keys(manifest.variants ?? {}).join(', ') || 'none';
    throw new Error(`${dir}: no variant ${JSON.stringify(variant)}; this bundle has ${known}`);
  }
  const expected = manifest.files?.[entry.file]?.sha256;
  if (!expected) throw new Error(`${manifestPath}: variant ${variant}'s file ${entry.file} is not listed under files`);
  const file = bundlePath(dir, entry.file);
  const modelBytes = await readBytes(file);
  if (verify) {
    const actual = await sha256Hex(modelBytes);
    if (actual !== expected) {
      throw new Error(`${file} does not match the sha256 in manifest.json (expected ${expected}, got ${actual}): ` +
        'the file was altered or corrupted after the build; rebuild or re-copy the bundle');
    }
  }
  return { dir, manifest, variant, file, modelBytes };
}

/**
 * Create an onnxruntime-web InferenceSession on the wasm backend from model bytes.
 * numThreads is process-wide in onnxruntime-web: it takes effect for the first session only.
 * @param {Uint8Array} modelBytes
 * @param {{numThreads?: number, graphOptimization?: string, extra?: object}} [options]
 */
export async function createInferenceSession(modelBytes, { numThreads, graphOptimization, extra } = {}) {
  const ort = await importOrt();
  ort.env.logLevel = 'error';
  if (numThreads) ort.env.wasm.numThreads = numThreads;
  const options = { executionProviders: ['wasm'], logSeverityLevel: 3 };
  if (graphOptimization) options.graphOptimizationLevel = graphOptimization;
  if (extra && Object.keys(extra).length) options.extra = extra;
  return ort.InferenceSession.create(modelBytes, options);
}

/** One variant of a bundle loaded on onnxruntime-web (wasm). */
export class Session {
  constructor(ort, inner, bundle) {
    this.ort = ort;
    this.inner = inner;
    this.bundle = bundle;
    this.inputs = bundle.manifest.io.inputs;
    this.model = bundle.manifest.model;
  }

  /**
   * Load a bundle variant: `bundle` is a folder/URL or what `loadBundle` returned.
   * @param {string | object} bundle
   * @param {{variant?: string, numThreads?: number, graphOptimization?: string}} [options]
   * @returns {Promise<Session>}
   */
  static async create(bundle, options = {}) {
    const loaded = typeof bundle === 'string' ? await loadBundle(bundle, options) : bundle;
    const inner = await createInferenceSession(loaded.modelBytes, options);
    return new Session(await importOrt(), inner, loaded);
  }

  /**
   * Run on named ort.Tensor feeds; returns the outputs and the milliseconds the run took.
   * @param {Record<string, any>} feeds
   * @param {string[]} [outputNames]
   * @returns {Promise<{outputs: Record<string, any>, ms: number}>}
   */
  async run(feeds, outputNames) {
    const started = performance.now();
    const outputs = await this.inner.run(feeds, outputNames ?? this.inner.outputNames);
    return { outputs, ms: performance.now() - started };
  }

  /** Free the wasm session. */
  async release() {
    await this.inner.release();
  }
}

function int64Tensor(ort, values, dims) {
  return new ort.Tensor('int64', BigInt64Array.from(values, (v) => BigInt(v)), dims);
}

function emptyCache(ort, inputs) {
  const cache = {};
  for (const spec of inputs.filter((s) => s.name.startsWith(PAST_PREFIX))) {
    const dims = spec.shape.map((d) => (d === 'batch' ? 1 : d === 'past' ? 0 : d));
    const data = spec.dtype === 'float16' ? new Uint16Array(0) : new Float32Array(0);
    cache[spec.name] = new ort.Tensor(spec.dtype, data, dims);
  }
  return cache;
}

/** The presents a step returned, renamed as the next step's past. */
function nextCache(outputs, cache) {
  const present = (name) => outputs[PRESENT_PREFIX + name.slice(PAST_PREFIX.length)];
  return Object.fromEntries(Object.keys(cache).map((name) => [name, present(name)]));
}

/** Index of the largest of the last row of logits [1, seq, vocab]; the first one on ties (numpy's argmax). */
function argmaxLastRow(logits) {
  const vocab = logits.dims[logits.dims.length - 1];
  const start = logits.data.length - vocab;
  if (logits.type !== 'float32') throw new Error(`logits are ${logits.type}; the JS runtime reads float32 logits`);
  let best = 0;
  for (let i = 1; i < vocab; i++) if (logits.data[start + i] > logits.data[start + best]) best = i;
  return best;
}

function indexOf(haystack, needle) {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/**
 * Greedy generation on a byte-tokenizer causal-LM session, the Python Generator's loop.
 * Stop sequences end the output and are not included in `bytes`/`text`.
 * @param {Session} session
 * @param {Uint8Array | number[]} promptBytes
 * @param {{maxNewTokens?: number, stop?: (string | Uint8Array)[]}} [options]
 * @returns {Promise<{tokens: number[], bytes: Uint8Array, text: string, finishReason: string,
 *   prefillMs: number, stepMs: number[], msPerToken: number | null}>}
 */
export async function generate(session, promptBytes, { maxNewTokens = 64, stop = [] } = {}) {
  const { model, ort } = session;
  const tokenizer = session.bundle.manifest.tokenizer?.type;
  if (tokenizer !== 'bytes') {
    throw new Error(`this bundle's tokenizer is ${JSON.stringify(tokenizer)}; the JS runtime supports only byte ` +
      'tokenizers ("bytes") for now: generate with the Python Generator (edgetx generate) instead');
  }
  if (model.kind !== 'causal-lm') throw new Error(`generate needs a causal-lm bundle, not ${model.kind}`);
  const ids = Array.from(promptBytes);
  const problem = !ids.length ? 'the prompt is empty; give at least one token'
    : ids.some((t) => !(t >= 0 && t < model.vocab_size)) ? `prompt ids must be in [0, ${model.vocab_size})`
    : ids.length + 1 > model.max_positions ? `the prompt has ${ids.length} tokens; this model sees at most ` +
      `${model.max_positions} positions in all, so shorten the prompt`
    : !(maxNewTokens >= 0) ? `maxNewTokens must be >= 0, got ${maxNewTokens}` : null;
  if (problem) throw new Error(problem);
  const stops = stop.map((s) => (typeof s === 'string' ? new TextEncoder().encode(s) : s));
  if (stops.some((s) => !s.length)) throw new Error('stop sequences must be non-empty');

  let cache = emptyCache(ort, session.inputs);
  let stepIds = ids;
  let past = 0;
  const tokens = [];
  const stepMs = [];
  let finishReason = 'length';
  let cut = -1;
  while (tokens.length < maxNewTokens) {
    const seq = stepIds.length;
    if (past + seq > model.max_positions) {
      finishReason = 'context';
      break;
    }
    const feeds = {
      input_ids: int64Tensor(ort, stepIds, [1, seq]),
      attention_mask: int64Tensor(ort, new Array(past + seq).fill(1), [1, past + seq]),
      position_ids: int64Tensor(ort, stepIds.map((_, i) => past + i), [1, seq]),
      ...cache,
    };
    const { outputs, ms } = await session.run(feeds);
    stepMs.push(ms);
    cache = nextCache(outputs, cache);
    past += seq;
    const token = argmaxLastRow(outputs.logits);
    tokens.push(token);
    stepIds = [token];
    const hits = stops.map((s) => indexOf(tokens, s)).filter((i) => i >= 0);
    if (hits.length) {
      cut = Math.min(...hits);
      finishReason = 'stop';
      break;
    }
  }
  const bytes = Uint8Array.from(cut >= 0 ? tokens.slice(0, cut) : tokens);
  const decode = stepMs.slice(1);
  return {
    tokens, bytes, text: new TextDecoder('utf-8').decode(bytes), finishReason,
    prefillMs: stepMs[0] ?? 0, stepMs,
    msPerToken: decode.length ? decode.reduce((a, b) => a + b, 0) / decode.length : null,
  };
}

export { ORT_WEB_VERSION };
