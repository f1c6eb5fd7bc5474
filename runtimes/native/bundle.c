/* Opening a bundle as edgetx.bundle.Bundle.load does (store.py, manifest.py, files.py): manifest.json present and
 * valid JSON of a schema version this edgetx reads, every listed file inside the bundle, present and matching its
 * sha256, every variant's files listed, variant hashes agreeing with the files table, the golden file listed. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"

#define MANIFEST "manifest.json"

int et_fail(et_error *err, int code, const char *format, ...) {
    if (err) {
        va_list args;
        va_start(args, format);
        vsnprintf(err->message, sizeof err->message, format, args);
        va_end(args);
        err->code = code;
    }
    return code;
}

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* realpath() of `path`, resolving as much of it as exists (like Python's Path.resolve(strict=False)). */
static int resolve(const char *path, char *out) {
    char head[PATH_MAX];
    snprintf(head, sizeof head, "%s", path);
    size_t cut = strlen(head);
    for (;;) {
        char saved = head[cut];
        head[cut] = 0;
        char real[PATH_MAX];
        if (realpath(cut ? head : "/", real)) {
            head[cut] = saved;
            snprintf(out, PATH_MAX, "%s%s", real, head + cut);
            return 0;
        }
        head[cut] = saved;
        char *slash = NULL;
        for (size_t i = cut; i-- > 0;)
            if (head[i] == '/') { slash = head + i; break; }
        if (!slash) return -1;
        cut = (size_t)(slash - head);
    }
}

int et_bundle_file(const et_bundle *b, const char *rel, const char *where, char *out, size_t size, et_error *err) {
    int leaves = !*rel || rel[0] == '/' || strchr(rel, '\\') != NULL;
    for (const char *part = rel; !leaves && part;) { /* any ".." component */
        const char *slash = strchr(part, '/');
        size_t n = slash ? (size_t)(slash - part) : strlen(part);
        leaves = n == 2 && part[0] == '.' && part[1] == '.';
        part = slash ? slash + 1 : NULL;
    }
    if (leaves)
        return et_fail(err, ET_REFUSED, "%s/%s: %s has path '%s'; bundle paths must be relative and stay inside the "
                       "bundle folder", b->path, MANIFEST, where, rel);
    snprintf(out, size, "%s/%s", b->path, rel);
    char real[PATH_MAX];
    size_t n = strlen(b->real);
    if (resolve(out, real) != 0 ||
        !(strncmp(real, b->real, n) == 0 && (real[n] == '/' || real[n] == 0 || (n == 1 && b->real[0] == '/'))))
        return et_fail(err, ET_REFUSED, "%s/%s: %s path '%s' resolves outside the bundle (a symlink?); refusing to "
                       "load it", b->path, MANIFEST, where, rel);
    return 0;
}

static const char *string_of(const cJSON *object, const char *key) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

/* The manifest fields the native verifier reads, with the types it needs (the JSON Schema's job in Python). */
static int check_shape(const et_bundle *b, const cJSON *m, et_error *err) {
    const char *need[][2] = {{"model", "an object"}, {"io", "an object"}, {"variants", "an object"},
                             {"files", "an object"}, {"golden", "an object"}};
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
        if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(m, need[i][0])))
            return et_fail(err, ET_REFUSED, "%s/%s: %s must be %s", b->path, MANIFEST, need[i][0], need[i][1]);
    const cJSON *entry;
    cJSON_ArrayForEach(entry, cJSON_GetObjectItemCaseSensitive(m, "files")) {
        const char *hash = string_of(entry, "sha256");
        if (!cJSON_IsObject(entry) || !hash || strlen(hash) != 64 || strspn(hash, "0123456789abcdef") != 64)
            return et_fail(err, ET_REFUSED, "%s/%s: files['%s'] must be an object with a sha256 of 64 hex digits",
                           b->path, MANIFEST, entry->string);
    }
    cJSON_ArrayForEach(entry, cJSON_GetObjectItemCaseSensitive(m, "variants")) {
        if (!cJSON_IsObject(entry) || !string_of(entry, "file"))
            return et_fail(err, ET_REFUSED, "%s/%s: variants['%s'] must be an object with a file", b->path, MANIFEST,
                           entry->string);
        const char *keys[] = {"formats", "components", "component_formats"};
        for (int k = 0; k < 3; k++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(entry, keys[k]);
            if (v && !cJSON_IsNull(v) && !cJSON_IsObject(v))
                return et_fail(err, ET_REFUSED, "%s/%s: variants['%s'].%s must be an object", b->path, MANIFEST,
                               entry->string, keys[k]);
        }
    }
    const char *which[] = {"inputs", "outputs"};
    for (int w = 0; w < 2; w++) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(m, "io"), which[w]);
        if (!cJSON_IsArray(list))
            return et_fail(err, ET_REFUSED, "%s/%s: io.%s must be a list", b->path, MANIFEST, which[w]);
        int i = 0;
        cJSON_ArrayForEach(entry, list) {
            if (!string_of(entry, "name") || !string_of(entry, "dtype") ||
                !cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(entry, "shape")))
                return et_fail(err, ET_REFUSED, "%s/%s: io.%s[%d] must have a name, a dtype and a shape", b->path,
                               MANIFEST, which[w], i);
            i++;
        }
    }
    if (!string_of(cJSON_GetObjectItemCaseSensitive(m, "model"), "kind"))
        return et_fail(err, ET_REFUSED, "%s/%s: model.kind must be a string such as 'causal-lm' or 'encoder'", b->path,
                       MANIFEST);
    return 0;
}

