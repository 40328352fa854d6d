/* Unit tests for src/config.c: the demo, defaults, comments, every error's
 * key path, exact prices, listener and base URL parsing, the model hash and
 * the precomputed /v1/models bodies. */
#include "../../src/config.c"

#include "test.h"

#include <netinet/in.h>

#define LISTEN "\"listen\": [{ \"address\": \"127.0.0.1:0\" }]"
#define PROVIDERS                                                                           \
	"\"providers\": { \"p\": { \"base_url\": \"http://127.0.0.1:9100/v1\", "            \
	"\"format\": \"openai\", \"keys\": [\"k\"] } }"
#define MODELS "\"models\": { \"m\": { \"targets\": [{ \"provider\": \"p\" }] } }"
/* A valid config plus whatever top-level members follow. */
#define CFG(...) "{" LISTEN ", " PROVIDERS ", " MODELS __VA_ARGS__ "}"

static char err_buf[512];

static struct sl_config *load_at(const char *test, const char *text)
{
	struct sl_config *c = NULL;
	int rc = sl_config_load_string(text, strlen(text), "<test>", &c, err_buf, sizeof(err_buf));
	if (rc != 0 || !c) {
		FAIL_AT(test, "load failed: %s", err_buf);
		return NULL;
	}
	return c;
}
#define LOAD(text) load_at(__func__ + 5, text)

static void error_at(const char *test, const char *text, const char *want, bool prefix)
{
	struct sl_config *c = (struct sl_config *)1;
	int rc = sl_config_load_string(text, strlen(text), "<test>", &c, err_buf, sizeof(err_buf));
	if (rc != -EINVAL || c != NULL) {
		FAIL_AT(test, "expected \"%s\", got rc %d", want, rc);
		sl_config_free(c);
		return;
	}
	if (prefix ? strncmp(err_buf, want, strlen(want)) != 0 : strcmp(err_buf, want) != 0)
		FAIL_AT(test, "error \"%s\", expected \"%s\"%s", err_buf, want,
		        prefix ? " (prefix)" : "");
}
#define ERROR(text, want) error_at(__func__ + 5, text, want, false)
#define ERROR_PREFIX(text, want) error_at(__func__ + 5, text, want, true)

/* A config whose provider "x" is body, and model "m" targets it. */
static const char *with_provider(const char *body)
{
	static char buf[4096];
	snprintf(buf, sizeof(buf),
	         "{" LISTEN ", \"providers\": { \"x\": %s }, "
	         "\"models\": { \"m\": { \"targets\": [{ \"provider\": \"x\" }] } } }",
	         body);
	return buf;
}

/* A config whose models object is body (provider "p" exists). */
static const char *with_models(const char *body)
{
	static char buf[4096];
	snprintf(buf, sizeof(buf), "{" LISTEN ", " PROVIDERS ", \"models\": %s }", body);
	return buf;
}

static const char *with_listen(const char *address)
{
	static char buf[4096];
	snprintf(buf, sizeof(buf),
	         "{ \"listen\": [{ \"address\": \"%s\" }], " PROVIDERS ", " MODELS " }", address);
	return buf;
}

