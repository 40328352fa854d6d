/* Unit tests for the JSON reader/writer, the arena and the output buffer. */
#include "../../src/arena.c"
#include "../../src/buf.c"
#include "../../src/json.c"
#include "test.h"

#include <math.h>

/* --- helpers ---------------------------------------------------------------- */

static struct sl_arena test_arena;

static void arena_fresh(void)
{
	sl_arena_release(&test_arena);
	sl_arena_init(&test_arena, NULL, 0);
}

static int parse_n(const char *text, size_t len, struct sl_json **out, struct sl_json_error *err)
{
	arena_fresh();
	return sl_json_parse(&test_arena, text, len, NULL, out, err);
}

static int parse(const char *text, struct sl_json **out)
{
	struct sl_json_error err;
	return parse_n(text, strlen(text), out, &err);
}

/* write_str serialises v with sl_json_serialize and checks the length
 * functions agree; returns the text (arena) or NULL. */
static char *write_str(const struct sl_json *v, size_t *out_len)
{
	size_t len = 0;
	char *s = sl_json_serialize(&test_arena, v, &len);
	if (!s || len != sl_json_serialized_len(v) || strlen(s) > len)
		return NULL;
	*out_len = len;
	return s;
}

/* --- grammar ------------------------------------------------------------------ */

struct grammar_case {
	const char *name;
	const char *text;
	size_t len; /* 0: strlen(text) */
};

static const struct grammar_case valid_cases[] = {
	{ "y_empty_array", "[]", 0 },
	{ "y_empty_object", "{}", 0 },
	{ "y_ws_around", " \t\r\n[ 1 , 2 ]\n ", 0 },
	{ "y_nested", "[[[]],{\"a\":[{}]}]", 0 },
	{ "y_string_empty", "\"\"", 0 },
	{ "y_top_number", "42", 0 },
	{ "y_top_true", "true", 0 },
	{ "y_top_false", "false", 0 },
	{ "y_top_null", "null", 0 },
	{ "y_top_string", "\"x\"", 0 },
	{ "y_number_zero", "0", 0 },
	{ "y_number_minus_zero", "-0", 0 },
	{ "y_number_frac", "0.5", 0 },
	{ "y_number_exp", "1e5", 0 },
	{ "y_number_exp_upper", "1E5", 0 },
	{ "y_number_exp_plus", "1e+5", 0 },
	{ "y_number_exp_minus", "1.5e-5", 0 },
	{ "y_number_exp_zero_digits", "1e00", 0 },
	{ "y_number_huge_exp", "1e400", 0 },
	{ "y_number_big_int", "12345678901234567890123", 0 },
	{ "y_number_neg_frac", "-0.0e-0", 0 },
	{ "y_object_dup_keys", "{\"a\":1,\"a\":2}", 0 },
	{ "y_object_empty_key", "{\"\":0}", 0 },
	{ "y_string_escapes", "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", 0 },
	{ "y_string_u_escape", "\"\\u00e9\\u4E2D\"", 0 },
	{ "y_string_surrogate_pair", "\"\\ud83d\\ude00\"", 0 },
	{ "y_string_u0000", "\"a\\u0000b\"", 0 },
	{ "y_string_utf8_2", "\"\xc3\xa9\"", 0 },
	{ "y_string_utf8_3", "\"\xe4\xb8\xad\"", 0 },
	{ "y_string_utf8_4", "\"\xf0\x9f\x98\x80\"", 0 },
	{ "y_string_utf8_max", "\"\xf4\x8f\xbf\xbf\"", 0 },
	{ "y_string_utf8_e0_min", "\"\xe0\xa0\x80\"", 0 },
	{ "y_string_utf8_ed_max", "\"\xed\x9f\xbf\"", 0 },
	{ "y_string_del", "\"\x7f\"", 0 },
	{ "y_string_long_mixed", "\"0123456789abcdef\\n0123456789abcdef\xc3\xa9 0123456789abcdef\"", 0 },
	{ "y_array_of_literals", "[true,false,null]", 0 },
	{ "y_number_exp_neg_zero", "[1e-0]", 0 },
	{ "y_number_minus_exp", "-1e+9", 0 },
	{ "y_number_int_exp_upper_minus", "1E-1", 0 },
	{ "y_object_nul_key", "{\"\\u0000\":1}", 0 },
	{ "y_string_u2028", "[\"\\u2028\\u2029\"]", 0 },
	{ "y_string_escaped_backslash_before_quote", "[\"\\\\\"]", 0 },
	{ "y_string_uppercase_hex", "\"\\uDBFF\\uDFFF\\u00E9\"", 0 },
	{ "y_object_nested_same_key", "{\"a\":{\"a\":{\"a\":[]}}}", 0 },
	{ "y_array_nested_ws", "[ [ ] , { } ]", 0 },
	{ "y_deep_128", NULL, 0 },
};

