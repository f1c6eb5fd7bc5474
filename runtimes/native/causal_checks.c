/* The causal-LM parity checks, as CausalLM.parity_checks runs them: prefill, greedy decode with the KV cache,
 * cache == recompute, padded batch, rows alone (or padding invariance for bundles without rows-alone answers). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "causal.h"

/* golden[name] with `ndim` dims (and dims[i] when >= 0), else ET_REFUSED. */
static const et_array *need(const et_bundle *b, const et_npz *g, const char *name, int ndim, const int64_t *dims,
                            et_error *err) {
    const et_array *a = et_npz_get(g, name);
    int ok = a && a->ndim == ndim && a->dtype != ET_OTHER;
    for (int i = 0; ok && dims && i < ndim; i++) ok = dims[i] < 0 || a->shape[i] == dims[i];
    if (!ok) et_fail(err, ET_REFUSED, "%s: golden I/O has no '%s' of the shape a causal-LM bundle stores (%d dims%s); "
                     "rebuild the bundle", et_bundle_path(b), name, ndim, a ? ", got another shape" : "");
    return ok ? a : NULL;
}

/* The last position's logits of every row of (batch, seq, vocab) logits, as (batch, vocab) float32. */
static int last_positions(const et_array *logits, et_array *out) {
    int64_t rows = logits->shape[0], seq = logits->shape[1], vocab = logits->shape[2], shape[2] = {rows, vocab};
    if (et_array_new(out, "last", ET_F32, 2, shape)) return -1;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t v = 0; v < vocab; v++)
            ((float *)out->data)[r * vocab + v] = (float)et_value(logits, (size_t)((r * seq + seq - 1) * vocab + v));
    return 0;
}

static int vocab_matches(const et_array *logits, int64_t vocab, et_error *err) {
    if (logits->shape[2] == vocab) return 0;
    return et_fail(err, ET_RUNTIME, "the graph's logits have a vocabulary of %lld, the golden I/O %lld",
                   (long long)logits->shape[2], (long long)vocab);
}

