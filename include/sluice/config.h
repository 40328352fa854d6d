/*
 * config.h - the gateway's configuration: loaded and validated once at start
 * (and, later, on SIGHUP) into an immutable struct that the reactors only read.
 *
 * The file is JSON with // and / * * / comments. Every error names the key path
 * where it was found, e.g. `providers.openai.base_url: expected a string` or
 * `models.gpt-4.1.targets[0].provider: unknown provider "x"`; unknown keys are
 * errors too (a typo must not silently fall back to a default). Everything here
 * is allocated with malloc at load time; nothing is allocated afterwards.
 */
#ifndef SLUICE_CONFIG_H
#define SLUICE_CONFIG_H

#include "sluice/common.h"

#include <sys/socket.h>

/* Wire format of a client route or of a provider. */
enum sl_format {
	SL_FORMAT_OPENAI = 0,
	SL_FORMAT_ANTHROPIC = 1,
};

/* A certificate of a TLS listener: PEM chain and key (ECDSA or RSA), and an
 * optional DER OCSP response to staple. Relative paths are relative to the
 * config file's directory (sl_config.config_dir). */
struct sl_tls_cert_config {
	char *cert;
	char *key;
	char *ocsp; /* NULL: no stapling */
};

struct sl_listener_tls_config {
	/* the first is the default; the others are chosen by SNI (a name their
	 * certificate is valid for) */
	struct sl_tls_cert_config *certs;
	uint32_t num_certs;
	bool session_tickets;  /* true */
	char *ticket_key_file; /* 48 bytes shared by a fleet; NULL: random per process */
};

struct sl_listener_config {
	char *address; /* as written: "0.0.0.0:8080", "[::1]:8080", ":8080" */
	struct sockaddr_storage addr;
	socklen_t addr_len;
	struct sl_listener_tls_config *tls; /* NULL: plain HTTP */
	bool proxy_protocol; /* every connection starts with a PROXY header (proxyproto.h) */
	bool admin;          /* the admin listener: serves /metrics and /healthz only */
	char *admin_key;     /* admin: "key" (resolved env:NAME) that /metrics needs; NULL: none */
};

/* Bounds and timeouts of the data path. Every field has a documented default
 * (README, "Configuration") and is set under "limits" / "timeouts". */
struct sl_limits_config {
	uint32_t connections_per_core;   /* client + upstream slots per reactor (16384) */
	uint32_t header_bytes_max;       /* request head, bytes: 431 beyond (16384) */
	uint32_t headers_num_max;        /* header fields per message: 431 beyond (100) */
	uint32_t target_bytes_max;       /* request target: 414 beyond (8192) */
	uint64_t body_bytes_max;         /* request body: 413 beyond (33554432) */
	uint32_t recv_buffer_bytes;      /* size of one provided recv buffer (16384) */
	uint32_t recv_buffers_per_core;  /* provided buffers per reactor, power of 2 (1024) */
	uint32_t send_queue_buffers_max; /* relay buffers queued per stream before the
	                                    upstream is paused (8) */
	uint32_t tls_buffers_per_core;   /* decrypted-record buffers per reactor, each
	                                    recv_buffer_bytes; only with TLS in use (1024) */
	uint32_t proxy_header_bytes_max; /* a PROXY protocol header, bytes (4096) */
	uint64_t memory_per_core_bytes;  /* request/response buffer arena per reactor
	                                    (268435456) */
	uint32_t header_timeout_ms;      /* first byte to end of head: 408 (10000) */
	uint32_t body_timeout_ms;        /* max gap between body reads: 408 (30000) */
	uint32_t keepalive_timeout_ms;   /* idle client connection (75000) */
	uint32_t send_timeout_ms;        /* client not draining its response (60000) */
};

struct sl_provider_key {
	char *key; /* resolved: literal, or the value of env:NAME at load time */
	uint32_t weight;
};

struct sl_header_pair {
	char *name;
	char *value;
};

struct sl_provider_config {
	char *name;
	char *base_url;
	enum sl_format format;
	bool tls;        /* https:// base URL */
	char *ca_file;   /* https: CAs to verify with (NULL: the system bundle) */
	bool tls_insecure_skip_verify; /* https: no verification at all (loudly logged) */
	char *host;      /* Host header value: "api.example.com" or "127.0.0.1:9001" */
	char *base_path; /* path part of base_url without trailing '/', may be "" */
	struct sockaddr_storage addr; /* resolved once at load (getaddrinfo) */
	socklen_t addr_len;
	struct sl_provider_key *keys;
	uint32_t num_keys;
	struct sl_header_pair *headers; /* extra headers sent upstream */
	uint32_t num_headers;
	char *anthropic_version;       /* anthropic format: "2023-06-01" default */
	uint32_t connect_timeout_ms;    /* (5000) */
	uint32_t first_byte_timeout_ms; /* request sent to response head (60000) */
	uint32_t idle_timeout_ms;       /* gap between response bytes (60000) */
	uint32_t keepalive_per_core;    /* idle pooled connections per reactor (64) */
};

