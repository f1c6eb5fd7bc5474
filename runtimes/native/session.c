/* onnxruntime sessions through its C API: every OrtStatus becomes an et_error naming the file and the step. The API
 * version is the header's (ORT_API_VERSION); a newer runtime library serves it. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <onnxruntime/onnxruntime_c_api.h>

#include "internal.h"

struct et_session {
    OrtSession *session;
    char path[4096];
    char **inputs;
    size_t input_count;
};

static const OrtApi *api;
static OrtEnv *env;

static int status_error(OrtStatus *status, et_error *err, const char *path, const char *step) {
    if (!status) return 0;
    et_fail(err, ET_RUNTIME, "%s: onnxruntime failed while %s: %s", path, step, api->GetErrorMessage(status));
    api->ReleaseStatus(status);
    return ET_RUNTIME;
}

static int init(et_error *err) {
    if (env) return 0;
    const OrtApiBase *base = OrtGetApiBase();
    api = base ? base->GetApi(ORT_API_VERSION) : NULL;
    if (!api)
        return et_fail(err, ET_RUNTIME, "the onnxruntime library (%s) does not serve C API version %d, which this "
                       "program was built for; use onnxruntime >= 1.%d", base ? base->GetVersionString() : "?",
                       ORT_API_VERSION, ORT_API_VERSION);
    return status_error(api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "edgetx-native", &env), err, "onnxruntime",
                        "creating its environment");
}

size_t et_dtype_size(et_dtype dtype) {
    switch (dtype) {
    case ET_F32: case ET_I32: return 4;
    case ET_F64: case ET_I64: return 8;
    default: return 1;
    }
}

int et_array_new(et_array *a, const char *name, et_dtype dtype, int ndim, const int64_t *shape) {
    memset(a, 0, sizeof *a);
    snprintf(a->name, sizeof a->name, "%s", name);
    a->dtype = dtype, a->itemsize = et_dtype_size(dtype), a->ndim = ndim, a->count = 1;
    for (int i = 0; i < ndim; i++) a->shape[i] = shape[i], a->count *= (size_t)shape[i];
    a->data = calloc(a->count ? a->count : 1, a->itemsize);
    return a->data ? 0 : -1;
}

int et_session_open(const char *model_path, int threads, et_session **out, et_error *err) {
    *out = NULL;
    if (init(err)) return err->code;
    et_session *s = calloc(1, sizeof *s);
    if (!s) return et_fail(err, ET_RUNTIME, "out of memory");
    snprintf(s->path, sizeof s->path, "%s", model_path);
    OrtSessionOptions *options = NULL;
    OrtAllocator *allocator = NULL;
    int rc = status_error(api->CreateSessionOptions(&options), err, model_path, "creating session options");
    if (!rc && threads > 0) {
        rc = status_error(api->SetIntraOpNumThreads(options, threads), err, model_path, "setting the threads");
        if (!rc) rc = status_error(api->SetInterOpNumThreads(options, 1), err, model_path, "setting the threads");
    }
    if (!rc) rc = status_error(api->SetSessionLogSeverityLevel(options, 3), err, model_path, "setting the log level");
    if (!rc) rc = status_error(api->CreateSession(env, model_path, options, &s->session), err, model_path,
                               "loading the model");
    if (!rc) rc = status_error(api->GetAllocatorWithDefaultOptions(&allocator), err, model_path, "getting an allocator");
    if (!rc) rc = status_error(api->SessionGetInputCount(s->session, &s->input_count), err, model_path,
                               "reading its inputs");
    if (!rc) s->inputs = calloc(s->input_count ? s->input_count : 1, sizeof(char *));
    for (size_t i = 0; !rc && i < s->input_count; i++) {
        char *name = NULL;
        rc = status_error(api->SessionGetInputName(s->session, i, allocator, &name), err, model_path,
                          "reading its inputs");
        if (!rc) {
            s->inputs[i] = strdup(name);
            OrtStatus *freed = api->AllocatorFree(allocator, name);
            if (freed) api->ReleaseStatus(freed);
        }
    }
    if (options) api->ReleaseSessionOptions(options);
    if (rc) {
        et_session_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

void et_session_close(et_session *s) {
    if (!s) return;
    if (s->session) api->ReleaseSession(s->session);
    for (size_t i = 0; s->inputs && i < s->input_count; i++) free(s->inputs[i]);
    free(s->inputs);
    free(s);
}

int et_session_has_input(const et_session *s, const char *name) {
    for (size_t i = 0; i < s->input_count; i++)
        if (strcmp(s->inputs[i], name) == 0) return 1;
    return 0;
}

static ONNXTensorElementDataType onnx_type(et_dtype dtype) {
    switch (dtype) {
    case ET_F32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case ET_F64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
    case ET_I64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case ET_I32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case ET_BOOL: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
    case ET_U8: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    }
}

/* An output OrtValue copied into an et_array (float, double, int64, int32, bool, uint8 tensors). */
static int take_output(et_session *s, const char *name, OrtValue *value, et_array *out, et_error *err) {
    OrtTensorTypeAndShapeInfo *info = NULL;
    int rc = status_error(api->GetTensorTypeAndShape(value, &info), err, s->path, "reading an output's shape");
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    size_t ndim = 0;
    int64_t shape[ET_MAX_DIMS];
    if (!rc) rc = status_error(api->GetTensorElementType(info, &type), err, s->path, "reading an output's type");
    if (!rc) rc = status_error(api->GetDimensionsCount(info, &ndim), err, s->path, "reading an output's shape");
    if (!rc && ndim > ET_MAX_DIMS) rc = et_fail(err, ET_RUNTIME, "%s: output '%s' has %zu dims", s->path, name, ndim);
    if (!rc) rc = status_error(api->GetDimensions(info, shape, ndim), err, s->path, "reading an output's shape");
    if (info) api->ReleaseTensorTypeAndShapeInfo(info);
    if (rc) return rc;
    et_dtype dtype = ET_OTHER;
    for (et_dtype d = ET_F32; d < ET_OTHER; d++)
        if (onnx_type(d) == type) dtype = d;
    if (dtype == ET_OTHER)
        return et_fail(err, ET_UNSUPPORTED, "%s: output '%s' has ONNX element type %d, which the native verifier does "
                       "not compare", s->path, name, (int)type);
    if (et_array_new(out, name, dtype, (int)ndim, shape)) return et_fail(err, ET_RUNTIME, "out of memory");
    void *data = NULL;
    if (out->count) {
        rc = status_error(api->GetTensorMutableData(value, &data), err, s->path, "reading an output");
        if (!rc) memcpy(out->data, data, out->count * out->itemsize);
    }
    if (rc) et_array_free(out);
    return rc;
}

