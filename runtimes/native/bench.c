/* Benching a variant like `edgetx bench` (edgetx/measure/bench.py): load time, file size, RSS; decoders llama-bench
 * style (-p prompt tokens taken from the golden prompt, resized; -n generated tokens: TTFT, prefill and decode
 * tokens/s, per-token p50/p90/p99), other kinds the latency of the golden batch. The decode loop passes the cache as
 * arrays (edgetx's Python loop binds it to the session instead). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>

#include "causal.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Current and peak RSS in MiB (/proc/self/status; getrusage's peak elsewhere). */
static void rss_mb(double *current, double *peak) {
    *current = *peak = NAN;
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) *current = atof(line + 6) / 1024;
        if (strncmp(line, "VmHWM:", 6) == 0) *peak = atof(line + 6) / 1024;
    }
    if (f) fclose(f);
    if (isnan(*peak)) {
        struct rusage usage;
        if (getrusage(RUSAGE_SELF, &usage) == 0) *peak = usage.ru_maxrss / 1024.0;
    }
}

static void reset_peak_rss(void) { /* a new peak window per variant (Linux >= 4.0), as bench.py does */
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) fputs("5", f), fclose(f);
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* numpy.percentile's linear interpolation. */
static double percentile(const double *sorted, size_t n, double q) {
    double at = q / 100.0 * (double)(n - 1);
    size_t lo = (size_t)floor(at), hi = lo + 1 < n ? lo + 1 : lo;
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (at - (double)lo);
}

static et_latency latency(double *samples, size_t n) {
    et_latency l = {NAN, NAN, NAN, NAN, NAN};
    if (!n) return l;
    qsort(samples, n, sizeof *samples, by_value);
    l.p50_ms = percentile(samples, n, 50), l.p90_ms = percentile(samples, n, 90), l.p99_ms = percentile(samples, n, 99);
    l.min_ms = samples[0], l.max_ms = samples[n - 1];
    return l;
}

static int decoder(et_bundle *b, et_session *s, const et_bench_config *c, et_bench_result *out, et_error *err) {
    const cJSON *limit = cJSON_GetObjectItem(cJSON_GetObjectItem(b->manifest, "model"), "max_positions");
    if (cJSON_IsNumber(limit) && c->prompt_tokens + c->new_tokens > limit->valuedouble)
        return et_fail(err, ET_USAGE, "--prompt-tokens %d + --new-tokens %d exceeds this model's %d positions",
                       c->prompt_tokens, c->new_tokens, (int)limit->valuedouble);
    const et_npz *g;
    if (et_bundle_golden(b, &g, err)) return err->code;
    const et_array *golden = et_npz_get(g, "prefill.input_ids");
    if (!golden || !golden->count || golden->dtype == ET_OTHER)
        return et_fail(err, ET_REFUSED, "%s: golden I/O has no prefill.input_ids to take prompt tokens from", b->path);
    et_array prompt = {0};
    if (et_ids(&prompt, "input_ids", 1, c->prompt_tokens, NULL)) return et_fail(err, ET_RUNTIME, "out of memory");
    for (int i = 0; i < c->prompt_tokens; i++)  /* numpy.resize: the golden prompt repeated */
        ((int64_t *)prompt.data)[i] = (int64_t)et_value(golden, (size_t)i % golden->count);
    size_t per_rep = c->new_tokens > 1 ? (size_t)c->new_tokens - 1 : 0;
    double *ttft = calloc((size_t)c->repeats + 1, sizeof *ttft);
    double *steps = calloc(per_rep * (size_t)c->repeats + 1, sizeof *steps), step_sum = 0;
    size_t nsteps = 0;
    int rc = !ttft || !steps ? et_fail(err, ET_RUNTIME, "out of memory") : 0;
    for (int rep = 0; !rc && rep < c->warmup + c->repeats; rep++) {
        et_loop loop;
        et_array logits = {0};
        rc = et_loop_init(&loop, b, s, 1, err);
        double started = now_s();
        if (!rc) rc = et_loop_run(&loop, &prompt, NULL, NULL, 1, 1, &logits, err);
        double first = now_s() - started;
        int64_t token = 0;
        if (!rc) token = (int64_t)et_argmax(&logits, logits.count - (size_t)logits.shape[2], (size_t)logits.shape[2]);
        et_array_free(&logits);
        for (size_t i = 0; !rc && i < per_rep; i++) {
            et_array one = {0};
            rc = et_ids(&one, "input_ids", 1, 1, &token) ? et_fail(err, ET_RUNTIME, "out of memory") : 0;
            started = now_s();
            if (!rc) rc = et_loop_run(&loop, &one, NULL, NULL, 0, 1, &logits, err);
            double ms = (now_s() - started) * 1e3;
            if (!rc) token = (int64_t)et_argmax(&logits, 0, (size_t)logits.shape[2]);
            if (!rc && rep >= c->warmup) steps[nsteps++] = ms, step_sum += ms;
            et_array_free(&one), et_array_free(&logits);
        }
        if (!rc && rep >= c->warmup) ttft[rep - c->warmup] = first;
        et_loop_free(&loop);
    }
    if (!rc) {
        et_latency t = latency(ttft, (size_t)c->repeats);
        out->decoder = 1, out->prompt_tokens = c->prompt_tokens, out->new_tokens = c->new_tokens;
        out->time_to_first_token_ms = t.p50_ms * 1e3, out->ttft_min_ms = t.min_ms * 1e3, out->ttft_max_ms = t.max_ms * 1e3;
        out->prefill_tokens_per_s = c->prompt_tokens / t.p50_ms;
        out->decode_tokens_per_s = nsteps ? 1e3 / (step_sum / (double)nsteps) : NAN;
        out->decode_token_latency = latency(steps, nsteps);
    }
    et_array_free(&prompt);
    free(ttft), free(steps);
    return rc;
}

