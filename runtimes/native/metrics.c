/* Comparison metrics as edgetx.verify.metrics computes them (float64), and Tolerance.compare_logits. */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* Largest |ref - got| over n values; NaN or inf anywhere counts as infinitely far. */
double et_max_abs(const et_array *ref, size_t ref_at, const et_array *got, size_t got_at, size_t n) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(et_value(ref, ref_at + i) - et_value(got, got_at + i));
        if (isnan(d)) d = INFINITY;
        if (d > worst) worst = d;
    }
    return worst;
}

static double log_sum_exp(const et_array *a, size_t at, size_t n, double *max_out) {
    double max = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        double v = et_value(a, at + i);
        if (v > max || isnan(v)) max = v;
    }
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += exp(et_value(a, at + i) - max);
    *max_out = max;
    return log(sum);
}

/* KL(ref || got) of one position's next-token distributions, in nats. */
double et_kl(const et_array *ref, size_t ref_at, const et_array *got, size_t got_at, size_t vocab) {
    double ref_max, got_max;
    double ref_lse = log_sum_exp(ref, ref_at, vocab, &ref_max), got_lse = log_sum_exp(got, got_at, vocab, &got_max);
    double kl = 0.0;
    for (size_t i = 0; i < vocab; i++) {
        double p = et_value(ref, ref_at + i) - ref_max - ref_lse, q = et_value(got, got_at + i) - got_max - got_lse;
        kl += exp(p) * (p - q);
    }
    return kl;
}

/* numpy's argmax: the first largest value, or the first NaN. */
size_t et_argmax(const et_array *a, size_t at, size_t n) {
    size_t best = 0;
    double top = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        double v = et_value(a, at + i);
        if (isnan(v)) return i;
        if (i == 0 || v > top) top = v, best = i;
    }
    return best;
}

/* Cosine of two rows; identical rows (zero ones included) are 1. */
double et_cosine(const double *ref, const double *got, size_t n) {
    double dot = 0, rr = 0, gg = 0;
    int same = 1;
    for (size_t i = 0; i < n; i++) {
        dot += ref[i] * got[i], rr += ref[i] * ref[i], gg += got[i] * got[i];
        same &= ref[i] == got[i];
    }
    if (same) return 1.0;
    double norms = sqrt(rr) * sqrt(gg);
    return dot / (norms > DBL_MIN ? norms : DBL_MIN);
}

int et_compare_logits(const et_tolerance *t, const et_array *ref, size_t ref_at, const et_array *got, size_t got_at,
                      size_t rows, size_t vocab, double *diff, char *detail, size_t detail_size) {
    *diff = et_max_abs(ref, ref_at, got, got_at, rows * vocab);
    detail[0] = 0;
    if (isnan(t->max_kld)) return *diff <= t->max_abs;
    double kl = 0.0, agree = 0.0;
    for (size_t r = 0; r < rows; r++) {
        kl += et_kl(ref, ref_at + r * vocab, got, got_at + r * vocab, vocab);
        agree += et_argmax(ref, ref_at + r * vocab, vocab) == et_argmax(got, got_at + r * vocab, vocab);
    }
    kl = rows ? kl / (double)rows : NAN;
    double top1 = rows ? agree / (double)rows : 1.0;
    snprintf(detail, detail_size, "mean KL %.2e (<= %g), top-1 %.3f", kl, t->max_kld, top1);
    return kl <= t->max_kld;
}

et_check *et_add_check(et_report *r, const char *name, int passed, double max_abs, const char *detail_format, ...) {
    if (r->check_count == ET_MAX_CHECKS) return &r->checks[ET_MAX_CHECKS - 1];
    et_check *c = &r->checks[r->check_count++];
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    c->passed = passed;
    c->has_max_abs = !isnan(max_abs);
    c->max_abs = max_abs;
    va_list args;
    va_start(args, detail_format);
    vsnprintf(c->detail, sizeof c->detail, detail_format, args);
    va_end(args);
    return c;
}