int et_session_run(et_session *s, const et_array *feeds, size_t nfeeds, const char *const *want, size_t nwant,
                   et_array *outs, et_error *err) {
    OrtMemoryInfo *memory = NULL;
    OrtValue **in = calloc(nfeeds ? nfeeds : 1, sizeof *in), **out = calloc(nwant ? nwant : 1, sizeof *out);
    const char **names = calloc(nfeeds ? nfeeds : 1, sizeof *names);
    static char empty[16];
    int rc = !in || !out || !names ? et_fail(err, ET_RUNTIME, "out of memory") : 0;
    if (!rc) rc = status_error(api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory), err, s->path,
                               "describing CPU memory");
    for (size_t i = 0; !rc && i < nfeeds; i++) {
        names[i] = feeds[i].name;
        rc = status_error(api->CreateTensorWithDataAsOrtValue(memory, feeds[i].count ? feeds[i].data : empty,
                                                              feeds[i].count * feeds[i].itemsize, feeds[i].shape,
                                                              (size_t)feeds[i].ndim, onnx_type(feeds[i].dtype), &in[i]),
                          err, s->path, "making an input tensor");
    }
    if (!rc) {
        char step[300];
        snprintf(step, sizeof step, "running it (%zu inputs, first '%s')", nfeeds, nfeeds ? names[0] : "");
        rc = status_error(api->Run(s->session, NULL, names, (const OrtValue *const *)in, nfeeds, want, nwant, out),
                          err, s->path, step);
    }
    size_t taken = 0;
    for (; !rc && taken < nwant; taken++) rc = take_output(s, want[taken], out[taken], &outs[taken], err);
    if (rc)
        for (size_t i = 0; i + 1 < taken; i++) et_array_free(&outs[i]);
    for (size_t i = 0; in && i < nfeeds; i++)
        if (in[i]) api->ReleaseValue(in[i]);
    for (size_t i = 0; out && i < nwant; i++)
        if (out[i]) api->ReleaseValue(out[i]);
    if (memory) api->ReleaseMemoryInfo(memory);
    free(in), free(out), free(names);
    return rc;
}
