"""The causal-LM kind: one graph for prefill and decode with a KV cache (edgetx.kinds.decoding).

Golden I/O (captured from PyTorch by edgetx.exporters.causal_lm): `prefill.input_ids` / `prefill.logits`
(a real prompt, every position), `decode.tokens` / `decode.logits` (greedy steps with the cache), and
`padded.*` (the prompts as one left-padded batch, last-position logits). Parity checks:
- prefill: logits at every prompt position within the variant's tolerance;
- greedy decode: the variant's own greedy decoding, with its KV cache, picks the same tokens as PyTorch
  did over every golden decode step, with logits within tolerance (also reported: KL of the steps);
- cache == recompute: the cached decode logits equal one full pass over the same tokens;
- padded batch: a left-padded batch gives each row's logits within tolerance;
- rows alone: each row run alone, unpadded, gives what PyTorch gave for it alone (with the padded batch
  check, this is padding invariance wherever PyTorch itself is invariant: model.padding says whether it is).
Quantization gates: KL divergence of the next-token distribution and top-1 agreement on held-out text,
with bits per token and greedy agreement reported.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np

from edgetx.errors import InputError
from edgetx.kinds.base import (BenchTable, ModelKind, ReportAxes, distribution_misses, median_ms, padding_note,
                               percentiles, register_kind)
from edgetx.kinds.decoding import DecodeLoop, causal_feeds, contract_problem, decode_loop, greedy
from edgetx.verify import metrics
from edgetx.verify.report import Check

DECODE_TOKENS = 64  # a graph candidate's score: prefill of the golden prompt + this many decode steps
GREEDY_STEPS = 16  # greedy agreement reported by the gate
DECODE_CALIBRATION_PASTS = (15, 63, 127)


def sequences(data: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """The token sequences stored as `{prefix}.0`, `{prefix}.1`, ... (quant.npz), in order."""
    keys = sorted((k for k in data if k.startswith(prefix + ".")), key=lambda k: int(k.rsplit(".", 1)[1]))
    return [data[k] for k in keys]


@register_kind
class CausalLM(ModelKind):
    name = "causal-lm"
    described_as = "a causal-lm"
    helpers = frozenset({"generate"})
    # Decoders: int8 weight-only. Dynamic int8 quantizes activations per tensor, and decoder hidden states
    # carry outlier channels: on SmolLM2-135M it gave mean KL 0.51 / top-1 58.6% vs fp32, while int8
    # weight-only gave KL 0.0013 / top-1 97.7%. Its default is the -a8 form (per-block int8 activations,
    # MatMulNBits accuracy level 4): level 0 has no fast 8-bit kernel and decoded 10x slower than fp32 on the
    # reference GPT (10.7 vs 1.0 ms a step) and 3.7x slower on SmolLM2, where -a8 runs 2.1x faster than fp32 on
    # the reference GPT at KL 4.5e-5 — level 0 was on no Pareto front. int4-grid(-a8) apply only to weights
    # de-quantized from a 4-bit GGUF; elsewhere they are recorded as not applicable.
    default_schemes = ("int8-weight-only-a8", "int4", "int4-grid", "int4-grid-a8")
    # A GGUF whose layers keep weights on 8-bit grids (Q5_0, Q5_1, Q5_K, Q6_K, Q8_0) adds their exact schemes.
    EIGHT_BIT_GGUF_TYPES = frozenset({"Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"})
    default_fixed_dims = "batch=1,seq=1,past=127"  # one decode step
    genai_model_type = "decoder"  # onnxruntime-genai runs it (edgetx convert --to genai)
    score = f"prefill + {DECODE_TOKENS} decode steps, median ms"
    timing_columns = ("prefill_ms", "decode_ms")

    def schemes_for(self, model: dict) -> tuple[str, ...]:
        matrix_types = set((model.get("gguf") or {}).get("matrix_types", {}))
        if matrix_types & self.EIGHT_BIT_GGUF_TYPES:
            return self.default_schemes + ("int8-grid", "int8-grid-a8")
        return self.default_schemes

    def io_problem(self, inputs: list[dict], outputs: list[dict]) -> str | None:
        problem = contract_problem(inputs, outputs)
        return f"io does not follow the causal-LM graph contract: {problem}" if problem else None

    # --- parity ----------------------------------------------------------------------------------------

    def golden_feeds(self, inputs: list[dict], golden: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return causal_feeds(inputs, golden["prefill.input_ids"])

    def primary_output(self, session: Any, golden: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return golden["prefill.logits"], session.run(self.golden_feeds(session.inputs, golden))["logits"]

    def parity_checks(self, session: Any, golden: dict[str, np.ndarray], tolerance: Any) -> list[Check]:
        """The checks of the module docstring. Logits are compared under the variant's tolerance: max-abs
        for fp32, KL divergence + top-1 for quantized ones."""
        compare = tolerance.compare_logits
        checks: list[Check] = []
        prompt = golden["prefill.input_ids"]
        S = prompt.shape[1]
        want_tokens, want_logits = golden["decode.tokens"], golden["decode.logits"]
        graph_runs = session.backend.capabilities.graph_runs
        # a runtime that owns its loop (genai) runs the sequence through the cache it keeps
        loop = None if graph_runs else decode_loop(session, S + len(want_tokens) + 1)
        picks, steps, out = greedy(session.run, session.inputs, prompt, len(want_tokens), loop)
        ok, diff, detail = compare(golden["prefill.logits"], out["logits"])
        checks.append(Check("prefill", ok, diff, f"{S} prompt positions" + (f"; {detail}" if detail else "")))

        got_tokens, token = picks[:-1], picks[-1]  # fed back one per step; the last step's own pick
        agreed, first_mismatch = metrics.token_agreement(want_tokens, got_tokens)
        matched = first_mismatch is None and token == int(want_logits[-1].argmax())
        if agreed:
            ok, diff, detail = compare(want_logits[:agreed], steps[:agreed])
            kld = float(metrics.kl_divergence(want_logits[:agreed], steps[:agreed]).max())
        else:
            ok, diff, detail, kld = False, float("inf"), "", float("inf")
        summary = (f"{len(want_tokens)} steps, all tokens identical" if matched else
                   f"tokens agree for {agreed} of {len(want_tokens)} steps") + f"; max KL {kld:.1e}"
        ok = ok and (matched or not tolerance.greedy_must_match)
        checks.append(Check("greedy decode", ok, diff, summary, [agreed if not matched else len(want_tokens),
                                                                 len(want_tokens)]))
        if not graph_runs:
            return checks + [self._own_loop_check(session, prompt, picks)]

        # The cached steps must equal one pass over prompt + fed tokens without a cache.
        full = np.concatenate([prompt, np.array([got_tokens], dtype=np.int64)], axis=1)
        out = session.run(causal_feeds(session.inputs, full))
        ok, diff, detail = compare(out["logits"][0, S:], steps)
        checks.append(Check("cache == recompute", ok, diff, f"{len(got_tokens)} positions"
                            + (f"; {detail}" if detail else "")))

        if "padded.input_ids" in golden:
            ids, mask, positions = golden["padded.input_ids"], golden["padded.attention_mask"], golden["padded.position_ids"]
            batch = session.run(causal_feeds(session.inputs, ids, mask, positions))["logits"][:, -1]
            ok, diff, _ = compare(golden["padded.logits"], batch)
            rows, width = ids.shape
            checks.append(Check("padded batch", ok, diff, f"{rows} rows left-padded to {width}"))
            alone = np.stack([session.run(causal_feeds(session.inputs, ids[r : r + 1, mask[r].astype(bool)]))["logits"]
                              [0, -1] for r in range(rows)])
            if "padded.alone_logits" in golden:
                ok, diff, _ = compare(golden["padded.alone_logits"], alone)
                checks.append(Check("rows alone", ok, diff, f"{rows} rows alone vs PyTorch's rows alone"
                                    + padding_note(session.model)))
            else:  # bundles from before the rows-alone golden answers: the graph against itself
                ok, diff, _ = compare(batch, alone)
                checks.append(Check("padding invariance", ok, diff, f"{rows} rows alone vs in the padded batch"))
        return checks

    @staticmethod
    def _own_loop_check(session: Any, prompt: np.ndarray, picks: list[int]) -> Check:
        """A runtime that owns its generation loop (genai) picks, in that loop, the tokens its own logits argmax to.
        The checks that need single graph runs (cache == recompute, padded batches) are ort-cpu's."""
        timed = session.own_loop(prompt[0], len(picks))
        if timed is None:
            return Check("own loop", False, None, f"{session.backend.name} declares no single graph runs but has no loop")
        agreed, first = metrics.token_agreement(picks, timed.tokens)
        return Check("own loop", first is None, None,
                     f"its greedy loop picks the argmax of its logits for {agreed} of {len(picks)} tokens; cache == "
                     "recompute and padded batches need single graph runs: checked on ort-cpu", [agreed, len(picks)])

    def alone_vs_batch(self, golden: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        if "padded.alone_logits" not in golden:
            return None
        return golden["padded.logits"], golden["padded.alone_logits"]

    def outputs_agree(self, tolerance: Any, want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[bool, str]:
        if tolerance.max_kld is None or not np.isfinite(got["logits"]).all():
            return super().outputs_agree(tolerance, want, got)
        ok, _, detail = tolerance.compare_logits(want["logits"], got["logits"])
        return ok, detail

    def tolerance_label(self, tolerance: dict) -> str:
        if tolerance.get("max_kld") is None:
            return super().tolerance_label(tolerance)
        return f"KL<={tolerance['max_kld']:g}"

    def fixed_samples(self, golden: dict[str, np.ndarray], reference: Any, dims: dict[str, int],
                      count: int) -> list[dict[str, np.ndarray]]:
        """The golden prompt's tokens (shifted by 7 per sample) at exactly batch x seq, after a past of
        `past` positions computed by the reference (the dynamic graph on ort-cpu)."""
        batch, seq, past = dims["batch"], dims["seq"], dims.get("past", 0)
        samples = []
        for shift in range(count):
            tokens = np.roll(np.resize(golden["prefill.input_ids"][0], past + seq), 7 * shift)
            rows = np.tile(tokens, (batch, 1)).astype(np.int64)
            loop = DecodeLoop(reference.run, reference.inputs, batch)
            if past:
                loop.prefill(rows[:, :past])
            samples.append(loop.feeds(rows[:, past:]))
        return samples

    # --- quantization gates ----------------------------------------------------------------------------

    def calibration_feeds(self, inputs: list[dict], data: dict[str, np.ndarray], *, reference=None,
                          static: bool = False) -> list[dict[str, np.ndarray]]:
        """The calibration texts. `static` (schemes that calibrate every activation, e.g. QDQ for NPUs)
        adds one sample as long as the longest held-out sequence and decode steps with a real KV cache:
        calibrated on 128-token prompts only, position-dependent tensors (rotary angles) saturate beyond
        position 128 (a QDQ reference GPT: mean KL 1.38 at positions up to 255), and every cached key/value
        is clipped at decode time (greedy agreed with fp32 for 1 of 24 steps)."""
        calib = sequences(data, self.calib_prefix)
        feeds = [causal_feeds(inputs, ids) for ids in calib]
        if not static or not calib:
            return feeds
        longest = max((ids.shape[1] for ids in sequences(data, self.eval_prefix)), default=0)
        joined = np.concatenate(calib, axis=1)
        if longest > max(ids.shape[1] for ids in calib) and joined.shape[1] >= longest:
            feeds.append(causal_feeds(inputs, joined[:, :longest]))
        if reference is not None:
            for past in sorted({*DECODE_CALIBRATION_PASTS, longest - 1}):
                if past < 1 or past + 1 > joined.shape[1]:
                    continue
                loop = DecodeLoop(reference, inputs)
                loop.prefill(joined[:, :past])
                feeds.append(loop.feeds(joined[:, past : past + 1]))
        return feeds

    def sensitivity_feeds(self, inputs: list[dict], data: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [causal_feeds(inputs, ids) for ids in sequences(data, self.eval_prefix)[:2]]

    def gate_metrics(self, reference, candidate, inputs: list[dict], data: dict[str, np.ndarray],
                     model: dict) -> dict[str, float]:
        klds, agree, bits_ref, bits_got, positions = [], [], [], [], 0
        held_out = sequences(data, self.eval_prefix)
        for ids in held_out:
            feeds = causal_feeds(inputs, ids)
            ref, got = reference(feeds)["logits"][0], candidate(feeds)["logits"][0]
            klds.append(metrics.kl_divergence(ref, got))
            agree.append(np.argmax(ref, -1) == np.argmax(got, -1))
            bits_ref.append(metrics.bits_per_token(ref[:-1], ids[0, 1:]) * (len(ids[0]) - 1))
            bits_got.append(metrics.bits_per_token(got[:-1], ids[0, 1:]) * (len(ids[0]) - 1))
            positions += len(ids[0]) - 1
        prompt = held_out[0][:, :64]
        want = greedy(reference, inputs, prompt, GREEDY_STEPS - 1)[0]
        have = greedy(candidate, inputs, prompt, GREEDY_STEPS - 1)[0]
        agreed, _ = metrics.token_agreement(want, have)
        return {"kld_mean": float(np.concatenate(klds).mean()), "kld_max": float(np.concatenate(klds).max()),
                "top1": float(np.concatenate(agree).mean()), "bits_per_token_fp32": float(sum(bits_ref) / positions),
                "bits_per_token": float(sum(bits_got) / positions), "greedy_agreement": agreed / GREEDY_STEPS,
                "tokens": positions}

    def gate_misses(self, result: dict[str, float], tolerance: Any) -> list[str]:
        return distribution_misses(result, tolerance)

    def gate_score(self, result: dict[str, float]) -> float:
        return result["kld_mean"]

    def gate_summary(self, result: dict[str, float]) -> str:
        return (f"KL {result['kld_mean']:.4f}, top-1 {result['top1']:.3f}, bits/token {result['bits_per_token']:.4f} "
                f"(fp32 {result['bits_per_token_fp32']:.4f}), greedy {result['greedy_agreement']:.2f}")

    # --- timing ----------------------------------------------------------------------------------------

    def time_graph(self, session: Any, golden: dict[str, np.ndarray], repeats: int = 3) -> dict[str, float]:
        """Milliseconds of the golden prefill and of one decode step after it."""
        loop = DecodeLoop(session.run, session.inputs)
        prompt = golden["prefill.input_ids"]
        prefill_feeds = loop.feeds(prompt)
        prefill = median_ms(lambda: session.run(prefill_feeds), repeats)
        loop.advance(session.run(prefill_feeds))
        step_feeds = loop.feeds(prompt[:, -1:])
        decode = median_ms(lambda: session.run(step_feeds), repeats * 4)
        return {"prefill_ms": prefill, "decode_ms": decode, "score_ms": prefill + DECODE_TOKENS * decode}

    def bench(self, session: Any, config: Any) -> dict:
        """llama-bench style: `-p` prompt tokens (the golden prompt, repeated), then `-n` generated tokens."""
        limit = session.model["max_positions"]
        if config.prompt_tokens + config.new_tokens > limit:
            raise InputError(f"-p {config.prompt_tokens} + -n {config.new_tokens} exceeds this model's {limit} positions")
        prompt = np.resize(session.bundle.golden()["prefill.input_ids"][0], config.prompt_tokens)[None].astype(np.int64)
        prefill_s, steps_ms = [], []
        for rep in range(config.warmup + config.repeats):
            timed = session.own_loop(prompt[0], config.new_tokens)  # a runtime's own loop (genai), timed inside it
            if timed is not None:
                if rep >= config.warmup:
                    prefill_s.append(timed.first_seconds)
                    steps_ms += [s * 1e3 for s in timed.step_seconds]
                continue
            loop = decode_loop(session, config.prompt_tokens + config.new_tokens)  # the Generator's loop
            started = time.perf_counter()
            out = loop.prefill(prompt, logits_to_keep=1)
            first = time.perf_counter() - started
            token, step_ms = int(out["logits"][0, -1].argmax()), []
            for _ in range(config.new_tokens - 1):
                started = time.perf_counter()
                out = loop.step(token)
                step_ms.append((time.perf_counter() - started) * 1e3)
                token = int(out["logits"][0, -1].argmax())
            if rep >= config.warmup:
                prefill_s.append(first)
                steps_ms += step_ms
        ttft = statistics.median(prefill_s)
        decode = 1e3 / statistics.mean(steps_ms) if steps_ms else None
        batched = [{"batch": b, **self._batched_decode(session, prompt, b, config)}
                   for b in getattr(config, "decode_batch_sizes", ()) if session.backend.capabilities.graph_runs]
        for row in batched:
            row["x_batch_1"] = row["decode_tokens_per_s"] / decode if decode else None
        return {"prompt_tokens": config.prompt_tokens, "new_tokens": config.new_tokens,
                "time_to_first_token_ms": ttft * 1e3, "ttft_min_ms": min(prefill_s) * 1e3,
                "ttft_max_ms": max(prefill_s) * 1e3, "prefill_tokens_per_s": config.prompt_tokens / ttft,
                "decode_tokens_per_s": decode, "decode_token_latency": percentiles(steps_ms) if steps_ms else {},
                **({"batched_decode": batched} if batched else {})}

    @staticmethod
    def _batched_decode(session: Any, prompt: np.ndarray, batch: int, config: Any) -> dict:
        """`batch` rows of the prompt prefilled together, then decoded together: rows x steps / decode seconds."""
        rows = np.repeat(prompt, batch, axis=0)
        step_s = []
        for rep in range(config.warmup + config.repeats):
            loop = DecodeLoop(session.run, session.inputs, batch=batch)
            tokens = loop.prefill(rows, logits_to_keep=1)["logits"][:, -1].argmax(-1)
            started = time.perf_counter()
            for _ in range(config.new_tokens - 1):
                tokens = loop.step(list(tokens))["logits"][:, -1].argmax(-1)
            if rep >= config.warmup and config.new_tokens > 1:
                step_s.append((time.perf_counter() - started) / (config.new_tokens - 1))
        step = statistics.median(step_s) if step_s else float("nan")
        return {"decode_tokens_per_s": batch / step, "step_ms": step * 1e3}

    def bench_extras(self, bundle: Any, results: list[dict]) -> None:
        """Each result's decode step against this machine's read bandwidth (edgetx.measure.roofline)."""
        from edgetx.measure.roofline import decode_bounds, measure_read_bandwidth

        counts = sorted({r["threads"] if isinstance(r["threads"], int) else (os.cpu_count() or 1) for r in results})
        bandwidth = {t: measure_read_bandwidth(t) for t in counts}
        for result, row in zip(results, decode_bounds(bundle, results, bandwidth, default_threads=os.cpu_count() or 1)):
            result["memory_bound"] = row

    def bench_rows(self, results: list[dict]) -> list[BenchTable]:
        r0 = results[0]
        rows = []
        for r in results:
            lat = r["decode_token_latency"]
            rows.append((r["variant"], r["backend"], str(r["threads"]), f"{r['file_mb']:.1f}", f"{r['load_ms']:.0f}",
                         f"{r['time_to_first_token_ms']:.1f} ({r['ttft_min_ms']:.1f}-{r['ttft_max_ms']:.1f})",
                         f"{r['prefill_tokens_per_s']:.0f}",
                         f"{r['decode_tokens_per_s']:.1f}" if r["decode_tokens_per_s"] else "-",
                         f"{lat['p50_ms']:.2f} / {lat['p90_ms']:.2f} / {lat['p99_ms']:.2f}" if lat else "-",
                         f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-"))
        tables = [BenchTable(f"decoder bench: -p {r0['prompt_tokens']} -n {r0['new_tokens']}, {r0['repeats']} repeats "
                             f"after {r0['warmup']} warm-up",
                             ("variant", "backend", "threads", "MB", "load ms", "TTFT ms", "prefill tok/s",
                              "decode tok/s", "token p50/p90/p99 ms", "peak RSS MB"), rows)]
        batched = [(r, b) for r in results for b in r.get("batched_decode", [])]
        if batched:
            tables.append(BenchTable(
                "batched decode: rows decoded together (the same prompt per row), aggregate tokens per second",
                ("variant", "threads", "batch", "step ms", "decode tok/s", "x batch 1"),
                [(r["variant"], str(r["threads"]), str(b["batch"]), f"{b['step_ms']:.2f}",
                  f"{b['decode_tokens_per_s']:.1f}", f"{b['x_batch_1']:.2f}x" if b.get("x_batch_1") else "-")
                 for r, b in batched]))
        bounds = [r["memory_bound"] for r in results if "memory_bound" in r]
        if bounds:
            tables.append(BenchTable(
                "memory-bandwidth bound of a decode step (weights + KV cache read per token / measured read bandwidth)",
                ("variant", "threads", "weights MB", "KV MB", "read GB/s", "floor ms", "decode p50 ms", "x floor"),
                [(b["variant"], str(b["threads"]), "-", "-", "-", "-", "-", b.get("note", "-"))
                 if b.get("bound_ms") is None else
                 (b["variant"], str(b["threads"]), f"{b['weight_mb']:.1f}", f"{b['kv_mb']:.1f}",
                  f"{b['bandwidth_gb_s']:.1f}", f"{b['bound_ms']:.2f}", f"{b['decode_ms']:.2f}", f"{b['x_bound']:.1f}x")
                 for b in bounds]))
        return tables

    # --- the report ------------------------------------------------------------------------------------

    def report_axes(self, gated: bool) -> ReportAxes:
        if gated:
            return ReportAxes("held-out bits per token (lower is better)", False, "decode ms per token (p50)")
        return ReportAxes("max |logit diff| vs PyTorch (lower is better)", False, "decode ms per token (p50)")

    def report_accuracy(self, gate: dict | None, reference_gates: list[dict], parity: dict | None) -> tuple[float, dict]:
        if gate is not None:
            return gate["bits_per_token"], {"mean KL": gate["kld_mean"], "top-1": gate["top1"]}
        if reference_gates:  # the fp32 reference that the gates compared against
            return reference_gates[0]["bits_per_token_fp32"], {"mean KL": 0.0, "top-1": 1.0}
        return (parity or {}).get("max_abs", float("nan")), {}

    def report_latency(self, result: dict) -> tuple[float, dict]:
        return result["decode_token_latency"]["p50_ms"], {"TTFT ms": result["time_to_first_token_ms"],
                                                          "decode tok/s": result["decode_tokens_per_s"]}

    # --- the build -------------------------------------------------------------------------------------

    graph_edits = "let prompts ask for the last position's logits only (input logits_to_keep)"

    def graph_passes(self) -> list:
        """Let prompts ask for the last position's logits only: the optional input logits_to_keep."""
        from edgetx.passes.logits_to_keep import LogitsToKeep

        return [LogitsToKeep()]
