/* The causal-LM kind's parity checks (edgetx/kinds/causal_lm.py) and its decode loop (edgetx/kinds/decoding.py):
 * one graph for prefill and decode; inputs input_ids, attention_mask (past+seq), position_ids,
 * past_key_values.{i}.key|value (the past may be empty) and optionally logits_to_keep; outputs logits and
 * present.{i}.key|value. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "causal.h"

#define PAST "past_key_values."
#define PRESENT "present."

void et_loop_free(et_loop *l) {
    for (size_t i = 0; i < l->count; i++) et_array_free(&l->cache[i]);
    free(l->cache);
    free(l->present);
    l->cache = NULL, l->present = NULL, l->count = 0;
}

int et_loop_init(et_loop *l, const et_bundle *b, et_session *s, int batch, et_error *err) {
    memset(l, 0, sizeof *l);
    l->session = s, l->batch = batch;
    const cJSON *spec, *inputs = et_io(b, "inputs");
    size_t n = 0;
    cJSON_ArrayForEach(spec, inputs) n += strncmp(cJSON_GetObjectItem(spec, "name")->valuestring, PAST, strlen(PAST)) == 0;
    l->cache = calloc(n ? n : 1, sizeof *l->cache);
    l->present = calloc(n ? n : 1, sizeof *l->present);
    if (!l->cache || !l->present) return et_fail(err, ET_RUNTIME, "out of memory");
    cJSON_ArrayForEach(spec, inputs) {
        const char *name = cJSON_GetObjectItem(spec, "name")->valuestring;
        if (strncmp(name, PAST, strlen(PAST)) != 0) continue;
        const cJSON *dim, *shape = cJSON_GetObjectItem(spec, "shape");
        int64_t dims[ET_MAX_DIMS];
        int ndim = 0;
        cJSON_ArrayForEach(dim, shape) {
            if (ndim == ET_MAX_DIMS) break;
            if (cJSON_IsNumber(dim)) dims[ndim++] = (int64_t)dim->valuedouble;
            else if (cJSON_IsString(dim) && strcmp(dim->valuestring, "batch") == 0) dims[ndim++] = batch;
            else if (cJSON_IsString(dim) && strcmp(dim->valuestring, "past") == 0) dims[ndim++] = 0;
            else return et_fail(err, ET_UNSUPPORTED, "cache input '%s' has a dim the causal-LM contract does not name; "
                                "not supported by the native verifier yet", name);
        }
        if (strcmp(cJSON_GetObjectItem(spec, "dtype")->valuestring, "float32") != 0 || ndim != 4)
            return et_fail(err, ET_UNSUPPORTED, "cache input '%s' is not float32 [batch, heads, past, head_dim]: not "
                           "supported by the native verifier yet", name);
        if (et_array_new(&l->cache[l->count], name, ET_F32, ndim, dims)) return et_fail(err, ET_RUNTIME, "out of memory");
        snprintf(l->present[l->count].name, sizeof l->present[0].name, PRESENT "%s", name + strlen(PAST));
        l->count++;
    }
    return 0;
}

int et_loop_past(const et_loop *l) { return l->count ? (int)l->cache[0].shape[2] : 0; }

int et_loop_run(et_loop *l, const et_array *ids, const et_array *mask, const et_array *positions, int keep_last,
                int advance, et_array *logits, et_error *err) {
    int64_t batch = ids->shape[0], seq = ids->shape[1], past = et_loop_past(l);
    size_t nfeeds = 3 + l->count + 1, nwant = 1 + (advance ? l->count : 0);
    et_array *feeds = calloc(nfeeds, sizeof *feeds), *outs = calloc(nwant, sizeof *outs);
    const char **want = calloc(nwant, sizeof *want);
    et_array own_mask = {0}, own_positions = {0}, keep = {0};
    int rc = !feeds || !outs || !want ? et_fail(err, ET_RUNTIME, "out of memory") : 0;
    if (!rc && !mask) {
        int64_t shape[2] = {batch, past + seq};
        rc = et_array_new(&own_mask, "attention_mask", ET_I64, 2, shape) ? et_fail(err, ET_RUNTIME, "out of memory") : 0;
        for (size_t i = 0; !rc && i < own_mask.count; i++) ((int64_t *)own_mask.data)[i] = 1;
        mask = &own_mask;
    }
    if (!rc && !positions) {
        int64_t shape[2] = {batch, seq};
        rc = et_array_new(&own_positions, "position_ids", ET_I64, 2, shape) ? et_fail(err, ET_RUNTIME, "out of memory") : 0;
        for (size_t i = 0; !rc && i < own_positions.count; i++)
            ((int64_t *)own_positions.data)[i] = past + (int64_t)(i % (size_t)seq);
        positions = &own_positions;
    }
    if (!rc) {
        size_t n = 0;
        feeds[n] = *ids, snprintf(feeds[n++].name, sizeof feeds[0].name, "input_ids");
        feeds[n] = *mask, snprintf(feeds[n++].name, sizeof feeds[0].name, "attention_mask");
        feeds[n] = *positions, snprintf(feeds[n++].name, sizeof feeds[0].name, "position_ids");
        for (size_t i = 0; i < l->count; i++) feeds[n++] = l->cache[i];
        if (keep_last && et_session_has_input(l->session, "logits_to_keep")) {
            rc = et_array_new(&keep, "logits_to_keep", ET_I64, 0, NULL) ? et_fail(err, ET_RUNTIME, "out of memory") : 0;
            if (!rc) *(int64_t *)keep.data = 1, feeds[n++] = keep;
        }
        want[0] = "logits";
        for (size_t i = 0; advance && i < l->count; i++) want[1 + i] = l->present[i].name;
        if (!rc) rc = et_session_run(l->session, feeds, n, want, nwant, outs, err);
    }
    if (!rc) {
        *logits = outs[0];
        for (size_t i = 0; advance && i < l->count; i++) {
            et_array_free(&l->cache[i]);
            char name[256];
            snprintf(name, sizeof name, "%s", l->cache[i].name);
            l->cache[i] = outs[1 + i];
            snprintf(l->cache[i].name, sizeof l->cache[i].name, "%s", name);
        }
        if (logits->ndim != 3 || logits->shape[0] != batch)
            rc = et_fail(err, ET_RUNTIME, "the graph's logits have %d dims (batch %lld), not [batch, seq, vocab]",
                         logits->ndim, (long long)(logits->ndim ? logits->shape[0] : 0));
        if (rc) et_array_free(logits);
    }
    et_array_free(&own_mask), et_array_free(&own_positions), et_array_free(&keep);
    free(feeds), free(outs), free(want);
    return rc;
}

int et_ids(et_array *a, const char *name, int64_t rows, int64_t cols, const int64_t *values) {
    int64_t shape[2] = {rows, cols};
    if (et_array_new(a, name, ET_I64, 2, shape)) return -1;
    if (values) memcpy(a->data, values, a->count * sizeof(int64_t));
    return 0;
}