static const struct grammar_case invalid_cases[] = {
	{ "n_empty", "", 0 },
	{ "n_ws_only", "  \n", 0 },
	{ "n_trailing_comma_array", "[1,]", 0 },
	{ "n_trailing_comma_object", "{\"a\":1,}", 0 },
	{ "n_leading_comma", "[,1]", 0 },
	{ "n_double_comma", "[1,,2]", 0 },
	{ "n_unclosed_array", "[1", 0 },
	{ "n_unclosed_array_comma", "[1,", 0 },
	{ "n_unclosed_object", "{\"a\":1", 0 },
	{ "n_unclosed_object_colon", "{\"a\":", 0 },
	{ "n_unclosed_object_key", "{\"a\"", 0 },
	{ "n_object_no_colon", "{\"a\" 1}", 0 },
	{ "n_object_key_unquoted", "{a:1}", 0 },
	{ "n_object_key_number", "{1:1}", 0 },
	{ "n_object_single_quote", "{'a':1}", 0 },
	{ "n_mismatched", "[}", 0 },
	{ "n_mismatched2", "{]", 0 },
	{ "n_extra_close", "[]]", 0 },
	{ "n_two_values", "1 2", 0 },
	{ "n_trailing_garbage", "{}x", 0 },
	{ "n_trailing_nul", "[]\0", 3 },
	{ "n_leading_nul", "\0[]", 3 },
	{ "n_number_leading_zero", "01", 0 },
	{ "n_number_leading_zero_neg", "-01", 0 },
	{ "n_number_plus", "+1", 0 },
	{ "n_number_minus_only", "-", 0 },
	{ "n_number_dot_start", ".5", 0 },
	{ "n_number_dot_end", "1.", 0 },
	{ "n_number_dot_exp", "1.e5", 0 },
	{ "n_number_exp_empty", "1e", 0 },
	{ "n_number_exp_sign_only", "1e+", 0 },
	{ "n_number_hex", "0x10", 0 },
	{ "n_number_nan", "NaN", 0 },
	{ "n_number_inf", "Infinity", 0 },
	{ "n_number_neg_inf", "-Infinity", 0 },
	{ "n_number_in_array_leading_zero", "[00]", 0 },
	{ "n_number_minus_space", "- 1", 0 },
	{ "n_literal_true_prefix", "tru", 0 },
	{ "n_literal_true_caps", "True", 0 },
	{ "n_literal_nul", "nul", 0 },
	{ "n_literal_truex", "truex", 0 },
	{ "n_string_unterminated", "\"abc", 0 },
	{ "n_string_unterminated_escape", "\"abc\\", 0 },
	{ "n_string_unterminated_long", "\"0123456789abcdef0123456789abcdef", 0 },
	{ "n_string_single_quote", "'a'", 0 },
	{ "n_string_bad_escape", "\"\\x\"", 0 },
	{ "n_string_escape_upper_u", "\"\\U0041\"", 0 },
	{ "n_string_short_u", "\"\\u12\"", 0 },
	{ "n_string_bad_hex", "\"\\u12G4\"", 0 },
	{ "n_string_lone_high", "\"\\ud800\"", 0 },
	{ "n_string_lone_high_end", "\"\\ud800", 0 },
	{ "n_string_lone_low", "\"\\udc00\"", 0 },
	{ "n_string_high_then_char", "\"\\ud800x\"", 0 },
	{ "n_string_high_high", "\"\\ud800\\ud800\"", 0 },
	{ "n_string_high_then_escape", "\"\\ud800\\n\"", 0 },
	{ "n_string_raw_newline", "\"a\nb\"", 0 },
	{ "n_string_raw_tab", "\"a\tb\"", 0 },
	{ "n_string_raw_nul", "\"a\0b\"", 5 },
	{ "n_string_raw_ctl_long", "\"0123456789abcdef0123\x01" "456789abcdef\"", 0 },
	{ "n_utf8_continuation", "\"\x80\"", 0 },
	{ "n_utf8_overlong_c0", "\"\xc0\xaf\"", 0 },
	{ "n_utf8_overlong_c1", "\"\xc1\xbf\"", 0 },
	{ "n_utf8_overlong_e0", "\"\xe0\x80\xaf\"", 0 },
	{ "n_utf8_overlong_f0", "\"\xf0\x80\x80\xaf\"", 0 },
	{ "n_utf8_surrogate_ed_a0", "\"\xed\xa0\x80\"", 0 },
	{ "n_utf8_surrogate_ed_bf", "\"\xed\xbf\xbf\"", 0 },
	{ "n_utf8_above_max_f4", "\"\xf4\x90\x80\x80\"", 0 },
	{ "n_utf8_f5", "\"\xf5\x80\x80\x80\"", 0 },
	{ "n_utf8_ff", "\"\xff\"", 0 },
	{ "n_utf8_truncated_2", "\"\xc3\"", 0 },
	{ "n_utf8_truncated_3", "\"\xe4\xb8\"", 0 },
	{ "n_utf8_truncated_4_end", "\"\xf0\x9f\x98", 0 },
	{ "n_utf8_bad_cont_long", "\"0123456789abcdef\xe4\x28\xad 0123456789abcdef\"", 0 },
	{ "n_utf8_outside_string", "[\xc3\xa9]", 0 },
	{ "n_bom", "\xef\xbb\xbf[]", 0 },
	{ "n_comment", "[1 /* c */]", 0 },
	{ "n_ws_formfeed", "[\f]", 0 },
	{ "n_ws_vtab", "[\v1]", 0 },
	{ "n_array_missing_comma", "[1 true]", 0 },
	{ "n_object_missing_comma", "{\"a\":1 \"b\":2}", 0 },
	{ "n_object_double_colon", "{\"a\"::1}", 0 },
	{ "n_object_comma_only", "{,}", 0 },
	{ "n_object_missing_value", "{\"a\":}", 0 },
	{ "n_array_comma_only", "[,]", 0 },
	{ "n_number_minus_in_array", "[-]", 0 },
	{ "n_number_double_minus", "[--1]", 0 },
	{ "n_number_two_dots", "[1.2.3]", 0 },
	{ "n_number_frac_exp", "[1e1.5]", 0 },
	{ "n_number_zero_exp_empty", "[0e]", 0 },
	{ "n_number_exp_double_sign", "[1e+-1]", 0 },
	{ "n_number_trailing_letter", "[1a]", 0 },
	{ "n_string_escaped_quote_unterminated", "[\"\\\"]", 0 },
	{ "n_string_short_u_at_end", "\"\\u00\"", 0 },
	{ "n_string_escape_space", "\"\\ \"", 0 },
	{ "n_string_surrogate_then_short_u", "\"\\ud800\\u12\"", 0 },
	{ "n_utf8_cjk_truncated_before_quote", "\"\xe4\xb8\"", 0 },
	{ "n_utf8_lead_then_ascii", "\"\xc3" "A\"", 0 },
	{ "n_literal_null_upper", "NULL", 0 },
	{ "n_literal_false_prefix_eof", "fals", 0 },
	{ "n_array_unclosed_nested", "[[]", 0 },
	{ "n_object_unclosed_nested", "{\"a\":{}", 0 },
	{ "n_close_only", "]", 0 },
	{ "n_colon_only", ":", 0 },
	{ "n_deep_129", NULL, 0 },
};

static char *nested_arrays(size_t depth)
{
	char *s = sl_arena_alloc(&test_arena, depth * 2 + 1);
	memset(s, '[', depth);
	memset(s + depth, ']', depth);
	s[depth * 2] = '\0';
	return s;
}

