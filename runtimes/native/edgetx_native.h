/* edgetx native: open an edgetx bundle, check it as edgetx's Python loader does, verify its variants against the
 * golden I/O captured from PyTorch, and bench them, on onnxruntime's C API. C11; no Python needed.
 *
 *   et_error err;
 *   et_bundle *bundle;
 *   if (et_bundle_open("dist/edgetx-gpt", &bundle, &err)) { fprintf(stderr, "%s\n", err.message); return 2; }
 *   et_report report;
 *   if (et_verify_variant(bundle, "fp32", NULL, &report, &err)) { ... err.code: ET_REFUSED, ET_UNSUPPORTED }
 *   printf("%s: %s\n", report.variant, report.passed ? "pass" : "FAIL");
 *   et_bundle_close(bundle);
 */
#ifndef EDGETX_NATIVE_H
#define EDGETX_NATIVE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes: the CLI's exit status is 2 for all of them (a refused bundle, an unsupported model, bad usage). */
enum { ET_OK = 0, ET_REFUSED = 1, ET_UNSUPPORTED = 2, ET_RUNTIME = 3, ET_USAGE = 4 };

typedef struct {
    int code;
    char message[2048];
} et_error;

/* ---- arrays (golden I/O, model inputs and outputs) ---- */
#define ET_MAX_DIMS 8
typedef enum { ET_F32, ET_F64, ET_I64, ET_I32, ET_BOOL, ET_U8, ET_OTHER } et_dtype;

typedef struct {
    char name[256];
    et_dtype dtype;
    size_t itemsize;
    int ndim;
    int64_t shape[ET_MAX_DIMS];
    size_t count; /* number of elements */
    void *data;   /* owned: count * itemsize bytes */
} et_array;

typedef struct {
    et_array *arrays;
    size_t count;
} et_npz;

/* Read an .npz (stored or deflated members of .npy 1.0/2.0) without trusting its headers. */
int et_npz_read(const char *path, et_npz *out, et_error *err);
const et_array *et_npz_get(const et_npz *npz, const char *name);
void et_npz_free(et_npz *npz);
double et_value(const et_array *a, size_t i); /* element i as double (numeric dtypes) */
void et_array_free(et_array *a);

/* ---- sha256 ---- */
typedef struct {
    uint32_t state[8];
    uint64_t length;
    unsigned char block[64];
    size_t used;
} et_sha256;
void et_sha256_init(et_sha256 *ctx);
void et_sha256_update(et_sha256 *ctx, const void *data, size_t size);
void et_sha256_hex(et_sha256 *ctx, char hex[65]);
int et_sha256_file(const char *path, char hex[65]); /* 0, or -1 with errno */

/* ---- bundles ---- */
typedef struct et_bundle et_bundle;

/* Load manifest.json, check every listed file (inside the bundle, present, its sha256) and the variants' file
 * references, as edgetx.bundle.Bundle.load does. On failure *out is NULL and err says which file and the fix. */
int et_bundle_open(const char *path, et_bundle **out, et_error *err);
void et_bundle_close(et_bundle *bundle);
const char *et_bundle_path(const et_bundle *bundle);
const char *et_bundle_kind(const et_bundle *bundle);
int et_bundle_variant_count(const et_bundle *bundle);
const char *et_bundle_variant_name(const et_bundle *bundle, int index);
/* 0 if the bundle has that variant, else ET_REFUSED naming the ones it has. */
int et_bundle_check_variant(const et_bundle *bundle, const char *name, et_error *err);

/* ---- verification ---- */
typedef struct {
    char precision[32];
    double max_abs; /* INFINITY when the manifest stores null (judged by KL) */
    int greedy_must_match;
    double min_cosine;
    char method[512];
    double measured_spread, max_kld, min_top1, min_cosine_mean; /* NAN = null */
} et_tolerance;

#define ET_MAX_CHECKS 16
typedef struct {
    char name[64];
    int passed;
    int has_max_abs;
    double max_abs;
    char detail[1024];
    int has_tokens;
    int tokens[2]; /* greedy decode: [steps agreeing with PyTorch, steps] */
} et_check;

typedef struct {
    char variant[128];
    char backend[32];
    char precision[32];
    et_tolerance tolerance;
    char tolerance_label[64];
    et_check checks[ET_MAX_CHECKS];
    int check_count;
    int passed;     /* at least one check and all of them passed */
    double max_abs; /* largest max_abs of the checks */
} et_report;

typedef struct {
    int threads; /* intra-op threads; 0 = onnxruntime's default */
} et_options;

/* Whether the native verifier can check this variant (kind, graphs, file format); ET_UNSUPPORTED says why not. */
int et_variant_supported(const et_bundle *bundle, const char *variant, et_error *err);
/* Run the variant's parity checks. A model onnxruntime cannot load or run gives a report with one failed
 * "load and run" check (as `edgetx verify --backend NAME` does), not an error. */
int et_verify_variant(et_bundle *bundle, const char *variant, const et_options *options, et_report *out,
                      et_error *err);

/* ---- bench ---- */
typedef struct {
    int prompt_tokens, new_tokens, warmup, repeats, threads;
} et_bench_config;

typedef struct {
    double p50_ms, p90_ms, p99_ms, min_ms, max_ms;
} et_latency;

typedef struct {
    char variant[128], precision[32], machine[80];
    int threads, decoder;
    double file_mb, load_ms, rss_mb, peak_rss_mb, load_rss_delta_mb;
    /* decoders */
    int prompt_tokens, new_tokens;
    double time_to_first_token_ms, ttft_min_ms, ttft_max_ms, prefill_tokens_per_s, decode_tokens_per_s;
    et_latency decode_token_latency;
    /* other kinds: the golden batch */
    et_latency latency;
} et_bench_result;

int et_bench_variant(et_bundle *bundle, const char *variant, const et_bench_config *config, et_bench_result *out,
                     et_error *err);

#ifdef __cplusplus
}
#endif
#endif
