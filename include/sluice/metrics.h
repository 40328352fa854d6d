/*
 * metrics.h - counters for the admin listener's GET /metrics (Prometheus
 * text format 0.0.4).
 *
 * Each reactor owns its counters and is their only writer; it updates them
 * with relaxed atomic stores of the incremented value (a plain add and
 * store, no lock prefix, nothing shared on the request path). A reactor
 * serving /metrics reads every reactor's counters with relaxed loads and
 * sums them, so a scrape sees each counter at some recent value, never a
 * torn one, and counters never go backwards.
 *
 * Bounds: per reactor, one struct sl_metrics plus one struct
 * sl_model_metrics per configured model, allocated at start. Labels come
 * from the config (model ids, provider names) and from fixed tables here,
 * never from a request, so the number of series is bounded by the config.
 */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SL_METRIC_ADD(x, v) __atomic_store_n(&(x), (x) + (v), __ATOMIC_RELAXED)
#define SL_METRIC_INC(x) SL_METRIC_ADD(x, 1)
#define SL_METRIC_DEC(x) __atomic_store_n(&(x), (x) - 1, __ATOMIC_RELAXED)
#define SL_METRIC_GET(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

/* The statuses a routed request is counted under (its "code" label);
 * anything else counts as "other". */
#define SL_METRIC_CODES(X)                                                              \
	X(200) X(400) X(401) X(402) X(403) X(404) X(408) X(413) X(429) X(499) X(500)    \
	X(502) X(503) X(504)
#define SL_METRIC_CODES_NUM 15 /* the list, and "other" last */

/* Upper bounds of the time-to-first-byte histogram, in milliseconds. */
#define SL_METRIC_TTFB_BOUNDS_MS { 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000 }
#define SL_METRIC_TTFB_BUCKETS 11

struct sl_model_metrics {
	uint64_t requests[SL_METRIC_CODES_NUM]; /* routed requests by final status */
	uint64_t input_tokens, output_tokens, cache_read_tokens, cache_write_tokens;
	uint64_t estimated;  /* requests billed on estimated usage */
	uint64_t retried;    /* requests that took more than one upstream attempt */
	uint64_t cost_pico_usd;
	uint64_t ttfb_count, ttfb_sum_ms;
	uint64_t ttfb_buckets[SL_METRIC_TTFB_BUCKETS]; /* not cumulative: one per bound */
};

struct sl_metrics {
	/* responses the gateway made itself (errors, /healthz, /v1/models), by
	 * status 100..599 */
	uint64_t local_responses[500];
	struct sl_model_metrics *models; /* [config num_models] */
};

/* Index of status in SL_METRIC_CODES ("other": SL_METRIC_CODES_NUM - 1). */
unsigned sl_metric_code_index(unsigned status);

/* Counts one routed request that ended (proxy.c, with its usage record). */
void sl_metric_request(struct sl_model_metrics *m, unsigned status, uint64_t input,
                       uint64_t output, uint64_t cache_read, uint64_t cache_write,
                       int64_t cost_pico_usd, bool estimated, unsigned attempts,
                       uint64_t ttfb_ms, bool has_ttfb);

struct sl_reactor;

/* sl_metrics_render writes the exposition of reactors[0..n) into out[cap]:
 * its length, or 0 when cap is too small. */
size_t sl_metrics_render(struct sl_reactor *reactors, uint32_t n, char *out, size_t cap);

/* A cap that sl_metrics_render never exceeds for this config. */
size_t sl_metrics_render_cap(uint32_t num_models);

#endif