TEST(grammar_valid)
{
	for (size_t i = 0; i < SL_ARRAY_LEN(valid_cases); i++) {
		const struct grammar_case *c = &valid_cases[i];
		struct sl_json *v;
		struct sl_json_error err;
		const char *text = c->text;
		arena_fresh();
		if (!text)
			text = nested_arrays(128);
		size_t len = c->len ? c->len : strlen(text);
		int rc = sl_json_parse(&test_arena, text, len, NULL, &v, &err);
		if (rc != 0)
			FAIL_AT("grammar_valid", "%s rejected: %s at %zu", c->name, err.message,
			        err.offset);
	}
}

TEST(grammar_invalid)
{
	for (size_t i = 0; i < SL_ARRAY_LEN(invalid_cases); i++) {
		const struct grammar_case *c = &invalid_cases[i];
		struct sl_json *v = (struct sl_json *)1;
		struct sl_json_error err = { 0 };
		const char *text = c->text;
		arena_fresh();
		if (!text)
			text = nested_arrays(129);
		size_t len = c->len ? c->len : strlen(text);
		int rc = sl_json_parse(&test_arena, text, len, NULL, &v, &err);
		if (rc != SL_ERROR || v != NULL || !err.message || err.offset > len)
			FAIL_AT("grammar_invalid", "%s accepted", c->name);
	}
}

TEST(error_messages_and_offsets)
{
	struct sl_json *v;
	struct sl_json_error err;
	CHECK_EQ_INT(parse_n("[1,]", 4, &v, &err), SL_ERROR);
	CHECK_EQ_INT(err.offset, 3);
	CHECK_EQ_INT(parse_n("{\"a\":\"\xff\"}", 9, &v, &err), SL_ERROR);
	CHECK(strcmp(err.message, "invalid UTF-8 in string") == 0);
	CHECK_EQ_INT(err.offset, 6);
	CHECK_EQ_INT(parse_n("\"\\udc00\"", 8, &v, &err), SL_ERROR);
	CHECK(strstr(err.message, "surrogate") != NULL);
	CHECK_EQ_INT(parse_n("\"a\x01\"", 4, &v, &err), SL_ERROR);
	CHECK(strstr(err.message, "control") != NULL);
	CHECK_EQ_INT(err.offset, 2);
	CHECK_EQ_INT(parse_n("[] x", 4, &v, &err), SL_ERROR);
	CHECK_EQ_INT(err.offset, 3);
	CHECK_EQ_INT(parse_n(NULL, 0, &v, &err), SL_ERROR);
	CHECK_EQ_INT(parse_n("[1]", 3, &v, &err), 0);
	CHECK(err.message == NULL);
}

/* --- numbers ------------------------------------------------------------------ */

TEST(numbers_kept_exactly)
{
	static const char *const texts[] = {
		"1.0", "-0", "1e400", "12345678901234567890123", "0.1000", "-1.5E+10", "1e-400",
		"3.141592653589793238462643383279",
	};
	for (size_t i = 0; i < SL_ARRAY_LEN(texts); i++) {
		struct sl_json *v;
		CHECK_EQ_INT(parse(texts[i], &v), 0);
		if (!v)
			continue;
		CHECK_EQ_INT(v->type, SL_JSON_NUMBER);
		CHECK_EQ_MEM(v->u.str, v->len, texts[i]);
		size_t len;
		char *out = write_str(v, &len);
		CHECK(out != NULL);
		if (out)
			CHECK_EQ_MEM(out, len, texts[i]);
	}
	struct sl_json *v;
	CHECK_EQ_INT(parse("[1.0,-0,1e400]", &v), 0);
	size_t len;
	char *out = write_str(v, &len);
	CHECK_EQ_MEM(out, len, "[1.0,-0,1e400]");
}

TEST(get_int_range)
{
	struct sl_json *v;
	CHECK_EQ_INT(parse("{\"a\":9223372036854775807,\"b\":-9223372036854775808,"
	                   "\"c\":9223372036854775808,\"d\":-9223372036854775809,\"e\":1.0,"
	                   "\"f\":1e2,\"g\":-0,\"h\":\"5\",\"i\":0,\"j\":-12}",
	                   &v),
	             0);
	int64_t n = 77;
	CHECK(sl_json_get_int(v, "a", &n) && n == INT64_MAX);
	CHECK(sl_json_get_int(v, "b", &n) && n == INT64_MIN);
	CHECK(!sl_json_get_int(v, "c", &n));
	CHECK(!sl_json_get_int(v, "d", &n));
	CHECK(!sl_json_get_int(v, "e", &n));
	CHECK(!sl_json_get_int(v, "f", &n));
	CHECK(sl_json_get_int(v, "g", &n) && n == 0);
	CHECK(!sl_json_get_int(v, "h", &n));
	CHECK(sl_json_get_int(v, "i", &n) && n == 0);
	CHECK(sl_json_get_int(v, "j", &n) && n == -12);
	CHECK(!sl_json_get_int(v, "missing", &n));
	CHECK(!sl_json_get_int(NULL, "a", &n));
}

/* --- strings ------------------------------------------------------------------ */

static void check_string(const char *name, const char *json, const char *want, size_t want_len)
{
	struct sl_json *v;
	struct sl_json_error err;
	if (parse_n(json, strlen(json), &v, &err) != 0) {
		FAIL_AT(name, "rejected: %s", err.message);
		return;
	}
	if (v->type != SL_JSON_STRING || v->len != want_len || memcmp(v->u.str, want, want_len) != 0 ||
	    v->u.str[want_len] != '\0')
		FAIL_AT(name, "decoded to \"%.*s\" (%u bytes)", (int)v->len, v->u.str, v->len);
}