static int listed(const cJSON *files, const cJSON *rel) {
    return cJSON_IsString(rel) && cJSON_GetObjectItemCaseSensitive(files, rel->valuestring) != NULL;
}

static int check_files(et_bundle *b, et_error *err) {
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(b->manifest, "files"), *entry;
    char path[PATH_MAX + 256], where[512], hex[65];
    cJSON_ArrayForEach(entry, files) {
        snprintf(where, sizeof where, "files['%s']", entry->string);
        if (et_bundle_file(b, entry->string, where, path, sizeof path, err)) return err->code;
        if (!is_file(path))
            return et_fail(err, ET_REFUSED, "%s is missing (listed in %s); the bundle is incomplete, rebuild it", path,
                           MANIFEST);
        if (et_sha256_file(path, hex) != 0)
            return et_fail(err, ET_REFUSED, "%s: cannot read %s (%s); if a build is replacing this bundle, load it again "
                           "when it is done", b->path, path, strerror(errno));
        if (strcmp(hex, string_of(entry, "sha256")) != 0)
            return et_fail(err, ET_REFUSED, "%s does not match the sha256 in %s: the file was altered or corrupted after "
                           "the build; rebuild or re-copy the bundle", path, MANIFEST);
    }
    const cJSON *variant, *io_components = cJSON_GetObjectItemCaseSensitive(et_io(b, NULL), "components");
    cJSON_ArrayForEach(variant, cJSON_GetObjectItemCaseSensitive(b->manifest, "variants")) {
        const char *name = variant->string;
        const cJSON *file = cJSON_GetObjectItemCaseSensitive(variant, "file"), *item;
        if (!listed(files, file))
            return et_fail(err, ET_REFUSED, "%s/%s: variants['%s'].file '%s' is not listed under 'files' (so its hash "
                           "cannot be checked)", b->path, MANIFEST, name, file->valuestring);
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(variant, "formats")) if (!listed(files, item))
            return et_fail(err, ET_REFUSED, "%s/%s: variants['%s'].formats['%s'] is not listed under 'files' (so its "
                           "hash cannot be checked)", b->path, MANIFEST, name, item->string);
        int components = 0, expected = cJSON_IsObject(io_components) ? cJSON_GetArraySize(io_components) : 0;
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(variant, "components")) {
            if (!listed(files, item))
                return et_fail(err, ET_REFUSED, "%s/%s: variants['%s'].components['%s'] is not listed under 'files' "
                               "(so its hash cannot be checked)", b->path, MANIFEST, name, item->string);
            if (!cJSON_GetObjectItemCaseSensitive(io_components, item->string)) expected = -1;
            components++;
        }
        const cJSON *graph, *fmt;
        cJSON_ArrayForEach(graph, cJSON_GetObjectItemCaseSensitive(variant, "component_formats"))
            cJSON_ArrayForEach(fmt, graph) if (!listed(files, fmt))
                return et_fail(err, ET_REFUSED, "%s/%s: variants['%s'].component_formats['%s']['%s'] is not listed "
                               "under 'files' (so its hash cannot be checked)", b->path, MANIFEST, name, graph->string,
                               fmt->string);
        if (components != expected)
            return et_fail(err, ET_REFUSED, "%s/%s: variants['%s'] has graphs that io.components does not name (or "
                           "misses some it names)", b->path, MANIFEST, name);
        const char *own = string_of(variant, "sha256");
        const char *table = string_of(cJSON_GetObjectItemCaseSensitive(files, file->valuestring), "sha256");
        if (cJSON_GetObjectItemCaseSensitive(variant, "sha256") && (!own || strcmp(own, table) != 0))
            return et_fail(err, ET_REFUSED, "%s/%s: variants['%s'].sha256 disagrees with files['%s'].sha256; the "
                           "manifest was edited inconsistently", b->path, MANIFEST, name, file->valuestring);
    }
    const cJSON *golden = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(b->manifest, "golden"),
                                                           "file");
    if (golden && !cJSON_IsNull(golden) && !listed(files, golden))
        return et_fail(err, ET_REFUSED, "%s/%s: golden.file is not listed under 'files'", b->path, MANIFEST);
    return 0;
}