struct sl_model_target {
	uint32_t provider; /* index into sl_config.providers */
	char *model;       /* upstream model id */
	uint32_t priority; /* 1 = first (default) */
	uint32_t weight;   /* default 1 */
};

/* Bits of sl_model_price.fields_set: which prices the config gave. */
enum sl_price_field {
	SL_PRICE_INPUT = 1u << 0,
	SL_PRICE_OUTPUT = 1u << 1,
	SL_PRICE_CACHED_INPUT = 1u << 2,
	SL_PRICE_CACHE_WRITE = 1u << 3,
	SL_PRICE_CACHE_WRITE_1H = 1u << 4,
	SL_PRICE_IMAGE = 1u << 5,
};

/* Prices in integer micro-dollars per 1M tokens ("2.50" -> 2500000). A field
 * the config does not give is 0 and its SL_PRICE_* bit is clear. */
struct sl_model_price {
	int64_t input;
	int64_t output;
	int64_t cached_input;
	/* cache_write: Anthropic's 5-minute cache writes (and any other);
	 * cache_write_1h: its 1-hour ones (not set: at cache_write) */
	int64_t cache_write;
	int64_t cache_write_1h;
	int64_t image; /* micro-dollars per generated image (images routes) */
	bool set;            /* the model has a "price" object */
	uint32_t fields_set; /* SL_PRICE_* bits */
};

/* Optional global limits of one model, across all keys (protect an
 * upstream). 0: unlimited. */
struct sl_model_limits {
	uint64_t requests_per_minute;
	uint64_t tokens_per_minute;
	uint64_t concurrent;
	bool set;
};

struct sl_model_config {
	char *id;
	char **aliases;
	uint32_t num_aliases;
	struct sl_model_target *targets;
	uint32_t num_targets;
	struct sl_model_price price;
	uint32_t context_window;    /* 0: unknown */
	uint32_t max_output_tokens; /* 0: unknown */
	char *owned_by;             /* default: the first target's provider name */
	struct sl_model_limits limits;
	/* Precomputed at load: the JSON object GET /v1/models/{id} answers. */
	char *json;
	size_t json_len;
};

/* A tier: the limits every key of that tier gets (each key separately).
 * 0: unlimited. "Minute" is rate_limits.window_ms long (60000 unless a test
 * shortens it). */
struct sl_tier_config {
	char *name;
	uint64_t requests_per_minute;
	uint64_t tokens_per_minute;
	uint64_t concurrent;
	uint64_t requests_per_day;
	/* models the tier may use: model_allowed[i] for sl_config.models[i], or
	 * NULL for every model */
	uint8_t *model_allowed;
	/* billing (credit.h, docs/billing.md): "prepaid": a request needs the
	 * key's balance to cover its hold (else 402 insufficient_balance);
	 * budgets in micro-dollars per UTC day / month, 0: none (else 402
	 * budget_exceeded); read as dollars, kept in pico-dollars (common.h) */
	bool prepaid;
	int64_t budget_day_pico_usd;
	int64_t budget_month_pico_usd;
	/* plan credits (pico-dollars) per plan window, spent before the
	 * balance; 0: none */
	int64_t plan_credits_pico_usd;
	uint32_t plan_window_hours; /* 5 */
};

/* "auth": client authentication and failed-auth IP blocking. */
struct sl_auth_config {
	bool required;              /* "mode": "keys" (default) or "none" */
	uint32_t ip_block_failures; /* failed auths in a row that block an address (50; 0: off) */
	uint32_t ip_block_seconds;  /* how long (300) */
	uint32_t ip_table_entries;  /* addresses tracked at once (65536) */
};

/* "rate_limits": how the per-key limits are enforced. */
struct sl_rate_config {
	uint32_t window_ms;              /* the rate window, "per minute" (60000) */
	uint32_t reconcile_ms;           /* cross-core reconcile period (50) */
	uint32_t daily_reset_hour_utc;   /* when daily quotas reset (0) */
	uint32_t keys_max;               /* key slots (1000000) */
	uint32_t active_keys_max;        /* keys tracked by the reconciler at once (65536) */
	uint32_t max_tokens_estimate_max; /* output tokens counted at admission at most (4096) */
	uint32_t state_save_ms;          /* how often limits.state is written (1000) */
};

