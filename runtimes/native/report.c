/* The verdict table and the JSON of `edgetx verify` / `edgetx bench`, for edgetx-native's reports. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "report.h"

static cJSON *number(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); } /* strict JSON */

cJSON *et_report_json(const et_report *r) {
    cJSON *o = cJSON_CreateObject(), *t = cJSON_CreateObject(), *checks = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "variant", r->variant);
    cJSON_AddStringToObject(o, "backend", r->backend);
    cJSON_AddStringToObject(o, "precision", r->precision);
    cJSON_AddBoolToObject(o, "passed", r->passed);
    cJSON_AddItemToObject(o, "max_abs", number(r->max_abs));
    cJSON_AddStringToObject(t, "precision", r->tolerance.precision);
    cJSON_AddItemToObject(t, "max_abs", number(r->tolerance.max_abs));
    cJSON_AddBoolToObject(t, "greedy_must_match", r->tolerance.greedy_must_match);
    cJSON_AddItemToObject(t, "min_cosine", number(r->tolerance.min_cosine));
    cJSON_AddStringToObject(t, "method", r->tolerance.method);
    cJSON_AddItemToObject(t, "measured_spread", number(r->tolerance.measured_spread));
    cJSON_AddItemToObject(t, "max_kld", number(r->tolerance.max_kld));
    cJSON_AddItemToObject(t, "min_top1", number(r->tolerance.min_top1));
    cJSON_AddItemToObject(t, "min_cosine_mean", number(r->tolerance.min_cosine_mean));
    cJSON_AddItemToObject(o, "tolerance", t);
    cJSON_AddStringToObject(o, "tolerance_label", r->tolerance_label);
    for (int i = 0; i < r->check_count; i++) {
        const et_check *c = &r->checks[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "name", c->name);
        cJSON_AddBoolToObject(j, "passed", c->passed);
        cJSON_AddItemToObject(j, "max_abs", c->has_max_abs ? number(c->max_abs) : cJSON_CreateNull());
        cJSON_AddStringToObject(j, "detail", c->detail);
        cJSON_AddItemToObject(j, "tokens", c->has_tokens ? cJSON_CreateIntArray(c->tokens, 2) : cJSON_CreateNull());
        cJSON_AddItemToArray(checks, j);
    }
    cJSON_AddItemToObject(o, "checks", checks);
    cJSON_AddStringToObject(o, "skipped", "");
    return o;
}

/* A plain-text table: columns padded to their widest cell. */
static void table(FILE *out, const char *title, int ncols, const char *const *header, char **cells, int nrows) {
    int width[16] = {0};
    for (int c = 0; c < ncols; c++) width[c] = (int)strlen(header[c]);
    for (int r = 0; r < nrows; r++)
        for (int c = 0; c < ncols; c++)
            if ((int)strlen(cells[r * ncols + c]) > width[c]) width[c] = (int)strlen(cells[r * ncols + c]);
    fprintf(out, "%s\n", title);
    for (int c = 0; c < ncols; c++) fprintf(out, "%-*s%s", width[c], header[c], c + 1 < ncols ? "  " : "\n");
    for (int c = 0; c < ncols; c++) {
        for (int k = 0; k < width[c]; k++) fputc('-', out);
        fputs(c + 1 < ncols ? "  " : "\n", out);
    }
    for (int r = 0; r < nrows; r++)
        for (int c = 0; c < ncols; c++)
            fprintf(out, "%-*s%s", c + 1 < ncols ? width[c] : 0, cells[r * ncols + c], c + 1 < ncols ? "  " : "\n");
}

void et_print_reports(FILE *out, const et_report *reports, int count) {
    static const char *const header[] = {"variant", "backend", "check", "max |diff|", "tolerance", "detail", "result"};
    int rows = 0;
    for (int i = 0; i < count; i++) rows += reports[i].check_count;
    char **cells = calloc((size_t)rows * 7 + 1, sizeof *cells);
    int n = 0;
    for (int i = 0; cells && i < count; i++)
        for (int k = 0; k < reports[i].check_count; k++) {
            const et_check *c = &reports[i].checks[k];
            char diff[32];
            if (c->has_max_abs) snprintf(diff, sizeof diff, "%.2e", c->max_abs);
            else snprintf(diff, sizeof diff, "-");
            const char *row[7] = {reports[i].variant, reports[i].backend, c->name, diff, reports[i].tolerance_label,
                                  c->detail, c->passed ? "pass" : "FAIL"};
            for (int j = 0; j < 7; j++) cells[n++] = strdup(row[j]);
        }
    if (cells) table(out, "parity vs PyTorch golden I/O", 7, header, cells, rows);
    for (int i = 0; i < n; i++) free(cells[i]);
    free(cells);
}

static cJSON *latency_json(const et_latency *l) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "p50_ms", number(l->p50_ms));
    cJSON_AddItemToObject(o, "p90_ms", number(l->p90_ms));
    cJSON_AddItemToObject(o, "p99_ms", number(l->p99_ms));
    cJSON_AddItemToObject(o, "min_ms", number(l->min_ms));
    cJSON_AddItemToObject(o, "max_ms", number(l->max_ms));
    return o;
}