TEST(strings_decode)
{
	check_string("strings_decode", "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t", 8);
	check_string("strings_decode", "\"\\u0041\\u00e9\\u4e2d\"", "A\xc3\xa9\xe4\xb8\xad", 6);
	check_string("strings_decode", "\"\\uD83D\\uDE00\"", "\xf0\x9f\x98\x80", 4);
	check_string("strings_decode", "\"\\udbff\\udfff\"", "\xf4\x8f\xbf\xbf", 4);
	check_string("strings_decode", "\"a\\u0000b\"", "a\0b", 3);
	check_string("strings_decode", "\"\xe2\x82\xac and \xf0\x9f\x98\x80\"",
	             "\xe2\x82\xac and \xf0\x9f\x98\x80", 12);
	/* Escapes and UTF-8 at every position relative to a 16-byte chunk. */
	for (int pad = 0; pad < 40; pad++) {
		char json[128], want[128];
		memset(json, 'x', sizeof(json));
		memset(want, 'x', sizeof(want));
		json[0] = '"';
		memcpy(json + 1 + pad, "\\n\xc3\xa9\\u00e9\\\"q\"", 15);
		memcpy(want + pad, "\n\xc3\xa9\xc3\xa9\"q", 7);
		json[1 + pad + 15] = '\0';
		check_string("strings_decode_chunked", json, want, (size_t)pad + 7);
	}
}

TEST(strings_long)
{
	/* A string longer than an arena block: the tail moves to a new block. */
	size_t n = 300000;
	char *json = malloc(n + 3);
	json[0] = '"';
	for (size_t i = 0; i < n; i++)
		json[1 + i] = (char)('a' + i % 26);
	json[n + 1] = '"';
	json[n + 2] = '\0';
	struct sl_json *v;
	CHECK_EQ_INT(parse(json, &v), 0);
	CHECK(v && v->len == n && memcmp(v->u.str, json + 1, n) == 0 && v->u.str[n] == '\0');
	size_t len;
	char *out = write_str(v, &len);
	CHECK(out && len == n + 2 && memcmp(out, json, n + 2) == 0);
	free(json);
}

TEST(strings_escape_writer)
{
	struct sl_json *v = sl_json_str(&test_arena, "a\"b\\c\b\f\n\r\t\x01\x1f\x7f/\xc3\xa9", 16);
	size_t len;
	char *out = write_str(v, &len);
	CHECK_EQ_MEM(out, len, "\"a\\\"b\\\\c\\b\\f\\n\\r\\t\\u0001\\u001f\x7f/\xc3\xa9\"");
	CHECK_EQ_INT(sl_json_escaped_len("\0", 1), 6);
	char buf[8];
	CHECK_EQ_INT(sl_json_escape("\0", 1, buf), 6);
	CHECK_EQ_MEM(buf, 6, "\\u0000");
	/* Long strings take the 16-byte path: every special byte at every offset. */
	for (int c = 0; c < 0x60; c++) {
		for (int pos = 0; pos < 40; pos++) {
			char s[48], out2[48 * 6];
			memset(s, 'z', sizeof(s));
			s[pos] = (char)c;
			size_t want = sl_json_escaped_len(s, sizeof(s));
			size_t got = sl_json_escape(s, sizeof(s), out2);
			CHECK_EQ_INT(got, want);
			CHECK_EQ_INT(got, sizeof(s) + escape_extra[c]);
		}
	}
}

/* --- limits and arena ----------------------------------------------------------- */

TEST(depth_limit)
{
	struct sl_json *v;
	struct sl_json_error err;
	struct sl_json_limits lim = { .depth_max = 3 };
	arena_fresh();
	CHECK_EQ_INT(sl_json_parse(&test_arena, "[[[1]]]", 7, &lim, &v, &err), 0);
	CHECK_EQ_INT(sl_json_parse(&test_arena, "[[[[1]]]]", 9, &lim, &v, &err), SL_ERROR);
	CHECK(strstr(err.message, "deep") != NULL);
	CHECK_EQ_INT(sl_json_parse(&test_arena, "{\"a\":{\"b\":[{}]}}", 16, &lim, &v, &err),
	             SL_ERROR);
	CHECK_EQ_INT(sl_json_parse(&test_arena, "{\"a\":{\"b\":[1]}}", 15, &lim, &v, &err), 0);
	/* The default is 128; a very deep input fails cleanly. */
	size_t deep = 100000;
	char *s = malloc(deep);
	memset(s, '[', deep);
	CHECK_EQ_INT(sl_json_parse(&test_arena, s, deep, NULL, &v, &err), SL_ERROR);
	CHECK_EQ_INT(err.offset, 128);
	/* A requested depth over the hard cap is capped, not a stack overflow. */
	lim.depth_max = UINT32_MAX;
	CHECK_EQ_INT(sl_json_parse(&test_arena, s, deep, &lim, &v, &err), SL_ERROR);
	free(s);
}

TEST(size_limit)
{
	struct sl_json *v;
	struct sl_json_error err;
	struct sl_json_limits lim = { .text_len_max = 8 };
	arena_fresh();
	CHECK_EQ_INT(sl_json_parse(&test_arena, "[1,2,3]", 7, &lim, &v, &err), 0);
	CHECK_EQ_INT(sl_json_parse(&test_arena, "[1,2,3,4]", 9, &lim, &v, &err), SL_ERROR);
	CHECK(strstr(err.message, "too large") != NULL);
	CHECK(v == NULL);
}

static const char sample_request[] =
	"{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"system\",\"content\":\"You are "
	"\\\"helpful\\\".\\nBe brief.\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\","
	"\"text\":\"caf\xc3\xa9 \\u2603 \\ud83d\\ude00\"}]}],\"temperature\":0.70,"
	"\"max_tokens\":1024,\"stream\":true,\"tools\":[{\"type\":\"function\",\"function\":"
	"{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\",\"properties\":"
	"{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"]}}}],\"stop\":null}";

TEST(arena_exhaustion_is_an_error)
{
	/* Every limit from tiny to enough: an error or success, never a crash,
	 * and failed is set exactly when the arena ran out. */
	struct sl_bufpool pool;
	CHECK_EQ_INT(sl_bufpool_init(&pool, 64 << 20), 0);
	for (int with_pool = 0; with_pool < 2; with_pool++) {
		bool saw_fail = false, saw_ok = false;
		for (size_t limit = 16; limit < 70000; limit = limit * 5 / 4 + 8) {
			struct sl_arena a;
			sl_arena_init(&a, with_pool ? &pool : NULL, limit);
			struct sl_json *v;
			struct sl_json_error err;
			int rc = sl_json_parse(&a, sample_request, sizeof(sample_request) - 1, NULL,
			                       &v, &err);
			if (rc == 0) {
				saw_ok = true;
				CHECK(!a.failed);
				CHECK(sl_json_serialized_len(v) > 0);
			} else {
				saw_fail = true;
				CHECK(a.failed);
				CHECK(strcmp(err.message, "arena exhausted") == 0);
			}
			CHECK(a.used_bytes <= limit);
			sl_arena_release(&a);
		}
		CHECK(saw_fail && saw_ok);
	}
	CHECK_EQ_INT(pool.live_bytes, 0);
	sl_bufpool_destroy(&pool);
}

