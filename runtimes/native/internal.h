/* Shared between the library's files; not part of the public API (edgetx_native.h). */
#ifndef EDGETX_NATIVE_INTERNAL_H
#define EDGETX_NATIVE_INTERNAL_H

#include <cjson/cJSON.h>

#include "edgetx_native.h"

#define ET_BACKEND "native-cpu"

/* Fill err (printf-style) and return code. */
int et_fail(et_error *err, int code, const char *format, ...) __attribute__((format(printf, 3, 4)));

struct et_bundle {
    char path[4096];      /* as given */
    char real[4096];      /* realpath() of it */
    cJSON *manifest;
    et_npz golden;
    int golden_loaded;
};

/* The bundle-relative `rel` as a path inside the bundle, refused (ET_REFUSED) when it would leave it. */
int et_bundle_file(const et_bundle *b, const char *rel, const char *where, char *out, size_t size, et_error *err);
const cJSON *et_manifest_variant(const et_bundle *b, const char *name);
int et_bundle_golden(et_bundle *b, const et_npz **out, et_error *err);
int et_tolerance_of(const et_bundle *b, const char *variant, et_tolerance *out, et_error *err);

/* ---- onnxruntime sessions ---- */
typedef struct et_session et_session;
int et_session_open(const char *model_path, int threads, et_session **out, et_error *err);
void et_session_close(et_session *s);
int et_session_has_input(const et_session *s, const char *name);
/* Run with `feeds` (named arrays), returning the `want` outputs into outs (caller frees with et_array_free). */
int et_session_run(et_session *s, const et_array *feeds, size_t nfeeds, const char *const *want, size_t nwant,
                   et_array *outs, et_error *err);

/* ---- arrays ---- */
int et_array_new(et_array *a, const char *name, et_dtype dtype, int ndim, const int64_t *shape);
size_t et_dtype_size(et_dtype dtype);

/* ---- metrics (edgetx.verify.metrics, in double precision) ---- */
double et_max_abs(const et_array *ref, size_t ref_at, const et_array *got, size_t got_at, size_t n);
double et_kl(const et_array *ref, size_t ref_at, const et_array *got, size_t got_at, size_t vocab);
size_t et_argmax(const et_array *a, size_t at, size_t n);
double et_cosine(const double *ref, const double *got, size_t n);

/* Tolerance.compare_logits over `rows` rows of `vocab` logits: passed, max |diff|, detail. */
int et_compare_logits(const et_tolerance *t, const et_array *ref, size_t ref_at, const et_array *got, size_t got_at,
                      size_t rows, size_t vocab, double *diff, char *detail, size_t detail_size);

et_check *et_add_check(et_report *r, const char *name, int passed, double max_abs, const char *detail_format, ...)
    __attribute__((format(printf, 5, 6)));
const char *et_padding_note(const et_bundle *b, char *buf, size_t size);

/* The kinds' parity checks. */
int et_causal_lm_checks(et_bundle *b, et_session *s, const et_npz *golden, const et_tolerance *t, et_report *r,
                        et_error *err);
int et_encoder_checks(et_bundle *b, et_session *s, const et_npz *golden, const et_tolerance *t, et_report *r,
                      et_error *err);
int et_golden_outputs_check(et_bundle *b, et_session *s, const et_npz *golden, const et_tolerance *t, et_report *r,
                            et_error *err);

/* The golden feeds `{prefix}.{input}` of every io input (at most 16; the arrays stay the npz's). */
int et_stored_batch(const et_bundle *b, const et_npz *g, const char *prefix, et_array *feeds, size_t *n, et_error *err);

/* The io.inputs / io.outputs entries of the manifest. */
const cJSON *et_io(const et_bundle *b, const char *which);

#endif
