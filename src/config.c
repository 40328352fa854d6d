/*
 * config.c - load and validate the configuration (config.h, docs/config.md).
 *
 * Loading runs in four steps, all at start-up:
 *   1. strip // and / * * / comments, replacing them with spaces but keeping
 *      every newline and byte offset, so that jansson's error positions still
 *      point into the operator's file;
 *   2. parse with jansson (duplicate keys rejected);
 *   3. walk the tree in a fixed order, copying every value into struct
 *      sl_config and stopping at the first problem with "key.path: message";
 *   4. derive what the request path needs: the model name hash and the JSON
 *      bodies of GET /v1/models and GET /v1/models/{id}.
 * The jansson tree is freed before returning: the reactors only ever read
 * the plain struct, and nothing here allocates after load.
 */
#include "sluice/config.h"
#include "sluice/proxyproto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * A fuzz driver defines this (as true) so that host names are never looked
 * up: only numeric addresses and "localhost" resolve, and fuzzed names never
 * reach DNS. Weak, so the gateway links without it (its address is then NULL).
 */
extern const bool sl_config_fuzzing __attribute__((weak));

#define CONFIG_FILE_BYTES_MAX (16u << 20)
#define KEY_PATH_BYTES_MAX 512
#define NAME_BYTES_MAX 256
#define TIMEOUT_MS_MAX 86400000u
#define WEIGHT_MAX 1000000u
#define PRIORITY_MAX 1000u
#define THREADS_MAX 4096u
/* Prices are bounded so that tokens * price fits an int64 with room to spare:
 * 100000 dollars per 1M tokens, in micro-dollars. */
#define PRICE_MICROS_MAX 100000000000LL
#define MODEL_CREATED 1700000000

struct loader {
	struct sl_config *config;
	char *err;
	size_t err_len;
	char path[KEY_PATH_BYTES_MAX];
	size_t path_len;
};

/* ---- errors and key paths ------------------------------------------------ */

/* Writes "key.path: message" (or just the message at the top level) into the
 * caller's buffer as one printable line. Returns -EINVAL, for `return fail()`. */
SL_PRINTF(2, 3) static int fail(struct loader *ld, const char *fmt, ...)
{
	if (!ld->err || ld->err_len == 0)
		return -EINVAL;
	size_t off = 0;
	if (ld->path_len > 0) {
		int n = snprintf(ld->err, ld->err_len, "%s: ", ld->path);
		off = n < 0 ? 0 : SL_MIN((size_t)n, ld->err_len - 1);
	}
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ld->err + off, ld->err_len - off, fmt, ap);
	va_end(ap);
	/* Keys and values are the operator's bytes: keep the message one line. */
	for (char *p = ld->err; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	return -EINVAL;
}

static int fail_oom(struct loader *ld)
{
	if (ld->err && ld->err_len > 0)
		snprintf(ld->err, ld->err_len, "out of memory");
	return -ENOMEM;
}

/* Appends a path component; returns the previous length for path_pop. A path
 * longer than the buffer is truncated (the message stays useful). */
SL_PRINTF(2, 3) static size_t path_push(struct loader *ld, const char *fmt, ...)
{
	size_t old = ld->path_len;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(ld->path + old, sizeof(ld->path) - old, fmt, ap);
	va_end(ap);
	if (n > 0)
		ld->path_len = SL_MIN(old + (size_t)n, sizeof(ld->path) - 1);
	return old;
}

static size_t path_push_key(struct loader *ld, const char *key)
{
	return path_push(ld, ld->path_len ? ".%s" : "%s", key);
}

static size_t path_push_index(struct loader *ld, size_t index)
{
	return path_push(ld, "[%zu]", index);
}

static void path_pop(struct loader *ld, size_t len)
{
	ld->path_len = len;
	ld->path[len] = '\0';
}

/* ---- step 1: comments ------------------------------------------------------ */

/*
 * strip_comments copies text[0..len) to out[0..len), replacing // and / * * /
 * comments outside strings with spaces (newlines kept, so line numbers and
 * byte offsets stay those of the input). Returns 0, or SL_ERROR with
 * *out_error_offset at the "/" of an unterminated block comment.
 */
static int strip_comments(const char *text, size_t len, char *out, size_t *out_error_offset)
{
	enum { CODE, STRING, LINE_COMMENT, BLOCK_COMMENT } state = CODE;
	size_t block_start = 0;

	for (size_t i = 0; i < len; i++) {
		char c = text[i];
		switch (state) {
		case CODE:
			if (c == '"') {
				state = STRING;
			} else if (c == '/' && i + 1 < len && text[i + 1] == '/') {
				state = LINE_COMMENT;
				out[i++] = ' ';
				c = ' ';
			} else if (c == '/' && i + 1 < len && text[i + 1] == '*') {
				state = BLOCK_COMMENT;
				block_start = i;
				out[i++] = ' ';
				c = ' ';
			}
			break;
		case STRING:
			if (c == '\\' && i + 1 < len) {
				out[i] = c;
				c = text[++i]; /* the escaped byte, whatever it is */
			} else if (c == '"') {
				state = CODE;
			}
			break;
		case LINE_COMMENT:
			if (c == '\n')
				state = CODE;
			else
				c = ' ';
			break;
		case BLOCK_COMMENT:
			if (c == '*' && i + 1 < len && text[i + 1] == '/') {
				state = CODE;
				out[i++] = ' ';
				c = ' ';
			} else if (c != '\n') {
				c = ' ';
			}
			break;
		}
		out[i] = c;
	}
	if (state == BLOCK_COMMENT) {
		*out_error_offset = block_start;
		return SL_ERROR;
	}
	return 0;
}

/* Line and column (both from 1; the column counts UTF-8 characters, as
 * jansson does) of byte offset in text. */
static void text_position(const char *text, size_t offset, int *out_line, int *out_column)
{
	int line = 1, column = 0;
	for (size_t i = 0; i < offset; i++) {
		if (text[i] == '\n') {
			line++;
			column = 0;
		} else if (((unsigned char)text[i] & 0xc0) != 0x80) {
			column++;
		}
	}
	*out_line = line;
	*out_column = column;
}

/* ---- typed accessors ------------------------------------------------------- */

static char *dup_string(const char *s)
{
	return strdup(s);
}

/* Fails on the first key of obj that is not in the NULL-terminated allowed. */
static int check_keys(struct loader *ld, json_t *obj, const char *const *allowed)
{
	const char *key;
	json_t *value;
	json_object_foreach (obj, key, value) {
		size_t i = 0;
		while (allowed[i] && strcmp(allowed[i], key) != 0)
			i++;
		if (!allowed[i]) {
			path_push_key(ld, key);
			return fail(ld, "unknown key");
		}
	}
	return 0;
}

/* Reads an optional integer member into *out (left at its default when
 * absent); the value must lie in [min, max]. */
static int read_u64(struct loader *ld, json_t *obj, const char *key, uint64_t min, uint64_t max,
                    uint64_t *out)
{
	json_t *v = json_object_get(obj, key);
	if (!v)
		return 0;
	size_t old = path_push_key(ld, key);
	if (!json_is_integer(v))
		return fail(ld, "expected an integer");
	json_int_t n = json_integer_value(v);
	if (n < 0 || (uint64_t)n < min || (uint64_t)n > max)
		return fail(ld, "must be between %llu and %llu", (unsigned long long)min,
		            (unsigned long long)max);
	*out = (uint64_t)n;
	path_pop(ld, old);
	return 0;
}

static int read_u32(struct loader *ld, json_t *obj, const char *key, uint32_t min, uint32_t max,
                    uint32_t *out)
{
	uint64_t v = *out;
	int rc = read_u64(ld, obj, key, min, max, &v);
	*out = (uint32_t)v;
	return rc;
}

static int read_timeout_ms(struct loader *ld, json_t *obj, const char *key, uint32_t *out)
{
	return read_u32(ld, obj, key, 1, TIMEOUT_MS_MAX, out);
}

enum {
	STR_REQUIRED = 1, /* absent: "required key is missing" */
	STR_NONEMPTY = 2, /* "" rejected */
	STR_NO_CTL = 4,   /* control characters rejected (header values, names) */
};