static int padded_checks(et_bundle *b, et_session *s, const et_npz *g, const et_tolerance *t, et_report *r,
                         int64_t vocab, et_error *err) {
    const et_array *ids = need(b, g, "padded.input_ids", 2, NULL, err);
    const et_array *mask = ids ? need(b, g, "padded.attention_mask", 2, ids->shape, err) : NULL;
    const et_array *pos = mask ? need(b, g, "padded.position_ids", 2, ids->shape, err) : NULL;
    int64_t want_shape[2] = {ids ? ids->shape[0] : 0, vocab};
    const et_array *want = pos ? need(b, g, "padded.logits", 2, want_shape, err) : NULL;
    if (!want) return err->code;
    int64_t rows = ids->shape[0], width = ids->shape[1];
    et_array feeds[3], logits = {0}, batch = {0}, alone = {0};
    memset(feeds, 0, sizeof feeds);
    int64_t shape[2] = {rows, vocab};
    et_loop loop = {0};
    int rc = et_ids(&feeds[0], "input_ids", rows, width, NULL) || et_ids(&feeds[1], "attention_mask", rows, width, NULL) ||
             et_ids(&feeds[2], "position_ids", rows, width, NULL) || et_array_new(&alone, "alone", ET_F32, 2, shape)
                 ? et_fail(err, ET_RUNTIME, "out of memory") : 0;
    for (size_t i = 0; !rc && i < ids->count; i++) {
        ((int64_t *)feeds[0].data)[i] = (int64_t)et_value(ids, i);
        ((int64_t *)feeds[1].data)[i] = (int64_t)et_value(mask, i);
        ((int64_t *)feeds[2].data)[i] = (int64_t)et_value(pos, i);
    }
    if (!rc) rc = et_loop_init(&loop, b, s, (int)rows, err);
    if (!rc) rc = et_loop_run(&loop, &feeds[0], &feeds[1], &feeds[2], 0, 0, &logits, err);
    if (!rc) rc = vocab_matches(&logits, vocab, err);
    if (!rc) rc = last_positions(&logits, &batch) ? et_fail(err, ET_RUNTIME, "out of memory") : 0;
    et_array_free(&logits);
    et_loop_free(&loop);
    char detail[512];
    double diff;
    if (!rc) {
        int ok = et_compare_logits(t, want, 0, &batch, 0, (size_t)rows, (size_t)vocab, &diff, detail, sizeof detail);
        et_add_check(r, "padded batch", ok, diff, "%lld rows left-padded to %lld", (long long)rows, (long long)width);
    }
    for (int64_t row = 0; !rc && row < rows; row++) { /* each row alone, unpadded */
        int64_t *real = malloc((size_t)width * sizeof *real), n = 0;
        if (!real) rc = et_fail(err, ET_RUNTIME, "out of memory");
        for (int64_t c = 0; real && c < width; c++)
            if (((int64_t *)feeds[1].data)[row * width + c]) real[n++] = ((int64_t *)feeds[0].data)[row * width + c];
        et_array one = {0}, out = {0}, last = {0};
        if (!rc) rc = et_ids(&one, "input_ids", 1, n, real) ? et_fail(err, ET_RUNTIME, "out of memory") : 0;
        free(real);
        if (!rc) rc = et_loop_init(&loop, b, s, 1, err);
        if (!rc) rc = et_loop_run(&loop, &one, NULL, NULL, 0, 0, &out, err);
        if (!rc) rc = vocab_matches(&out, vocab, err);
        if (!rc && last_positions(&out, &last) == 0)
            memcpy((float *)alone.data + row * vocab, last.data, (size_t)vocab * sizeof(float));
        et_loop_free(&loop), et_array_free(&one), et_array_free(&out), et_array_free(&last);
    }
    if (!rc) {
        const et_array *alone_want = et_npz_get(g, "padded.alone_logits");
        if (alone_want) {
            if (!(alone_want = need(b, g, "padded.alone_logits", 2, want_shape, err))) rc = err->code;
            char note[256];
            int ok = !rc && et_compare_logits(t, alone_want, 0, &alone, 0, (size_t)rows, (size_t)vocab, &diff, detail,
                                              sizeof detail);
            if (!rc)
                et_add_check(r, "rows alone", ok, diff, "%lld rows alone vs PyTorch's rows alone%s", (long long)rows,
                             et_padding_note(b, note, sizeof note));
        } else { /* bundles from before the rows-alone golden answers: the graph against itself */
            int ok = et_compare_logits(t, &batch, 0, &alone, 0, (size_t)rows, (size_t)vocab, &diff, detail, sizeof detail);
            et_add_check(r, "padding invariance", ok, diff, "%lld rows alone vs in the padded batch", (long long)rows);
        }
    }
    for (int i = 0; i < 3; i++) et_array_free(&feeds[i]);
    et_array_free(&batch), et_array_free(&alone);
    return rc;
}

