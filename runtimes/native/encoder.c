/* The encoder kind's parity checks (edgetx/kinds/encoder.py: hidden states at real tokens, pooled embeddings, rows
 * alone) and ModelKind's default "golden outputs" check (edgetx/kinds/base.py) for kinds that keep it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define INVARIANCE_ROWS 4

typedef struct {
    char mode[16];
    int normalize;
} pooling;

/* Pool positions `pos` (n of them; cls_at for "cls") of hidden[base ...] (positions of H values) into out, as float32
 * like edgetx.kinds.encoder.pool. */
static void pool(const et_array *h, size_t base, size_t H, const int64_t *pos, size_t n, int64_t cls_at,
                 const pooling *p, float *out) {
    double norm = 0;
    for (size_t k = 0; k < H; k++) {
        double v;
        if (strcmp(p->mode, "cls") == 0) {
            v = et_value(h, base + (size_t)cls_at * H + k);
        } else if (strcmp(p->mode, "max") == 0) {
            v = -INFINITY;
            for (size_t i = 0; i < n; i++) v = fmax(v, et_value(h, base + (size_t)pos[i] * H + k));
        } else {
            double sum = 0;
            for (size_t i = 0; i < n; i++) sum += (float)et_value(h, base + (size_t)pos[i] * H + k);
            v = sum / (n ? (double)n : 1e-9);
        }
        out[k] = (float)v;
        norm += (double)out[k] * out[k];
    }
    if (p->normalize)
        for (size_t k = 0; k < H; k++) out[k] = (float)(out[k] / fmax(sqrt(norm), 1e-12));
}

/* min and mean cosine, and max |diff|, of rows x H embeddings. */
static void compare_rows(const float *want, const float *got, size_t rows, size_t H, double *min, double *mean,
                         double *diff) {
    double *a = malloc(H * sizeof *a), *b = malloc(H * sizeof *b);
    *min = INFINITY, *mean = 0, *diff = 0;
    for (size_t r = 0; a && b && r < rows; r++) {
        for (size_t k = 0; k < H; k++) {
            a[k] = want[r * H + k], b[k] = got[r * H + k];
            double d = fabs(a[k] - b[k]);
            *diff = fmax(*diff, isnan(d) ? INFINITY : d);
        }
        double c = et_cosine(a, b, H);
        *min = isnan(c) || c < *min ? c : *min;
        *mean += c / (double)rows;
    }
    free(a), free(b);
}

static int read_pooling(const et_bundle *b, pooling *p, et_error *err) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(b->manifest, "model");
    const cJSON *config = cJSON_GetObjectItemCaseSensitive(model, "pooling");
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(config, "mode");
    snprintf(p->mode, sizeof p->mode, "%s", cJSON_IsString(mode) ? mode->valuestring : "mean");
    p->normalize = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(config, "normalize"));
    if (strcmp(p->mode, "mean") && strcmp(p->mode, "cls") && strcmp(p->mode, "max"))
        return et_fail(err, ET_REFUSED, "pooling mode '%s' is not supported (known: mean, cls, max)", p->mode);
    return 0;
}

/* The feeds `{prefix}.{input}` of every io input (edgetx.kinds.base.stored_batch). */
int et_stored_batch(const et_bundle *b, const et_npz *g, const char *prefix, et_array *feeds, size_t *n,
                        et_error *err) {
    const cJSON *spec;
    *n = 0;
    cJSON_ArrayForEach(spec, et_io(b, "inputs")) {
        char key[300];
        snprintf(key, sizeof key, "%s.%s", prefix, cJSON_GetObjectItem(spec, "name")->valuestring);
        const et_array *a = et_npz_get(g, key);
        if (!a || *n == 16)
            return et_fail(err, ET_REFUSED, "%s: golden I/O has no '%s' for the graph's input; rebuild the bundle",
                           et_bundle_path(b), key);
        feeds[*n] = *a;
        snprintf(feeds[*n].name, sizeof feeds[0].name, "%s", cJSON_GetObjectItem(spec, "name")->valuestring);
        (*n)++;
    }
    return 0;
}