/* Reads a string member; *out borrows jansson's copy (NULL when absent). */
static int read_string(struct loader *ld, json_t *obj, const char *key, int flags, const char **out)
{
	json_t *v = json_object_get(obj, key);
	*out = NULL;
	size_t old = path_push_key(ld, key);
	if (!v) {
		if (flags & STR_REQUIRED)
			return fail(ld, "required key is missing");
		path_pop(ld, old);
		return 0;
	}
	if (!json_is_string(v))
		return fail(ld, "expected a string");
	const char *s = json_string_value(v);
	if ((flags & STR_NONEMPTY) && s[0] == '\0')
		return fail(ld, "must not be empty");
	if (flags & STR_NO_CTL)
		for (const char *p = s; *p; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				return fail(ld, "must not contain control characters");
	*out = s;
	path_pop(ld, old);
	return 0;
}

/* Reads an optional boolean member into *out (left at its default when
 * absent). */
static int read_bool(struct loader *ld, json_t *obj, const char *key, bool *out)
{
	json_t *v = json_object_get(obj, key);
	if (!v)
		return 0;
	if (!json_is_boolean(v)) {
		path_push_key(ld, key);
		return fail(ld, "expected true or false");
	}
	*out = json_is_true(v);
	return 0;
}

/* Reads an optional (or required) member that must be an object. */
static int read_object(struct loader *ld, json_t *obj, const char *key, bool required, json_t **out)
{
	json_t *v = json_object_get(obj, key);
	*out = NULL;
	if (!v) {
		if (!required)
			return 0;
		path_push_key(ld, key);
		return fail(ld, "required key is missing");
	}
	if (!json_is_object(v)) {
		path_push_key(ld, key);
		return fail(ld, "expected an object");
	}
	*out = v;
	return 0;
}

static bool is_digits(const char *s, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

/* Parses a decimal port of 1 to 5 digits; returns -1 unless 0..65535. */
static int parse_port(const char *s, size_t len)
{
	if (!is_digits(s, len) || len > 5)
		return -1;
	int port = 0;
	for (size_t i = 0; i < len; i++)
		port = port * 10 + (s[i] - '0');
	return port <= 65535 ? port : -1;
}

/* ---- addresses ------------------------------------------------------------- */

static void set_port(struct sockaddr_storage *addr, uint16_t port)
{
	if (addr->ss_family == AF_INET6)
		((struct sockaddr_in6 *)addr)->sin6_port = htons(port);
	else
		((struct sockaddr_in *)addr)->sin_port = htons(port);
}

/* Fills addr from a strict numeric address (inet_pton: dotted quad or IPv6
 * text) or "localhost" (127.0.0.1). Returns false otherwise. */
static bool numeric_address(const char *host, bool v6_only, struct sockaddr_storage *addr,
                            socklen_t *addr_len)
{
	memset(addr, 0, sizeof(*addr));
	struct sockaddr_in *sin = (struct sockaddr_in *)addr;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)addr;
	if (!v6_only && strcasecmp(host, "localhost") == 0) {
		sin->sin_family = AF_INET;
		sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		*addr_len = sizeof(*sin);
		return true;
	}
	if (!v6_only && inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		*addr_len = sizeof(*sin);
		return true;
	}
	if (v6_only && inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		*addr_len = sizeof(*sin6);
		return true;
	}
	return false;
}

/*
 * parse_listen_address accepts "HOST:PORT" (HOST a dotted quad or
 * "localhost"), "[IPV6]:PORT" and ":PORT" (all IPv4 interfaces); port 0
 * lets the kernel choose. The current key path names the address.
 */
static int parse_listen_address(struct loader *ld, const char *text, struct sl_listener_config *out)
{
	char host[INET6_ADDRSTRLEN + 16];
	const char *colon;
	bool v6 = false;

	if (text[0] == '[') {
		const char *close = strchr(text, ']');
		if (!close || close[1] != ':')
			return fail(ld, "expected HOST:PORT, [IPV6]:PORT or :PORT");
		size_t host_len = (size_t)(close - text - 1);
		if (host_len >= sizeof(host))
			return fail(ld, "invalid IPv6 address");
		memcpy(host, text + 1, host_len);
		host[host_len] = '\0';
		colon = close + 1;
		v6 = true;
	} else {
		colon = strrchr(text, ':');
		if (!colon)
			return fail(ld, "expected HOST:PORT, [IPV6]:PORT or :PORT");
		if (memchr(text, ':', (size_t)(colon - text)))
			return fail(ld, "IPv6 addresses must be written in brackets: [ADDR]:PORT");
		size_t host_len = (size_t)(colon - text);
		if (host_len >= sizeof(host))
			return fail(ld, "invalid address \"%.*s\"", (int)SL_MIN(host_len, 64), text);
		memcpy(host, text, host_len);
		host[host_len] = '\0';
		if (host_len == 0)
			strcpy(host, "0.0.0.0");
	}
	int port = parse_port(colon + 1, strlen(colon + 1));
	if (port < 0)
		return fail(ld, "invalid port \"%s\": expected 0 to 65535", colon + 1);
	if (!numeric_address(host, v6, &out->addr, &out->addr_len))
		return fail(ld, v6 ? "invalid IPv6 address \"%s\""
		                   : "\"%s\" is not a numeric IPv4 address or localhost",
		            host);
	set_port(&out->addr, (uint16_t)port);
	return 0;
}

/* One {"cert", "key", "ocsp"} of a TLS listener. */
static int parse_tls_cert(struct loader *ld, json_t *obj, struct sl_tls_cert_config *out)
{
	const char *cert, *key, *ocsp;
	int rc;
	if ((rc = read_string(ld, obj, "cert", STR_REQUIRED | STR_NONEMPTY, &cert)) ||
	    (rc = read_string(ld, obj, "key", STR_REQUIRED | STR_NONEMPTY, &key)) ||
	    (rc = read_string(ld, obj, "ocsp", STR_NONEMPTY, &ocsp)))
		return rc;
	if (!(out->cert = dup_string(cert)) || !(out->key = dup_string(key)) ||
	    (ocsp && !(out->ocsp = dup_string(ocsp))))
		return fail_oom(ld);
	return 0;
}

/*
 * "tls": {"cert", "key", "ocsp"} for one certificate, or "certificates":
 * [{"cert", "key", "ocsp"}, ...] for several chosen by SNI (both: the
 * top-level one is the default, listed first); "session_tickets" (true),
 * "ticket_key_file". The files are read when the listener starts.
 */
static int parse_listener_tls(struct loader *ld, json_t *obj, struct sl_listener_tls_config *t)
{
	static const char *const keys[] = { "cert", "key", "ocsp", "certificates",
		                            "session_tickets", "ticket_key_file", NULL };
	int rc;
	if (!json_is_object(obj))
		return fail(ld, "expected an object");
	if ((rc = check_keys(ld, obj, keys)))
		return rc;
	bool single = json_object_get(obj, "cert") || json_object_get(obj, "key");
	json_t *list = json_object_get(obj, "certificates");
	if (list && (!json_is_array(list) || json_array_size(list) == 0)) {
		path_push_key(ld, "certificates");
		return fail(ld, "expected a non-empty array of {\"cert\", \"key\"}");
	}
	if (!single && !list)
		return fail(ld, "needs \"cert\" and \"key\" (or \"certificates\")");
	if (!single && json_object_get(obj, "ocsp")) {
		path_push_key(ld, "ocsp");
		return fail(ld, "only valid with \"cert\"");
	}
	size_t n = (single ? 1 : 0) + (list ? json_array_size(list) : 0);
	if (n > 64)
		return fail(ld, "at most 64 certificates");
	if (!(t->certs = calloc(n, sizeof *t->certs)))
		return fail_oom(ld);
	t->num_certs = (uint32_t)n;
	size_t k = 0;
	if (single && (rc = parse_tls_cert(ld, obj, &t->certs[k++])))
		return rc;
	for (size_t i = 0; list && i < json_array_size(list); i++) {
		size_t old = path_push_key(ld, "certificates");
		path_push_index(ld, i);
		json_t *item = json_array_get(list, i);
		static const char *const cert_keys[] = { "cert", "key", "ocsp", NULL };
		if (!json_is_object(item))
			return fail(ld, "expected an object");
		if ((rc = check_keys(ld, item, cert_keys)) ||
		    (rc = parse_tls_cert(ld, item, &t->certs[k++])))
			return rc;
		path_pop(ld, old);
	}
	t->session_tickets = true;
	if ((rc = read_bool(ld, obj, "session_tickets", &t->session_tickets)))
		return rc;
	const char *tk;
	if ((rc = read_string(ld, obj, "ticket_key_file", STR_NONEMPTY, &tk)))
		return rc;
	if (tk && !(t->ticket_key_file = dup_string(tk)))
		return fail_oom(ld);
	return 0;
}

static int resolve_key(struct loader *ld, const char *text, struct sl_provider_key *out);

/* Parses one {"address": ..., "tls": ...} object (listen[i] or admin; the
 * admin listener may also have a "key"). */
static int parse_listener(struct loader *ld, json_t *obj, struct sl_listener_config *out)
{
	static const char *const keys[] = { "address", "tls", "proxy_protocol", NULL };
	static const char *const admin_keys[] = { "address", "tls", "proxy_protocol", "key", NULL };
	if (!json_is_object(obj))
		return fail(ld, "expected an object");
	int rc = check_keys(ld, obj, out->admin ? admin_keys : keys);
	if (rc || (rc = read_bool(ld, obj, "proxy_protocol", &out->proxy_protocol)))
		return rc;
	json_t *key = json_object_get(obj, "key");
	if (key) {
		size_t kp = path_push_key(ld, "key");
		if (!json_is_string(key))
			return fail(ld, "expected a string: the key, or env:NAME");
		struct sl_provider_key k = { 0 };
		if ((rc = resolve_key(ld, json_string_value(key), &k)))
			return rc;
		out->admin_key = k.key;
		path_pop(ld, kp);
	}
	const char *address;
	if ((rc = read_string(ld, obj, "address", STR_REQUIRED | STR_NONEMPTY, &address)))
		return rc;
	if (!(out->address = dup_string(address)))
		return fail_oom(ld);
	size_t old = path_push_key(ld, "address");
	if ((rc = parse_listen_address(ld, address, out)))
		return rc;
	path_pop(ld, old);
	json_t *tls = json_object_get(obj, "tls");
	if (tls) {
		old = path_push_key(ld, "tls");
		if (!(out->tls = calloc(1, sizeof *out->tls)))
			return fail_oom(ld);
		if ((rc = parse_listener_tls(ld, tls, out->tls)))
			return rc;
		path_pop(ld, old);
	}
	return 0;
}

static int parse_listen(struct loader *ld, json_t *root)
{
	struct sl_config *c = ld->config;
	json_t *list = json_object_get(root, "listen");
	size_t old = path_push_key(ld, "listen");
	if (!list)
		return fail(ld, "required key is missing");
	if (!json_is_array(list))
		return fail(ld, "expected an array");
	if (json_array_size(list) == 0)
		return fail(ld, "needs at least one listener");
	c->listeners = calloc(json_array_size(list), sizeof(*c->listeners));
	if (!c->listeners)
		return fail_oom(ld);
	c->num_listeners = (uint32_t)json_array_size(list);
	for (size_t i = 0; i < json_array_size(list); i++) {
		size_t item = path_push_index(ld, i);
		int rc = parse_listener(ld, json_array_get(list, i), &c->listeners[i]);
		if (rc)
			return rc;
		path_pop(ld, item);
	}
	path_pop(ld, old);
	return 0;
}

static int parse_admin(struct loader *ld, json_t *root)
{
	json_t *admin = json_object_get(root, "admin");
	if (!admin)
		return 0;
	/* the admin listener is the last of listeners[], flagged: sockets,
	 * TLS and accept treat it like the others */
	struct sl_config *c = ld->config;
	size_t old = path_push_key(ld, "admin");
	struct sl_listener_config *l =
	        realloc(c->listeners, (c->num_listeners + 1) * sizeof(*c->listeners));
	if (!l)
		return fail_oom(ld);
	c->listeners = l;
	c->admin = &l[c->num_listeners++];
	memset(c->admin, 0, sizeof *c->admin);
	c->admin->admin = true;
	int rc = parse_listener(ld, admin, c->admin);
	if (rc)
		return rc;
	path_pop(ld, old);
	return 0;
}

/* ---- limits ---------------------------------------------------------------- */

static int parse_limits(struct loader *ld, json_t *root)
{
	static const char *const limit_keys[] = {
		"connections_per_core", "header_bytes_max", "headers_num_max", "target_bytes_max",
		"body_bytes_max", "recv_buffer_bytes", "recv_buffers_per_core",
		"send_queue_buffers_max", "memory_per_core_bytes", "tls_buffers_per_core",
		"proxy_header_bytes_max", NULL,
	};
	static const char *const timeout_keys[] = { "header_ms", "body_ms", "keepalive_ms",
		                                    "send_ms", NULL };
	struct sl_limits_config *l = &ld->config->limits;
	json_t *obj;
	int rc;

	if ((rc = read_object(ld, root, "limits", false, &obj)))
		return rc;
	if (obj) {
		size_t old = path_push_key(ld, "limits");
		if ((rc = check_keys(ld, obj, limit_keys)) ||
		    (rc = read_u32(ld, obj, "connections_per_core", 2, 1u << 20,
		                   &l->connections_per_core)) ||
		    (rc = read_u32(ld, obj, "header_bytes_max", 1024, 1u << 20, &l->header_bytes_max)) ||
		    (rc = read_u32(ld, obj, "headers_num_max", 1, 4096, &l->headers_num_max)) ||
		    (rc = read_u32(ld, obj, "target_bytes_max", 16, 1u << 20, &l->target_bytes_max)) ||
		    (rc = read_u64(ld, obj, "body_bytes_max", 1, 4ull << 30, &l->body_bytes_max)) ||
		    (rc = read_u32(ld, obj, "recv_buffer_bytes", 1024, 1u << 20,
		                   &l->recv_buffer_bytes)) ||
		    (rc = read_u32(ld, obj, "send_queue_buffers_max", 1, 1024,
		                   &l->send_queue_buffers_max)) ||
		    (rc = read_u32(ld, obj, "tls_buffers_per_core", 16, 32768,
		                   &l->tls_buffers_per_core)) ||
		    (rc = read_u32(ld, obj, "proxy_header_bytes_max", SL_PROXYPROTO_BYTES_MIN,
		                   SL_PROXYPROTO_V2_FIXED + 65535, &l->proxy_header_bytes_max)) ||
		    (rc = read_u64(ld, obj, "memory_per_core_bytes", 1u << 20, 1ull << 40,
		                   &l->memory_per_core_bytes)))
			return rc;
		/* A power of two for the io_uring buffer ring. */
		json_t *v = json_object_get(obj, "recv_buffers_per_core");
		if (v) {
			path_push_key(ld, "recv_buffers_per_core");
			json_int_t n = json_is_integer(v) ? json_integer_value(v) : 0;
			if (n < 16 || n > 32768 || (n & (n - 1)) != 0)
				return fail(ld, "must be a power of two between 16 and 32768");
			l->recv_buffers_per_core = (uint32_t)n;
		}
		path_pop(ld, old);
	}

	if ((rc = read_object(ld, root, "timeouts", false, &obj)))
		return rc;
	if (obj) {
		size_t old = path_push_key(ld, "timeouts");
		if ((rc = check_keys(ld, obj, timeout_keys)) ||
		    (rc = read_timeout_ms(ld, obj, "header_ms", &l->header_timeout_ms)) ||
		    (rc = read_timeout_ms(ld, obj, "body_ms", &l->body_timeout_ms)) ||
		    (rc = read_timeout_ms(ld, obj, "keepalive_ms", &l->keepalive_timeout_ms)) ||
		    (rc = read_timeout_ms(ld, obj, "send_ms", &l->send_timeout_ms)))
			return rc;
		path_pop(ld, old);
	}
	return 0;
}

/* ---- providers ------------------------------------------------------------- */

static bool is_host_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_';
}

