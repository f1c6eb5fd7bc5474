/* A C app on onnxruntime-genai's C API running an edgetx variant's folder (`edgetx convert BUNDLE --to genai`):
 * genai's tokenizer, its greedy loop, the generated text printed.
 *
 *     app FOLDER PROMPT NEW_TOKENS [PREPEND_IDS]     e.g. app dist/smollm2/int4-grid-a8 "The capital of France is" 32 1
 *
 * PREPEND_IDS (comma-separated) are the manifest's genai.<variant>.prepend_ids: special tokens the bundle's tokenizer
 * puts in front of a text that genai's tokenizer leaves out. An app includes genai's header, ort_genai_c.h; the PyPI
 * wheel ships only the library (libonnxruntime-genai.so), so the few calls used here are declared below.
 * tests/test_genai.py builds this against the wheel and compares its text with edgetx's Generator. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct OgaResult OgaResult;
typedef struct OgaModel OgaModel;
typedef struct OgaTokenizer OgaTokenizer;
typedef struct OgaSequences OgaSequences;
typedef struct OgaGeneratorParams OgaGeneratorParams;
typedef struct OgaGenerator OgaGenerator;

OgaResult *OgaCreateModel(const char *config_path, OgaModel **out);
OgaResult *OgaCreateTokenizer(const OgaModel *model, OgaTokenizer **out);
OgaResult *OgaCreateSequences(OgaSequences **out);
OgaResult *OgaTokenizerEncode(const OgaTokenizer *tokenizer, const char *text, OgaSequences *sequences);
size_t OgaSequencesGetSequenceCount(const OgaSequences *sequences, size_t index);
const int32_t *OgaSequencesGetSequenceData(const OgaSequences *sequences, size_t index);
OgaResult *OgaCreateGeneratorParams(const OgaModel *model, OgaGeneratorParams **out);
OgaResult *OgaGeneratorParamsSetSearchNumber(OgaGeneratorParams *params, const char *name, double value);
OgaResult *OgaCreateGenerator(const OgaModel *model, const OgaGeneratorParams *params, OgaGenerator **out);
OgaResult *OgaGenerator_AppendTokens(OgaGenerator *generator, const int32_t *ids, size_t count);
bool OgaGenerator_IsDone(const OgaGenerator *generator);
OgaResult *OgaGenerator_GenerateNextToken(OgaGenerator *generator);
size_t OgaGenerator_GetSequenceCount(const OgaGenerator *generator, size_t index);
const int32_t *OgaGenerator_GetSequenceData(const OgaGenerator *generator, size_t index);
OgaResult *OgaTokenizerDecode(const OgaTokenizer *tokenizer, const int32_t *ids, size_t count, const char **out);
const char *OgaResultGetError(const OgaResult *result);
void OgaDestroyResult(OgaResult *result);
void OgaDestroyString(const char *text);
void OgaDestroySequences(OgaSequences *sequences);
void OgaDestroyGenerator(OgaGenerator *generator);
void OgaDestroyGeneratorParams(OgaGeneratorParams *params);
void OgaDestroyTokenizer(OgaTokenizer *tokenizer);
void OgaDestroyModel(OgaModel *model);

static void check(OgaResult *result, const char *step) {
    if (result) {
        fprintf(stderr, "%s failed: %s\n", step, OgaResultGetError(result));
        OgaDestroyResult(result);
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s FOLDER PROMPT NEW_TOKENS [PREPEND_IDS]\n", argv[0]);
        return 2;
    }
    OgaModel *model;
    OgaTokenizer *tokenizer;
    OgaSequences *encoded;
    check(OgaCreateModel(argv[1], &model), "loading the model folder");
    check(OgaCreateTokenizer(model, &tokenizer), "loading the tokenizer");
    check(OgaCreateSequences(&encoded), "OgaCreateSequences");
    check(OgaTokenizerEncode(tokenizer, argv[2], encoded), "encoding the prompt");

    size_t count = OgaSequencesGetSequenceCount(encoded, 0), prompt = 0;
    int32_t *ids = malloc((count + 16) * sizeof *ids);
    for (char *item = argc > 4 ? strtok(argv[4], ",") : NULL; item && prompt < 16; item = strtok(NULL, ","))
        ids[prompt++] = (int32_t)atoi(item);
    memcpy(ids + prompt, OgaSequencesGetSequenceData(encoded, 0), count * sizeof *ids);
    prompt += count;

    OgaGeneratorParams *params;
    OgaGenerator *generator;
    check(OgaCreateGeneratorParams(model, &params), "OgaCreateGeneratorParams");
    check(OgaGeneratorParamsSetSearchNumber(params, "max_length", (double)(prompt + (size_t)atoi(argv[3]))),
          "setting max_length");
    check(OgaCreateGenerator(model, params, &generator), "OgaCreateGenerator");
    check(OgaGenerator_AppendTokens(generator, ids, prompt), "running the prompt");
    while (!OgaGenerator_IsDone(generator))
        check(OgaGenerator_GenerateNextToken(generator), "generating a token");

    const char *text;
    size_t total = OgaGenerator_GetSequenceCount(generator, 0);
    check(OgaTokenizerDecode(tokenizer, OgaGenerator_GetSequenceData(generator, 0) + prompt, total - prompt, &text),
          "decoding");
    fputs(text, stdout);
    OgaDestroyString(text);
    OgaDestroyGenerator(generator);
    OgaDestroyGeneratorParams(params);
    OgaDestroySequences(encoded);
    OgaDestroyTokenizer(tokenizer);
    OgaDestroyModel(model);
    free(ids);
    return 0;
}