static int rows_alone(et_bundle *b, et_session *s, const et_array *feeds, size_t nfeeds, const et_array *mask,
                      const pooling *p, size_t H, size_t rows, float *alone, et_error *err) {
    int64_t W = mask->shape[1];
    const char *want[] = {"last_hidden_state"};
    int rc = 0;
    for (size_t r = 0; !rc && r < rows; r++) {
        et_array single[16], out = {0};
        int64_t *pos = malloc((size_t)W * sizeof *pos), n = 0;
        for (int64_t c = 0; pos && c < W; c++)
            if (et_value(mask, r * (size_t)W + (size_t)c) != 0) pos[n++] = c;
        size_t made = 0;
        for (; pos && made < nfeeds; made++) {
            int64_t shape[2] = {1, n};
            if (feeds[made].ndim != 2 || et_array_new(&single[made], feeds[made].name, feeds[made].dtype, 2, shape)) break;
            for (int64_t i = 0; i < n; i++)
                memcpy((char *)single[made].data + (size_t)i * single[made].itemsize,
                       (const char *)feeds[made].data + (r * (size_t)W + (size_t)pos[i]) * feeds[made].itemsize,
                       single[made].itemsize);
        }
        rc = made < nfeeds ? et_fail(err, ET_RUNTIME, "the golden batch's inputs are not (batch, seq) arrays") : 0;
        if (!rc) rc = et_session_run(s, single, nfeeds, want, 1, &out, err);
        if (!rc && (out.ndim != 3 || (size_t)out.shape[2] != H || out.shape[1] != n))
            rc = et_fail(err, ET_RUNTIME, "last_hidden_state of a row alone has another shape than [1, %lld, %zu]",
                         (long long)n, H);
        for (int64_t i = 0; !rc && i < n; i++) pos[i] = i;
        if (!rc) pool(&out, 0, H, pos, (size_t)n, 0, p, alone + r * H);
        for (size_t i = 0; i < made; i++) et_array_free(&single[i]);
        et_array_free(&out);
        free(pos);
    }
    (void)b;
    return rc;
}

int et_encoder_checks(et_bundle *b, et_session *s, const et_npz *g, const et_tolerance *t, et_report *r, et_error *err) {
    et_array feeds[16], hidden = {0};
    size_t nfeeds = 0;
    pooling p;
    if (read_pooling(b, &p, err) || et_stored_batch(b, g, "batch", feeds, &nfeeds, err)) return err->code;
    const et_array *mask = et_npz_get(g, "batch.attention_mask"), *want = et_npz_get(g, "batch.last_hidden_state");
    const et_array *embeddings = et_npz_get(g, "batch.embeddings"), *alone_want = et_npz_get(g, "batch.alone.last_hidden_state");
    if (!mask || mask->ndim != 2 || !want || want->ndim != 3 || want->shape[0] != mask->shape[0] ||
        want->shape[1] != mask->shape[1] || !embeddings || embeddings->ndim != 2 || embeddings->shape[0] != mask->shape[0] ||
        embeddings->shape[1] != want->shape[2])
        return et_fail(err, ET_REFUSED, "%s: golden I/O lacks the encoder's batch.attention_mask, batch.last_hidden_state "
                       "and batch.embeddings of matching shapes; rebuild the bundle", et_bundle_path(b));
    size_t B = (size_t)mask->shape[0], W = (size_t)mask->shape[1], H = (size_t)want->shape[2];
    const char *names[] = {"last_hidden_state"};
    int rc = et_session_run(s, feeds, nfeeds, names, 1, &hidden, err);
    if (!rc && (hidden.ndim != 3 || hidden.count != want->count))
        rc = et_fail(err, ET_RUNTIME, "last_hidden_state has another shape than the golden batch's");
    size_t rows = B < INVARIANCE_ROWS ? B : INVARIANCE_ROWS;
    float *pooled = calloc(B * H + 1, sizeof *pooled), *alone = calloc(rows * H + 1, sizeof *alone);
    float *alone_ref = calloc(rows * H + 1, sizeof *alone_ref), *golden_emb = calloc(B * H + 1, sizeof *golden_emb);
    int64_t *pos = calloc(W + 1, sizeof *pos);
    if (!rc && (!pooled || !alone || !alone_ref || !golden_emb || !pos)) rc = et_fail(err, ET_RUNTIME, "out of memory");
    if (!rc) {
        double diff = 0;
        for (size_t row = 0; row < B; row++) {
            size_t n = 0;
            for (size_t c = 0; c < W; c++)
                if (et_value(mask, row * W + c) != 0) {
                    pos[n++] = (int64_t)c;
                    diff = fmax(diff, et_max_abs(want, (row * W + c) * H, &hidden, (row * W + c) * H, H));
                }
            pool(&hidden, row * W * H, H, pos, n, 0, &p, pooled + row * H);
        }
        et_add_check(r, "hidden states", diff <= t->max_abs, diff, "%zu sentences, real tokens", B);
        for (size_t i = 0; i < B * H; i++) golden_emb[i] = (float)et_value(embeddings, i);
        double min, mean;
        compare_rows(golden_emb, pooled, B, H, &min, &mean, &diff);
        int ok = min >= t->min_cosine && diff <= t->max_abs && mean >= (isnan(t->min_cosine_mean) ? 0 : t->min_cosine_mean);
        et_add_check(r, "embeddings", ok, diff, "cosine min %.7f mean %.7f (%s pooling%s)", min, mean, p.mode,
                     p.normalize ? ", normalized" : "");
        rc = rows_alone(b, s, feeds, nfeeds, mask, &p, H, rows, alone, err);
    }
    if (!rc && alone_want) {
        if (alone_want->ndim != 3 || (size_t)alone_want->shape[0] != rows || (size_t)alone_want->shape[1] != W ||
            (size_t)alone_want->shape[2] != H)
            rc = et_fail(err, ET_REFUSED, "%s: golden batch.alone.last_hidden_state is not [%zu, %zu, %zu]; rebuild the "
                         "bundle", et_bundle_path(b), rows, W, H);
        for (size_t row = 0; !rc && row < rows; row++) {
            size_t n = 0;
            for (size_t c = 0; c < W; c++)
                if (et_value(mask, row * W + c) != 0) pos[n++] = (int64_t)c;
            pool(alone_want, row * W * H, H, pos, n, n ? pos[0] : 0, &p, alone_ref + row * H);
        }
        if (!rc) {
            double min, mean, diff;
            char note[256];
            compare_rows(alone_ref, alone, rows, H, &min, &mean, &diff);
            et_add_check(r, "rows alone", min >= t->min_cosine && diff <= t->max_abs, diff,
                         "%zu rows alone vs PyTorch's rows alone, cosine min %.7f%s", rows, min,
                         et_padding_note(b, note, sizeof note));
        }
    } else if (!rc) { /* bundles from before the rows-alone golden answers: the graph against itself */
        double min, mean, diff;
        compare_rows(pooled, alone, rows, H, &min, &mean, &diff);
        et_add_check(r, "padding invariance", diff <= t->max_abs, diff, "%zu rows alone vs in the padded batch", rows);
    }
    et_array_free(&hidden);
    free(pooled), free(alone), free(alone_ref), free(golden_emb), free(pos);
    return rc;
}