/* Resolves a provider host once, at load: numeric addresses and "localhost"
 * directly, names with getaddrinfo (first answer). */
static int resolve_provider_host(struct loader *ld, const char *host, bool v6,
                                 struct sl_provider_config *p)
{
	if (numeric_address(host, v6, &p->addr, &p->addr_len))
		return 0;
	if (v6)
		return fail(ld, "invalid IPv6 address \"%s\"", host);
	bool dotted = true;
	for (const char *s = host; *s; s++)
		if (!((*s >= '0' && *s <= '9') || *s == '.'))
			dotted = false;
	if (dotted)
		return fail(ld, "invalid IPv4 address \"%s\"", host);
	if (&sl_config_fuzzing != NULL && sl_config_fuzzing)
		return fail(ld, "cannot resolve host \"%s\": name lookups are off while fuzzing",
		            host);

	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
	struct addrinfo *res = NULL;
	int rc = getaddrinfo(host, NULL, &hints, &res);
	if (rc != 0 || !res)
		return fail(ld, "cannot resolve host \"%s\": %s", host,
		            rc ? gai_strerror(rc) : "no address");
	if (res->ai_addrlen > sizeof(p->addr)) {
		freeaddrinfo(res);
		return fail(ld, "cannot resolve host \"%s\": address too long", host);
	}
	memset(&p->addr, 0, sizeof(p->addr));
	memcpy(&p->addr, res->ai_addr, res->ai_addrlen);
	p->addr_len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

/*
 * parse_base_url splits "http[s]://HOST[:PORT][/PATH]" into tls, host (the
 * Host header value, with :PORT only when not the scheme's default),
 * base_path (no trailing '/') and the resolved address. HOST may be a name,
 * a dotted quad or [IPV6]. No user info, query or fragment.
 */
static int parse_base_url(struct loader *ld, const char *url, struct sl_provider_config *p)
{
	const char *rest;
	int port;
	if (strncasecmp(url, "http://", 7) == 0) {
		p->tls = false;
		port = 80;
		rest = url + 7;
	} else if (strncasecmp(url, "https://", 8) == 0) {
		p->tls = true;
		port = 443;
		rest = url + 8;
	} else {
		return fail(ld, "expected an http:// or https:// URL");
	}
	int default_port = port;
	for (const char *s = url; *s; s++)
		if ((unsigned char)*s <= 0x20 || *s == 0x7f)
			return fail(ld, "must not contain spaces or control characters");
	if (strpbrk(rest, "?#"))
		return fail(ld, "must not contain a query or fragment");

	size_t authority_len = strcspn(rest, "/");
	const char *path = rest + authority_len;
	if (memchr(rest, '@', authority_len))
		return fail(ld, "must not contain user information");

	char host[NAME_BYTES_MAX];
	const char *port_text = NULL;
	size_t host_len;
	bool v6 = false;
	if (rest[0] == '[') {
		const char *close = memchr(rest, ']', authority_len);
		if (!close)
			return fail(ld, "unterminated [IPV6] host");
		host_len = (size_t)(close - rest - 1);
		if (close + 1 < path) {
			if (close[1] != ':')
				return fail(ld, "expected ':' or '/' after the [IPV6] host");
			port_text = close + 2;
		}
		if (host_len >= sizeof(host))
			return fail(ld, "invalid IPv6 address");
		memcpy(host, rest + 1, host_len);
		v6 = true;
	} else {
		const char *colon = memchr(rest, ':', authority_len);
		host_len = colon ? (size_t)(colon - rest) : authority_len;
		if (colon)
			port_text = colon + 1;
		if (host_len >= sizeof(host))
			return fail(ld, "host name too long");
		memcpy(host, rest, host_len);
		for (size_t i = 0; i < host_len; i++)
			if (!is_host_char(host[i]))
				return fail(ld, "invalid character '%c' in the host", host[i]);
	}
	host[host_len] = '\0';
	if (host_len == 0)
		return fail(ld, "missing host");
	if (port_text) {
		port = parse_port(port_text, (size_t)(path - port_text));
		if (port <= 0)
			return fail(ld, "invalid port \"%.*s\": expected 1 to 65535",
			            (int)SL_MIN((size_t)(path - port_text), 16), port_text);
	}

	char host_header[NAME_BYTES_MAX + 16];
	snprintf(host_header, sizeof(host_header), "%s%s%s", v6 ? "[" : "", host, v6 ? "]" : "");
	if (port != default_port) {
		size_t n = strlen(host_header);
		snprintf(host_header + n, sizeof(host_header) - n, ":%d", port);
	}
	size_t path_len = strlen(path);
	while (path_len > 0 && path[path_len - 1] == '/')
		path_len--;
	if (!(p->host = dup_string(host_header)) || !(p->base_path = strndup(path, path_len)))
		return fail_oom(ld);

	int rc = resolve_provider_host(ld, host, v6, p);
	if (rc)
		return rc;
	set_port(&p->addr, (uint16_t)port);
	return 0;
}

/* A provider key, literal or "env:NAME", must be usable as a header value. */
static int resolve_key(struct loader *ld, const char *text, struct sl_provider_key *out)
{
	const char *value = text;
	const char *env_name = NULL;
	if (strncmp(text, "env:", 4) == 0) {
		env_name = text + 4;
		if (env_name[0] == '\0')
			return fail(ld, "expected env:NAME");
		value = getenv(env_name);
		if (!value)
			return fail(ld, "environment variable %s is not set", env_name);
		if (value[0] == '\0')
			return fail(ld, "environment variable %s is empty", env_name);
	} else if (value[0] == '\0') {
		return fail(ld, "must not be empty");
	}
	for (const char *s = value; *s; s++) {
		if ((unsigned char)*s <= 0x20 || *s == 0x7f) {
			if (env_name)
				return fail(ld, "environment variable %s contains whitespace or "
				                "control characters", env_name);
			return fail(ld, "must not contain whitespace or control characters");
		}
	}
	if (!(out->key = dup_string(value)))
		return fail_oom(ld);
	return 0;
}

static int parse_provider_keys(struct loader *ld, json_t *obj, struct sl_provider_config *p)
{
	static const char *const key_keys[] = { "key", "weight", NULL };
	json_t *list = json_object_get(obj, "keys");
	size_t old = path_push_key(ld, "keys");
	if (!list)
		return fail(ld, "required key is missing");
	if (!json_is_array(list))
		return fail(ld, "expected an array");
	if (json_array_size(list) == 0)
		return fail(ld, "needs at least one key");
	p->keys = calloc(json_array_size(list), sizeof(*p->keys));
	if (!p->keys)
		return fail_oom(ld);
	p->num_keys = (uint32_t)json_array_size(list);
	for (size_t i = 0; i < json_array_size(list); i++) {
		json_t *item = json_array_get(list, i);
		struct sl_provider_key *k = &p->keys[i];
		size_t item_path = path_push_index(ld, i);
		int rc;
		k->weight = 1;
		if (json_is_string(item)) {
			if ((rc = resolve_key(ld, json_string_value(item), k)))
				return rc;
		} else if (json_is_object(item)) {
			const char *text;
			if ((rc = check_keys(ld, item, key_keys)) ||
			    (rc = read_string(ld, item, "key", STR_REQUIRED, &text)) ||
			    (rc = read_u32(ld, item, "weight", 1, WEIGHT_MAX, &k->weight)))
				return rc;
			size_t key_path = path_push_key(ld, "key");
			if ((rc = resolve_key(ld, text, k)))
				return rc;
			path_pop(ld, key_path);
		} else {
			return fail(ld, "expected a string or {\"key\": ..., \"weight\": N}");
		}
		path_pop(ld, item_path);
	}
	path_pop(ld, old);
	return 0;
}

static bool is_token_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Headers the gateway writes itself (framing, hop-by-hop, credentials). */
static bool is_reserved_header(const char *name)
{
	static const char *const reserved[] = {
		"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
		"trailer", "upgrade", "authorization", "x-api-key", "anthropic-version", NULL,
	};
	if (strncasecmp(name, "proxy-", 6) == 0)
		return true;
	for (size_t i = 0; reserved[i]; i++)
		if (strcasecmp(name, reserved[i]) == 0)
			return true;
	return false;
}

static int parse_provider_headers(struct loader *ld, json_t *obj, struct sl_provider_config *p)
{
	json_t *headers;
	int rc = read_object(ld, obj, "headers", false, &headers);
	if (rc || !headers)
		return rc;
	size_t old = path_push_key(ld, "headers");
	p->headers = calloc(json_object_size(headers) + 1, sizeof(*p->headers));
	if (!p->headers)
		return fail_oom(ld);
	p->num_headers = (uint32_t)json_object_size(headers);
	size_t i = 0;
	const char *name;
	json_t *value;
	json_object_foreach (headers, name, value) {
		size_t item = path_push_key(ld, name);
		if (name[0] == '\0')
			return fail(ld, "empty header name");
		for (const char *s = name; *s; s++)
			if (!is_token_char((unsigned char)*s))
				return fail(ld, "invalid header name");
		if (is_reserved_header(name))
			return fail(ld, "\"%s\" is set by the gateway", name);
		if (!json_is_string(value))
			return fail(ld, "expected a string");
		for (const char *s = json_string_value(value); *s; s++)
			if (((unsigned char)*s < 0x20 && *s != '\t') || *s == 0x7f)
				return fail(ld, "must not contain control characters");
		p->headers[i].name = dup_string(name);
		p->headers[i].value = dup_string(json_string_value(value));
		if (!p->headers[i].name || !p->headers[i].value)
			return fail_oom(ld);
		i++;
		path_pop(ld, item);
	}
	path_pop(ld, old);
	return 0;
}

static int parse_provider(struct loader *ld, json_t *obj, struct sl_provider_config *p)
{
	static const char *const keys[] = { "base_url", "format", "keys", "headers", "timeouts",
		                            "keepalive_per_core", "anthropic_version", "ca_file",
		                            "tls_insecure_skip_verify", NULL };
	static const char *const timeout_keys[] = { "connect_ms", "first_byte_ms", "idle_ms",
		                                    NULL };
	const char *s;
	json_t *timeouts;
	int rc;

	p->connect_timeout_ms = 5000;
	p->first_byte_timeout_ms = 60000;
	p->idle_timeout_ms = 60000;
	p->keepalive_per_core = 64;
	if (!json_is_object(obj))
		return fail(ld, "expected an object");
	if ((rc = check_keys(ld, obj, keys)))
		return rc;

	if ((rc = read_string(ld, obj, "format", STR_REQUIRED, &s)))
		return rc;
	if (strcmp(s, "openai") == 0) {
		p->format = SL_FORMAT_OPENAI;
	} else if (strcmp(s, "anthropic") == 0) {
		p->format = SL_FORMAT_ANTHROPIC;
	} else {
		path_push_key(ld, "format");
		return fail(ld, "expected \"openai\" or \"anthropic\"");
	}

	if ((rc = read_string(ld, obj, "base_url", STR_REQUIRED, &s)))
		return rc;
	if (!(p->base_url = dup_string(s)))
		return fail_oom(ld);
	size_t old = path_push_key(ld, "base_url");
	if ((rc = parse_base_url(ld, s, p)))
		return rc;
	path_pop(ld, old);

	if ((rc = parse_provider_keys(ld, obj, p)) || (rc = parse_provider_headers(ld, obj, p)))
		return rc;

	if ((rc = read_object(ld, obj, "timeouts", false, &timeouts)))
		return rc;
	if (timeouts) {
		old = path_push_key(ld, "timeouts");
		if ((rc = check_keys(ld, timeouts, timeout_keys)) ||
		    (rc = read_timeout_ms(ld, timeouts, "connect_ms", &p->connect_timeout_ms)) ||
		    (rc = read_timeout_ms(ld, timeouts, "first_byte_ms", &p->first_byte_timeout_ms)) ||
		    (rc = read_timeout_ms(ld, timeouts, "idle_ms", &p->idle_timeout_ms)))
			return rc;
		path_pop(ld, old);
	}
	if ((rc = read_u32(ld, obj, "keepalive_per_core", 0, 65536, &p->keepalive_per_core)))
		return rc;

	if ((rc = read_string(ld, obj, "anthropic_version", STR_NONEMPTY | STR_NO_CTL, &s)))
		return rc;
	if (s && p->format != SL_FORMAT_ANTHROPIC) {
		path_push_key(ld, "anthropic_version");
		return fail(ld, "only valid with format \"anthropic\"");
	}
	if (!(p->anthropic_version = dup_string(s ? s : "2023-06-01")))
		return fail_oom(ld);

	if ((rc = read_string(ld, obj, "ca_file", STR_NONEMPTY, &s)) ||
	    (rc = read_bool(ld, obj, "tls_insecure_skip_verify", &p->tls_insecure_skip_verify)))
		return rc;
	if ((s || json_object_get(obj, "tls_insecure_skip_verify")) && !p->tls) {
		path_push_key(ld, s ? "ca_file" : "tls_insecure_skip_verify");
		return fail(ld, "only valid with an https:// base_url");
	}
	if (s && p->tls_insecure_skip_verify) {
		path_push_key(ld, "ca_file");
		return fail(ld, "conflicts with tls_insecure_skip_verify");
	}
	if (s && !(p->ca_file = dup_string(s)))
		return fail_oom(ld);
	return 0;
}

static int parse_providers(struct loader *ld, json_t *root)
{
	struct sl_config *c = ld->config;
	json_t *obj;
	int rc = read_object(ld, root, "providers", true, &obj);
	if (rc)
		return rc;
	size_t old = path_push_key(ld, "providers");
	if (json_object_size(obj) == 0)
		return fail(ld, "needs at least one provider");
	c->providers = calloc(json_object_size(obj), sizeof(*c->providers));
	if (!c->providers)
		return fail_oom(ld);
	c->num_providers = (uint32_t)json_object_size(obj);
	size_t i = 0;
	const char *name;
	json_t *value;
	json_object_foreach (obj, name, value) {
		size_t item = path_push_key(ld, name);
		struct sl_provider_config *p = &c->providers[i++];
		if (name[0] == '\0' || strlen(name) > NAME_BYTES_MAX)
			return fail(ld, "provider names must be 1 to %d bytes", NAME_BYTES_MAX);
		if (!(p->name = dup_string(name)))
			return fail_oom(ld);
		if ((rc = parse_provider(ld, value, p)))
			return rc;
		path_pop(ld, item);
	}
	path_pop(ld, old);
	return 0;
}

/* ---- models ---------------------------------------------------------------- */

/*
 * parse_price_micros converts a decimal number of dollars ("2.50", "3",
 * "0.075", also "1e-6") exactly into micro-dollars: no floating point. A value
 * that is not a whole number of micro-dollars (more than 6 significant
 * decimals) is rejected, not rounded. Returns NULL, or why it was rejected.
 */
static const char *parse_price_micros(const char *s, int64_t *out)
{
	static const char *const syntax = "expected a decimal number of dollars, e.g. \"2.50\"";
	char digits[64];
	size_t num_digits = 0;
	const char *p = s;

	if (*p == '-')
		return "must not be negative";
	/* Mantissa: its significant digits (leading zeros dropped) and where the
	 * decimal point sits among them. */
	if (!(*p >= '0' && *p <= '9'))
		return syntax;
	long point = 0; /* digits of the value left of the decimal point */
	bool seen_nonzero = false;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (*p != '0' || seen_nonzero) {
			seen_nonzero = true;
			if (num_digits == sizeof(digits))
				return "is too large";
			digits[num_digits++] = *p;
			point++;
		}
	}
	if (*p == '.') {
		p++;
		if (!(*p >= '0' && *p <= '9'))
			return syntax;
		for (; *p >= '0' && *p <= '9'; p++) {
			if (*p != '0' || seen_nonzero) {
				seen_nonzero = true;
				if (num_digits == sizeof(digits)) {
					if (*p != '0')
						return "has more than 6 decimal places";
					continue;
				}
				digits[num_digits++] = *p;
			} else {
				point--; /* a leading zero after the point */
			}
		}
	}
	if (*p == 'e' || *p == 'E') {
		p++;
		bool negative = *p == '-';
		if (*p == '-' || *p == '+')
			p++;
		if (!(*p >= '0' && *p <= '9'))
			return syntax;
		long exponent = 0;
		for (; *p >= '0' && *p <= '9'; p++)
			if (exponent < 100000)
				exponent = exponent * 10 + (*p - '0');
		point += negative ? -exponent : exponent;
	}
	if (*p != '\0')
		return syntax;
	if (!seen_nonzero) {
		*out = 0;
		return NULL;
	}
	/* The value is 0.digits * 10^point dollars; in micro-dollars the integer
	 * part is the first point + 6 digits, and the rest must be zeros. */
	long whole = point + 6;
	if (whole > 12)
		return "must be at most 100000 (dollars per 1M tokens)";
	int64_t micros = 0;
	for (long i = 0; i < whole; i++)
		micros = micros * 10 + (i < (long)num_digits ? digits[i] - '0' : 0);
	for (long i = SL_MAX(whole, 0); i < (long)num_digits; i++)
		if (digits[i] != '0')
			return "has more than 6 decimal places (the unit is one micro-dollar)";
	if (micros > PRICE_MICROS_MAX)
		return "must be at most 100000 (dollars per 1M tokens)";
	*out = micros;
	return NULL;
}