static const struct sl_model_config *find(const struct sl_config *c, const char *name)
{
	return sl_config_find_model(c, name, strlen(name));
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
	return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

static bool addr_is(const struct sockaddr_storage *ss, const char *text)
{
	char buf[INET6_ADDRSTRLEN];
	const void *a = ss->ss_family == AF_INET6
	                        ? (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr
	                        : (const void *)&((const struct sockaddr_in *)ss)->sin_addr;
	return inet_ntop(ss->ss_family, a, buf, sizeof(buf)) && strcmp(buf, text) == 0;
}

/* ---- the demo and defaults ------------------------------------------------- */

TEST(demo_loads)
{
	struct sl_config *c = NULL;
	int rc = sl_config_load_string(sl_config_demo, strlen(sl_config_demo), "<embedded demo>",
	                               &c, err_buf, sizeof(err_buf));
	CHECK_EQ_INT(rc, 0);
	if (!c) {
		FAIL_AT("demo_loads", "%s", err_buf);
		return;
	}
	CHECK(strcmp(c->origin, "<embedded demo>") == 0);
	CHECK_EQ_INT(c->num_listeners, 1);
	CHECK(strcmp(c->listeners[0].address, "127.0.0.1:8080") == 0);
	CHECK(addr_is(&c->listeners[0].addr, "127.0.0.1"));
	CHECK_EQ_INT(port_of(&c->listeners[0].addr), 8080);
	CHECK_EQ_INT(c->listeners[0].addr_len, sizeof(struct sockaddr_in));
	CHECK_EQ_INT(c->num_providers, 2);
	const struct sl_provider_config *o = &c->providers[0], *a = &c->providers[1];
	CHECK(strcmp(o->name, "mock-openai") == 0);
	CHECK_EQ_INT(o->format, SL_FORMAT_OPENAI);
	CHECK(!o->tls);
	CHECK(strcmp(o->host, "127.0.0.1:9100") == 0);
	CHECK(strcmp(o->base_path, "/v1") == 0);
	CHECK(addr_is(&o->addr, "127.0.0.1"));
	CHECK_EQ_INT(port_of(&o->addr), 9100);
	CHECK_EQ_INT(o->num_keys, 1);
	CHECK(strcmp(o->keys[0].key, "sk-mock-openai") == 0);
	CHECK(strcmp(a->name, "mock-anthropic") == 0);
	CHECK_EQ_INT(a->format, SL_FORMAT_ANTHROPIC);
	CHECK(strcmp(a->base_path, "") == 0);
	CHECK(strcmp(a->anthropic_version, "2023-06-01") == 0);
	CHECK_EQ_INT(c->num_models, 4);
	const struct sl_model_config *m = find(c, "gpt-4.1");
	CHECK(m && m->num_targets == 1 && m->targets[0].provider == 0);
	CHECK(m && strcmp(m->targets[0].model, "gpt-4.1-2025-04-14") == 0);
	m = find(c, "claude-haiku-4-5");
	CHECK(m && m->targets[0].provider == 1);
	CHECK(m && strcmp(m->targets[0].model, "claude-haiku-4-5-20251001") == 0);
	CHECK(m && strcmp(m->owned_by, "mock-anthropic") == 0);
	CHECK(find(c, "claude-sonnet-4-5-20250929") == find(c, "claude-sonnet-4-5"));
	CHECK(find(c, "gpt-4o-mini") && find(c, "gpt-4o-mini")->price.input == 150000);
	sl_config_free(c);
}

TEST(every_default)
{
	struct sl_config *c = LOAD(CFG());
	if (!c)
		return;
	const struct sl_limits_config *l = &c->limits;
	CHECK_EQ_INT(c->threads, 0);
	CHECK(strcmp(c->data_dir, "data") == 0);
	CHECK(c->admin == NULL);
	CHECK(strcmp(c->origin, "<test>") == 0);
	CHECK_EQ_INT(l->connections_per_core, 16384);
	CHECK_EQ_INT(l->header_bytes_max, 16384);
	CHECK_EQ_INT(l->headers_num_max, 100);
	CHECK_EQ_INT(l->target_bytes_max, 8192);
	CHECK_EQ_INT(l->body_bytes_max, 33554432);
	CHECK_EQ_INT(l->recv_buffer_bytes, 16384);
	CHECK_EQ_INT(l->recv_buffers_per_core, 1024);
	CHECK_EQ_INT(l->send_queue_buffers_max, 8);
	CHECK_EQ_INT(l->memory_per_core_bytes, 268435456);
	CHECK_EQ_INT(l->header_timeout_ms, 10000);
	CHECK_EQ_INT(l->body_timeout_ms, 30000);
	CHECK_EQ_INT(l->keepalive_timeout_ms, 75000);
	CHECK_EQ_INT(l->send_timeout_ms, 60000);
	CHECK_EQ_INT(l->proxy_header_bytes_max, 4096);
	CHECK(c->access_log.path == NULL);
	CHECK_EQ_INT(c->access_log.flush_ms, 200);
	CHECK_EQ_INT(c->access_log.buffer_bytes, 65536);
	CHECK(!c->listeners[0].proxy_protocol);
	const struct sl_provider_config *p = &c->providers[0];
	CHECK_EQ_INT(p->keys[0].weight, 1);
	CHECK_EQ_INT(p->num_headers, 0);
	CHECK(strcmp(p->anthropic_version, "2023-06-01") == 0);
	CHECK_EQ_INT(p->connect_timeout_ms, 5000);
	CHECK_EQ_INT(p->first_byte_timeout_ms, 60000);
	CHECK_EQ_INT(p->idle_timeout_ms, 60000);
	CHECK_EQ_INT(p->keepalive_per_core, 64);
	const struct sl_model_config *m = &c->models[0];
	CHECK_EQ_INT(m->num_aliases, 0);
	CHECK_EQ_INT(m->targets[0].priority, 1);
	CHECK_EQ_INT(m->targets[0].weight, 1);
	CHECK(strcmp(m->targets[0].model, "m") == 0); /* defaults to the id */
	CHECK(strcmp(m->owned_by, "p") == 0);
	CHECK(!m->price.set && m->price.fields_set == 0);
	CHECK_EQ_INT(m->context_window, 0);
	CHECK_EQ_INT(m->max_output_tokens, 0);
	sl_config_free(c);
}

TEST(every_setting)
{
	struct sl_config *c = LOAD(
		"{ \"listen\": [{ \"address\": \"127.0.0.1:1\" }, { \"address\": \"[::1]:2\" }],"
		"  \"admin\": { \"address\": \"127.0.0.1:9090\" },"
		"  \"data_dir\": \"/var/lib/sluice\", \"threads\": 3,"
		"  \"limits\": { \"connections_per_core\": 100, \"header_bytes_max\": 1024,"
		"    \"headers_num_max\": 7, \"target_bytes_max\": 300,"
		"    \"body_bytes_max\": 4294967296, \"recv_buffer_bytes\": 4096,"
		"    \"recv_buffers_per_core\": 32768, \"send_queue_buffers_max\": 2,"
		"    \"memory_per_core_bytes\": 1048576 },"
		"  \"timeouts\": { \"header_ms\": 1, \"body_ms\": 2, \"keepalive_ms\": 3,"
		"    \"send_ms\": 86400000 },"
		"  \"providers\": { \"a\": { \"base_url\": \"http://127.0.0.1:9100\","
		"    \"format\": \"anthropic\", \"keys\": [\"k1\", { \"key\": \"k2\", \"weight\": 5 }],"
		"    \"headers\": { \"x-extra\": \"v 1\", \"anthropic-beta\": \"b\" },"
		"    \"timeouts\": { \"connect_ms\": 10, \"first_byte_ms\": 20, \"idle_ms\": 30 },"
		"    \"keepalive_per_core\": 0, \"anthropic_version\": \"2024-01-01\" } },"
		"  \"models\": { \"m\": { \"targets\": [{ \"provider\": \"a\", \"model\": \"up\","
		"    \"priority\": 2, \"weight\": 7 }, { \"provider\": \"a\" }],"
		"    \"aliases\": [\"m1\", \"m2\"], \"owned_by\": \"acme\","
		"    \"context_window\": 4294967295, \"max_output_tokens\": 9 } },"
		"  \"auth\": { \"mode\": \"none\", \"ip_block_failures\": 7, \"ip_block_seconds\": 9 },"
		"  \"rate_limits\": { \"window_ms\": 2000, \"reconcile_ms\": 20,"
		"    \"daily_reset_hour_utc\": 5 },"
		"  \"tiers\": { \"free\": { \"requests_per_minute\": 10, \"models\": [\"m1\"] },"
		"    \"pro\": { \"tokens_per_minute\": 99, \"concurrent\": 3, \"requests_per_day\": 4 } } }");
	if (!c)
		return;
	const struct sl_limits_config *l = &c->limits;
	CHECK_EQ_INT(c->num_listeners, 3); /* the admin listener is the last */
	CHECK(c->admin == &c->listeners[2] && c->admin->admin && !c->listeners[1].admin);
	CHECK_EQ_INT(c->listeners[1].addr.ss_family, AF_INET6);
	CHECK(c->admin && strcmp(c->admin->address, "127.0.0.1:9090") == 0);
	CHECK(c->admin && port_of(&c->admin->addr) == 9090);
	CHECK(strcmp(c->data_dir, "/var/lib/sluice") == 0);
	CHECK(!c->auth.required);
	CHECK_EQ_INT(c->auth.ip_block_failures, 7);
	CHECK_EQ_INT(c->auth.ip_block_seconds, 9);
	CHECK_EQ_INT(c->rate.window_ms, 2000);
	CHECK_EQ_INT(c->rate.reconcile_ms, 20);
	CHECK_EQ_INT(c->rate.daily_reset_hour_utc, 5);
	CHECK_EQ_INT(c->num_tiers, 2);
	if (c->num_tiers == 2) {
		const struct sl_tier_config *free_tier = sl_config_find_tier(c, "free");
		const struct sl_tier_config *pro = sl_config_find_tier(c, "pro");
		CHECK(free_tier && free_tier->requests_per_minute == 10 && free_tier->model_allowed &&
		      free_tier->model_allowed[0] == 1);
		CHECK(pro && pro->tokens_per_minute == 99 && pro->concurrent == 3 &&
		      pro->requests_per_day == 4 && !pro->model_allowed);
		CHECK(sl_config_find_tier(c, "gold") == NULL);
	}
	CHECK_EQ_INT(c->threads, 3);
	CHECK_EQ_INT(l->connections_per_core, 100);
	CHECK_EQ_INT(l->header_bytes_max, 1024);
	CHECK_EQ_INT(l->headers_num_max, 7);
	CHECK_EQ_INT(l->target_bytes_max, 300);
	CHECK_EQ_INT(l->body_bytes_max, 4294967296ll);
	CHECK_EQ_INT(l->recv_buffer_bytes, 4096);
	CHECK_EQ_INT(l->recv_buffers_per_core, 32768);
	CHECK_EQ_INT(l->send_queue_buffers_max, 2);
	CHECK_EQ_INT(l->memory_per_core_bytes, 1048576);
	CHECK_EQ_INT(l->header_timeout_ms, 1);
	CHECK_EQ_INT(l->body_timeout_ms, 2);
	CHECK_EQ_INT(l->keepalive_timeout_ms, 3);
	CHECK_EQ_INT(l->send_timeout_ms, 86400000);
	const struct sl_provider_config *p = &c->providers[0];
	CHECK_EQ_INT(p->num_keys, 2);
	CHECK(strcmp(p->keys[1].key, "k2") == 0);
	CHECK_EQ_INT(p->keys[1].weight, 5);
	CHECK_EQ_INT(p->num_headers, 2);
	CHECK(strcmp(p->headers[0].name, "x-extra") == 0);
	CHECK(strcmp(p->headers[0].value, "v 1") == 0);
	CHECK(strcmp(p->headers[1].name, "anthropic-beta") == 0);
	CHECK_EQ_INT(p->connect_timeout_ms, 10);
	CHECK_EQ_INT(p->first_byte_timeout_ms, 20);
	CHECK_EQ_INT(p->idle_timeout_ms, 30);
	CHECK_EQ_INT(p->keepalive_per_core, 0);
	CHECK(strcmp(p->anthropic_version, "2024-01-01") == 0);
	const struct sl_model_config *m = &c->models[0];
	CHECK_EQ_INT(m->num_targets, 2);
	CHECK(strcmp(m->targets[0].model, "up") == 0);
	CHECK_EQ_INT(m->targets[0].priority, 2);
	CHECK_EQ_INT(m->targets[0].weight, 7);
	CHECK(strcmp(m->targets[1].model, "m") == 0);
	CHECK(strcmp(m->owned_by, "acme") == 0);
	CHECK_EQ_INT(m->context_window, 4294967295ll);
	CHECK_EQ_INT(m->max_output_tokens, 9);
	CHECK(find(c, "m1") == m && find(c, "m2") == m);
	sl_config_free(c);
}

/* ---- comments and syntax errors -------------------------------------------- */

TEST(comments_stripped_outside_strings)
{
	struct sl_config *c = LOAD(
		"// leading comment with a \" quote\n"
		"{ /* block\n comment */ " LISTEN ", // trailing\n"
		"  \"providers\": { \"p\": { \"base_url\": \"http://127.0.0.1:1/v1\", \"format\": "
		"\"openai\", \"keys\": [\"k//not-a-comment\", \"k/*nor-this*/\", \"k\\\"//x\"],"
		"  \"headers\": { \"x-h\": \"a // b /* c */ \\\\\" } } }, /**/ " MODELS
		"/* no newline at the end */}//");
	if (!c)
		return;
	const struct sl_provider_config *p = &c->providers[0];
	CHECK(strcmp(p->keys[0].key, "k//not-a-comment") == 0);
	CHECK(strcmp(p->keys[1].key, "k/*nor-this*/") == 0);
	CHECK(strcmp(p->keys[2].key, "k\"//x") == 0);
	CHECK(strcmp(p->headers[0].value, "a // b /* c */ \\") == 0);
	sl_config_free(c);

	/* Byte offsets are kept: comments become spaces, newlines stay. */
	const char in[] = "{\"a\"/* x\ny */:1 // z\n}";
	char out[sizeof(in)];
	size_t off;
	CHECK_EQ_INT(strip_comments(in, sizeof(in) - 1, out, &off), 0);
	CHECK_EQ_MEM(out, sizeof(in) - 1, "{\"a\"    \n    :1     \n}");
}

TEST(unterminated_comment_is_an_error)
{
	ERROR("{\n  \"listen\": []\n  /* open", "line 3, column 3: unterminated /* comment");
	ERROR("{ /*/ }", "line 1, column 3: unterminated /* comment");
	/* A comment opener inside a string is just text: jansson then wants more. */
	ERROR_PREFIX("{ \"/*\": 1", "line 1, column 9: ");
}

TEST(syntax_errors_name_line_and_column)
{
	ERROR_PREFIX("{\n  \"listen\": [,]\n}", "line 2, column 14: ");
	/* Multi-byte characters in a comment count as one column each. */
	ERROR_PREFIX("{ /* é */ ,}", "line 1, column 11: ");
	ERROR("{\"threads\": 1,\n \"threads\": 2}",
	      "line 2, column 10: duplicate object key near '\"threads\"'");
	ERROR_PREFIX("", "line 1, column 0: ");
	ERROR("[]", "expected a JSON object at the top level");
}

/* ---- error paths ------------------------------------------------------------ */

TEST(top_level_errors)
{
	ERROR(CFG(", \"bogus\": 1"), "bogus: unknown key");
	ERROR("{" PROVIDERS ", " MODELS "}", "listen: required key is missing");
	ERROR("{" LISTEN ", " MODELS "}", "providers: required key is missing");
	ERROR("{" LISTEN ", " PROVIDERS "}", "models: required key is missing");
	ERROR(CFG(", \"threads\": -1"), "threads: must be between 0 and 4096");
	ERROR(CFG(", \"threads\": 1.5"), "threads: expected an integer");
	ERROR(CFG(", \"data_dir\": \"\""), "data_dir: must not be empty");
	ERROR(CFG(", \"data_dir\": 5"), "data_dir: expected a string");
	ERROR(CFG(", \"tiers\": 5"), "tiers: expected an object");
	ERROR(CFG(", \"tiers\": { \"free\": { \"rpm\": 10 } }"), "tiers.free.rpm: unknown key");
	ERROR(CFG(", \"tiers\": { \"free\": { \"models\": [\"nope\"] } }"),
	      "tiers.free.models[0]: unknown model \"nope\"");
	ERROR(CFG(", \"tiers\": { \"a b\": {} }"),
	      "tiers.a b: a tier name has no spaces, commas or control characters");
	ERROR(CFG(", \"auth\": { \"mode\": \"maybe\" }"),
	      "auth.mode: expected \"keys\" or \"none\"");
	ERROR(CFG(", \"rate_limits\": { \"daily_reset_hour_utc\": 24 }"),
	      "rate_limits.daily_reset_hour_utc: must be between 0 and 23");
	ERROR(CFG(", \"admin\": { \"address\": \"nope\" }"),
	      "admin.address: expected HOST:PORT, [IPV6]:PORT or :PORT");
	ERROR(CFG(", \"admin\": { \"address\": \":1\", \"token\": \"x\" }"), "admin.token: unknown key");
	ERROR(CFG(", \"admin\": { \"address\": \":1\", \"key\": 5 }"),
	      "admin.key: expected a string: the key, or env:NAME");
	ERROR(CFG(", \"admin\": { \"address\": \":1\", \"key\": \"env:SLUICE_NO_SUCH_VAR\" }"),
	      "admin.key: environment variable SLUICE_NO_SUCH_VAR is not set");
	ERROR("{ \"listen\": [{ \"address\": \":1\", \"key\": \"x\" }], " PROVIDERS ", " MODELS "}",
	      "listen[0].key: unknown key");
	ERROR(with_models("{}"), "models: needs at least one model");
	ERROR("{" LISTEN ", \"providers\": {}, " MODELS "}", "providers: needs at least one provider");
	/* Messages stay on one line whatever the key holds. */
	ERROR(CFG(", \"a\\nb\": 1"), "a?b: unknown key");
}

TEST(limit_errors)
{
	ERROR(CFG(", \"limits\": { \"foo\": 1 }"), "limits.foo: unknown key");
	ERROR(CFG(", \"limits\": 1"), "limits: expected an object");
	ERROR(CFG(", \"limits\": { \"recv_buffers_per_core\": 1000 }"),
	      "limits.recv_buffers_per_core: must be a power of two between 16 and 32768");
	ERROR(CFG(", \"limits\": { \"recv_buffers_per_core\": 8 }"),
	      "limits.recv_buffers_per_core: must be a power of two between 16 and 32768");
	ERROR(CFG(", \"limits\": { \"recv_buffers_per_core\": 65536 }"),
	      "limits.recv_buffers_per_core: must be a power of two between 16 and 32768");
	ERROR(CFG(", \"limits\": { \"header_bytes_max\": 1023 }"),
	      "limits.header_bytes_max: must be between 1024 and 1048576");
	ERROR(CFG(", \"limits\": { \"header_bytes_max\": 1048577 }"),
	      "limits.header_bytes_max: must be between 1024 and 1048576");
	ERROR(CFG(", \"limits\": { \"body_bytes_max\": 0 }"),
	      "limits.body_bytes_max: must be between 1 and 4294967296");
	ERROR(CFG(", \"limits\": { \"body_bytes_max\": 4294967297 }"),
	      "limits.body_bytes_max: must be between 1 and 4294967296");
	ERROR(CFG(", \"limits\": { \"recv_buffer_bytes\": 512 }"),
	      "limits.recv_buffer_bytes: must be between 1024 and 1048576");
	ERROR(CFG(", \"limits\": { \"memory_per_core_bytes\": 1048575 }"),
	      "limits.memory_per_core_bytes: must be between 1048576 and 1099511627776");
	ERROR(CFG(", \"limits\": { \"connections_per_core\": \"many\" }"),
	      "limits.connections_per_core: expected an integer");
	ERROR(CFG(", \"limits\": { \"headers_num_max\": 0 }"),
	      "limits.headers_num_max: must be between 1 and 4096");
	ERROR(CFG(", \"limits\": { \"send_queue_buffers_max\": 0 }"),
	      "limits.send_queue_buffers_max: must be between 1 and 1024");
	ERROR(CFG(", \"limits\": { \"proxy_header_bytes_max\": 231 }"),
	      "limits.proxy_header_bytes_max: must be between 232 and 65551");
	ERROR(CFG(", \"limits\": { \"proxy_header_bytes_max\": 65552 }"),
	      "limits.proxy_header_bytes_max: must be between 232 and 65551");
	ERROR(CFG(", \"access_log\": {}"), "access_log.path: required key is missing");
	ERROR(CFG(", \"access_log\": { \"path\": \"\" }"), "access_log.path: must not be empty");
	ERROR(CFG(", \"access_log\": { \"path\": \"a\", \"flush_ms\": 0 }"),
	      "access_log.flush_ms: must be between 1 and 60000");
	ERROR(CFG(", \"access_log\": { \"path\": \"a\", \"buffer_bytes\": 4095 }"),
	      "access_log.buffer_bytes: must be between 4096 and 1073741824");
	ERROR(CFG(", \"access_log\": { \"path\": \"a\", \"format\": \"x\" }"),
	      "access_log.format: unknown key");
	ERROR(CFG(", \"timeouts\": { \"header_ms\": 0 }"),
	      "timeouts.header_ms: must be between 1 and 86400000");
	ERROR(CFG(", \"timeouts\": { \"send_ms\": 86400001 }"),
	      "timeouts.send_ms: must be between 1 and 86400000");
	ERROR(CFG(", \"timeouts\": { \"connect_ms\": 5 }"), "timeouts.connect_ms: unknown key");
}

TEST(listener_errors)
{
	ERROR("{ \"listen\": [], " PROVIDERS ", " MODELS "}", "listen: needs at least one listener");
	ERROR("{ \"listen\": {}, " PROVIDERS ", " MODELS "}", "listen: expected an array");
	ERROR("{ \"listen\": [\":1\"], " PROVIDERS ", " MODELS "}", "listen[0]: expected an object");
	ERROR("{ \"listen\": [{}], " PROVIDERS ", " MODELS "}",
	      "listen[0].address: required key is missing");
	ERROR("{ \"listen\": [{ \"address\": \":1\" }, { \"address\": \":2\", \"tls\": {} }], "
	      PROVIDERS ", " MODELS "}",
	      "listen[1].tls: needs \"cert\" and \"key\" (or \"certificates\")");
	ERROR("{ \"listen\": [{ \"address\": \":1\", \"tls\": { \"cert\": \"c.pem\" } }], "
	      PROVIDERS ", " MODELS "}",
	      "listen[0].tls.key: required key is missing");
	ERROR("{ \"listen\": [{ \"address\": \":1\", \"tls\": { \"cert\": \"c\", \"key\": \"k\", "
	      "\"bogus\": 1 } }], " PROVIDERS ", " MODELS "}",
	      "listen[0].tls.bogus: unknown key");
	ERROR("{ \"listen\": [{ \"address\": \":1\", \"tls\": { \"certificates\": [] } }], "
	      PROVIDERS ", " MODELS "}",
	      "listen[0].tls.certificates: expected a non-empty array of {\"cert\", \"key\"}");
	ERROR("{ \"listen\": [{ \"address\": \":1\", \"tls\": { \"certificates\": [{ \"cert\": \"c\" }] "
	      "} }], " PROVIDERS ", " MODELS "}",
	      "listen[0].tls.certificates[0].key: required key is missing");
	ERROR("{ \"listen\": [{ \"address\": \":1\", \"tls\": { \"cert\": \"c\", \"key\": \"k\", "
	      "\"session_tickets\": 1 } }], " PROVIDERS ", " MODELS "}",
	      "listen[0].tls.session_tickets: expected true or false");
	ERROR("{ \"listen\": [{ \"address\": \":1\", \"proxy_protocol\": \"v2\" }], " PROVIDERS
	      ", " MODELS "}",
	      "listen[0].proxy_protocol: expected true or false");
	ERROR(with_listen("1.2.3.4:99999"),
	      "listen[0].address: invalid port \"99999\": expected 0 to 65535");
	ERROR(with_listen("1.2.3.4:"), "listen[0].address: invalid port \"\": expected 0 to 65535");
	ERROR(with_listen("1.2.3.4:8o"), "listen[0].address: invalid port \"8o\": expected 0 to 65535");
	ERROR(with_listen("1.2.3.4"), "listen[0].address: expected HOST:PORT, [IPV6]:PORT or :PORT");
	ERROR(with_listen("::1:80"),
	      "listen[0].address: IPv6 addresses must be written in brackets: [ADDR]:PORT");
	ERROR(with_listen("[::1]"), "listen[0].address: expected HOST:PORT, [IPV6]:PORT or :PORT");
	ERROR(with_listen("[::g]:1"), "listen[0].address: invalid IPv6 address \"::g\"");
	ERROR(with_listen("example.com:80"),
	      "listen[0].address: \"example.com\" is not a numeric IPv4 address or localhost");
	ERROR(with_listen("1.2.3:80"),
	      "listen[0].address: \"1.2.3\" is not a numeric IPv4 address or localhost");
}

TEST(listener_parsing)
{
	struct sl_config *c = LOAD(with_listen("[::1]:0"));
	if (c) {
		CHECK_EQ_INT(c->listeners[0].addr.ss_family, AF_INET6);
		CHECK_EQ_INT(c->listeners[0].addr_len, sizeof(struct sockaddr_in6));
		CHECK(addr_is(&c->listeners[0].addr, "::1"));
		CHECK_EQ_INT(port_of(&c->listeners[0].addr), 0);
		CHECK(strcmp(c->listeners[0].address, "[::1]:0") == 0);
		sl_config_free(c);
	}
	c = LOAD(with_listen(":8080"));
	if (c) {
		CHECK_EQ_INT(c->listeners[0].addr.ss_family, AF_INET);
		CHECK(addr_is(&c->listeners[0].addr, "0.0.0.0"));
		CHECK_EQ_INT(port_of(&c->listeners[0].addr), 8080);
		sl_config_free(c);
	}
	c = LOAD(with_listen("localhost:65535"));
	if (c) {
		CHECK(addr_is(&c->listeners[0].addr, "127.0.0.1"));
		CHECK_EQ_INT(port_of(&c->listeners[0].addr), 65535);
		sl_config_free(c);
	}
	c = LOAD("{ \"listen\": [{ \"address\": \":1\" }, { \"address\": \":2\", "
	         "\"proxy_protocol\": true }], \"limits\": { \"proxy_header_bytes_max\": 232 }, "
	         PROVIDERS ", " MODELS "}");
	if (c) {
		CHECK(!c->listeners[0].proxy_protocol);
		CHECK(c->listeners[1].proxy_protocol);
		CHECK_EQ_INT(c->limits.proxy_header_bytes_max, 232);
		sl_config_free(c);
	}
	c = LOAD(CFG(", \"access_log\": { \"path\": \"/var/log/sluice/access.log\", "
	             "\"flush_ms\": 1000, \"buffer_bytes\": 4096 }"));
	if (c) {
		CHECK(strcmp(c->access_log.path, "/var/log/sluice/access.log") == 0);
		CHECK_EQ_INT(c->access_log.flush_ms, 1000);
		CHECK_EQ_INT(c->access_log.buffer_bytes, 4096);
		sl_config_free(c);
	}
	c = LOAD(with_listen("[::]:443"));
	if (c) {
		CHECK(addr_is(&c->listeners[0].addr, "::"));
		CHECK_EQ_INT(port_of(&c->listeners[0].addr), 443);
		sl_config_free(c);
	}
}

TEST(provider_errors)
{
	ERROR(CFG(", \"routing\": { \"retry_unconfirmed\": 1 }"),
	      "routing.retry_unconfirmed: expected true or false");
	ERROR(CFG(", \"routing\": { \"attempts_max\": 9 }"),
	      "routing.attempts_max: must be between 1 and 8");
	ERROR(CFG(", \"routing\": { \"backoff_ms\": 50, \"backoff_max_ms\": 10 }"),
	      "routing.backoff_max_ms: must not be below backoff_ms");
	ERROR(CFG(", \"routing\": { \"retries\": 2 }"), "routing.retries: unknown key");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"], \"ca_file\": \"ca.pem\" }"),
	      "providers.x.ca_file: only valid with an https:// base_url");
	ERROR(with_provider("{ \"base_url\": \"https://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"], \"ca_file\": \"ca.pem\", "
	                    "\"tls_insecure_skip_verify\": true }"),
	      "providers.x.ca_file: conflicts with tls_insecure_skip_verify");
	ERROR(with_provider("{ \"base_url\": \"https://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"], \"tls_insecure_skip_verify\": \"yes\" }"),
	      "providers.x.tls_insecure_skip_verify: expected true or false");
	ERROR(with_provider("{ \"base_url\": 1, \"format\": \"openai\", \"keys\": [\"k\"] }"),
	      "providers.x.base_url: expected a string");
	ERROR("{" LISTEN ", \"providers\": { \"openai\": { \"base_url\": true, \"format\": "
	      "\"openai\", \"keys\": [\"k\"] } }, " MODELS "}",
	      "providers.openai.base_url: expected a string");
	ERROR(with_provider("{ \"format\": \"openai\", \"keys\": [\"k\"] }"),
	      "providers.x.base_url: required key is missing");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"keys\": [\"k\"] }"),
	      "providers.x.format: required key is missing");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"grpc\", "
	                    "\"keys\": [\"k\"] }"),
	      "providers.x.format: expected \"openai\" or \"anthropic\"");
	ERROR(with_provider("{ \"base_url\": \"ftp://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"] }"),
	      "providers.x.base_url: expected an http:// or https:// URL");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1/v1?x=1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"] }"),
	      "providers.x.base_url: must not contain a query or fragment");
	ERROR(with_provider("{ \"base_url\": \"http://u:p@127.0.0.1/\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"] }"),
	      "providers.x.base_url: must not contain user information");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1:0\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"] }"),
	      "providers.x.base_url: invalid port \"0\": expected 1 to 65535");
	ERROR(with_provider("{ \"base_url\": \"http://:80/v1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"] }"),
	      "providers.x.base_url: missing host");
	ERROR(with_provider("{ \"base_url\": \"http://1.2.3.256\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"] }"),
	      "providers.x.base_url: invalid IPv4 address \"1.2.3.256\"");
	ERROR(with_provider("{ \"base_url\": \"http://a b\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"] }"),
	      "providers.x.base_url: must not contain spaces or control characters");
	ERROR_PREFIX(with_provider("{ \"base_url\": \"https://no-such-host.invalid/v1\", "
	                           "\"format\": \"openai\", \"keys\": [\"k\"] }"),
	             "providers.x.base_url: cannot resolve host \"no-such-host.invalid\": ");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\" }"),
	      "providers.x.keys: required key is missing");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [] }"),
	      "providers.x.keys: needs at least one key");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\", 5] }"),
	      "providers.x.keys[1]: expected a string or {\"key\": ..., \"weight\": N}");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [{ \"key\": \"k\", \"weight\": 0 }] }"),
	      "providers.x.keys[0].weight: must be between 1 and 1000000");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [{ \"weight\": 2 }] }"),
	      "providers.x.keys[0].key: required key is missing");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"\"] }"),
	      "providers.x.keys[0]: must not be empty");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\\r\\nx-injected: 1\"] }"),
	      "providers.x.keys[0]: must not contain whitespace or control characters");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"], \"headers\": { \"Host\": \"h\" } }"),
	      "providers.x.headers.Host: \"Host\" is set by the gateway");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"], \"headers\": { \"a b\": \"h\" } }"),
	      "providers.x.headers.a b: invalid header name");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"], \"headers\": { \"x-a\": \"1\\n2\" } }"),
	      "providers.x.headers.x-a: must not contain control characters");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"], \"timeouts\": { \"connect_ms\": 0 } }"),
	      "providers.x.timeouts.connect_ms: must be between 1 and 86400000");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"], \"timeouts\": { \"read_ms\": 1 } }"),
	      "providers.x.timeouts.read_ms: unknown key");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"], \"anthropic_version\": \"2023-06-01\" }"),
	      "providers.x.anthropic_version: only valid with format \"anthropic\"");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\"], \"key\": \"x\" }"),
	      "providers.x.key: unknown key");
	ERROR(with_provider("5"), "providers.x: expected an object");
}