TEST(arena_blocks_and_alignment)
{
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	CHECK(a.used_bytes == 0 && a.blocks == NULL);
	char *p = sl_arena_alloc(&a, 1);
	char *q = sl_arena_alloc(&a, 3);
	CHECK(p && q && ((uintptr_t)p & 7) == 0 && ((uintptr_t)q & 7) == 0 && q == p + 8);
	CHECK_EQ_INT(a.used_bytes, 16 << 10);
	/* A large allocation gets its own block and the current one stays. */
	char *big = sl_arena_alloc(&a, 3 << 20);
	CHECK(big != NULL && ((uintptr_t)big & 7) == 0);
	memset(big, 1, 3 << 20);
	char *r = sl_arena_alloc(&a, 8);
	CHECK(r == q + 8);
	/* Regular blocks double. */
	for (int i = 0; i < 100; i++)
		CHECK(sl_arena_alloc(&a, 1000) != NULL);
	CHECK(a.blocks->cap == (32 << 10) || a.blocks->cap == (64 << 10) ||
	      a.blocks->cap == (128 << 10));
	char *m = sl_arena_memdup(&a, "hello", 5);
	CHECK(m && strcmp(m, "hello") == 0);
	sl_arena_release(&a);
	CHECK(a.blocks == NULL && a.used_bytes == 0 && !a.failed);
	sl_arena_release(&a);
	/* Limit: failed set, and later small allocations may still fit. */
	sl_arena_init(&a, NULL, 4096);
	CHECK(sl_arena_alloc(&a, 100) != NULL);
	CHECK(sl_arena_alloc(&a, 8192) == NULL);
	CHECK(a.failed);
	CHECK(a.used_bytes <= 4096);
	sl_arena_release(&a);
}

TEST(arena_pool_backed)
{
	struct sl_bufpool pool;
	CHECK_EQ_INT(sl_bufpool_init(&pool, 8 << 20), 0);
	struct sl_arena a;
	sl_arena_init(&a, &pool, 6 << 20);
	size_t total = 0;
	while (sl_arena_alloc(&a, 5000))
		total += 5000;
	CHECK(a.failed && total > (4 << 20) && a.used_bytes <= (6 << 20));
	CHECK_EQ_INT(pool.live_bytes, a.used_bytes);
	sl_arena_release(&a);
	CHECK_EQ_INT(pool.live_bytes, 0);
	/* The pool running dry is the same clean failure. */
	sl_arena_init(&a, &pool, 0);
	CHECK(sl_arena_alloc(&a, 16 << 20) == NULL && a.failed);
	sl_arena_release(&a);
	sl_bufpool_destroy(&pool);
}

TEST(arena_tail)
{
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	char *t = sl_arena_tail(&a, 0, 10);
	CHECK(t != NULL && a.end - a.cur >= 10);
	memcpy(t, "0123456789", 10);
	char *t2 = sl_arena_tail(&a, 10, 100000);
	CHECK(t2 != NULL && memcmp(t2, "0123456789", 10) == 0 && a.end - a.cur >= 100000);
	sl_arena_commit(&a, 11);
	char *n = sl_arena_alloc(&a, 8);
	CHECK(n == t2 + 16);
	sl_arena_release(&a);
}

/* --- buf ------------------------------------------------------------------------ */

TEST(buf_grow_take_release)
{
	struct sl_bufpool pool;
	CHECK_EQ_INT(sl_bufpool_init(&pool, 8 << 20), 0);
	for (int with_pool = 0; with_pool < 2; with_pool++) {
		struct sl_buf b;
		sl_buf_init(&b, with_pool ? &pool : NULL, 0);
		size_t len, cap;
		CHECK(sl_buf_take(&b, &len, &cap) == NULL && len == 0);
		for (int i = 0; i < 10000; i++)
			CHECK(SL_BUF_LIT(&b, "0123456789"));
		CHECK(b.len == 100000 && b.cap >= 100000 && !b.failed);
		CHECK(memcmp(b.p + 99990, "0123456789", 10) == 0);
		if (with_pool)
			CHECK_EQ_INT(pool.live_bytes, b.cap);
		char *p = sl_buf_take(&b, &len, &cap);
		CHECK(p && len == 100000 && b.p == NULL && b.len == 0);
		if (with_pool)
			sl_bufpool_put(&pool, p, cap);
		else
			free(p);
		CHECK(sl_buf_append(&b, "x", 1));
		sl_buf_release(&b);
		sl_buf_release(&b);
		CHECK(b.p == NULL);
	}
	CHECK_EQ_INT(pool.live_bytes, 0);
	sl_bufpool_destroy(&pool);
}

TEST(buf_limit_is_sticky)
{
	struct sl_buf b;
	sl_buf_init(&b, NULL, 10000);
	CHECK(sl_buf_reserve(&b, 9000));
	CHECK(sl_buf_append(&b, "abc", 3));
	char big[20000] = { 0 };
	CHECK(!sl_buf_append(&b, big, sizeof(big)));
	CHECK(b.failed);
	CHECK(!sl_buf_append(&b, "x", 1)); /* sticky: contents stay a prefix */
	CHECK_EQ_INT(b.len, 3);
	sl_buf_release(&b);
	CHECK(!b.failed);
	/* Pool exhaustion fails the same way. */
	struct sl_bufpool pool;
	CHECK_EQ_INT(sl_bufpool_init(&pool, 64 << 10), 0);
	sl_buf_init(&b, &pool, 0);
	CHECK(!sl_buf_reserve(&b, 1 << 20) && b.failed);
	sl_buf_release(&b);
	sl_bufpool_destroy(&pool);
}

/* --- round trip --------------------------------------------------------------- */