int et_bundle_open(const char *path, et_bundle **out, et_error *err) {
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return et_fail(err, ET_REFUSED, "%s: no such bundle folder (build one with `edgetx build --out %s`)", path, path);
    et_bundle *b = calloc(1, sizeof *b);
    if (!b) return et_fail(err, ET_RUNTIME, "out of memory");
    snprintf(b->path, sizeof b->path, "%s", path);
    size_t n = strlen(b->path);
    while (n > 1 && b->path[n - 1] == '/') b->path[--n] = 0;
    char manifest[PATH_MAX + 32];
    snprintf(manifest, sizeof manifest, "%s/%s", b->path, MANIFEST);
    int rc = 0;
    char *text = NULL;
    FILE *f = NULL;
    if (!realpath(b->path, b->real)) {
        rc = et_fail(err, ET_REFUSED, "%s: cannot resolve the bundle folder (%s)", b->path, strerror(errno));
    } else if (!is_file(manifest)) {
        rc = et_fail(err, ET_REFUSED, "%s is missing: %s is not a complete edgetx bundle", manifest, b->path);
    } else if (!(f = fopen(manifest, "rb")) || fseek(f, 0, SEEK_END) != 0) {
        rc = et_fail(err, ET_REFUSED, "%s: cannot read %s (%s)", b->path, manifest, strerror(errno));
    } else {
        long size = ftell(f);
        rewind(f);
        text = size >= 0 ? malloc((size_t)size + 1) : NULL;
        if (!text || fread(text, 1, (size_t)size, f) != (size_t)size) {
            rc = et_fail(err, ET_REFUSED, "%s: cannot read %s", b->path, manifest);
        } else {
            b->manifest = cJSON_ParseWithLength(text, (size_t)size);
            const cJSON *version = cJSON_GetObjectItemCaseSensitive(b->manifest, "schema_version");
            if (!b->manifest) {
                rc = et_fail(err, ET_REFUSED, "%s: not valid JSON (near byte %ld)", manifest,
                             (long)(cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - text : 0));
            } else if (!cJSON_IsObject(b->manifest)) {
                rc = et_fail(err, ET_REFUSED, "%s: expected a JSON object at the top level", manifest);
            } else if (!cJSON_IsNumber(version) || (version->valuedouble != 1 && version->valuedouble != 2)) {
                char *shown = version ? cJSON_PrintUnformatted(version) : NULL;
                rc = et_fail(err, ET_REFUSED, "%s: schema_version %.80s is not one this edgetx reads (it reads 1, 2); "
                             "rebuild the bundle or upgrade edgetx", manifest, shown ? shown : "None");
                free(shown);
            } else {
                rc = check_shape(b, b->manifest, err);
                if (!rc) rc = check_files(b, err);
            }
        }
    }
    if (f) fclose(f);
    free(text);
    if (rc) {
        et_bundle_close(b);
        return rc;
    }
    *out = b;
    return 0;
}

void et_bundle_close(et_bundle *b) {
    if (!b) return;
    cJSON_Delete(b->manifest);
    et_npz_free(&b->golden);
    free(b);
}

const char *et_bundle_path(const et_bundle *b) { return b->path; }

const char *et_bundle_kind(const et_bundle *b) {
    return string_of(cJSON_GetObjectItemCaseSensitive(b->manifest, "model"), "kind");
}

const cJSON *et_io(const et_bundle *b, const char *which) {
    const cJSON *io = cJSON_GetObjectItemCaseSensitive(b->manifest, "io");
    return which ? cJSON_GetObjectItemCaseSensitive(io, which) : io;
}

int et_bundle_variant_count(const et_bundle *b) {
    return cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(b->manifest, "variants"));
}

const char *et_bundle_variant_name(const et_bundle *b, int index) {
    const cJSON *v = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(b->manifest, "variants"), index);
    return v ? v->string : NULL;
}

const cJSON *et_manifest_variant(const et_bundle *b, const char *name) {
    return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(b->manifest, "variants"), name);
}

int et_bundle_check_variant(const et_bundle *b, const char *name, et_error *err) {
    if (et_manifest_variant(b, name)) return 0;
    char known[1024] = "";
    for (int i = 0; i < et_bundle_variant_count(b); i++)
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "", et_bundle_variant_name(b, i));
    return et_fail(err, ET_REFUSED, "%s: no variant '%s'; this bundle has %s", b->path, name, *known ? known : "none");
}