/* Renders micro-dollars as dollars with 2 to 6 decimals ("2.50", "0.075"). */
static void format_price(int64_t micros, char *buf, size_t buf_len)
{
	int n = snprintf(buf, buf_len, "%lld.%06lld", (long long)(micros / 1000000),
	                 (long long)(micros % 1000000));
	size_t len = n > 0 ? SL_MIN((size_t)n, buf_len - 1) : 0;
	const char *dot = strchr(buf, '.');
	if (!dot)
		return;
	size_t min_len = (size_t)(dot - buf) + 3;
	while (len > min_len && buf[len - 1] == '0')
		buf[--len] = '\0';
}

static int read_price_field(struct loader *ld, json_t *obj, const char *key, uint32_t bit,
                            int64_t *out, struct sl_model_price *price)
{
	json_t *v = json_object_get(obj, key);
	if (!v)
		return 0;
	size_t old = path_push_key(ld, key);
	char text[64];
	const char *s = text;
	if (json_is_string(v)) {
		s = json_string_value(v);
	} else if (json_is_integer(v)) {
		snprintf(text, sizeof(text), "%lld", (long long)json_integer_value(v));
	} else if (json_is_real(v)) {
		/* A JSON number was already read as a double; its 15 significant
		 * digits give back the decimal the operator wrote. */
		snprintf(text, sizeof(text), "%.15g", json_real_value(v));
	} else {
		return fail(ld, "expected a decimal string such as \"2.50\"");
	}
	const char *why = parse_price_micros(s, out);
	if (why)
		return fail(ld, "%s", why);
	price->fields_set |= bit;
	path_pop(ld, old);
	return 0;
}