TEST(base_url_parsing)
{
	struct sl_config *c = LOAD(with_provider(
		"{ \"base_url\": \"https://127.0.0.1/api/v1/\", \"format\": \"openai\", "
		"\"keys\": [\"k\"] }"));
	if (c) {
		const struct sl_provider_config *p = &c->providers[0];
		CHECK(p->tls);
		CHECK(strcmp(p->host, "127.0.0.1") == 0);
		CHECK(strcmp(p->base_path, "/api/v1") == 0);
		CHECK_EQ_INT(port_of(&p->addr), 443);
		CHECK(strcmp(p->base_url, "https://127.0.0.1/api/v1/") == 0);
		sl_config_free(c);
	}
	c = LOAD(with_provider("{ \"base_url\": \"http://[::1]:9100/v1\", \"format\": \"openai\", "
	                       "\"keys\": [\"k\"] }"));
	if (c) {
		const struct sl_provider_config *p = &c->providers[0];
		CHECK(!p->tls);
		CHECK(strcmp(p->host, "[::1]:9100") == 0);
		CHECK(strcmp(p->base_path, "/v1") == 0);
		CHECK(addr_is(&p->addr, "::1"));
		CHECK_EQ_INT(p->addr_len, sizeof(struct sockaddr_in6));
		CHECK_EQ_INT(port_of(&p->addr), 9100);
		sl_config_free(c);
	}
	c = LOAD(with_provider("{ \"base_url\": \"http://localhost:80/\", \"format\": \"openai\", "
	                       "\"keys\": [\"k\"] }"));
	if (c) {
		const struct sl_provider_config *p = &c->providers[0];
		CHECK(strcmp(p->host, "localhost") == 0);
		CHECK(strcmp(p->base_path, "") == 0);
		CHECK(addr_is(&p->addr, "127.0.0.1"));
		CHECK_EQ_INT(port_of(&p->addr), 80);
		sl_config_free(c);
	}
	c = LOAD(with_provider("{ \"base_url\": \"https://127.0.0.1:8443\", \"format\": "
	                       "\"anthropic\", \"keys\": [\"k\"] }"));
	if (c) {
		CHECK(strcmp(c->providers[0].host, "127.0.0.1:8443") == 0);
		CHECK_EQ_INT(port_of(&c->providers[0].addr), 8443);
		sl_config_free(c);
	}
}

