#include "../../src/router.c"
#include "test.h"

static int find(const char *body, char *out, size_t cap)
{
	size_t s, e;
	bool esc;
	int rc = sl_json_find_model(body, strlen(body), &s, &e, &esc);
	if (rc == 0) {
		snprintf(out, cap, "%.*s", (int)(e - s), body + s);
	}
	return rc;
}

TEST(routes_and_prefixes)
{
	struct sl_route_match m;
	CHECK_EQ_INT(sl_router_match("/v1/chat/completions", 20, &m), SL_ROUTE_CHAT_COMPLETIONS);
	CHECK(m.is_post && m.format == SL_FORMAT_OPENAI);
	CHECK_EQ_MEM(m.suffix.ptr, m.suffix.len, "/chat/completions");
	const char *t = "/openai/v1/messages?beta=true";
	CHECK_EQ_INT(sl_router_match(t, strlen(t), &m), SL_ROUTE_MESSAGES);
	CHECK(m.format == SL_FORMAT_ANTHROPIC);
	CHECK_EQ_MEM(m.query.ptr, m.query.len, "?beta=true");
	t = "/api/v1/messages/count_tokens";
	CHECK_EQ_INT(sl_router_match(t, strlen(t), &m), SL_ROUTE_COUNT_TOKENS);
	t = "/v1/models/claude-sonnet-4-5";
	CHECK_EQ_INT(sl_router_match(t, strlen(t), &m), SL_ROUTE_MODEL);
	CHECK_EQ_MEM(m.model_id.ptr, m.model_id.len, "claude-sonnet-4-5");
	CHECK_EQ_INT(sl_router_match("/v1/models", 10, &m), SL_ROUTE_MODELS);
	CHECK(!m.is_post);
	CHECK_EQ_INT(sl_router_match("/healthz", 8, &m), SL_ROUTE_HEALTH);
	CHECK_EQ_INT(sl_router_match("/v2/chat/completions", 20, &m), SL_ROUTE_NONE);
	CHECK_EQ_INT(sl_router_match("/v1/chat/completionsX", 21, &m), SL_ROUTE_NONE);
	t = "/v1/messages/nope";
	CHECK_EQ_INT(sl_router_match(t, strlen(t), &m), SL_ROUTE_NONE);
	CHECK(m.format == SL_FORMAT_ANTHROPIC);
	CHECK_EQ_INT(sl_router_match("/v1/models/a/b", 14, &m), SL_ROUTE_NONE);
}

TEST(model_scan_finds_top_level_only)
{
	char v[64];
	CHECK_EQ_INT(find("{\"model\":\"gpt-4o\"}", v, sizeof v), 0);
	CHECK(strcmp(v, "gpt-4o") == 0);
	CHECK_EQ_INT(find(" { \"messages\": [{\"model\":\"inner\", \"x\": \"}]\"}], \"model\" : \"m2\" } ",
	                  v, sizeof v), 0);
	CHECK(strcmp(v, "m2") == 0);
	CHECK_EQ_INT(find("{\"a\":{\"model\":\"x\"}}", v, sizeof v), -ENOENT);
	CHECK_EQ_INT(find("{}", v, sizeof v), -ENOENT);
	CHECK_EQ_INT(find("{\"model\":5}", v, sizeof v), -EINVAL);
	CHECK_EQ_INT(find("{\"model\":null,\"x\":1}", v, sizeof v), -EINVAL);
}

TEST(model_scan_rejects_malformed_and_duplicates)
{
	char v[64];
	CHECK_EQ_INT(find("", v, sizeof v), SL_ERROR);
	CHECK_EQ_INT(find("[]", v, sizeof v), SL_ERROR);
	CHECK_EQ_INT(find("{\"model\":\"a\"", v, sizeof v), SL_ERROR);
	CHECK_EQ_INT(find("{\"model\":\"a\"} x", v, sizeof v), SL_ERROR);
	CHECK_EQ_INT(find("{\"model\" \"a\"}", v, sizeof v), SL_ERROR);
	CHECK_EQ_INT(find("{\"model\":\"a\",}", v, sizeof v), SL_ERROR);
	CHECK_EQ_INT(find("{\"model\":\"a\",\"model\":\"b\"}", v, sizeof v), SL_ERROR);
	/* an escaped spelling of the key is the same key */
	CHECK_EQ_INT(find("{\"model\":\"a\",\"mod\\u0065l\":\"b\"}", v, sizeof v), SL_ERROR);
	CHECK_EQ_INT(find("{\"m\\u006fdel\":\"b\"}", v, sizeof v), 0);
	CHECK(strcmp(v, "b") == 0);
	CHECK_EQ_INT(find("{\"model\":\"a\nb\"}", v, sizeof v), SL_ERROR);
}

TEST(unescape)
{
	char out[32];
	CHECK_EQ_INT(sl_json_unescape_string("a\\u00e9\\n", 9, out, sizeof out), 4);
	CHECK(memcmp(out, "a\xc3\xa9\n", 4) == 0);
	CHECK_EQ_INT(sl_json_unescape_string("\\ud83d\\ude00", 12, out, sizeof out), 4);
	CHECK(memcmp(out, "\xf0\x9f\x98\x80", 4) == 0);
	CHECK_EQ_INT(sl_json_unescape_string("\\ud83d", 6, out, sizeof out), SL_ERROR);
	CHECK_EQ_INT(sl_json_unescape_string("\\ude00", 6, out, sizeof out), SL_ERROR);
	CHECK_EQ_INT(sl_json_unescape_string("\\x", 2, out, sizeof out), SL_ERROR);
	CHECK_EQ_INT(sl_json_unescape_string("abcdef", 6, out, 3), SL_ERROR);
}

int main(void)
{
	RUN(routes_and_prefixes);
	RUN(model_scan_finds_top_level_only);
	RUN(model_scan_rejects_malformed_and_duplicates);
	RUN(unescape);
	return test_summary();
}