static const char *const roundtrip_texts[] = {
	"{}",
	"[]",
	"{\"a\":[1,2,{\"b\":null}],\"c\":\"d\\ne\",\"f\":true,\"g\":false}",
	"\"\\u001f\\u0000\\\"\\\\/\\b\\f\\n\\r\\t\"",
	"[-0,1.0,1e400,12345678901234567890123,-1.25E-7]",
	"{\"a\":1,\"a\":2,\"a\":3}",
	"\"\xe2\x82\xac\xf0\x9f\x98\x80\x7f\"",
	"[[[[[[[[[[]]]]]]]]]]",
};

TEST(roundtrip_fixed_point)
{
	for (size_t i = 0; i < SL_ARRAY_LEN(roundtrip_texts); i++) {
		struct sl_json *v, *w;
		const char *t = roundtrip_texts[i];
		CHECK_EQ_INT(parse(t, &v), 0);
		size_t len1, len2;
		char *s1 = write_str(v, &len1);
		struct sl_json_error err;
		CHECK_EQ_INT(sl_json_parse(&test_arena, s1, len1, NULL, &w, &err), 0);
		char *s2 = write_str(w, &len2);
		CHECK(s1 && s2 && len1 == len2 && memcmp(s1, s2, len1) == 0);
		/* Compact input is written back unchanged. */
		CHECK_EQ_MEM(s1, len1, t);
	}
	/* Whitespace goes; \/ and \u escapes of printable text are decoded. */
	struct sl_json *v;
	CHECK_EQ_INT(parse(" { \"a\" : [ 1 , \"\\/\\u0041\\ud83d\\ude00\" ] } ", &v), 0);
	size_t len;
	char *s = write_str(v, &len);
	CHECK_EQ_MEM(s, len, "{\"a\":[1,\"/A\xf0\x9f\x98\x80\"]}");
	CHECK_EQ_INT(parse(sample_request, &v), 0);
	s = write_str(v, &len);
	CHECK(s != NULL);
	struct sl_json *w;
	struct sl_json_error err;
	CHECK_EQ_INT(sl_json_parse(&test_arena, s, len, NULL, &w, &err), 0);
	size_t len2;
	char *s2 = write_str(w, &len2);
	CHECK(s2 && len == len2 && memcmp(s, s2, len) == 0);
}

/* --- accessors --------------------------------------------------------------- */

TEST(get_and_typed_accessors)
{
	struct sl_json *v;
	CHECK_EQ_INT(parse("{\"s\":\"str\",\"t\":true,\"f\":false,\"n\":null,\"a\":[1],"
	                   "\"d\":\"first\",\"d\":\"last\",\"x\\u0000y\":1}",
	                   &v),
	             0);
	uint32_t len = 0;
	const char *s = sl_json_get_str(v, "s", &len);
	CHECK(s && len == 3 && strcmp(s, "str") == 0);
	CHECK(sl_json_get_str(v, "t", &len) == NULL);
	CHECK(sl_json_get_str(v, "missing", &len) == NULL);
	CHECK(sl_json_get_str(v, "s", NULL) != NULL);
	CHECK(sl_json_get_bool(v, "t", false) == true);
	CHECK(sl_json_get_bool(v, "f", true) == false);
	CHECK(sl_json_get_bool(v, "n", true) == true);
	CHECK(sl_json_get_bool(v, "missing", false) == false);
	CHECK(sl_json_get(v, "a")->type == SL_JSON_ARRAY);
	CHECK(sl_json_get(v, "n")->type == SL_JSON_NULL);
	CHECK(sl_json_is_str(sl_json_get(v, "d"), "last"));
	CHECK(!sl_json_is_str(sl_json_get(v, "d"), "first"));
	CHECK(!sl_json_is_str(sl_json_get(v, "d"), "las"));
	CHECK(!sl_json_is_str(sl_json_get(v, "t"), "true"));
	CHECK(!sl_json_is_str(NULL, ""));
	CHECK(sl_json_get(v, "x") == NULL);
	CHECK(sl_json_get(sl_json_get(v, "a"), "s") == NULL);
	CHECK(sl_json_get(NULL, "s") == NULL);
	CHECK_EQ_INT(v->len, 8); /* duplicates kept in order */
	CHECK(sl_json_is_str(v->u.members[5].value, "first"));
}

/* --- builder ------------------------------------------------------------------ */

TEST(builder)
{
	arena_fresh();
	struct sl_arena *a = &test_arena;
	struct sl_json *o = sl_json_object(a);
	CHECK(sl_json_set(a, o, "model", sl_json_str(a, "claude", 6)));
	CHECK(sl_json_set(a, o, "n", sl_json_int(a, -42)));
	CHECK(sl_json_set(a, o, "min", sl_json_int(a, INT64_MIN)));
	CHECK(sl_json_set(a, o, "max", sl_json_int(a, INT64_MAX)));
	CHECK(sl_json_set(a, o, "zero", sl_json_int(a, 0)));
	CHECK(sl_json_set(a, o, "pi", sl_json_number_text(a, "3.14", 4)));
	CHECK(sl_json_set(a, o, "ok", sl_json_bool(a, true)));
	CHECK(sl_json_set(a, o, "no", sl_json_bool(a, false)));
	CHECK(sl_json_set(a, o, "nil", sl_json_null(a)));
	CHECK(sl_json_set(a, o, "ref", sl_json_str_ref(a, "q\"uote", 6)));
	CHECK(sl_json_set(a, o, "raw", sl_json_raw(a, "{\"x\": [1, 2]}", 13)));
	CHECK(sl_json_set(a, o, "rawref", sl_json_raw_ref(a, "[]", 2)));
	struct sl_json *arr = sl_json_array(a);
	for (int i = 0; i < 100; i++)
		CHECK(sl_json_push(a, arr, sl_json_int(a, i)));
	CHECK(arr->len == 100 && arr->cap >= 100 && arr->cap <= 256);
	CHECK(sl_json_set(a, o, "arr", arr));
	CHECK(sl_json_set(a, o, "empty", sl_json_array(a)));
	size_t len;
	char *s = write_str(o, &len);
	char want[2048];
	int n = snprintf(want, sizeof(want),
	                 "{\"model\":\"claude\",\"n\":-42,\"min\":-9223372036854775808,"
	                 "\"max\":9223372036854775807,\"zero\":0,\"pi\":3.14,\"ok\":true,"
	                 "\"no\":false,\"nil\":null,\"ref\":\"q\\\"uote\",\"raw\":{\"x\": [1, 2]},"
	                 "\"rawref\":[],\"arr\":[");
	for (int i = 0; i < 100; i++)
		n += snprintf(want + n, sizeof(want) - (size_t)n, "%s%d", i ? "," : "", i);
	snprintf(want + n, sizeof(want) - (size_t)n, "],\"empty\":[]}");
	CHECK_EQ_MEM(s, len, want);
	int64_t iv;
	CHECK(sl_json_get_int(o, "min", &iv) && iv == INT64_MIN);
	CHECK(sl_json_get_int(o, "max", &iv) && iv == INT64_MAX);
	CHECK(sl_json_number_text(a, "01", 2) == NULL);
	CHECK(sl_json_number_text(a, "1.", 2) == NULL);
	CHECK(sl_json_number_text(a, "", 0) == NULL);
	CHECK(!a->failed);
	/* A NULL value (a failed builder call) fails the push and the arena. */
	CHECK(!sl_json_push(a, arr, NULL));
	CHECK(a->failed);
}