static int golden_batch(et_bundle *b, et_session *s, const et_bench_config *c, et_bench_result *out, et_error *err) {
    const et_npz *g;
    et_array feeds[16], outs[16];
    const char *names[16];
    size_t nfeeds, n = 0;
    const char *prefix = strcmp(et_bundle_kind(b), "encoder") == 0 ? "batch" : "golden";
    if (et_bundle_golden(b, &g, err) || et_stored_batch(b, g, prefix, feeds, &nfeeds, err)) return err->code;
    const cJSON *spec;
    cJSON_ArrayForEach(spec, et_io(b, "outputs")) if (n < 16) names[n++] = cJSON_GetObjectItem(spec, "name")->valuestring;
    double *samples = calloc((size_t)c->repeats + 1, sizeof *samples);
    int rc = samples ? 0 : et_fail(err, ET_RUNTIME, "out of memory");
    for (int rep = 0; !rc && rep < c->warmup + c->repeats; rep++) {
        double started = now_s();
        rc = et_session_run(s, feeds, nfeeds, names, n, outs, err);
        if (!rc && rep >= c->warmup) samples[rep - c->warmup] = (now_s() - started) * 1e3;
        for (size_t i = 0; !rc && i < n; i++) et_array_free(&outs[i]);
    }
    if (!rc) out->latency = latency(samples, (size_t)c->repeats);
    free(samples);
    return rc;
}

int et_bench_variant(et_bundle *b, const char *variant, const et_bench_config *c, et_bench_result *out, et_error *err) {
    memset(out, 0, sizeof *out);
    if (c->repeats < 1 || c->warmup < 0 || c->prompt_tokens < 1 || c->new_tokens < 1)
        return et_fail(err, ET_USAGE, "--runs, --prompt-tokens and --new-tokens must be at least 1");
    if (et_variant_supported(b, variant, err)) return err->code;
    const cJSON *v = et_manifest_variant(b, variant), *precision = cJSON_GetObjectItem(v, "precision");
    snprintf(out->variant, sizeof out->variant, "%s", variant);
    snprintf(out->precision, sizeof out->precision, "%s", cJSON_IsString(precision) ? precision->valuestring : "?");
    struct utsname host;
    snprintf(out->machine, sizeof out->machine, "%s", uname(&host) == 0 ? host.machine : "?");
    out->threads = c->threads;
    char path[8192];
    struct stat st;
    if (et_bundle_file(b, cJSON_GetObjectItem(v, "file")->valuestring, "file", path, sizeof path, err)) return err->code;
    out->file_mb = stat(path, &st) == 0 ? st.st_size / 1e6 : NAN;
    double before, after, peak;
    reset_peak_rss();
    rss_mb(&before, &peak);
    double started = now_s();
    et_session *s = NULL;
    int rc = et_session_open(path, c->threads, &s, err);
    out->load_ms = (now_s() - started) * 1e3;
    rss_mb(&after, &peak);
    out->load_rss_delta_mb = after - before;
    if (!rc) rc = strcmp(et_bundle_kind(b), "causal-lm") == 0 ? decoder(b, s, c, out, err) : golden_batch(b, s, c, out, err);
    rss_mb(&out->rss_mb, &out->peak_rss_mb);
    et_session_close(s);
    return rc;
}
