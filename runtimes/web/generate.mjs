#!/usr/bin/env node
// Greedy generation from a bundle on onnxruntime-web (wasm), the same loop as the Python Generator.
//
//   node runtimes/web/generate.mjs BUNDLE --prompt TEXT --max-tokens N [--variant V] [--threads N]
//        [--stop TEXT ...] [--json]
//
// Prints the generated text; with --json, one JSON object: tokens, text, finish_reason and timings.

import { parseArgs } from 'node:util';
import { Session, generate, importOrt, loadBundle } from './edgetx.mjs';

const USAGE = 'usage: node generate.mjs BUNDLE --prompt TEXT --max-tokens N [--variant V] [--threads N] ' +
  '[--stop TEXT ...] [--json]';

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      prompt: { type: 'string' },
      'max-tokens': { type: 'string', default: '64' },
      variant: { type: 'string', default: 'fp32' },
      threads: { type: 'string' },
      stop: { type: 'string', multiple: true, default: [] },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (positionals.length !== 1 || values.prompt === undefined) {
    throw new Error(`give one BUNDLE and --prompt\n${USAGE}`);
  }
  const maxNewTokens = Number(values['max-tokens']);
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) {
    throw new Error(`--max-tokens must be a whole number >= 0, not ${values['max-tokens']}`);
  }
  const numThreads = values.threads === undefined ? undefined : Number(values.threads);
  const bundle = await loadBundle(positionals[0], { variant: values.variant });
  const session = await Session.create(bundle, { numThreads });
  const prompt = new TextEncoder().encode(values.prompt);
  const result = await generate(session, prompt, { maxNewTokens, stop: values.stop });
  await session.release();
  if (!values.json) {
    process.stdout.write(result.text + '\n');
    return;
  }
  const ort = await importOrt();
  const decodeSteps = result.stepMs.length - 1;
  process.stdout.write(JSON.stringify({
    variant: values.variant,
    runtime: `onnxruntime-web ${ort.env.versions?.web} (wasm), node ${process.version}`,
    prompt_tokens: prompt.length,
    tokens: result.tokens,
    text: result.text,
    finish_reason: result.finishReason,
    prefill_ms: result.prefillMs,
    ms_per_token: result.msPerToken,
    decode_tokens_per_second: decodeSteps > 0 ? 1000 / result.msPerToken : null,
    step_ms: result.stepMs,
  }) + '\n');
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    process.exit(1);
  },
);