static int parse_price(struct loader *ld, json_t *obj, struct sl_model_price *price)
{
	static const char *const keys[] = { "input", "output", "cached_input", "cache_write",
		                            "cache_write_1h", "image", NULL };
	json_t *p;
	int rc = read_object(ld, obj, "price", false, &p);
	if (rc || !p)
		return rc;
	size_t old = path_push_key(ld, "price");
	price->set = true;
	if ((rc = check_keys(ld, p, keys)) ||
	    (rc = read_price_field(ld, p, "input", SL_PRICE_INPUT, &price->input, price)) ||
	    (rc = read_price_field(ld, p, "output", SL_PRICE_OUTPUT, &price->output, price)) ||
	    (rc = read_price_field(ld, p, "cached_input", SL_PRICE_CACHED_INPUT,
	                           &price->cached_input, price)) ||
	    (rc = read_price_field(ld, p, "cache_write", SL_PRICE_CACHE_WRITE, &price->cache_write,
	                           price)) ||
	    (rc = read_price_field(ld, p, "cache_write_1h", SL_PRICE_CACHE_WRITE_1H,
	                           &price->cache_write_1h, price)) ||
	    (rc = read_price_field(ld, p, "image", SL_PRICE_IMAGE, &price->image, price)))
		return rc;
	if (!(price->fields_set & SL_PRICE_CACHE_WRITE_1H))
		price->cache_write_1h = price->cache_write;
	path_pop(ld, old);
	return 0;
}

static int find_provider(const struct sl_config *c, const char *name)
{
	for (uint32_t i = 0; i < c->num_providers; i++)
		if (strcmp(c->providers[i].name, name) == 0)
			return (int)i;
	return -1;
}

static int parse_targets(struct loader *ld, json_t *obj, struct sl_model_config *m)
{
	static const char *const keys[] = { "provider", "model", "priority", "weight", NULL };
	json_t *list = json_object_get(obj, "targets");
	size_t old = path_push_key(ld, "targets");
	if (!list)
		return fail(ld, "required key is missing");
	if (!json_is_array(list))
		return fail(ld, "expected an array");
	if (json_array_size(list) == 0)
		return fail(ld, "needs at least one target");
	m->targets = calloc(json_array_size(list), sizeof(*m->targets));
	if (!m->targets)
		return fail_oom(ld);
	m->num_targets = (uint32_t)json_array_size(list);
	for (size_t i = 0; i < json_array_size(list); i++) {
		json_t *item = json_array_get(list, i);
		struct sl_model_target *t = &m->targets[i];
		size_t item_path = path_push_index(ld, i);
		const char *provider, *model;
		int rc;
		t->priority = 1;
		t->weight = 1;
		if (!json_is_object(item))
			return fail(ld, "expected an object");
		if ((rc = check_keys(ld, item, keys)) ||
		    (rc = read_string(ld, item, "provider", STR_REQUIRED, &provider)))
			return rc;
		int index = find_provider(ld->config, provider);
		if (index < 0) {
			path_push_key(ld, "provider");
			return fail(ld, "unknown provider \"%s\"", provider);
		}
		t->provider = (uint32_t)index;
		if ((rc = read_string(ld, item, "model", STR_NONEMPTY | STR_NO_CTL, &model)) ||
		    (rc = read_u32(ld, item, "priority", 1, PRIORITY_MAX, &t->priority)) ||
		    (rc = read_u32(ld, item, "weight", 1, WEIGHT_MAX, &t->weight)))
			return rc;
		if (!(t->model = dup_string(model ? model : m->id)))
			return fail_oom(ld);
		path_pop(ld, item_path);
	}
	path_pop(ld, old);
	return 0;
}

/* Model ids and aliases: what clients send in "model". */
static const char *check_model_name(const char *name)
{
	size_t len = strlen(name);
	if (len == 0 || len > NAME_BYTES_MAX)
		return "model names must be 1 to 256 bytes";
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
			return "model names must not contain control characters";
	return NULL;
}

static int parse_aliases(struct loader *ld, json_t *obj, struct sl_model_config *m)
{
	json_t *list = json_object_get(obj, "aliases");
	if (!list)
		return 0;
	size_t old = path_push_key(ld, "aliases");
	if (!json_is_array(list))
		return fail(ld, "expected an array");
	m->aliases = calloc(json_array_size(list) + 1, sizeof(*m->aliases));
	if (!m->aliases)
		return fail_oom(ld);
	m->num_aliases = (uint32_t)json_array_size(list);
	for (size_t i = 0; i < json_array_size(list); i++) {
		json_t *item = json_array_get(list, i);
		size_t item_path = path_push_index(ld, i);
		if (!json_is_string(item))
			return fail(ld, "expected a string");
		const char *why = check_model_name(json_string_value(item));
		if (why)
			return fail(ld, "%s", why);
		if (!(m->aliases[i] = dup_string(json_string_value(item))))
			return fail_oom(ld);
		path_pop(ld, item_path);
	}
	path_pop(ld, old);
	return 0;
}

#define LIMIT_MAX (1ull << 39) /* the limiter keeps allowances in 40 signed bits */

static int parse_model_limits(struct loader *ld, json_t *obj, struct sl_model_limits *l)
{
	static const char *const keys[] = { "requests_per_minute", "tokens_per_minute",
		                            "concurrent", NULL };
	json_t *o;
	int rc = read_object(ld, obj, "limits", false, &o);
	if (rc || !o)
		return rc;
	size_t old = path_push_key(ld, "limits");
	if ((rc = check_keys(ld, o, keys)) ||
	    (rc = read_u64(ld, o, "requests_per_minute", 0, LIMIT_MAX, &l->requests_per_minute)) ||
	    (rc = read_u64(ld, o, "tokens_per_minute", 0, LIMIT_MAX, &l->tokens_per_minute)) ||
	    (rc = read_u64(ld, o, "concurrent", 0, LIMIT_MAX, &l->concurrent)))
		return rc;
	l->set = l->requests_per_minute || l->tokens_per_minute || l->concurrent;
	path_pop(ld, old);
	return 0;
}

static int parse_model(struct loader *ld, json_t *obj, struct sl_model_config *m)
{
	static const char *const keys[] = { "targets", "aliases", "price", "context_window",
		                            "max_output_tokens", "owned_by", "limits", NULL };
	const char *owned_by;
	int rc;
	if (!json_is_object(obj))
		return fail(ld, "expected an object");
	if ((rc = check_keys(ld, obj, keys)) || (rc = parse_model_limits(ld, obj, &m->limits)) ||
	    (rc = parse_targets(ld, obj, m)) ||
	    (rc = parse_aliases(ld, obj, m)) || (rc = parse_price(ld, obj, &m->price)) ||
	    (rc = read_u32(ld, obj, "context_window", 0, UINT32_MAX, &m->context_window)) ||
	    (rc = read_u32(ld, obj, "max_output_tokens", 0, UINT32_MAX, &m->max_output_tokens)) ||
	    (rc = read_string(ld, obj, "owned_by", STR_NONEMPTY | STR_NO_CTL, &owned_by)))
		return rc;
	if (!owned_by)
		owned_by = ld->config->providers[m->targets[0].provider].name;
	if (!(m->owned_by = dup_string(owned_by)))
		return fail_oom(ld);
	return 0;
}

/* ---- the model name hash ---------------------------------------------------- */

static uint32_t name_hash(const char *name, size_t len)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)name[i];
		h *= 16777619u;
	}
	return h;
}

/* Name number k of a model: 0 is its id, k > 0 its alias k - 1. */
static const char *model_name(const struct sl_model_config *m, uint32_t k)
{
	return k == 0 ? m->id : m->aliases[k - 1];
}

