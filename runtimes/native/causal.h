/* The causal-LM decode loop (edgetx/kinds/decoding.py's DecodeLoop), shared by parity and bench. */
#ifndef EDGETX_NATIVE_CAUSAL_H
#define EDGETX_NATIVE_CAUSAL_H

#include "internal.h"

typedef struct {
    et_session *session;
    int batch;
    et_array *cache;   /* past_key_values.* as the next run feeds them */
    et_array *present; /* only .name used: the present.* output that becomes each past */
    size_t count;
} et_loop;

int et_loop_init(et_loop *l, const et_bundle *b, et_session *s, int batch, et_error *err);
void et_loop_free(et_loop *l);
int et_loop_past(const et_loop *l);
/* Run `ids` (batch, seq) on the cache; NULL mask / positions = all ones / counting on from the cache. keep_last:
 * feed logits_to_keep = 1 where the graph takes it. advance: take the presents as the cache. */
int et_loop_run(et_loop *l, const et_array *ids, const et_array *mask, const et_array *positions, int keep_last,
                int advance, et_array *logits, et_error *err);
/* A (rows, cols) int64 array, filled from values when given. */
int et_ids(et_array *a, const char *name, int64_t rows, int64_t cols, const int64_t *values);

#endif
