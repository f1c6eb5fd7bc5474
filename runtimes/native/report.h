/* Reports as `edgetx verify` / `edgetx bench` print them: a plain-text table, or their JSON. */
#ifndef EDGETX_NATIVE_REPORT_H
#define EDGETX_NATIVE_REPORT_H

#include <stdio.h>

#include "internal.h"

cJSON *et_report_json(const et_report *report); /* ParityReport.to_dict()'s keys */
void et_print_reports(FILE *out, const et_report *reports, int count);
cJSON *et_bench_json(const et_bench_result *result, const et_bench_config *config);
void et_print_bench(FILE *out, const et_bench_result *results, int count, const et_bench_config *config);

#endif