cJSON *et_bench_json(const et_bench_result *r, const et_bench_config *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "variant", r->variant);
    cJSON_AddStringToObject(o, "precision", r->precision);
    cJSON_AddStringToObject(o, "backend", ET_BACKEND);
    if (r->threads > 0) cJSON_AddNumberToObject(o, "threads", r->threads);
    else cJSON_AddStringToObject(o, "threads", "default");
    cJSON_AddItemToObject(o, "file_mb", number(r->file_mb));
    cJSON_AddItemToObject(o, "load_ms", number(r->load_ms));
    cJSON_AddItemToObject(o, "rss_mb", number(r->rss_mb));
    cJSON_AddItemToObject(o, "peak_rss_mb", number(r->peak_rss_mb));
    cJSON_AddItemToObject(o, "load_rss_delta_mb", number(r->load_rss_delta_mb));
    cJSON_AddNumberToObject(o, "warmup", c->warmup);
    cJSON_AddNumberToObject(o, "repeats", c->repeats);
    cJSON_AddStringToObject(o, "machine", r->machine);
    if (r->decoder) {
        cJSON_AddNumberToObject(o, "prompt_tokens", r->prompt_tokens);
        cJSON_AddNumberToObject(o, "new_tokens", r->new_tokens);
        cJSON_AddItemToObject(o, "time_to_first_token_ms", number(r->time_to_first_token_ms));
        cJSON_AddItemToObject(o, "ttft_min_ms", number(r->ttft_min_ms));
        cJSON_AddItemToObject(o, "ttft_max_ms", number(r->ttft_max_ms));
        cJSON_AddItemToObject(o, "prefill_tokens_per_s", number(r->prefill_tokens_per_s));
        cJSON_AddItemToObject(o, "decode_tokens_per_s", number(r->decode_tokens_per_s));
        cJSON_AddItemToObject(o, "decode_token_latency",
                              isnan(r->decode_token_latency.p50_ms) ? cJSON_CreateObject()
                                                                    : latency_json(&r->decode_token_latency));
    } else {
        cJSON_AddItemToObject(o, "latency", latency_json(&r->latency));
    }
    return o;
}

void et_print_bench(FILE *out, const et_bench_result *results, int count, const et_bench_config *c) {
    static const char *const dec[] = {"variant", "backend", "threads", "MB", "load ms", "TTFT ms", "prefill tok/s",
                                      "decode tok/s", "token p50/p90/p99 ms", "peak RSS MB"};
    static const char *const other[] = {"variant", "backend", "threads", "MB", "load ms", "p50/p90/p99 ms", "peak RSS MB"};
    int decoder = count > 0 && results[0].decoder, ncols = decoder ? 10 : 7;
    char **cells = calloc((size_t)count * (size_t)ncols + 1, sizeof *cells), buf[10][128];
    for (int i = 0; cells && i < count; i++) {
        const et_bench_result *r = &results[i];
        const et_latency *l = decoder ? &r->decode_token_latency : &r->latency;
        int k = 0;
        snprintf(buf[k++], 128, "%s", r->variant);
        snprintf(buf[k++], 128, "%s", ET_BACKEND);
        if (r->threads > 0) snprintf(buf[k++], 128, "%d", r->threads);
        else snprintf(buf[k++], 128, "default");
        snprintf(buf[k++], 128, "%.1f", r->file_mb);
        snprintf(buf[k++], 128, "%.0f", r->load_ms);
        if (decoder) {
            snprintf(buf[k++], 128, "%.1f (%.1f-%.1f)", r->time_to_first_token_ms, r->ttft_min_ms, r->ttft_max_ms);
            snprintf(buf[k++], 128, "%.0f", r->prefill_tokens_per_s);
            if (isnan(r->decode_tokens_per_s)) snprintf(buf[k++], 128, "-");
            else snprintf(buf[k++], 128, "%.1f", r->decode_tokens_per_s);
        }
        if (isnan(l->p50_ms)) snprintf(buf[k++], 128, "-");
        else snprintf(buf[k++], 128, "%.2f / %.2f / %.2f", l->p50_ms, l->p90_ms, l->p99_ms);
        snprintf(buf[k++], 128, "%.0f", r->peak_rss_mb);
        for (int j = 0; j < ncols; j++) cells[i * ncols + j] = strdup(buf[j]);
    }
    char title[256];
    if (decoder)
        snprintf(title, sizeof title, "decoder bench: -p %d -n %d, %d repeats after %d warm-up", c->prompt_tokens,
                 c->new_tokens, c->repeats, c->warmup);
    else
        snprintf(title, sizeof title, "bench: the golden batch, %d repeats after %d warm-up", c->repeats, c->warmup);
    if (cells) table(out, title, ncols, decoder ? dec : other, cells, count);
    for (int i = 0; cells && i < count * ncols; i++) free(cells[i]);
    free(cells);
}
