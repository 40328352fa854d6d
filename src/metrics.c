/*
 * metrics.c - the Prometheus exposition of the gateway's counters (see
 * include/sluice/metrics.h for who writes what and how it is read).
 *
 * Rendering sums every reactor's counters per series and writes text
 * format 0.0.4: a HELP and TYPE line per family, then its samples. It runs
 * on the reactor that took the scrape, into one pool block; a scrape costs
 * O(reactors x (models + statuses)), none of it on the request path.
 */
#include "sluice/metrics.h"

#include "sluice/reactor.h"
#include "sluice/route.h"
#include "sluice/tls.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const unsigned codes[] = {
#define CODE(n) n,
	SL_METRIC_CODES(CODE)
#undef CODE
};
static const uint64_t ttfb_bounds[SL_METRIC_TTFB_BUCKETS] = SL_METRIC_TTFB_BOUNDS_MS;

_Static_assert(sizeof codes / sizeof codes[0] == SL_METRIC_CODES_NUM - 1, "codes and their count");

unsigned sl_metric_code_index(unsigned status)
{
	for (unsigned i = 0; i < SL_METRIC_CODES_NUM - 1; i++)
		if (codes[i] == status)
			return i;
	return SL_METRIC_CODES_NUM - 1;
}

void sl_metric_request(struct sl_model_metrics *m, unsigned status, uint64_t input,
                       uint64_t output, uint64_t cache_read, uint64_t cache_write,
                       int64_t cost_pico_usd, bool estimated, unsigned attempts,
                       uint64_t ttfb_ms, bool has_ttfb)
{
	SL_METRIC_INC(m->requests[sl_metric_code_index(status)]);
	SL_METRIC_ADD(m->input_tokens, input);
	SL_METRIC_ADD(m->output_tokens, output);
	SL_METRIC_ADD(m->cache_read_tokens, cache_read);
	SL_METRIC_ADD(m->cache_write_tokens, cache_write);
	if (cost_pico_usd > 0)
		SL_METRIC_ADD(m->cost_pico_usd, (uint64_t)cost_pico_usd);
	if (estimated)
		SL_METRIC_INC(m->estimated);
	if (attempts > 1)
		SL_METRIC_INC(m->retried);
	if (has_ttfb) {
		SL_METRIC_INC(m->ttfb_count);
		SL_METRIC_ADD(m->ttfb_sum_ms, ttfb_ms);
		unsigned b = 0;
		while (b < SL_METRIC_TTFB_BUCKETS && ttfb_ms > ttfb_bounds[b])
			b++;
		if (b < SL_METRIC_TTFB_BUCKETS)
			SL_METRIC_INC(m->ttfb_buckets[b]);
	}
}

/* --- rendering ------------------------------------------------------------------------ */

struct out {
	char *p;
	size_t len, cap;
	bool overflow;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
	if (o->overflow)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= o->cap - o->len)
		o->overflow = true;
	else
		o->len += (size_t)n;
}

