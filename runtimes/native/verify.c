/* Verifying a variant (edgetx.verify.parity.verify): the kind's checks under the variant's tolerance. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* Kinds whose parity checks the native verifier does not implement (each overrides ModelKind.parity_checks). */
static const char *const OWN_CHECKS[] = {"seq2seq", "speech-recognition", "zero-shot-image-classification",
                                         "sequence-classification", "token-classification", "image-classification",
                                         "image-encoder"};

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

int et_variant_supported(const et_bundle *b, const char *variant, et_error *err) {
    if (et_bundle_check_variant(b, variant, err)) return err->code;
    const cJSON *v = et_manifest_variant(b, variant);
    const char *kind = et_bundle_kind(b), *file = cJSON_GetObjectItem(v, "file")->valuestring;
    const cJSON *components = cJSON_GetObjectItemCaseSensitive(v, "components");
    if (cJSON_GetArraySize(components) > 0 || cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(et_io(b, NULL),
                                                                                                    "components")) > 0)
        return et_fail(err, ET_UNSUPPORTED, "not supported by the native verifier yet: %s's variant '%s' is a model of "
                       "several graphs (kind '%s'); verify it with `edgetx verify %s`", b->path, variant, kind, b->path);
    for (size_t i = 0; i < sizeof OWN_CHECKS / sizeof OWN_CHECKS[0]; i++)
        if (strcmp(kind, OWN_CHECKS[i]) == 0)
            return et_fail(err, ET_UNSUPPORTED, "not supported by the native verifier yet: the '%s' kind's own parity "
                           "checks (it supports causal-lm, encoder and kinds with the generic golden-outputs check); "
                           "verify it with `edgetx verify %s`", kind, b->path);
    if (!ends_with(file, ".onnx"))
        return et_fail(err, ET_UNSUPPORTED, "not supported by the native verifier yet: variant '%s' is stored as '%s', "
                       "not a plain .onnx file", variant, file);
    return 0;
}

static void tolerance_label(const char *kind, const et_tolerance *t, char *out, size_t size) {
    if (isnan(t->max_kld)) snprintf(out, size, "%.0e", t->max_abs);
    else if (strcmp(kind, "causal-lm") == 0) snprintf(out, size, "KL<=%g", t->max_kld);
    else snprintf(out, size, "cos>=%g", t->min_cosine);
}

int et_verify_variant(et_bundle *b, const char *variant, const et_options *options, et_report *r, et_error *err) {
    memset(r, 0, sizeof *r);
    if (et_variant_supported(b, variant, err)) return err->code;
    const cJSON *v = et_manifest_variant(b, variant);
    const cJSON *precision = cJSON_GetObjectItemCaseSensitive(v, "precision");
    const char *kind = et_bundle_kind(b);
    snprintf(r->variant, sizeof r->variant, "%s", variant);
    snprintf(r->backend, sizeof r->backend, "%s", ET_BACKEND);
    snprintf(r->precision, sizeof r->precision, "%s", cJSON_IsString(precision) ? precision->valuestring : "?");
    const et_npz *golden;
    if (et_tolerance_of(b, variant, &r->tolerance, err) || et_bundle_golden(b, &golden, err)) return err->code;
    tolerance_label(kind, &r->tolerance, r->tolerance_label, sizeof r->tolerance_label);
    char path[8192];
    if (et_bundle_file(b, cJSON_GetObjectItem(v, "file")->valuestring, "file", path, sizeof path, err)) return err->code;
    et_session *s = NULL;
    int rc = et_session_open(path, options ? options->threads : 0, &s, err);
    if (!rc) {
        if (strcmp(kind, "causal-lm") == 0) rc = et_causal_lm_checks(b, s, golden, &r->tolerance, r, err);
        else if (strcmp(kind, "encoder") == 0) rc = et_encoder_checks(b, s, golden, &r->tolerance, r, err);
        else rc = et_golden_outputs_check(b, s, golden, &r->tolerance, r, err);
    }
    et_session_close(s);
    if (rc == ET_RUNTIME) { /* onnxruntime could not load or run it: a failed row, as `edgetx verify --backend` */
        r->check_count = 0;
        et_check *c = et_add_check(r, "load and run", 0, NAN, "%s", err->message);
        (void)c;
        rc = 0;
    }
    if (rc) return rc;
    r->passed = r->check_count > 0;
    r->max_abs = 0.0;
    for (int i = 0; i < r->check_count; i++) {
        r->passed &= r->checks[i].passed;
        if (r->checks[i].has_max_abs && (r->checks[i].max_abs > r->max_abs || isnan(r->checks[i].max_abs)))
            r->max_abs = r->checks[i].max_abs;
    }
    return 0;
}