TEST(env_keys)
{
	setenv("SLUICE_TEST_KEY", "sk-from-env", 1);
	unsetenv("SLUICE_TEST_UNSET");
	setenv("SLUICE_TEST_EMPTY", "", 1);
	struct sl_config *c = LOAD(with_provider(
		"{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
		"\"keys\": [\"env:SLUICE_TEST_KEY\", { \"key\": \"env:SLUICE_TEST_KEY\", "
		"\"weight\": 3 }] }"));
	if (c) {
		CHECK(strcmp(c->providers[0].keys[0].key, "sk-from-env") == 0);
		CHECK(strcmp(c->providers[0].keys[1].key, "sk-from-env") == 0);
		CHECK_EQ_INT(c->providers[0].keys[1].weight, 3);
		sl_config_free(c);
	}
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"env:SLUICE_TEST_UNSET\"] }"),
	      "providers.x.keys[0]: environment variable SLUICE_TEST_UNSET is not set");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"k\", { \"key\": \"env:SLUICE_TEST_UNSET\" }] }"),
	      "providers.x.keys[1].key: environment variable SLUICE_TEST_UNSET is not set");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"env:SLUICE_TEST_EMPTY\"] }"),
	      "providers.x.keys[0]: environment variable SLUICE_TEST_EMPTY is empty");
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"env:\"] }"),
	      "providers.x.keys[0]: expected env:NAME");
	setenv("SLUICE_TEST_KEY", "sk-new\n", 1);
	ERROR(with_provider("{ \"base_url\": \"http://127.0.0.1\", \"format\": \"openai\", "
	                    "\"keys\": [\"env:SLUICE_TEST_KEY\"] }"),
	      "providers.x.keys[0]: environment variable SLUICE_TEST_KEY contains whitespace or "
	      "control characters");
	unsetenv("SLUICE_TEST_KEY");
	unsetenv("SLUICE_TEST_EMPTY");
}