/* Returns the slot holding name, or the empty slot where it would go. */
static uint32_t index_probe(const struct sl_config *c, const char *name, size_t name_len)
{
	uint32_t slot = name_hash(name, name_len) & c->model_index_mask;
	/* The table is at most half full, so an empty slot ends every probe. */
	for (;;) {
		uint32_t v = c->model_index[slot];
		if (v == 0)
			return slot;
		const char *s = model_name(&c->models[v - 1], c->model_index_name[slot]);
		if (strnlen(s, name_len + 1) == name_len && memcmp(s, name, name_len) == 0)
			return slot;
		slot = (slot + 1) & c->model_index_mask;
	}
}

/* Fills the hash with every id, then every alias, rejecting an alias that is
 * already taken (ids are unique: jansson rejects duplicate keys). */
static int build_model_index(struct loader *ld)
{
	struct sl_config *c = ld->config;
	size_t num_names = c->num_models;
	for (uint32_t i = 0; i < c->num_models; i++)
		num_names += c->models[i].num_aliases;
	size_t size = 8;
	while (size < 2 * num_names)
		size *= 2;
	if (size > (1u << 30))
		return fail(ld, "too many model names");
	c->model_index = calloc(size, sizeof(*c->model_index));
	c->model_index_name = calloc(size, sizeof(*c->model_index_name));
	if (!c->model_index || !c->model_index_name)
		return fail_oom(ld);
	c->model_index_mask = (uint32_t)size - 1;

	for (uint32_t pass = 0; pass < 2; pass++) {
		for (uint32_t i = 0; i < c->num_models; i++) {
			const struct sl_model_config *m = &c->models[i];
			uint32_t first = pass == 0 ? 0 : 1;
			uint32_t last = pass == 0 ? 0 : m->num_aliases;
			for (uint32_t k = first; k <= last; k++) {
				const char *name = model_name(m, k);
				uint32_t slot = index_probe(c, name, strlen(name));
				if (c->model_index[slot] != 0) {
					SL_ASSERT(k > 0); /* ids are unique */
					const struct sl_model_config *owner =
						&c->models[c->model_index[slot] - 1];
					path_push_key(ld, "models");
					path_push_key(ld, m->id);
					path_push_key(ld, "aliases");
					path_push_index(ld, k - 1);
					return fail(ld, "\"%s\" is already used by model %s", name,
					            owner->id);
				}
				c->model_index[slot] = i + 1;
				c->model_index_name[slot] = k;
			}
		}
	}
	return 0;
}

static int parse_models(struct loader *ld, json_t *root)
{
	struct sl_config *c = ld->config;
	json_t *obj;
	int rc = read_object(ld, root, "models", true, &obj);
	if (rc)
		return rc;
	size_t old = path_push_key(ld, "models");
	if (json_object_size(obj) == 0)
		return fail(ld, "needs at least one model");
	c->models = calloc(json_object_size(obj), sizeof(*c->models));
	if (!c->models)
		return fail_oom(ld);
	c->num_models = (uint32_t)json_object_size(obj);
	size_t i = 0;
	const char *id;
	json_t *value;
	json_object_foreach (obj, id, value) {
		size_t item = path_push_key(ld, id);
		struct sl_model_config *m = &c->models[i++];
		const char *why = check_model_name(id);
		if (why)
			return fail(ld, "%s", why);
		if (!(m->id = dup_string(id)))
			return fail_oom(ld);
		if ((rc = parse_model(ld, value, m)))
			return rc;
		path_pop(ld, item);
	}
	path_pop(ld, old);
	return build_model_index(ld);
}

/* ---- precomputed JSON ------------------------------------------------------- */