/* "usage_log": the append-only usage log (usagelog.h, docs/usage-log.md) */
struct sl_usage_log_config {
	bool enabled;               /* true */
	bool strict;                /* "mode": "strict" (a response ends once its record is
	                               durable) or "batched" (default) */
	uint32_t flush_ms;          /* group-commit period (5) */
	uint64_t buffer_bytes;      /* per reactor, each of two buffers (1 MiB) */
	uint64_t segment_bytes_max; /* rotate past this size (64 MiB) */
	uint32_t segment_age_max_s; /* rotate past this age (3600) */
};

/* "access_log" (accesslog.h): off unless a path is given */
struct sl_access_log_config {
	char *path;             /* NULL: no access log; relative: to the config's directory */
	uint32_t flush_ms;      /* a line waits at most this long for its write (200) */
	uint64_t buffer_bytes;  /* per reactor, each of two buffers (65536) */
};

/* "routing": retries, failover, cooldowns and circuits (route.h) */
struct sl_routing_config {
	uint32_t attempts_max;      /* upstream attempts per request, before its first byte (3) */
	uint32_t backoff_ms;        /* before the 2nd attempt; doubles per attempt, jittered
	                               50..100% (25) */
	uint32_t backoff_max_ms;    /* (1000) */
	uint32_t deadline_ms;       /* every attempt must start within this of the first (30000) */
	uint32_t cooldown_ms;       /* a key's 429 without Retry-After: this, doubling per
	                               429 in a row (1000; 0: no cooldown) */
	uint32_t cooldown_max_ms;   /* (60000) */
	uint32_t circuit_failures;  /* failures of a target within the window that open its
	                               circuit (5) */
	uint32_t circuit_window_ms; /* (10000) */
	uint32_t circuit_open_ms;   /* open; then one probe request (half-open) (10000) */
	bool retry_unconfirmed;     /* also retry failures that do not prove the provider
	                               did not start (reset/timeout after the whole request
	                               was sent, 500, 502) (true) */
};

struct sl_config {
	char *origin; /* file path, or "<embedded demo>" */
	char *config_dir; /* the config file's directory ("." for a string) */
	struct sl_listener_config *listeners;
	uint32_t num_listeners;
	/* the "admin" listener (metrics, health), or NULL: when set, it is the
	 * last of listeners[] (num_listeners counts it) */
	struct sl_listener_config *admin;
	char *data_dir;
	uint32_t threads; /* 0: one per CPU the process may run on */
	struct sl_limits_config limits;
	struct sl_auth_config auth;
	struct sl_rate_config rate;
	struct sl_usage_log_config usage_log;
	struct sl_access_log_config access_log;
	struct sl_routing_config routing;
	struct sl_tier_config *tiers;
	uint32_t num_tiers;
	struct sl_provider_config *providers;
	uint32_t num_providers;
	struct sl_model_config *models;
	uint32_t num_models;
	/* Precomputed at load: the JSON list GET /v1/models answers. */
	char *models_json;
	size_t models_json_len;
	/* private: open-addressing hash of ids and aliases -> model index + 1
	 * (0: empty slot); model_index_name says which name of that model the
	 * slot holds (0: its id, k: aliases[k - 1]). */
	uint32_t *model_index;
	uint32_t *model_index_name;
	uint32_t model_index_mask;
};

/*
 * sl_config_load_string parses and validates text[0..len). origin names the
 * source in messages. On success returns 0 and stores a new config in *out.
 * On failure returns -EINVAL (-ENOMEM when out of memory) and writes one
 * line, "key.path: what is wrong" (or "line L, column C: ..." for a JSON
 * syntax error), into err[0..err_len). The reference is docs/config.md.
 */
int sl_config_load_string(const char *text, size_t len, const char *origin,
                          struct sl_config **out, char *err, size_t err_len);

/* sl_config_load_file reads path and calls sl_config_load_string. A file that
 * cannot be read is reported as "PATH: strerror" and returns its -errno. */
int sl_config_load_file(const char *path, struct sl_config **out, char *err, size_t err_len);

/* sl_config_free releases everything; sl_config_free(NULL) is a no-op. */
void sl_config_free(struct sl_config *config);

/* sl_config_find_tier returns the tier called name, or NULL. */
const struct sl_tier_config *sl_config_find_tier(const struct sl_config *config, const char *name);

/* sl_config_find_model resolves a model id or alias (exact, case-sensitive)
 * to its entry, or NULL. Lock-free and allocation-free: safe on the request
 * path. */
const struct sl_model_config *sl_config_find_model(const struct sl_config *config,
                                                   const char *name, size_t name_len);

/* The embedded demo configuration: one listener on 127.0.0.1:8080 and two
 * providers (openai and anthropic formats) both pointing at the bundled mock
 * on 127.0.0.1:9100, with a few models. */
extern const char sl_config_demo[];

#endif