TEST(model_errors)
{
	ERROR(with_models("{ \"gpt-4o\": { \"targets\": [{ \"provider\": \"x\" }] } }"),
	      "models.gpt-4o.targets[0].provider: unknown provider \"x\"");
	ERROR(with_models("{ \"m\": { } }"), "models.m.targets: required key is missing");
	ERROR(with_models("{ \"m\": { \"targets\": [] } }"), "models.m.targets: needs at least one target");
	ERROR(with_models("{ \"m\": { \"targets\": {} } }"), "models.m.targets: expected an array");
	ERROR(with_models("{ \"m\": { \"targets\": [\"p\"] } }"),
	      "models.m.targets[0]: expected an object");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"model\": \"u\" }] } }"),
	      "models.m.targets[0].provider: required key is missing");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\", \"model\": \"\" }] } }"),
	      "models.m.targets[0].model: must not be empty");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\", \"priority\": 0 }] } }"),
	      "models.m.targets[0].priority: must be between 1 and 1000");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\", \"weight\": 0 }] } }"),
	      "models.m.targets[0].weight: must be between 1 and 1000000");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\", \"extra\": 0 }] } }"),
	      "models.m.targets[0].extra: unknown key");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"alias\": [] } }"),
	      "models.m.alias: unknown key");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"aliases\": \"a\" } }"),
	      "models.m.aliases: expected an array");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"aliases\": [1] } }"),
	      "models.m.aliases[0]: expected a string");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"aliases\": [\"\"] } }"),
	      "models.m.aliases[0]: model names must be 1 to 256 bytes");
	ERROR(with_models("{ \"\": { \"targets\": [{ \"provider\": \"p\" }] } }"),
	      "models.: model names must be 1 to 256 bytes");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"context_window\": -1 } }"),
	      "models.m.context_window: must be between 0 and 4294967295");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"owned_by\": 1 } }"),
	      "models.m.owned_by: expected a string");
	/* Alias collisions: with a later model's id, an earlier alias, its own id,
	 * and itself. */
	ERROR(with_models("{ \"x\": { \"targets\": [{ \"provider\": \"p\" }], \"aliases\": [\"y\"] },"
	                  "  \"y\": { \"targets\": [{ \"provider\": \"p\" }] } }"),
	      "models.x.aliases[0]: \"y\" is already used by model y");
	ERROR(with_models("{ \"z\": { \"targets\": [{ \"provider\": \"p\" }], \"aliases\": [\"y\"] },"
	                  "  \"x\": { \"targets\": [{ \"provider\": \"p\" }], \"aliases\": [\"w\", \"y\"] } }"),
	      "models.x.aliases[1]: \"y\" is already used by model z");
	ERROR(with_models("{ \"x\": { \"targets\": [{ \"provider\": \"p\" }], \"aliases\": [\"x\"] } }"),
	      "models.x.aliases[0]: \"x\" is already used by model x");
	ERROR(with_models("{ \"x\": { \"targets\": [{ \"provider\": \"p\" }], \"aliases\": [\"a\", \"a\"] } }"),
	      "models.x.aliases[1]: \"a\" is already used by model x");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"price\": [] } }"),
	      "models.m.price: expected an object");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"price\": { \"in\": \"1\" } } }"),
	      "models.m.price.in: unknown key");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"price\": { \"input\": \"abc\" } } }"),
	      "models.m.price.input: expected a decimal number of dollars, e.g. \"2.50\"");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"price\": { \"output\": \"-1\" } } }"),
	      "models.m.price.output: must not be negative");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"price\": { \"cache_write\": -0.5 } } }"),
	      "models.m.price.cache_write: must not be negative");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"price\": { \"cached_input\": true } } }"),
	      "models.m.price.cached_input: expected a decimal string such as \"2.50\"");
	ERROR(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"price\": { \"input\": \"0.0000001\" } } }"),
	      "models.m.price.input: has more than 6 decimal places (the unit is one micro-dollar)");
}