/* Builds GET /v1/models/{id}'s body; returns NULL when out of memory. */
static json_t *model_json(const struct sl_model_config *m)
{
	json_t *o = json_object();
	json_t *aliases = json_array();
	int rc = !o || !aliases;
	rc |= json_object_set_new(o, "id", json_string(m->id));
	rc |= json_object_set_new(o, "object", json_string("model"));
	rc |= json_object_set_new(o, "created", json_integer(MODEL_CREATED));
	rc |= json_object_set_new(o, "owned_by", json_string(m->owned_by));
	for (uint32_t i = 0; i < m->num_aliases; i++)
		rc |= json_array_append_new(aliases, json_string(m->aliases[i]));
	rc |= json_object_set_new(o, "aliases", aliases);
	if (m->context_window)
		rc |= json_object_set_new(o, "context_window", json_integer(m->context_window));
	if (m->max_output_tokens)
		rc |= json_object_set_new(o, "max_output_tokens",
		                          json_integer(m->max_output_tokens));
	if (m->price.set) {
		static const struct {
			const char *name;
			uint32_t bit;
			size_t offset;
		} fields[] = {
			{ "input", SL_PRICE_INPUT, offsetof(struct sl_model_price, input) },
			{ "output", SL_PRICE_OUTPUT, offsetof(struct sl_model_price, output) },
			{ "cached_input", SL_PRICE_CACHED_INPUT,
			  offsetof(struct sl_model_price, cached_input) },
			{ "cache_write", SL_PRICE_CACHE_WRITE,
			  offsetof(struct sl_model_price, cache_write) },
			{ "cache_write_1h", SL_PRICE_CACHE_WRITE_1H,
			  offsetof(struct sl_model_price, cache_write_1h) },
			{ "image", SL_PRICE_IMAGE, offsetof(struct sl_model_price, image) },
		};
		json_t *pricing = json_object();
		rc |= json_object_set_new(pricing, "currency", json_string("USD"));
		rc |= json_object_set_new(pricing, "unit", json_string("1M tokens"));
		for (size_t i = 0; i < SL_ARRAY_LEN(fields); i++) {
			if (!(m->price.fields_set & fields[i].bit))
				continue;
			int64_t micros;
			char text[32];
			memcpy(&micros, (const char *)&m->price + fields[i].offset, sizeof(micros));
			format_price(micros, text, sizeof(text));
			rc |= json_object_set_new(pricing, fields[i].name, json_string(text));
		}
		rc |= json_object_set_new(o, "pricing", pricing);
	}
	if (rc) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static int build_models_json(struct loader *ld)
{
	struct sl_config *c = ld->config;
	static const char head[] = "{\"object\":\"list\",\"data\":[";
	static const char tail[] = "]}";
	size_t total = sizeof(head) - 1 + sizeof(tail) - 1;

	for (uint32_t i = 0; i < c->num_models; i++) {
		struct sl_model_config *m = &c->models[i];
		json_t *o = model_json(m);
		if (!o)
			return fail_oom(ld);
		m->json = json_dumps(o, JSON_COMPACT);
		json_decref(o);
		if (!m->json)
			return fail_oom(ld);
		m->json_len = strlen(m->json);
		total += m->json_len + 1;
	}
	char *out = malloc(total + 1);
	if (!out)
		return fail_oom(ld);
	size_t len = 0;
	memcpy(out, head, sizeof(head) - 1);
	len += sizeof(head) - 1;
	for (uint32_t i = 0; i < c->num_models; i++) {
		if (i > 0)
			out[len++] = ',';
		memcpy(out + len, c->models[i].json, c->models[i].json_len);
		len += c->models[i].json_len;
	}
	memcpy(out + len, tail, sizeof(tail) - 1);
	len += sizeof(tail) - 1;
	out[len] = '\0';
	c->models_json = out;
	c->models_json_len = len;
	return 0;
}

/* ---- top level --------------------------------------------------------------- */

/* ---- auth, rate limits, tiers ----------------------------------------------- */

static int parse_auth(struct loader *ld, json_t *root)
{
	static const char *const keys[] = { "mode", "ip_block_failures", "ip_block_seconds",
		                            "ip_table_entries", NULL };
	struct sl_auth_config *a = &ld->config->auth;
	json_t *o;
	const char *mode;
	int rc = read_object(ld, root, "auth", false, &o);
	if (rc || !o)
		return rc;
	size_t old = path_push_key(ld, "auth");
	if ((rc = check_keys(ld, o, keys)) || (rc = read_string(ld, o, "mode", 0, &mode)) ||
	    (rc = read_u32(ld, o, "ip_block_failures", 0, 1u << 20, &a->ip_block_failures)) ||
	    (rc = read_u32(ld, o, "ip_block_seconds", 1, 86400 * 30, &a->ip_block_seconds)) ||
	    (rc = read_u32(ld, o, "ip_table_entries", 16, 1u << 24, &a->ip_table_entries)))
		return rc;
	if (mode) {
		if (strcmp(mode, "keys") == 0) {
			a->required = true;
		} else if (strcmp(mode, "none") == 0) {
			a->required = false;
		} else {
			path_push_key(ld, "mode");
			return fail(ld, "expected \"keys\" or \"none\"");
		}
	}
	path_pop(ld, old);
	return 0;
}

static int parse_rate(struct loader *ld, json_t *root)
{
	static const char *const keys[] = { "window_ms", "reconcile_ms", "daily_reset_hour_utc",
		                            "keys_max", "active_keys_max",
		                            "max_tokens_estimate_max", "state_save_ms", NULL };
	struct sl_rate_config *r = &ld->config->rate;
	json_t *o;
	int rc = read_object(ld, root, "rate_limits", false, &o);
	if (rc || !o)
		return rc;
	size_t old = path_push_key(ld, "rate_limits");
	if ((rc = check_keys(ld, o, keys)) ||
	    (rc = read_u32(ld, o, "window_ms", 100, 86400000, &r->window_ms)) ||
	    (rc = read_u32(ld, o, "reconcile_ms", 1, 10000, &r->reconcile_ms)) ||
	    (rc = read_u32(ld, o, "daily_reset_hour_utc", 0, 23, &r->daily_reset_hour_utc)) ||
	    (rc = read_u32(ld, o, "keys_max", 1, 16u << 20, &r->keys_max)) ||
	    (rc = read_u32(ld, o, "active_keys_max", 16, 16u << 20, &r->active_keys_max)) ||
	    (rc = read_u32(ld, o, "max_tokens_estimate_max", 0, 1u << 24,
	                   &r->max_tokens_estimate_max)) ||
	    (rc = read_u32(ld, o, "state_save_ms", 10, 3600000, &r->state_save_ms)))
		return rc;
	path_pop(ld, old);
	return 0;
}

static int parse_routing(struct loader *ld, json_t *root)
{
	static const char *const keys[] = { "attempts_max", "backoff_ms", "backoff_max_ms",
		                            "deadline_ms", "cooldown_ms", "cooldown_max_ms",
		                            "circuit_failures", "circuit_window_ms", "circuit_open_ms",
		                            "retry_unconfirmed", NULL };
	struct sl_routing_config *r = &ld->config->routing;
	json_t *o;
	int rc = read_object(ld, root, "routing", false, &o);
	if (rc || !o)
		return rc;
	size_t old = path_push_key(ld, "routing");
	if ((rc = check_keys(ld, o, keys)) ||
	    (rc = read_u32(ld, o, "attempts_max", 1, 8, &r->attempts_max)) ||
	    (rc = read_u32(ld, o, "backoff_ms", 0, 60000, &r->backoff_ms)) ||
	    (rc = read_u32(ld, o, "backoff_max_ms", 0, 600000, &r->backoff_max_ms)) ||
	    (rc = read_timeout_ms(ld, o, "deadline_ms", &r->deadline_ms)) ||
	    (rc = read_u32(ld, o, "cooldown_ms", 0, 3600000, &r->cooldown_ms)) ||
	    (rc = read_u32(ld, o, "cooldown_max_ms", 0, 86400000, &r->cooldown_max_ms)) ||
	    (rc = read_u32(ld, o, "circuit_failures", 1, 1000000, &r->circuit_failures)) ||
	    (rc = read_timeout_ms(ld, o, "circuit_window_ms", &r->circuit_window_ms)) ||
	    (rc = read_timeout_ms(ld, o, "circuit_open_ms", &r->circuit_open_ms)) ||
	    (rc = read_bool(ld, o, "retry_unconfirmed", &r->retry_unconfirmed)))
		return rc;
	if (r->backoff_max_ms < r->backoff_ms) {
		path_push_key(ld, "backoff_max_ms");
		return fail(ld, "must not be below backoff_ms");
	}
	if (r->cooldown_max_ms < r->cooldown_ms) {
		path_push_key(ld, "cooldown_max_ms");
		return fail(ld, "must not be below cooldown_ms");
	}
	path_pop(ld, old);
	return 0;
}

static int parse_usage_log(struct loader *ld, json_t *root)
{
	static const char *const keys[] = { "enabled", "mode", "flush_ms", "buffer_bytes",
		                            "segment_bytes_max", "segment_age_max_s", NULL };
	struct sl_usage_log_config *u = &ld->config->usage_log;
	json_t *o;
	int rc = read_object(ld, root, "usage_log", false, &o);
	if (rc || !o)
		return rc;
	size_t old = path_push_key(ld, "usage_log");
	if ((rc = check_keys(ld, o, keys)))
		return rc;
	json_t *en = json_object_get(o, "enabled");
	if (en) {
		if (!json_is_boolean(en)) {
			path_push_key(ld, "enabled");
			return fail(ld, "expected true or false");
		}
		u->enabled = json_is_true(en);
	}
	json_t *mode = json_object_get(o, "mode");
	if (mode) {
		const char *m = json_is_string(mode) ? json_string_value(mode) : "";
		if (strcmp(m, "strict") != 0 && strcmp(m, "batched") != 0) {
			path_push_key(ld, "mode");
			return fail(ld, "expected \"batched\" or \"strict\"");
		}
		u->strict = m[0] == 's';
	}
	if ((rc = read_u32(ld, o, "flush_ms", 1, 10000, &u->flush_ms)) ||
	    (rc = read_u64(ld, o, "buffer_bytes", 16384, (uint64_t)1 << 30, &u->buffer_bytes)) ||
	    (rc = read_u64(ld, o, "segment_bytes_max", 65536, (uint64_t)1 << 40,
	                   &u->segment_bytes_max)) ||
	    (rc = read_u32(ld, o, "segment_age_max_s", 1, 31u * 86400, &u->segment_age_max_s)))
		return rc;
	path_pop(ld, old);
	return 0;
}

static int parse_access_log(struct loader *ld, json_t *root)
{
	static const char *const keys[] = { "path", "flush_ms", "buffer_bytes", NULL };
	struct sl_access_log_config *a = &ld->config->access_log;
	json_t *o;
	int rc = read_object(ld, root, "access_log", false, &o);
	if (rc || !o)
		return rc;
	size_t old = path_push_key(ld, "access_log");
	const char *path;
	if ((rc = check_keys(ld, o, keys)) ||
	    (rc = read_string(ld, o, "path", STR_REQUIRED | STR_NONEMPTY | STR_NO_CTL, &path)) ||
	    (rc = read_u32(ld, o, "flush_ms", 1, 60000, &a->flush_ms)) ||
	    (rc = read_u64(ld, o, "buffer_bytes", 4096, (uint64_t)1 << 30, &a->buffer_bytes)))
		return rc;
	if (!(a->path = dup_string(path)))
		return fail_oom(ld);
	path_pop(ld, old);
	return 0;
}

static int parse_tier(struct loader *ld, json_t *obj, struct sl_tier_config *t)
{
	static const char *const keys[] = { "requests_per_minute", "tokens_per_minute",
		                            "concurrent", "requests_per_day", "models", "prepaid",
		                            "budget_usd_per_day", "budget_usd_per_month",
		                            "plan_credits_usd", "plan_window_hours", NULL };
	struct sl_config *c = ld->config;
	int rc;
	if (!json_is_object(obj))
		return fail(ld, "expected an object");
	struct sl_model_price unused = { 0 };
	if ((rc = check_keys(ld, obj, keys)) ||
	    (rc = read_u64(ld, obj, "requests_per_minute", 0, LIMIT_MAX, &t->requests_per_minute)) ||
	    (rc = read_u64(ld, obj, "tokens_per_minute", 0, LIMIT_MAX, &t->tokens_per_minute)) ||
	    (rc = read_u64(ld, obj, "concurrent", 0, LIMIT_MAX, &t->concurrent)) ||
	    (rc = read_u64(ld, obj, "requests_per_day", 0, LIMIT_MAX, &t->requests_per_day)) ||
	    (rc = read_price_field(ld, obj, "budget_usd_per_day", 1, &t->budget_day_pico_usd,
	                           &unused)) ||
	    (rc = read_price_field(ld, obj, "budget_usd_per_month", 1, &t->budget_month_pico_usd,
	                           &unused)) ||
	    (rc = read_price_field(ld, obj, "plan_credits_usd", 1, &t->plan_credits_pico_usd,
	                           &unused)) ||
	    (rc = read_u32(ld, obj, "plan_window_hours", 1, 24 * 31, &t->plan_window_hours)))
		return rc;
	t->budget_day_pico_usd *= SL_PICO_PER_MICRO; /* kept in pico-dollars */
	t->budget_month_pico_usd *= SL_PICO_PER_MICRO;
	t->plan_credits_pico_usd *= SL_PICO_PER_MICRO;
	json_t *prepaid = json_object_get(obj, "prepaid");
	if (prepaid) {
		if (!json_is_boolean(prepaid)) {
			path_push_key(ld, "prepaid");
			return fail(ld, "expected true or false");
		}
		t->prepaid = json_is_true(prepaid);
	}
	if (t->plan_credits_pico_usd && !t->prepaid) {
		path_push_key(ld, "plan_credits_usd");
		return fail(ld, "plan credits need \"prepaid\": true (the balance pays once they are spent)");
	}
	json_t *models = json_object_get(obj, "models");
	if (!models)
		return 0;
	size_t old = path_push_key(ld, "models");
	if (!json_is_array(models))
		return fail(ld, "expected an array of model ids");
	if (!(t->model_allowed = calloc(c->num_models ? c->num_models : 1, 1)))
		return fail_oom(ld);
	size_t i;
	json_t *v;
	json_array_foreach (models, i, v) {
		size_t item = path_push_index(ld, i);
		if (!json_is_string(v))
			return fail(ld, "expected a model id");
		const char *name = json_string_value(v);
		const struct sl_model_config *m = sl_config_find_model(c, name, strlen(name));
		if (!m)
			return fail(ld, "unknown model \"%s\"", name);
		t->model_allowed[m - c->models] = 1;
		path_pop(ld, item);
	}
	path_pop(ld, old);
	return 0;
}

static int parse_tiers(struct loader *ld, json_t *root)
{
	struct sl_config *c = ld->config;
	json_t *obj;
	int rc = read_object(ld, root, "tiers", false, &obj);
	if (rc || !obj || json_object_size(obj) == 0)
		return rc;
	size_t old = path_push_key(ld, "tiers");
	if (json_object_size(obj) > 65535)
		return fail(ld, "too many tiers (65535 at most)");
	if (!(c->tiers = calloc(json_object_size(obj), sizeof(*c->tiers))))
		return fail_oom(ld);
	const char *name;
	json_t *value;
	json_object_foreach (obj, name, value) {
		size_t item = path_push_key(ld, name);
		struct sl_tier_config *t = &c->tiers[c->num_tiers++];
		t->plan_window_hours = 5;
		if (name[0] == '\0' || strlen(name) > 31)
			return fail(ld, "a tier name has 1 to 31 characters");
		for (const char *p = name; *p; p++)
			if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == ',')
				return fail(ld, "a tier name has no spaces, commas or control characters");
		if (!(t->name = dup_string(name)))
			return fail_oom(ld);
		if ((rc = parse_tier(ld, value, t)))
			return rc;
		path_pop(ld, item);
	}
	path_pop(ld, old);
	return 0;
}

const struct sl_tier_config *sl_config_find_tier(const struct sl_config *config, const char *name)
{
	for (uint32_t i = 0; i < config->num_tiers; i++)
		if (strcmp(config->tiers[i].name, name) == 0)
			return &config->tiers[i];
	return NULL;
}