int et_golden_outputs_check(et_bundle *b, et_session *s, const et_npz *g, const et_tolerance *t, et_report *r,
                            et_error *err) {
    et_array feeds[16], outs[16];
    const et_array *want[16];
    const char *names[16];
    size_t nfeeds = 0, n = 0;
    if (et_stored_batch(b, g, "golden", feeds, &nfeeds, err)) return err->code;
    const cJSON *spec;
    char listed[1024] = "";
    cJSON_ArrayForEach(spec, et_io(b, "outputs")) {
        char key[300];
        const char *name = cJSON_GetObjectItem(spec, "name")->valuestring;
        snprintf(key, sizeof key, "golden.%s", name);
        if (n < 16 && (want[n] = et_npz_get(g, key)) != NULL) {
            snprintf(listed + strlen(listed), sizeof listed - strlen(listed), "%s%s", n ? ", " : "", name);
            names[n++] = name;
        }
    }
    int rc = et_session_run(s, feeds, nfeeds, names, n, outs, err);
    if (rc) return rc;
    int finite = 1;
    double diff = 0, cosine = INFINITY;
    for (size_t i = 0; i < n; i++) {
        if (outs[i].count != want[i]->count)
            rc = et_fail(err, ET_RUNTIME, "output '%s' has %zu values, PyTorch's %zu", names[i], outs[i].count,
                         want[i]->count);
        for (size_t k = 0; !rc && k < outs[i].count; k++) finite &= isfinite(et_value(&outs[i], k));
        if (!rc) diff = fmax(diff, et_max_abs(want[i], 0, &outs[i], 0, outs[i].count));
        size_t rows = want[i]->ndim ? (size_t)want[i]->shape[0] : 1, width = rows ? want[i]->count / rows : 0;
        double *a = malloc((width + 1) * sizeof *a), *c = malloc((width + 1) * sizeof *c);
        for (size_t row = 0; !rc && a && c && row < rows; row++) {
            for (size_t k = 0; k < width; k++)
                a[k] = et_value(want[i], row * width + k), c[k] = et_value(&outs[i], row * width + k);
            double cos = et_cosine(a, c, width);
            cosine = isnan(cos) || cos < cosine ? cos : cosine;
        }
        free(a), free(c);
    }
    if (!rc) {
        if (!finite)
            et_add_check(r, "golden outputs", 0, diff, "%s: NaN or inf in the outputs", listed);
        else if (isnan(t->max_kld))
            et_add_check(r, "golden outputs", diff <= t->max_abs, diff, "%s: max |diff| %.2e (<= %.2e)", listed, diff,
                         t->max_abs);
        else
            et_add_check(r, "golden outputs", cosine >= t->min_cosine, diff, "%s: cosine min %.4f (>= %g)", listed,
                         cosine, t->min_cosine);
    }
    for (size_t i = 0; i < n; i++) et_array_free(&outs[i]);
    return rc;
}