/* ---- prices ---------------------------------------------------------------- */

TEST(price_parsing)
{
	static const struct {
		const char *text;
		int64_t micros; /* -1: rejected */
	} cases[] = {
		{ "0.15", 150000 },
		{ "3", 3000000 },
		{ "2.50", 2500000 },
		{ "0.075", 75000 },
		{ "15.00", 15000000 },
		{ "0.000001", 1 },
		{ "0.1500000", 150000 }, /* zeros past the 6th decimal are exact */
		{ "00.50", 500000 },
		{ "0", 0 },
		{ "0.0", 0 },
		{ "1e-6", 1 },
		{ "2.5E2", 250000000 },
		{ "100000", 100000000000LL },
		{ "99999.999999", 99999999999LL },
		{ "0.0000001", -1 }, /* below one micro-dollar: rejected, never rounded */
		{ "1.0000005", -1 },
		{ "100000.000001", -1 },
		{ "1000000", -1 },
		{ "1e300", -1 },
		{ "-1", -1 },
		{ "-0", -1 },
		{ "abc", -1 },
		{ "", -1 },
		{ "1.", -1 },
		{ ".5", -1 },
		{ "+1", -1 },
		{ "1 ", -1 },
		{ " 1", -1 },
		{ "1,5", -1 },
		{ "1e", -1 },
		{ "0x10", -1 },
		{ "1.2.3", -1 },
	};
	for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++) {
		int64_t micros = -7;
		const char *why = parse_price_micros(cases[i].text, &micros);
		if (cases[i].micros < 0 ? why == NULL : (why != NULL || micros != cases[i].micros))
			FAIL_AT("price_parsing", "\"%s\": %s, %lld", cases[i].text, why ? why : "ok",
			        (long long)micros);
	}

	/* JSON numbers are accepted too, exactly for up to 15 significant digits. */
	struct sl_config *c = LOAD(with_models(
		"{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"price\": { \"input\": 2.5, "
		"\"output\": 3, \"cached_input\": 0.075, \"cache_write\": 0.000001 } } }"));
	if (c) {
		const struct sl_model_price *p = &c->models[0].price;
		CHECK(p->set);
		CHECK_EQ_INT(p->fields_set, SL_PRICE_INPUT | SL_PRICE_OUTPUT | SL_PRICE_CACHED_INPUT |
		                                    SL_PRICE_CACHE_WRITE);
		CHECK_EQ_INT(p->input, 2500000);
		CHECK_EQ_INT(p->output, 3000000);
		CHECK_EQ_INT(p->cached_input, 75000);
		CHECK_EQ_INT(p->cache_write, 1);
		sl_config_free(c);
	}
	c = LOAD(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], "
	                     "\"price\": { \"output\": \"8\" } } }"));
	if (c) {
		CHECK(c->models[0].price.set);
		CHECK_EQ_INT(c->models[0].price.fields_set, SL_PRICE_OUTPUT);
		CHECK_EQ_INT(c->models[0].price.input, 0);
		CHECK_EQ_INT(c->models[0].price.output, 8000000);
		sl_config_free(c);
	}
}