int et_causal_lm_checks(et_bundle *b, et_session *s, const et_npz *g, const et_tolerance *t, et_report *r,
                        et_error *err) {
    const et_array *prompt = need(b, g, "prefill.input_ids", 2, (int64_t[]){1, -1}, err);
    const et_array *prefill = prompt ? need(b, g, "prefill.logits", 3, (int64_t[]){1, prompt->shape[1], -1}, err) : NULL;
    const et_array *tokens = prefill ? need(b, g, "decode.tokens", 1, NULL, err) : NULL;
    const et_array *want = tokens ? need(b, g, "decode.logits", 2, (int64_t[]){tokens->shape[0], prefill->shape[2]}, err)
                                  : NULL;
    if (!want) return err->code;
    int64_t S = prompt->shape[1], V = prefill->shape[2], N = tokens->shape[0];
    int64_t *picks = calloc((size_t)N + 1, sizeof *picks), *full = calloc((size_t)(S + N), sizeof *full);
    et_array ids = {0}, first = {0}, steps = {0}, out = {0};
    int64_t steps_shape[2] = {N, V};
    et_loop loop = {0};
    int rc = !picks || !full || et_array_new(&steps, "steps", ET_F32, 2, steps_shape) ? et_fail(err, ET_RUNTIME, "out of memory") : 0;
    for (int64_t i = 0; !rc && i < S; i++) full[i] = (int64_t)et_value(prompt, (size_t)i);
    /* greedy: the prompt with every position's logits, then N steps fed the previous pick */
    if (!rc) rc = et_ids(&ids, "input_ids", 1, S, full) ? et_fail(err, ET_RUNTIME, "out of memory") : 0;
    if (!rc) rc = et_loop_init(&loop, b, s, 1, err);
    if (!rc) rc = et_loop_run(&loop, &ids, NULL, NULL, 0, 1, &first, err);
    if (!rc) rc = vocab_matches(&first, V, err);
    if (!rc && first.shape[1] != S) rc = et_fail(err, ET_RUNTIME, "the prompt run returned %lld positions, not %lld",
                                                 (long long)first.shape[1], (long long)S);
    if (!rc) picks[0] = (int64_t)et_argmax(&first, (size_t)((S - 1) * V), (size_t)V);
    for (int64_t i = 0; !rc && i < N; i++) {
        et_array one = {0}, logits = {0};
        rc = et_ids(&one, "input_ids", 1, 1, &picks[i]) ? et_fail(err, ET_RUNTIME, "out of memory") : 0;
        if (!rc) rc = et_loop_run(&loop, &one, NULL, NULL, 0, 1, &logits, err);
        if (!rc) rc = vocab_matches(&logits, V, err);
        if (!rc) {
            for (int64_t v = 0; v < V; v++) ((float *)steps.data)[i * V + v] = (float)et_value(&logits, (size_t)v);
            picks[i + 1] = (int64_t)et_argmax(&logits, 0, (size_t)V);
        }
        et_array_free(&one), et_array_free(&logits);
    }
    et_loop_free(&loop);
    char detail[512];
    double diff;
    if (!rc) {
        int ok = et_compare_logits(t, prefill, 0, &first, 0, (size_t)S, (size_t)V, &diff, detail, sizeof detail);
        et_add_check(r, "prefill", ok, diff, "%lld prompt positions%s%s", (long long)S, *detail ? "; " : "", detail);
        int64_t agreed = 0;
        while (agreed < N && (int64_t)et_value(tokens, (size_t)agreed) == picks[agreed]) agreed++;
        int matched = agreed == N && N > 0 && (size_t)picks[N] == et_argmax(want, (size_t)((N - 1) * V), (size_t)V);
        double kl = INFINITY;
        ok = 0, diff = INFINITY;
        if (agreed) {
            ok = et_compare_logits(t, want, 0, &steps, 0, (size_t)agreed, (size_t)V, &diff, detail, sizeof detail);
            kl = -INFINITY;
            for (int64_t i = 0; i < agreed; i++) {
                double k = et_kl(want, (size_t)(i * V), &steps, (size_t)(i * V), (size_t)V);
                if (k > kl || isnan(k)) kl = k;
            }
        }
        ok = ok && (matched || !t->greedy_must_match);
        char summary[128];
        if (matched) snprintf(summary, sizeof summary, "%lld steps, all tokens identical", (long long)N);
        else snprintf(summary, sizeof summary, "tokens agree for %lld of %lld steps", (long long)agreed, (long long)N);
        et_check *c = et_add_check(r, "greedy decode", ok, diff, "%s; max KL %.1e", summary, kl);
        c->has_tokens = 1, c->tokens[0] = (int)(matched ? N : agreed), c->tokens[1] = (int)N;
        /* cache == recompute: one pass over the prompt and the fed tokens, no cache */
        for (int64_t i = 0; i < N; i++) full[S + i] = picks[i];
        et_array_free(&ids);
        rc = et_ids(&ids, "input_ids", 1, S + N, full) ? et_fail(err, ET_RUNTIME, "out of memory") : 0;
        if (!rc) rc = et_loop_init(&loop, b, s, 1, err);
        if (!rc) rc = et_loop_run(&loop, &ids, NULL, NULL, 0, 0, &out, err);
        if (!rc) rc = vocab_matches(&out, V, err);
        et_loop_free(&loop);
        if (!rc) {
            ok = et_compare_logits(t, &out, (size_t)(S * V), &steps, 0, (size_t)N, (size_t)V, &diff, detail,
                                   sizeof detail);
            et_add_check(r, "cache == recompute", ok, diff, "%lld positions%s%s", (long long)N, *detail ? "; " : "",
                         detail);
        }
    }
    if (!rc && et_npz_get(g, "padded.input_ids")) rc = padded_checks(b, s, g, t, r, V, err);
    et_array_free(&ids), et_array_free(&first), et_array_free(&steps), et_array_free(&out);
    free(picks), free(full);
    return rc;
}