TEST(builder_appends_to_parsed_and_shares_subtrees)
{
	struct sl_json *v;
	CHECK_EQ_INT(parse("{\"tools\":[{\"name\":\"t\"}],\"x\":[1,2]}", &v), 0);
	struct sl_arena *a = &test_arena;
	struct sl_json *x = sl_json_get(v, "x");
	CHECK(x->cap == x->len);
	CHECK(sl_json_push(a, x, sl_json_int(a, 3)));
	struct sl_json *o = sl_json_object(a);
	CHECK(sl_json_set(a, o, "tools", sl_json_get(v, "tools")));
	CHECK(sl_json_set(a, o, "copy", sl_json_get(v, "tools")));
	CHECK(sl_json_set(a, v, "added", sl_json_str(a, "yes", 3)));
	size_t len;
	char *s = write_str(v, &len);
	CHECK_EQ_MEM(s, len, "{\"tools\":[{\"name\":\"t\"}],\"x\":[1,2,3],\"added\":\"yes\"}");
	s = write_str(o, &len);
	CHECK_EQ_MEM(s, len, "{\"tools\":[{\"name\":\"t\"}],\"copy\":[{\"name\":\"t\"}]}");
}

TEST(builder_arena_exhaustion)
{
	struct sl_arena a;
	sl_arena_init(&a, NULL, 20000);
	struct sl_json *arr = sl_json_array(&a);
	bool ok = true;
	for (int i = 0; i < 10000 && ok; i++)
		ok = sl_json_push(&a, arr, sl_json_str(&a, "0123456789", 10));
	CHECK(!ok && a.failed && a.used_bytes <= 20000);
	CHECK(sl_json_serialize(&a, arr, NULL) == NULL || arr->len < 2000);
	sl_arena_release(&a);
}


/* reference_escape: the obvious byte loop, to check the 16-byte paths. */
static size_t reference_escape(const unsigned char *s, size_t len, char *out)
{
	char *d = out;
	for (size_t i = 0; i < len; i++) {
		unsigned c = s[i];
		if (c == '"' || c == '\\') {
			*d++ = '\\';
			*d++ = (char)c;
		} else if (c == '\b') {
			d += sprintf(d, "\\b");
		} else if (c == '\f') {
			d += sprintf(d, "\\f");
		} else if (c == '\n') {
			d += sprintf(d, "\\n");
		} else if (c == '\r') {
			d += sprintf(d, "\\r");
		} else if (c == '\t') {
			d += sprintf(d, "\\t");
		} else if (c < 0x20) {
			d += sprintf(d, "\\u%04x", c);
		} else {
			*d++ = (char)c;
		}
	}
	return (size_t)(d - out);
}

static uint64_t test_rng = 0x2545f4914f6cdd1dull;

static unsigned rnd_below(unsigned n)
{
	test_rng ^= test_rng << 13;
	test_rng ^= test_rng >> 7;
	test_rng ^= test_rng << 17;
	return (unsigned)(test_rng % n);
}

TEST(escape_matches_reference_at_every_length)
{
	static const unsigned char specials[] = { '"', '\\', 0, 1, '\b', '\t', '\n', '\f', '\r',
	                                          0x1f, 0x7f, 0x80, 0xff };
	unsigned char s[80];
	char got[80 * 6 + 16], want[80 * 6 + 16];
	for (size_t len = 0; len <= 64; len++) {
		for (size_t pos = 0; pos < len; pos++) {
			for (size_t k = 0; k < sizeof(specials); k++) {
				memset(s, 'a', sizeof(s));
				s[pos] = specials[k];
				if (pos + 3 < len)
					s[pos + 3] = '"';
				size_t n = sl_json_escape((const char *)s, len, got);
				size_t m = reference_escape(s, len, want);
				if (n != m || memcmp(got, want, n) != 0 ||
				    sl_json_escaped_len((const char *)s, len) != m) {
					FAIL_AT("escape_matches_reference_at_every_length",
					        "len %zu pos %zu byte 0x%02x", len, pos, specials[k]);
					return;
				}
			}
		}
	}
}

/* Random strings of valid UTF-8 and control bytes: escaping then parsing
 * gives the same bytes back, whatever the lengths and positions. */