TEST(price_formatting)
{
	static const struct {
		int64_t micros;
		const char *text;
	} cases[] = {
		{ 2500000, "2.50" }, { 75000, "0.075" },   { 1, "0.000001" },
		{ 0, "0.00" },       { 15000000, "15.00" }, { 123456789, "123.456789" },
		{ 100000000000LL, "100000.00" }, { 1230000, "1.23" }, { 1234000, "1.234" },
	};
	for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++) {
		char buf[32];
		format_price(cases[i].micros, buf, sizeof(buf));
		if (strcmp(buf, cases[i].text) != 0)
			FAIL_AT("price_formatting", "%lld: \"%s\", expected \"%s\"",
			        (long long)cases[i].micros, buf, cases[i].text);
		int64_t back;
		if (parse_price_micros(buf, &back) || back != cases[i].micros)
			FAIL_AT("price_formatting", "\"%s\" does not parse back", buf);
	}
}

/* ---- lookup ------------------------------------------------------------------ */

TEST(find_model_ids_and_aliases)
{
	struct sl_config *c = NULL;
	sl_config_load_string(sl_config_demo, strlen(sl_config_demo), "demo", &c, err_buf,
	                      sizeof(err_buf));
	if (!c) {
		FAIL_AT("find_model_ids_and_aliases", "%s", err_buf);
		return;
	}
	const struct sl_model_config *sonnet = find(c, "claude-sonnet-4-5");
	CHECK(sonnet && strcmp(sonnet->id, "claude-sonnet-4-5") == 0);
	CHECK(find(c, "claude-sonnet-4-5-20250929") == sonnet);
	for (uint32_t i = 0; i < c->num_models; i++)
		CHECK(find(c, c->models[i].id) == &c->models[i]);
	/* name_len bounds the name: no NUL terminator needed. */
	CHECK(sl_config_find_model(c, "gpt-4o-mini-and-more", 11) == find(c, "gpt-4o-mini"));
	CHECK(find(c, "gpt-4o") == NULL);
	CHECK(find(c, "GPT-4o-mini") == NULL); /* case-sensitive */
	CHECK(find(c, "gpt-4o-mini ") == NULL);
	CHECK(find(c, "") == NULL);
	CHECK(find(c, "unknown-model") == NULL);
	CHECK(sl_config_find_model(c, "gpt-4.1\0x", 9) == NULL);
	CHECK(sl_config_find_model(c, "claude-sonnet-4-5-2025092", 25) == NULL);
	sl_config_free(c);
}

TEST(find_model_many_names)
{
	enum { MODELS_NUM = 300 };
	size_t cap = 64 * 1024, len = 0;
	char *text = malloc(cap);
	len += (size_t)snprintf(text + len, cap - len, "{" LISTEN ", " PROVIDERS ", \"models\": {");
	for (int i = 0; i < MODELS_NUM; i++)
		len += (size_t)snprintf(text + len, cap - len,
		                        "%s\"model-%d\": { \"targets\": [{ \"provider\": \"p\" }], "
		                        "\"aliases\": [\"alias-%d-a\", \"alias-%d-b\"] }",
		                        i ? "," : "", i, i, i);
	snprintf(text + len, cap - len, "} }");
	struct sl_config *c = LOAD(text);
	free(text);
	if (!c)
		return;
	CHECK_EQ_INT(c->num_models, MODELS_NUM);
	CHECK(c->model_index_mask + 1 >= 2 * 3 * MODELS_NUM);
	CHECK(((c->model_index_mask + 1) & c->model_index_mask) == 0);
	for (int i = 0; i < MODELS_NUM; i++) {
		char name[64];
		snprintf(name, sizeof(name), "model-%d", i);
		const struct sl_model_config *m = find(c, name);
		CHECK(m == &c->models[i]);
		snprintf(name, sizeof(name), "alias-%d-a", i);
		CHECK(find(c, name) == m);
		snprintf(name, sizeof(name), "alias-%d-b", i);
		CHECK(find(c, name) == m);
		snprintf(name, sizeof(name), "alias-%d-c", i);
		CHECK(find(c, name) == NULL);
	}
	sl_config_free(c);
}

/* ---- precomputed JSON ---------------------------------------------------------- */

TEST(models_json)
{
	struct sl_config *c = NULL;
	sl_config_load_string(sl_config_demo, strlen(sl_config_demo), "demo", &c, err_buf,
	                      sizeof(err_buf));
	if (!c) {
		FAIL_AT("models_json", "%s", err_buf);
		return;
	}
	const struct sl_model_config *sonnet = find(c, "claude-sonnet-4-5");
	CHECK_EQ_MEM(sonnet->json, sonnet->json_len,
	             "{\"id\":\"claude-sonnet-4-5\",\"object\":\"model\",\"created\":1700000000,"
	             "\"owned_by\":\"mock-anthropic\",\"aliases\":[\"claude-sonnet-4-5-20250929\"],"
	             "\"context_window\":200000,\"max_output_tokens\":64000,\"pricing\":{"
	             "\"currency\":\"USD\",\"unit\":\"1M tokens\",\"input\":\"3.00\",\"output\":"
	             "\"15.00\",\"cached_input\":\"0.30\",\"cache_write\":\"3.75\"}}");
	const struct sl_model_config *mini = find(c, "gpt-4o-mini");
	CHECK_EQ_MEM(mini->json, mini->json_len,
	             "{\"id\":\"gpt-4o-mini\",\"object\":\"model\",\"created\":1700000000,"
	             "\"owned_by\":\"mock-openai\",\"aliases\":[],\"context_window\":128000,"
	             "\"max_output_tokens\":16384,\"pricing\":{\"currency\":\"USD\",\"unit\":"
	             "\"1M tokens\",\"input\":\"0.15\",\"output\":\"0.60\",\"cached_input\":"
	             "\"0.075\"}}");
	CHECK_EQ_INT(strlen(c->models_json), c->models_json_len);
	const char head[] = "{\"object\":\"list\",\"data\":[{\"id\":\"gpt-4o-mini\",";
	CHECK(strncmp(c->models_json, head, sizeof(head) - 1) == 0);
	CHECK(strcmp(c->models_json + c->models_json_len - 2, "]}") == 0);

	/* The list parses, holds one entry per id (not per alias), in order,
	 * each equal to that model's own body. */
	json_error_t jerr;
	json_t *list = json_loads(c->models_json, 0, &jerr);
	CHECK(list != NULL);
	json_t *data = json_object_get(list, "data");
	CHECK_EQ_INT(json_array_size(data), c->num_models);
	for (size_t i = 0; i < json_array_size(data) && i < c->num_models; i++) {
		json_t *one = json_loads(c->models[i].json, 0, &jerr);
		CHECK(json_equal(one, json_array_get(data, i)));
		CHECK(strcmp(json_string_value(json_object_get(one, "id")), c->models[i].id) == 0);
		json_decref(one);
	}
	json_decref(list);
	sl_config_free(c);

	/* No price: no "pricing"; no window: no "context_window". Ids that need
	 * escaping come back intact. */
	c = LOAD(with_models("{ \"we\\\"ird/\\u00e9\\\\\": { \"targets\": [{ \"provider\": \"p\" }] } }"));
	if (c) {
		CHECK_EQ_MEM(c->models[0].json, c->models[0].json_len,
		             "{\"id\":\"we\\\"ird/\xc3\xa9\\\\\",\"object\":\"model\",\"created\":"
		             "1700000000,\"owned_by\":\"p\",\"aliases\":[]}");
		CHECK(find(c, "we\"ird/\xc3\xa9\\") == &c->models[0]);
		sl_config_free(c);
	}
	c = LOAD(with_models("{ \"m\": { \"targets\": [{ \"provider\": \"p\" }], \"price\": "
	                     "{ \"input\": \"1.5\" } } }"));
	if (c) {
		CHECK(strstr(c->models[0].json, ",\"pricing\":{\"currency\":\"USD\",\"unit\":"
		                                "\"1M tokens\",\"input\":\"1.50\"}}") != NULL);
		sl_config_free(c);
	}
}

