/* edgetx-native: verify and bench an edgetx bundle without Python.
 *
 *   edgetx-native verify BUNDLE [--variant NAME]... [--threads N] [--json]
 *   edgetx-native bench BUNDLE [--variant NAME]... [--prompt-tokens N] [--new-tokens N] [--runs N] [--warmup N]
 *                 [--threads N] [--json]
 *   edgetx-native sha256 FILE...        # diagnostics: the library's sha256 and .npz reader on their own
 *   edgetx-native npz FILE
 *
 * Exit status: 0 all checks pass, 1 a parity check failed, 2 a refused bundle, an unsupported model or bad usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "report.h"

#define MAX_VARIANTS 64

static const char USAGE[] =
    "usage: edgetx-native verify BUNDLE [--variant NAME]... [--threads N] [--json]\n"
    "       edgetx-native bench BUNDLE [--variant NAME]... [--prompt-tokens N] [--new-tokens N] [--runs N]\n"
    "                     [--warmup N] [--threads N] [--json]     (-p, -n, --repeats: as edgetx bench)\n"
    "       edgetx-native sha256 FILE...   |   edgetx-native npz FILE      (diagnostics, JSON on stdout)\n"
    "Checks an edgetx bundle (manifest, sha256 of every file, paths) and runs its variants' parity checks against\n"
    "the golden I/O captured from PyTorch, or times them, on onnxruntime's C API. Exit status: 0 pass, 1 parity\n"
    "failed, 2 refused bundle, unsupported model or bad usage.\n";

typedef struct {
    const char *command, *bundle, *variants[MAX_VARIANTS];
    int variant_count, json, threads;
    et_bench_config bench;
} args;

static int usage_error(const char *message, const char *arg) {
    fprintf(stderr, "edgetx-native: %s%s%s\n%s", message, arg ? " " : "", arg ? arg : "", USAGE);
    return 2;
}

static int number(const char *text, int *out) {
    char *end;
    long v = strtol(text, &end, 10);
    if (!*text || *end || v < 0 || v > 1000000) return -1;
    *out = (int)v;
    return 0;
}

static int parse(int argc, char **argv, args *a) {
    memset(a, 0, sizeof *a);
    a->bench = (et_bench_config){128, 64, 1, 3, 0};
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : -1;
    }
    a->command = argv[1];
    if (strcmp(a->command, "verify") && strcmp(a->command, "bench")) return usage_error("unknown command", argv[1]);
    for (int i = 2; i < argc; i++) {
        const char *arg = argv[i];
        int *target = strcmp(arg, "--threads") == 0 ? &a->threads
                    : strcmp(arg, "--prompt-tokens") == 0 || strcmp(arg, "-p") == 0 ? &a->bench.prompt_tokens
                    : strcmp(arg, "--new-tokens") == 0 || strcmp(arg, "-n") == 0 ? &a->bench.new_tokens
                    : strcmp(arg, "--runs") == 0 || strcmp(arg, "--repeats") == 0 ? &a->bench.repeats
                    : strcmp(arg, "--warmup") == 0 ? &a->bench.warmup : NULL;
        if (strcmp(arg, "--json") == 0) {
            a->json = 1;
        } else if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(USAGE, stdout);
            return -1;
        } else if (strcmp(arg, "--variant") == 0) {
            if (i + 1 >= argc) return usage_error("--variant needs a NAME", NULL);
            if (a->variant_count == MAX_VARIANTS) return usage_error("too many --variant options", NULL);
            a->variants[a->variant_count++] = argv[++i];
        } else if (target) {
            if (i + 1 >= argc || number(argv[i + 1], target)) return usage_error("needs a whole number after", arg);
            i++;
        } else if (arg[0] == '-') {
            return usage_error("unknown option", arg);
        } else if (!a->bundle) {
            a->bundle = arg;
        } else {
            return usage_error("one BUNDLE only; also got", arg);
        }
    }
    if (!a->bundle) return usage_error("name a BUNDLE folder", NULL);
    a->bench.threads = a->threads;
    return 0;
}

static void print_json(cJSON *items) {
    char *text = cJSON_Print(items);
    if (text) puts(text);
    free(text);
    cJSON_Delete(items);
}

static int verify(et_bundle *b, const args *a) {
    int count = a->variant_count, failed = 0;
    et_error err = {0};
    et_report *reports = calloc((size_t)(count ? count : 1), sizeof *reports);
    if (!reports) return fprintf(stderr, "edgetx-native: out of memory\n"), 2;
    for (int i = 0; i < count; i++) /* every variant checkable before any runs */
        if (et_variant_supported(b, a->variants[i], &err)) {
            fprintf(stderr, "edgetx-native: %s\n", err.message);
            free(reports);
            return 2;
        }
    const char *kind = et_bundle_kind(b);
    if (strcmp(kind, "causal-lm") && strcmp(kind, "encoder"))
        fprintf(stderr, "edgetx-native: note: kind '%s' is not built into the native verifier; it is judged by "
                "edgetx's generic 'golden outputs' check (ModelKind's default)\n", kind);
    et_options options = {a->threads};
    for (int i = 0; i < count; i++) {
        if (!a->json) fprintf(stderr, "verifying %s ...\n", a->variants[i]);
        if (et_verify_variant(b, a->variants[i], &options, &reports[i], &err)) {
            fprintf(stderr, "edgetx-native: %s\n", err.message);
            free(reports);
            return 2;
        }
        failed |= !reports[i].passed;
    }
    if (a->json) {
        cJSON *list = cJSON_CreateArray();
        for (int i = 0; i < count; i++) cJSON_AddItemToArray(list, et_report_json(&reports[i]));
        print_json(list);
    } else {
        et_print_reports(stdout, reports, count);
    }
    if (failed) fprintf(stderr, "parity failed\n");
    free(reports);
    return failed ? 1 : 0;
}