TEST(string_roundtrip_random)
{
	static const char *const pieces[] = {
		"a", "Z", " ", "\"", "\\", "/", "\n", "\t", "\x01", "\x1f", "\x7f", "\xc3\xa9",
		"\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\xef\xbf\xbf", "\xf4\x8f\xbf\xbf", "0123456789",
	};
	char s[512], esc[512 * 6 + 2];
	for (int iter = 0; iter < 4000; iter++) {
		size_t len = 0, want = rnd_below(120);
		while (len < want) {
			const char *p = pieces[rnd_below(SL_ARRAY_LEN(pieces))];
			size_t n = strlen(p);
			if (n == 1 && p[0] == 'a' && rnd_below(50) == 0)
				n = 1, p = "\0";
			memcpy(s + len, p, n);
			len += n;
		}
		esc[0] = '"';
		size_t n = sl_json_escape(s, len, esc + 1);
		esc[n + 1] = '"';
		struct sl_json *v;
		struct sl_json_error err;
		arena_fresh();
		/* Exact-size heap copy so a read past the end would be caught. */
		char *in = malloc(n + 2);
		memcpy(in, esc, n + 2);
		int rc = sl_json_parse(&test_arena, in, n + 2, NULL, &v, &err);
		free(in);
		if (rc != 0 || v->len != len || memcmp(v->u.str, s, len) != 0) {
			FAIL_AT("string_roundtrip_random", "iteration %d: %s", iter,
			        rc ? err.message : "differs");
			return;
		}
	}
}

TEST(long_string_arena_use)
{
	/* A 1 MB string with escapes, some right before the quote: decoded
	 * exactly, and the arena holds it in about its size (one sized tail,
	 * not a doubling chain). */
	size_t n = 1 << 20;
	char *json = malloc(n + 16);
	size_t j = 0;
	json[j++] = '"';
	while (j < n - 8) {
		if (j % 1000 == 0) {
			memcpy(json + j, "\\\\\\\"", 4);
			j += 4;
		} else {
			json[j] = (char)('a' + j % 26);
			j++;
		}
	}
	memcpy(json + j, "\\\\\"", 3);
	j += 3;
	struct sl_json *v;
	struct sl_json_error err;
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	CHECK_EQ_INT(sl_json_parse(&a, json, j, NULL, &v, &err), 0);
	CHECK(v && v->u.str[v->len - 1] == '\\' && v->u.str[v->len] == '\0');
	CHECK(a.used_bytes < n + n / 4);
	size_t len = sl_json_serialized_len(v);
	char *out = malloc(len);
	CHECK_EQ_INT(sl_json_write(v, out), j);
	CHECK(memcmp(out, json, j) == 0);
	free(out);
	free(json);
	sl_arena_release(&a);
}

TEST(limits_defaults_and_edges)
{
	struct sl_json *v;
	struct sl_json_error err;
	struct sl_json_limits lim = { 0 }; /* zeros: defaults */
	arena_fresh();
	char *deep = nested_arrays(128);
	CHECK_EQ_INT(sl_json_parse(&test_arena, deep, 256, &lim, &v, &err), 0);
	deep = nested_arrays(129);
	CHECK_EQ_INT(sl_json_parse(&test_arena, deep, 258, &lim, &v, &err), SL_ERROR);
	lim.text_len_max = 7;
	CHECK_EQ_INT(sl_json_parse(&test_arena, "[1,2,3]", 7, &lim, &v, &err), 0);
	lim.depth_max = 1;
	CHECK_EQ_INT(sl_json_parse(&test_arena, "[1]", 3, &lim, &v, &err), 0);
	CHECK_EQ_INT(sl_json_parse(&test_arena, "[[]]", 4, &lim, &v, &err), SL_ERROR);
	CHECK_EQ_INT(sl_json_parse(&test_arena, "\"x\"", 3, &lim, &v, &err), 0);
	/* err may be NULL. */
	CHECK_EQ_INT(sl_json_parse(&test_arena, "[", 1, NULL, &v, NULL), SL_ERROR);
	CHECK_EQ_INT(sl_json_parse(&test_arena, "[]", 2, NULL, &v, NULL), 0);
}

TEST(big_containers_use_scratch_growth)
{
	/* More children than the on-stack scratch holds, nested. */
	struct sl_gen {
		char *p;
		size_t len;
	} g = { malloc(1 << 20), 0 };
	g.len += (size_t)sprintf(g.p + g.len, "{\"a\":[");
	for (int i = 0; i < 20000; i++)
		g.len += (size_t)sprintf(g.p + g.len, "%s{\"k%d\":%d}", i ? "," : "", i, i);
	g.len += (size_t)sprintf(g.p + g.len, "],\"b\":{");
	for (int i = 0; i < 5000; i++)
		g.len += (size_t)sprintf(g.p + g.len, "%s\"m%d\":[%d]", i ? "," : "", i, i);
	g.len += (size_t)sprintf(g.p + g.len, "}}");
	struct sl_json *v;
	struct sl_json_error err;
	arena_fresh();
	CHECK_EQ_INT(sl_json_parse(&test_arena, g.p, g.len, NULL, &v, &err), 0);
	struct sl_json *arr = sl_json_get(v, "a"), *obj = sl_json_get(v, "b");
	CHECK(arr && arr->len == 20000 && obj && obj->len == 5000);
	int64_t n = 0;
	CHECK(sl_json_get_int(arr->u.items[12345], "k12345", &n) && n == 12345);
	CHECK(sl_json_get(obj, "m4999") && sl_json_get(obj, "m4999")->u.items[0]->len == 4);
	size_t len;
	char *out = write_str(v, &len);
	CHECK(out && len == g.len && memcmp(out, g.p, len) == 0);
	free(g.p);
}

int main(void)
{
	sl_arena_init(&test_arena, NULL, 0);
	RUN(grammar_valid);
	RUN(grammar_invalid);
	RUN(error_messages_and_offsets);
	RUN(numbers_kept_exactly);
	RUN(get_int_range);
	RUN(strings_decode);
	RUN(strings_long);
	RUN(strings_escape_writer);
	RUN(depth_limit);
	RUN(size_limit);
	RUN(arena_exhaustion_is_an_error);
	RUN(arena_blocks_and_alignment);
	RUN(arena_pool_backed);
	RUN(arena_tail);
	RUN(buf_grow_take_release);
	RUN(buf_limit_is_sticky);
	RUN(roundtrip_fixed_point);
	RUN(get_and_typed_accessors);
	RUN(builder);
	RUN(builder_appends_to_parsed_and_shares_subtrees);
	RUN(builder_arena_exhaustion);
	RUN(escape_matches_reference_at_every_length);
	RUN(string_roundtrip_random);
	RUN(long_string_arena_use);
	RUN(limits_defaults_and_edges);
	RUN(big_containers_use_scratch_growth);
	sl_arena_release(&test_arena);
	return test_summary();
}