int et_bundle_golden(et_bundle *b, const et_npz **out, et_error *err) {
    if (!b->golden_loaded) {
        const char *rel = string_of(cJSON_GetObjectItemCaseSensitive(b->manifest, "golden"), "file");
        char path[PATH_MAX + 256];
        if (!rel) return et_fail(err, ET_REFUSED, "%s: this bundle carries no golden I/O", b->path);
        if (et_bundle_file(b, rel, "file", path, sizeof path, err) || et_npz_read(path, &b->golden, err))
            return err->code;
        b->golden_loaded = 1;
    }
    *out = &b->golden;
    return 0;
}

static double number_or(const cJSON *o, const char *key, double otherwise) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : otherwise;
}

/* edgetx.verify.tolerances.tolerance_for: the variant's recorded budget, else the precision's default. */
int et_tolerance_of(const et_bundle *b, const char *variant, et_tolerance *t, et_error *err) {
    const cJSON *v = et_manifest_variant(b, variant);
    const cJSON *recorded = cJSON_GetObjectItemCaseSensitive(v, "tolerance");
    const char *precision = string_of(v, "precision") ? string_of(v, "precision") : "?";
    memset(t, 0, sizeof *t);
    t->measured_spread = t->max_kld = t->min_top1 = t->min_cosine_mean = NAN;
    if (cJSON_IsObject(recorded) && cJSON_GetArraySize(recorded) > 0) {
        snprintf(t->precision, sizeof t->precision, "%s", string_of(recorded, "precision") ? string_of(recorded, "precision") : precision);
        t->max_abs = number_or(recorded, "max_abs", INFINITY);
        t->greedy_must_match = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(recorded, "greedy_must_match"));
        t->min_cosine = number_or(recorded, "min_cosine", NAN);
        snprintf(t->method, sizeof t->method, "%s", string_of(recorded, "method") ? string_of(recorded, "method") : "");
        t->measured_spread = number_or(recorded, "measured_spread", NAN);
        t->max_kld = number_or(recorded, "max_kld", NAN);
        t->min_top1 = number_or(recorded, "min_top1", NAN);
        t->min_cosine_mean = number_or(recorded, "min_cosine_mean", NAN);
        return 0;
    }
    static const struct { const char *p; double kld, top1, cos, cos_mean; const char *method; } quantized[] = {
        {"int8", 0.01, 0.97, 0.99, 0.995, "gate: mean KL <= 0.01 and top-1 >= 97% vs fp32 (decoders); cosine mean >= 0.995, min >= 0.99 (encoders)"},
        {"int4", 0.05, 0.90, 0.98, 0.99, "gate: mean KL <= 0.05 and top-1 >= 90% vs fp32 (decoders); cosine mean >= 0.99, min >= 0.98 (encoders)"},
        {"fp16", 1e-3, 0.99, 0.9999, 0.99995, "gate: mean KL <= 1e-3 and top-1 >= 99% vs fp32 (decoders); cosine mean >= 0.99995, min >= 0.9999 (encoders)"}};
    snprintf(t->precision, sizeof t->precision, "%s", precision);
    if (strcmp(precision, "fp32") == 0) {
        t->max_abs = 1e-3, t->greedy_must_match = 1, t->min_cosine = 0.99999;
        snprintf(t->method, sizeof t->method, "default for bundles without a measured budget: ~50-100x the "
                 "PyTorch-vs-onnxruntime fp32 spread (~1e-5) seen on the reference GPT");
        return 0;
    }
    for (size_t i = 0; i < sizeof quantized / sizeof quantized[0]; i++)
        if (strcmp(precision, quantized[i].p) == 0) {
            t->max_abs = INFINITY, t->max_kld = quantized[i].kld, t->min_top1 = quantized[i].top1;
            t->min_cosine = quantized[i].cos, t->min_cosine_mean = quantized[i].cos_mean;
            snprintf(t->method, sizeof t->method, "%s", quantized[i].method);
            return 0;
        }
    return et_fail(err, ET_REFUSED, "%s: variant '%s' has no recorded tolerance and no parity tolerance is defined for "
                   "precision '%s' (defined: fp32, int8, int4, fp16)", b->path, variant, precision);
}

const char *et_padding_note(const et_bundle *b, char *buf, size_t size) {
    const cJSON *padding = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(b->manifest, "model"),
                                                            "padding");
    const cJSON *invariant = cJSON_GetObjectItemCaseSensitive(padding, "invariant");
    buf[0] = 0;
    if (cJSON_IsObject(padding) && invariant && !cJSON_IsTrue(invariant))
        snprintf(buf, size, "; PyTorch's own answer moves by %.2g with padding, so rows run alone at run time",
                 number_or(padding, "max_abs", NAN));
    return buf;
}