static int bench(et_bundle *b, const args *a) {
    int count = a->variant_count;
    et_error err = {0};
    et_bench_result *results = calloc((size_t)(count ? count : 1), sizeof *results);
    if (!results) return fprintf(stderr, "edgetx-native: out of memory\n"), 2;
    for (int i = 0; i < count; i++) {
        if (!a->json) fprintf(stderr, "benchmarking %s ...\n", a->variants[i]);
        if (et_bench_variant(b, a->variants[i], &a->bench, &results[i], &err)) {
            fprintf(stderr, "edgetx-native: %s\n", err.message);
            free(results);
            return 2;
        }
    }
    if (a->json) {
        cJSON *list = cJSON_CreateArray();
        for (int i = 0; i < count; i++) cJSON_AddItemToArray(list, et_bench_json(&results[i], &a->bench));
        print_json(list);
    } else {
        et_print_bench(stdout, results, count, &a->bench);
    }
    free(results);
    return 0;
}

/* Diagnostics: sha256 of files, or the arrays of an .npz (name, dtype, shape, sha256 of the data bytes). */
static int tool(int argc, char **argv) {
    cJSON *out = cJSON_CreateObject();
    et_error err = {0};
    int rc = 0;
    if (strcmp(argv[1], "sha256") == 0) {
        for (int i = 2; i < argc; i++) {
            char hex[65];
            if (et_sha256_file(argv[i], hex)) rc = 2, fprintf(stderr, "edgetx-native: cannot read %s\n", argv[i]);
            else cJSON_AddStringToObject(out, argv[i], hex);
        }
    } else if (argc != 3) {
        rc = usage_error("npz takes one FILE", NULL);
    } else {
        et_npz npz;
        static const char *const dtypes[] = {"float32", "float64", "int64", "int32", "bool", "uint8", "other"};
        if (et_npz_read(argv[2], &npz, &err)) {
            rc = 2;
            fprintf(stderr, "edgetx-native: %s\n", err.message);
        }
        for (size_t i = 0; !rc && i < npz.count; i++) {
            const et_array *a = &npz.arrays[i];
            cJSON *entry = cJSON_CreateObject(), *shape = cJSON_CreateArray();
            et_sha256 ctx;
            char hex[65];
            et_sha256_init(&ctx);
            et_sha256_update(&ctx, a->data, a->count * a->itemsize);
            et_sha256_hex(&ctx, hex);
            for (int d = 0; d < a->ndim; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)a->shape[d]));
            cJSON_AddStringToObject(entry, "dtype", dtypes[a->dtype]);
            cJSON_AddItemToObject(entry, "shape", shape);
            cJSON_AddStringToObject(entry, "sha256", hex);
            cJSON_AddItemToObject(out, a->name, entry);
        }
        if (!rc) et_npz_free(&npz);
    }
    if (!rc) print_json(out);
    else cJSON_Delete(out);
    return rc;
}

int main(int argc, char **argv) {
    if (argc >= 2 && (strcmp(argv[1], "sha256") == 0 || strcmp(argv[1], "npz") == 0)) return tool(argc, argv);
    args a;
    int rc = parse(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    et_error err = {0};
    et_bundle *b = NULL;
    if (et_bundle_open(a.bundle, &b, &err)) {
        fprintf(stderr, "edgetx-native: %s\n", err.message);
        return 2;
    }
    for (int i = 0; i < a.variant_count; i++)
        if (et_bundle_check_variant(b, a.variants[i], &err)) {
            fprintf(stderr, "edgetx-native: %s\n", err.message);
            et_bundle_close(b);
            return 2;
        }
    if (!a.variant_count) /* every variant, in the manifest's order */
        for (int i = 0; i < et_bundle_variant_count(b) && i < MAX_VARIANTS; i++)
            a.variants[a.variant_count++] = et_bundle_variant_name(b, i);
    rc = strcmp(a.command, "verify") == 0 ? verify(b, &a) : bench(b, &a);
    et_bundle_close(b);
    return rc;
}