/* ---- files, SPEC sample, robustness --------------------------------------------- */

TEST(load_file)
{
	char path[] = "/tmp/sluice-test-config-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	if (fd < 0)
		return;
	const char *text = CFG(", \"threads\": 2");
	CHECK_EQ_INT(write(fd, text, strlen(text)), strlen(text));
	close(fd);
	struct sl_config *c = NULL;
	int rc = sl_config_load_file(path, &c, err_buf, sizeof(err_buf));
	CHECK_EQ_INT(rc, 0);
	if (c) {
		CHECK(strcmp(c->origin, path) == 0);
		CHECK_EQ_INT(c->threads, 2);
		sl_config_free(c);
	}
	unlink(path);
	rc = sl_config_load_file(path, &c, err_buf, sizeof(err_buf));
	CHECK_EQ_INT(rc, -ENOENT);
	CHECK(c == NULL);
	char want[128];
	snprintf(want, sizeof(want), "%s: No such file or directory", path);
	CHECK(strcmp(err_buf, want) == 0);
	rc = sl_config_load_file("/tmp", &c, err_buf, sizeof(err_buf));
	CHECK(rc < 0 && strcmp(err_buf, "/tmp: not a regular file") == 0);
}

/* The SPEC's sample config (with numeric hosts, so no DNS, and without the
 * TLS listener, which is refused until TLS lands) is accepted. */
TEST(spec_sample)
{
	setenv("OPENAI_API_KEY", "sk-o", 1);
	setenv("ANTHROPIC_API_KEY", "sk-a", 1);
	struct sl_config *c = LOAD(
		"{\n"
		"  \"listen\": [{ \"address\": \"0.0.0.0:8080\" }],\n"
		"  \"admin\": { \"address\": \"127.0.0.1:9090\" },\n"
		"  \"data_dir\": \"/var/lib/sluice\",\n"
		"  \"threads\": 0,                       // 0: one reactor per online CPU\n"
		"  \"providers\": {\n"
		"    \"openai\":    { \"base_url\": \"https://127.0.0.2/v1\", \"format\": \"openai\",\n"
		"                   \"keys\": [\"env:OPENAI_API_KEY\"] },\n"
		"    \"anthropic\": { \"base_url\": \"https://127.0.0.3\", \"format\": \"anthropic\",\n"
		"                   \"keys\": [{ \"key\": \"env:ANTHROPIC_API_KEY\", \"weight\": 2 }] }\n"
		"  },\n"
		"  \"models\": {\n"
		"    \"gpt-4.1\": { \"targets\": [{ \"provider\": \"openai\", \"model\": \"gpt-4.1\" }],\n"
		"                 \"price\": { \"input\": \"2.00\", \"output\": \"8.00\", \"cached_input\": \"0.50\" } },\n"
		"    \"claude-sonnet-4-5\": { \"aliases\": [\"claude-sonnet-4-5-20250929\"],\n"
		"                 \"targets\": [{ \"provider\": \"anthropic\", \"model\": \"claude-sonnet-4-5-20250929\" },\n"
		"                             { \"provider\": \"openai\", \"model\": \"gpt-4.1\", \"priority\": 2 }],\n"
		"                 \"price\": { \"input\": \"3.00\", \"output\": \"15.00\" } }\n"
		"  },\n"
		"  \"tiers\": { \"free\": { \"requests_per_minute\": 10, \"concurrent\": 1, \"requests_per_day\": 100 },\n"
		"             \"pro\":  { \"requests_per_minute\": 60, \"tokens_per_minute\": 200000, \"concurrent\": 3,\n"
		"                       \"requests_per_day\": 2000 } }\n"
		"}\n");
	if (c) {
		CHECK(strcmp(c->providers[1].keys[0].key, "sk-a") == 0);
		CHECK_EQ_INT(c->providers[1].keys[0].weight, 2);
		CHECK(c->providers[0].tls && strcmp(c->providers[0].host, "127.0.0.2") == 0);
		CHECK_EQ_INT(find(c, "claude-sonnet-4-5")->targets[1].priority, 2);
		sl_config_free(c);
	}
	unsetenv("OPENAI_API_KEY");
	unsetenv("ANTHROPIC_API_KEY");
}

TEST(small_error_buffer_and_no_buffer)
{
	char small[8];
	struct sl_config *c = NULL;
	const char *text = CFG(", \"limits\": { \"foo\": 1 }");
	int rc = sl_config_load_string(text, strlen(text), "t", &c, small, sizeof(small));
	CHECK_EQ_INT(rc, -EINVAL);
	CHECK(strcmp(small, "limits.") == 0);
	rc = sl_config_load_string(text, strlen(text), "t", &c, NULL, 0);
	CHECK_EQ_INT(rc, -EINVAL);
	CHECK(c == NULL);
	/* Text need not be NUL-terminated: only len bytes are read. */
	char buf[512];
	const char *ok = CFG();
	size_t len = strlen(ok);
	memcpy(buf, ok, len);
	memset(buf + len, '}', sizeof(buf) - len);
	rc = sl_config_load_string(buf, len, NULL, &c, err_buf, sizeof(err_buf));
	CHECK_EQ_INT(rc, 0);
	if (c)
		CHECK(strcmp(c->origin, "<string>") == 0);
	sl_config_free(c);
	sl_config_free(NULL);
}

int main(void)
{
	RUN(demo_loads);
	RUN(every_default);
	RUN(every_setting);
	RUN(comments_stripped_outside_strings);
	RUN(unterminated_comment_is_an_error);
	RUN(syntax_errors_name_line_and_column);
	RUN(top_level_errors);
	RUN(limit_errors);
	RUN(listener_errors);
	RUN(listener_parsing);
	RUN(provider_errors);
	RUN(base_url_parsing);
	RUN(env_keys);
	RUN(model_errors);
	RUN(price_parsing);
	RUN(price_formatting);
	RUN(find_model_ids_and_aliases);
	RUN(find_model_many_names);
	RUN(models_json);
	RUN(load_file);
	RUN(spec_sample);
	RUN(small_error_buffer_and_no_buffer);
	return test_summary();
}