static void set_defaults(struct sl_config *c)
{
	struct sl_limits_config *l = &c->limits;
	l->connections_per_core = 16384;
	l->header_bytes_max = 16384;
	l->headers_num_max = 100;
	l->target_bytes_max = 8192;
	l->body_bytes_max = 33554432;
	l->recv_buffer_bytes = 16384;
	l->recv_buffers_per_core = 1024;
	l->send_queue_buffers_max = 8;
	l->tls_buffers_per_core = 1024;
	l->proxy_header_bytes_max = SL_PROXYPROTO_BYTES_DEFAULT;
	c->routing = (struct sl_routing_config){
		.attempts_max = 3,
		.backoff_ms = 25,
		.backoff_max_ms = 1000,
		.deadline_ms = 30000,
		.cooldown_ms = 1000,
		.cooldown_max_ms = 60000,
		.circuit_failures = 5,
		.circuit_window_ms = 10000,
		.circuit_open_ms = 10000,
		.retry_unconfirmed = true,
	};
	l->memory_per_core_bytes = 268435456;
	l->header_timeout_ms = 10000;
	l->body_timeout_ms = 30000;
	l->keepalive_timeout_ms = 75000;
	l->send_timeout_ms = 60000;
	c->threads = 0;
	c->auth.required = true;
	c->auth.ip_block_failures = 50;
	c->auth.ip_block_seconds = 300;
	c->auth.ip_table_entries = 65536;
	c->rate.window_ms = 60000;
	c->rate.reconcile_ms = 50;
	c->rate.daily_reset_hour_utc = 0;
	c->rate.keys_max = 1000000;
	c->rate.active_keys_max = 65536;
	c->rate.max_tokens_estimate_max = 4096;
	c->rate.state_save_ms = 1000;
	c->usage_log.enabled = true;
	c->usage_log.flush_ms = 5;
	c->usage_log.buffer_bytes = 1 << 20;
	c->usage_log.segment_bytes_max = (uint64_t)64 << 20;
	c->usage_log.segment_age_max_s = 3600;
	c->access_log.flush_ms = 200;
	c->access_log.buffer_bytes = 65536;
}

static int load_tree(struct loader *ld, json_t *root)
{
	static const char *const keys[] = { "listen", "admin", "data_dir", "threads", "limits",
		                            "timeouts", "providers", "models", "tiers", "auth",
		                            "rate_limits", "usage_log", "access_log", "routing", NULL };
	struct sl_config *c = ld->config;
	const char *data_dir;
	int rc;

	if (!json_is_object(root))
		return fail(ld, "expected a JSON object at the top level");
	if ((rc = check_keys(ld, root, keys)) || (rc = parse_listen(ld, root)) ||
	    (rc = parse_admin(ld, root)) ||
	    (rc = read_string(ld, root, "data_dir", STR_NONEMPTY | STR_NO_CTL, &data_dir)) ||
	    (rc = read_u32(ld, root, "threads", 0, THREADS_MAX, &c->threads)) ||
	    (rc = parse_limits(ld, root)) || (rc = parse_providers(ld, root)) ||
	    (rc = parse_models(ld, root)) || (rc = parse_auth(ld, root)) ||
	    (rc = parse_rate(ld, root)) || (rc = parse_usage_log(ld, root)) ||
	    (rc = parse_access_log(ld, root)) ||
	    (rc = parse_routing(ld, root)) || (rc = parse_tiers(ld, root)))
		return rc;
	if (!(c->data_dir = dup_string(data_dir ? data_dir : "data")))
		return fail_oom(ld);
	for (uint32_t i = 0; i < c->num_tiers && !c->usage_log.enabled; i++) {
		const struct sl_tier_config *t = &c->tiers[i];
		if (t->prepaid || t->budget_day_pico_usd || t->budget_month_pico_usd) {
			path_push_key(ld, "tiers");
			path_push_key(ld, t->name);
			return fail(ld, "balances and budgets are settled from the usage log: "
			                "\"usage_log\" must be enabled");
		}
	}
	return build_models_json(ld);
}

int sl_config_load_string(const char *text, size_t len, const char *origin,
                          struct sl_config **out, char *err, size_t err_len)
{
	struct loader ld = { .err = err, .err_len = err_len };
	*out = NULL;
	if (err && err_len)
		err[0] = '\0';

	char *stripped = malloc(len + 1);
	if (!stripped)
		return fail_oom(&ld);
	size_t error_offset;
	if (strip_comments(text, len, stripped, &error_offset) != 0) {
		int line, column;
		text_position(text, error_offset + 1, &line, &column);
		free(stripped);
		return fail(&ld, "line %d, column %d: unterminated /* comment", line, column);
	}

	json_error_t jerr;
	json_t *root = json_loadb(stripped, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		/* Counted in the original text, where a comment's multi-byte
		 * characters are one column each, not one space per byte. */
		int line = jerr.line, column = jerr.column;
		if (jerr.position >= 0 && (size_t)jerr.position <= len)
			text_position(text, (size_t)jerr.position, &line, &column);
		free(stripped);
		return fail(&ld, "line %d, column %d: %s", line, column, jerr.text);
	}
	free(stripped);

	ld.config = calloc(1, sizeof(*ld.config));
	if (!ld.config) {
		json_decref(root);
		return fail_oom(&ld);
	}
	set_defaults(ld.config);
	int rc = load_tree(&ld, root);
	json_decref(root);
	if (rc == 0 && (!(ld.config->origin = dup_string(origin ? origin : "<string>")) ||
	                !(ld.config->config_dir = dup_string("."))))
		rc = fail_oom(&ld);
	if (rc) {
		sl_config_free(ld.config);
		return rc;
	}
	*out = ld.config;
	return 0;
}

int sl_config_load_file(const char *path, struct sl_config **out, char *err, size_t err_len)
{
	*out = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	int rc = 0;
	char *text = NULL;
	size_t len = 0;

	if (fd < 0 || fstat(fd, &st) != 0) {
		rc = -errno;
	} else if (!S_ISREG(st.st_mode)) {
		rc = -EINVAL;
	} else if ((uint64_t)st.st_size > CONFIG_FILE_BYTES_MAX) {
		rc = -EFBIG;
	} else if (!(text = malloc((size_t)st.st_size + 1))) {
		rc = -ENOMEM;
	} else {
		/* Read to end of file, bounded by the size seen at open. */
		while (len < (size_t)st.st_size) {
			ssize_t n = read(fd, text + len, (size_t)st.st_size - len);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				rc = -errno;
				break;
			}
			if (n == 0)
				break;
			len += (size_t)n;
		}
	}
	if (fd >= 0)
		close(fd);
	if (rc) {
		free(text);
		if (err && err_len) {
			const char *why = rc == -EINVAL ? "not a regular file"
			                  : rc == -EFBIG ? "file too large (16 MiB at most)"
			                                 : strerror(-rc);
			snprintf(err, err_len, "%s: %s", path, why);
		}
		return rc;
	}
	rc = sl_config_load_string(text, len, path, out, err, err_len);
	free(text);
	const char *dir_end = strrchr(path, '/');
	if (rc == 0 && dir_end) {
		char *dir = strndup(path, dir_end == path ? 1 : (size_t)(dir_end - path));
		if (!dir) {
			sl_config_free(*out);
			*out = NULL;
			return fail_oom(&(struct loader){ .err = err, .err_len = err_len });
		}
		free((*out)->config_dir);
		(*out)->config_dir = dir;
	}
	if (rc == 0 && (*out)->data_dir[0] != '/') {
		/* a relative data_dir (the default "data" too) lives beside the
		 * config file, wherever the process was started */
		const char *slash = strrchr(path, '/');
		if (slash) {
			size_t dir_len = (size_t)(slash - path);
			const char *rel = (*out)->data_dir;
			if (rel[0] == '.' && rel[1] == '/')
				rel += 2;
			size_t n = dir_len + 1 + strlen(rel) + 1;
			char *joined = malloc(n);
			if (!joined) {
				sl_config_free(*out);
				*out = NULL;
				return fail_oom(&(struct loader){ .err = err, .err_len = err_len });
			}
			snprintf(joined, n, "%.*s/%s", (int)dir_len, path, rel);
			free((*out)->data_dir);
			(*out)->data_dir = joined;
		}
	}
	return rc;
}

static void listener_free(struct sl_listener_config *l)
{
	free(l->address);
	free(l->admin_key);
	if (l->tls) {
		for (uint32_t i = 0; i < l->tls->num_certs; i++) {
			free(l->tls->certs[i].cert);
			free(l->tls->certs[i].key);
			free(l->tls->certs[i].ocsp);
		}
		free(l->tls->certs);
		free(l->tls->ticket_key_file);
		free(l->tls);
	}
}

void sl_config_free(struct sl_config *config)
{
	if (!config)
		return;
	free(config->origin);
	free(config->config_dir);
	for (uint32_t i = 0; i < config->num_listeners; i++)
		listener_free(&config->listeners[i]);
	free(config->listeners); /* admin is one of them */
	free(config->data_dir);
	free(config->access_log.path);
	for (uint32_t i = 0; i < config->num_providers; i++) {
		struct sl_provider_config *p = &config->providers[i];
		free(p->name);
		free(p->base_url);
		free(p->host);
		free(p->base_path);
		for (uint32_t k = 0; k < p->num_keys; k++) {
			if (p->keys[k].key)
				explicit_bzero(p->keys[k].key, strlen(p->keys[k].key));
			free(p->keys[k].key);
		}
		free(p->keys);
		for (uint32_t k = 0; k < p->num_headers; k++) {
			free(p->headers[k].name);
			free(p->headers[k].value);
		}
		free(p->headers);
		free(p->anthropic_version);
		free(p->ca_file);
	}
	free(config->providers);
	for (uint32_t i = 0; i < config->num_tiers; i++) {
		free(config->tiers[i].name);
		free(config->tiers[i].model_allowed);
	}
	free(config->tiers);
	for (uint32_t i = 0; i < config->num_models; i++) {
		struct sl_model_config *m = &config->models[i];
		free(m->id);
		for (uint32_t k = 0; k < m->num_aliases; k++)
			free(m->aliases[k]);
		free(m->aliases);
		for (uint32_t k = 0; k < m->num_targets; k++)
			free(m->targets[k].model);
		free(m->targets);
		free(m->owned_by);
		free(m->json);
	}
	free(config->models);
	free(config->models_json);
	free(config->model_index);
	free(config->model_index_name);
	free(config);
}

const struct sl_model_config *sl_config_find_model(const struct sl_config *config,
                                                   const char *name, size_t name_len)
{
	if (!config->model_index)
		return NULL;
	uint32_t slot = index_probe(config, name, name_len);
	uint32_t v = config->model_index[slot];
	return v ? &config->models[v - 1] : NULL;
}