static void family(struct out *o, const char *name, const char *type, const char *help)
{
	put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A family of one unlabelled sample. */
static void single(struct out *o, const char *name, const char *type, const char *help, uint64_t v)
{
	family(o, name, type, help);
	put(o, "%s %llu\n", name, (unsigned long long)v);
}

/* One sample of a family, its labels written out ("how=\"opened\""). */
static void sample(struct out *o, const char *name, const char *labels, uint64_t v)
{
	put(o, "%s{%s} %llu\n", name, labels, (unsigned long long)v);
}

/* A label value as the format wants it: \, " and newline escaped. Config
 * names are short; longer ones are cut at 255 bytes. */
static const char *label(const char *s, char *buf)
{
	size_t j = 0;
	for (size_t i = 0; s[i] && j < 250; i++) {
		if (s[i] == '\\' || s[i] == '"') {
			buf[j++] = '\\';
			buf[j++] = s[i];
		} else if (s[i] == '\n') {
			buf[j++] = '\\';
			buf[j++] = 'n';
		} else {
			buf[j++] = s[i];
		}
	}
	buf[j] = '\0';
	return buf;
}

/* the sum over reactors of a uint64_t at byte offset off in each one's
 * model metrics for model i */
static uint64_t model_sum(struct sl_reactor *rs, uint32_t n, uint32_t i, size_t off)
{
	uint64_t sum = 0;
	for (uint32_t k = 0; k < n; k++) {
		uint64_t *p = (uint64_t *)(void *)((char *)&rs[k].metrics.models[i] + off);
		sum += SL_METRIC_GET(*p);
	}
	return sum;
}

#define MODEL_SUM(field) model_sum(rs, n, i, offsetof(struct sl_model_metrics, field))

#define REACTOR_SUM(expr)                                                                  \
	({                                                                                 \
		uint64_t sum_ = 0;                                                         \
		for (uint32_t k_ = 0; k_ < n; k_++) {                                      \
			struct sl_reactor *r_ = &rs[k_];                                   \
			sum_ += SL_METRIC_GET(expr);                                       \
		}                                                                          \
		sum_;                                                                      \
	})

static void render_models(struct out *o, struct sl_reactor *rs, uint32_t n)
{
	const struct sl_config *cfg = rs[0].config;
	char lb[512];

	family(o, "sluice_requests_total", "counter",
	       "Requests routed to a model, by the status the client got (499: it left first).");
	for (uint32_t i = 0; i < cfg->num_models; i++) {
		label(cfg->models[i].id, lb);
		for (unsigned c = 0; c < SL_METRIC_CODES_NUM; c++) {
			uint64_t v = MODEL_SUM(requests[c]);
			if (!v)
				continue;
			if (c < SL_METRIC_CODES_NUM - 1)
				put(o, "sluice_requests_total{model=\"%s\",code=\"%u\"} %llu\n", lb, codes[c],
				    (unsigned long long)v);
			else
				put(o, "sluice_requests_total{model=\"%s\",code=\"other\"} %llu\n", lb,
				    (unsigned long long)v);
		}
	}

	static const struct {
		const char *kind;
		size_t off;
	} tokens[] = {
		{ "input", offsetof(struct sl_model_metrics, input_tokens) },
		{ "output", offsetof(struct sl_model_metrics, output_tokens) },
		{ "cache_read", offsetof(struct sl_model_metrics, cache_read_tokens) },
		{ "cache_write", offsetof(struct sl_model_metrics, cache_write_tokens) },
	};
	family(o, "sluice_tokens_total", "counter",
	       "Tokens billed, as in the usage log (input excludes cache reads).");
	for (uint32_t i = 0; i < cfg->num_models; i++) {
		label(cfg->models[i].id, lb);
		for (unsigned t = 0; t < 4; t++)
			put(o, "sluice_tokens_total{model=\"%s\",kind=\"%s\"} %llu\n", lb, tokens[t].kind,
			    (unsigned long long)model_sum(rs, n, i, tokens[t].off));
	}

	family(o, "sluice_cost_usd_total", "counter", "Cost billed, in US dollars.");
	for (uint32_t i = 0; i < cfg->num_models; i++) {
		uint64_t pico = MODEL_SUM(cost_pico_usd);
		put(o, "sluice_cost_usd_total{model=\"%s\"} %llu.%012llu\n", label(cfg->models[i].id, lb),
		    (unsigned long long)(pico / 1000000000000ull),
		    (unsigned long long)(pico % 1000000000000ull));
	}

	family(o, "sluice_estimated_usage_total", "counter",
	       "Requests billed on estimated usage (the upstream did not report it to the end).");
	for (uint32_t i = 0; i < cfg->num_models; i++)
		put(o, "sluice_estimated_usage_total{model=\"%s\"} %llu\n", label(cfg->models[i].id, lb),
		    (unsigned long long)MODEL_SUM(estimated));

	family(o, "sluice_retried_requests_total", "counter",
	       "Requests that took more than one upstream attempt.");
	for (uint32_t i = 0; i < cfg->num_models; i++)
		put(o, "sluice_retried_requests_total{model=\"%s\"} %llu\n", label(cfg->models[i].id, lb),
		    (unsigned long long)MODEL_SUM(retried));

	family(o, "sluice_time_to_first_byte_seconds", "histogram",
	       "From the request head to the first response byte sent to the client.");
	for (uint32_t i = 0; i < cfg->num_models; i++) {
		label(cfg->models[i].id, lb);
		uint64_t cum = 0;
		for (unsigned b = 0; b < SL_METRIC_TTFB_BUCKETS; b++) {
			cum += MODEL_SUM(ttfb_buckets[b]);
			put(o, "sluice_time_to_first_byte_seconds_bucket{model=\"%s\",le=\"%llu.%03llu\"} %llu\n",
			    lb, (unsigned long long)(ttfb_bounds[b] / 1000),
			    (unsigned long long)(ttfb_bounds[b] % 1000), (unsigned long long)cum);
		}
		uint64_t count = MODEL_SUM(ttfb_count), sum_ms = MODEL_SUM(ttfb_sum_ms);
		put(o, "sluice_time_to_first_byte_seconds_bucket{model=\"%s\",le=\"+Inf\"} %llu\n", lb,
		    (unsigned long long)count);
		put(o, "sluice_time_to_first_byte_seconds_sum{model=\"%s\"} %llu.%03llu\n", lb,
		    (unsigned long long)(sum_ms / 1000), (unsigned long long)(sum_ms % 1000));
		put(o, "sluice_time_to_first_byte_seconds_count{model=\"%s\"} %llu\n", lb,
		    (unsigned long long)count);
	}
}

size_t sl_metrics_render(struct sl_reactor *rs, uint32_t n, char *out, size_t cap)
{
	struct out o = { out, 0, cap, false };
	const struct sl_config *cfg = rs[0].config;

	family(&o, "sluice_info", "gauge", "The gateway's version; always 1.");
	put(&o, "sluice_info{version=\"%s\"} 1\n", SLUICE_VERSION);
	single(&o, "sluice_reactors", "gauge", "Reactor threads (one io_uring each).", n);
	single(&o, "sluice_connections_accepted_total", "counter", "Client connections accepted.",
	       REACTOR_SUM(r_->stats.accepted));
	single(&o, "sluice_connections_open", "gauge", "Client connections open now.",
	       REACTOR_SUM(r_->num_clients));
	single(&o, "sluice_requests_in_flight", "gauge", "Requests being routed or relayed now.",
	       REACTOR_SUM(r_->num_exchanges));
	single(&o, "sluice_http_requests_total", "counter",
	       "Request heads parsed, on every route (the admin listener's included).",
	       REACTOR_SUM(r_->stats.requests));

	family(&o, "sluice_local_responses_total", "counter",
	       "Responses the gateway made itself (errors before or instead of routing, /healthz, "
	       "/v1/models), by status.");
	for (unsigned s = 0; s < 500; s++) {
		uint64_t v = REACTOR_SUM(r_->metrics.local_responses[s]);
		if (v)
			put(&o, "sluice_local_responses_total{code=\"%u\"} %llu\n", s + 100,
			    (unsigned long long)v);
	}

	render_models(&o, rs, n);

	family(&o, "sluice_upstream_connections_total", "counter",
	       "Upstream connections: opened, or reused from a keep-alive pool.");
	sample(&o, "sluice_upstream_connections_total", "how=\"opened\"",
	       REACTOR_SUM(r_->stats.upstream_connects));
	sample(&o, "sluice_upstream_connections_total", "how=\"reused\"",
	       REACTOR_SUM(r_->stats.upstream_reused));
	single(&o, "sluice_recv_buffer_stalls_total", "counter",
	       "Receives that waited for a free buffer (limits.recv_buffers_per_core).",
	       REACTOR_SUM(r_->stats.recv_enobufs));
	single(&o, "sluice_proxy_header_errors_total", "counter",
	       "Connections closed for a missing or bad PROXY protocol header.",
	       REACTOR_SUM(r_->stats.proxy_header_bad));
	if (cfg->access_log.path) {
		family(&o, "sluice_access_log_lines_total", "counter",
		       "Access log lines, by what became of them.");
		sample(&o, "sluice_access_log_lines_total", "result=\"buffered\"",
		       REACTOR_SUM(r_->alog.lines));
		sample(&o, "sluice_access_log_lines_total", "result=\"dropped\"",
		       REACTOR_SUM(r_->alog.dropped));
		single(&o, "sluice_access_log_write_errors_total", "counter",
		       "Access log writes that failed (their lines are lost).",
		       REACTOR_SUM(r_->alog.write_errors));
	}
	if (sl_tls_in_use(cfg)) {
		struct sl_tls_stats t;
		sl_tls_stats(&t);
		family(&o, "sluice_tls_handshakes_total", "counter",
		       "TLS handshakes, by side and outcome.");
		const struct {
			const char *side, *result;
			uint64_t n;
		} hs[] = { { "client", "full", t.server_handshakes },
			   { "client", "resumed", t.server_resumed },
			   { "client", "failed", t.server_failed },
			   { "upstream", "full", t.client_handshakes },
			   { "upstream", "resumed", t.client_resumed },
			   { "upstream", "failed", t.client_failed } };
		for (unsigned i = 0; i < SL_ARRAY_LEN(hs); i++)
			put(&o, "sluice_tls_handshakes_total{side=\"%s\",result=\"%s\"} %llu\n",
			    hs[i].side, hs[i].result, (unsigned long long)hs[i].n);
	}
	return o.overflow ? 0 : o.len;
}

size_t sl_metrics_render_cap(uint32_t num_models)
{
	/* fixed families and 500 possible local statuses, then per model: 15
	 * codes, 4 token kinds, cost, estimated, retried, 14 histogram lines;
	 * a line is at most ~90 bytes plus a 250-byte label */
	return 64 * 1024 + (size_t)num_models * 38 * 360;
}
