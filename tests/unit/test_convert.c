/*
 * test_convert.c - golden fixtures and targeted cases for convert.c.
 *
 * Fixtures live in tests/fixtures/convert/ (see its README): for each
 * NAME.in.json (or NAME.in.txt for raw error bodies) the conversion the name
 * selects runs and its output, serialised compactly, must equal NAME.out.json
 * parsed and serialised the same way; or, for a request the converter must
 * refuse, the message must equal NAME.err.txt. NAME.ctx.json, when present,
 * lists the ctx outputs expected of a request conversion.
 *
 *   build/test_convert            run everything (from the repository root)
 *   build/test_convert --update   rewrite every NAME.out.json / NAME.err.txt
 *                                 from the current output (then review the diff)
 */
#include "../../src/convert.c"
#include "test.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>

#define FIXTURE_DIR "tests/fixtures/convert"
#define ARENA_LIMIT_BYTES (64u << 20)

static bool update_mode;

/* --- helpers ------------------------------------------------------------------------------- */

static char *read_file(const char *path, size_t *out_len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 4096, len = 0;
	char *p = malloc(cap);
	size_t n;
	while (p && (n = fread(p + len, 1, cap - len - 1, f)) > 0) {
		len += n;
		if (cap - len < 2) {
			cap *= 2;
			char *q = realloc(p, cap);
			if (!q) {
				free(p);
				p = NULL;
			}
			p = q;
		}
	}
	fclose(f);
	if (!p)
		return NULL;
	p[len] = '\0';
	*out_len = len;
	return p;
}

/* Pretty printer for --update: two-space indent, one member per line. */
static void pretty(FILE *f, const struct sl_json *v, int indent)
{
	if (v->type == SL_JSON_OBJECT || v->type == SL_JSON_ARRAY) {
		bool obj = v->type == SL_JSON_OBJECT;
		if (v->len == 0) {
			fputs(obj ? "{}" : "[]", f);
			return;
		}
		fputc(obj ? '{' : '[', f);
		for (uint32_t i = 0; i < v->len; i++) {
			fprintf(f, "%s\n%*s", i ? "," : "", indent + 2, "");
			const struct sl_json *x = obj ? v->u.members[i].value : v->u.items[i];
			if (obj) {
				const char *k = v->u.members[i].key;
				size_t kl = v->u.members[i].key_len;
				char *esc = malloc(sl_json_escaped_len(k, kl) + 1);
				size_t el = sl_json_escape(k, kl, esc);
				fprintf(f, "\"%.*s\": ", (int)el, esc);
				free(esc);
			}
			pretty(f, x, indent + 2);
		}
		fprintf(f, "\n%*s%c", indent, "", obj ? '}' : ']');
		return;
	}
	size_t len = sl_json_serialized_len(v);
	char *text = malloc(len + 1);
	sl_json_write(v, text);
	fwrite(text, 1, len, f);
	free(text);
}

static bool write_pretty(const char *path, const struct sl_json *v)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return false;
	pretty(f, v, 0);
	fputc('\n', f);
	return fclose(f) == 0;
}

/* Canonical text of a tree: compact serialisation (malloc'd). */
static char *canonical(const struct sl_json *v)
{
	size_t len = sl_json_serialized_len(v);
	char *text = malloc(len + 1);
	text[sl_json_write(v, text)] = '\0';
	return text;
}

static struct sl_json *parse_text(struct sl_arena *a, const char *text)
{
	struct sl_json *v = NULL;
	struct sl_json_error e;
	if (sl_json_parse(a, text, strlen(text), NULL, &v, &e) != 0) {
		printf("# parse error in test JSON at %zu: %s\n", e.offset, e.message);
		return NULL;
	}
	return v;
}

static void ctx_init(struct sl_convert_ctx *ctx, enum sl_route route, enum sl_format format)
{
	*ctx = (struct sl_convert_ctx){
		.route = route,
		.upstream_format = format,
		.upstream_model = "upstream-model",
		.client_model = "client-model",
		.default_max_tokens = 0,
		.request_id = "req1",
		.created_s = 1700000000,
	};
}

/* --- fixtures -------------------------------------------------------------------------------- */

static bool route_from_name(const char *s, size_t len, enum sl_route *out)
{
	static const struct {
		const char *name;
		enum sl_route route;
	} table[] = {
		{ "chat", SL_ROUTE_CHAT_COMPLETIONS },  { "messages", SL_ROUTE_MESSAGES },
		{ "responses", SL_ROUTE_RESPONSES },    { "completions", SL_ROUTE_COMPLETIONS },
		{ "count_tokens", SL_ROUTE_COUNT_TOKENS }, { "embeddings", SL_ROUTE_EMBEDDINGS },
		{ "images", SL_ROUTE_IMAGES_GENERATIONS },
	};
	for (size_t i = 0; i < SL_ARRAY_LEN(table); i++) {
		if (strlen(table[i].name) == len && memcmp(table[i].name, s, len) == 0) {
			*out = table[i].route;
			return true;
		}
	}
	return false;
}

/* Checks NAME.ctx.json against the ctx a request conversion left. */
static void check_ctx(const char *name, const char *path, const struct sl_convert_ctx *ctx)
{
	size_t len;
	char *text = read_file(path, &len);
	if (!text)
		return;
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	struct sl_json *want = parse_text(&a, text);
	if (!want) {
		FAIL_AT(name, "bad %s", path);
	} else {
		const char *route = sl_json_get_str(want, "upstream_route", NULL);
		if (route && strcmp(route, sl_route_name(ctx->upstream_route)) != 0)
			FAIL_AT(name, "upstream_route %s, expected %s", sl_route_name(ctx->upstream_route),
			        route);
		static const char *const keys[] = { "stream", "client_wants_usage", "thinking" };
		const bool got[] = { ctx->stream, ctx->client_wants_usage, ctx->thinking };
		for (size_t i = 0; i < 3; i++) {
			struct sl_json *v = sl_json_get(want, keys[i]);
			if (v && (v->type == SL_JSON_TRUE) != got[i])
				FAIL_AT(name, "ctx.%s is %d", keys[i], got[i]);
		}
	}
	sl_arena_release(&a);
	free(text);
}

/*
 * run_fixture runs one NAME (without .in.json / .in.txt):
 *   req.ROUTE.UPSTREAM.CASE   sl_convert_request
 *   resp.ROUTE.UPSTREAM.CASE  sl_convert_response
 *   err.ROUTE.STATUS.CASE     sl_convert_error on the raw input bytes
 * ROUTE: chat messages responses completions count_tokens embeddings images;
 * UPSTREAM: openai anthropic.
 */
static void run_fixture(const char *dir, const char *file, const char *in_ext)
{
	char name[300];
	snprintf(name, sizeof name, "fixture %s", file);
	char path[1024];
	char kind[8] = "", route_s[32] = "", third[32] = "";
	if (sscanf(file, "%7[^.].%31[^.].%31[^.].", kind, route_s, third) != 3) {
		FAIL_AT(name, "fixture name must be KIND.ROUTE.UPSTREAM|STATUS.CASE");
		return;
	}
	enum sl_route route;
	if (!route_from_name(route_s, strlen(route_s), &route)) {
		FAIL_AT(name, "unknown route %s", route_s);
		return;
	}
	snprintf(path, sizeof path, "%s/%s.%s", dir, file, in_ext);
	size_t in_len;
	char *in_text = read_file(path, &in_len);
	if (!in_text) {
		FAIL_AT(name, "cannot read %s", path);
		return;
	}
	struct sl_arena a;
	sl_arena_init(&a, NULL, ARENA_LIMIT_BYTES);
	struct sl_convert_ctx ctx;
	struct sl_json *got = NULL;
	const char *message = NULL;
	int rc = 0;

	if (strcmp(kind, "err") == 0) {
		ctx_init(&ctx, route, SL_FORMAT_OPENAI);
		size_t len;
		const char *body = sl_convert_error(&a, &ctx, (unsigned)atoi(third), in_text, in_len,
		                                    &len);
		struct sl_json_error e;
		if (sl_json_parse(&a, body, len, NULL, &got, &e) != 0)
			FAIL_AT(name, "error body is not JSON: %.*s", (int)len, body);
	} else {
		enum sl_format format;
		if (strcmp(third, "openai") == 0) {
			format = SL_FORMAT_OPENAI;
		} else if (strcmp(third, "anthropic") == 0) {
			format = SL_FORMAT_ANTHROPIC;
		} else {
			FAIL_AT(name, "unknown upstream format %s", third);
			goto out;
		}
		ctx_init(&ctx, route, format);
		struct sl_json *in;
		struct sl_json_error e;
		if (sl_json_parse(&a, in_text, in_len, NULL, &in, &e) != 0) {
			FAIL_AT(name, "%s: %s at %zu", path, e.message, e.offset);
			goto out;
		}
		if (strcmp(kind, "req") == 0)
			rc = sl_convert_request(&a, &ctx, in, &got, &message);
		else if (strcmp(kind, "resp") == 0)
			rc = sl_convert_response(&a, &ctx, in, &got, &message);
		else {
			FAIL_AT(name, "unknown kind %s", kind);
			goto out;
		}
	}

	char out_path[1024], err_path[1024];
	snprintf(out_path, sizeof out_path, "%s/%s.out.json", dir, file);
	snprintf(err_path, sizeof err_path, "%s/%s.err.txt", dir, file);
	if (rc != 0) {
		if (update_mode) {
			FILE *f = fopen(err_path, "wb");
			if (f) {
				fprintf(f, "%s\n", message);
				fclose(f);
			}
			remove(out_path);
			goto out;
		}
		size_t len;
		char *want = read_file(err_path, &len);
		while (want && len > 0 && want[len - 1] == '\n')
			want[--len] = '\0';
		if (!want)
			FAIL_AT(name, "conversion failed: %s", message);
		else if (strcmp(want, message) != 0)
			FAIL_AT(name, "message \"%s\", expected \"%s\"", message, want);
		free(want);
		goto out;
	}
	if (!got)
		goto out;
	/* Whatever the conversion built must serialise to JSON that parses. */
	char *got_text = canonical(got);
	struct sl_json *reparsed;
	struct sl_json_error e;
	if (sl_json_parse(&a, got_text, strlen(got_text), NULL, &reparsed, &e) != 0)
		FAIL_AT(name, "output does not re-parse: %s", e.message);
	if (update_mode) {
		write_pretty(out_path, got);
		remove(err_path);
	} else {
		size_t len;
		char *want_text = read_file(out_path, &len);
		struct sl_json *want = want_text ? parse_text(&a, want_text) : NULL;
		if (!want) {
			FAIL_AT(name, "missing or bad %s (got %s)", out_path, got_text);
		} else {
			char *w = canonical(want);
			if (strcmp(w, got_text) != 0) {
				size_t k = 0;
				while (w[k] && w[k] == got_text[k])
					k++;
				size_t from = k > 60 ? k - 60 : 0;
				FAIL_AT(name, "output differs at byte %zu:\n  got:  ...%.160s\n  want: ...%.160s",
				        k, got_text + from, w + from);
			}
			free(w);
		}
		free(want_text);
		if (strcmp(kind, "req") == 0) {
			char ctx_path[1024];
			snprintf(ctx_path, sizeof ctx_path, "%s/%s.ctx.json", dir, file);
			check_ctx(name, ctx_path, &ctx);
		}
	}
	free(got_text);
out:
	sl_arena_release(&a);
	free(in_text);
}

static int name_cmp(const void *x, const void *y)
{
	return strcmp(*(char *const *)x, *(char *const *)y);
}

static void run_fixtures(void)
{
	DIR *d = opendir(FIXTURE_DIR);
	if (!d) {
		test_current_failed = 0;
		FAIL_AT("fixtures", "cannot open %s: %s (run from the repository root)", FIXTURE_DIR,
		        strerror(errno));
		test_failed_num++;
		return;
	}
	char *names[1024];
	size_t num = 0;
	struct dirent *de;
	while ((de = readdir(d)) && num < SL_ARRAY_LEN(names)) {
		size_t len = strlen(de->d_name);
		if (len > 8 && (strcmp(de->d_name + len - 8, ".in.json") == 0 ||
		                strcmp(de->d_name + len - 7, ".in.txt") == 0))
			names[num++] = strdup(de->d_name);
	}
	closedir(d);
	qsort(names, num, sizeof names[0], name_cmp);
	for (size_t i = 0; i < num; i++) {
		size_t len = strlen(names[i]);
		bool txt = strcmp(names[i] + len - 7, ".in.txt") == 0;
		names[i][len - (txt ? 7 : 8)] = '\0';
		char label[300];
		snprintf(label, sizeof label, "fixture %s", names[i]);
		test_current_failed = 0;
		run_fixture(FIXTURE_DIR, names[i], txt ? "in.txt" : "in.json");
		/* FAIL_AT prints with the fixture's name; count like RUN does. */
		if (test_current_failed) {
			test_failed_num++;
		} else {
			test_passed_num++;
			printf("PASS %s\n", label);
		}
		free(names[i]);
	}
}

/* --- targeted cases ------------------------------------------------------------------------ */

struct conv {
	struct sl_arena a;
	struct sl_convert_ctx ctx;
	struct sl_json *out;
	const char *message;
	char *text; /* compact output */
	int rc;
};

static void conv_request(struct conv *cv, enum sl_route route, enum sl_format format,
                         const char *body)
{
	sl_arena_init(&cv->a, NULL, ARENA_LIMIT_BYTES);
	ctx_init(&cv->ctx, route, format);
	cv->out = NULL;
	cv->text = NULL;
	cv->message = NULL;
	struct sl_json *in = parse_text(&cv->a, body);
	cv->rc = in ? sl_convert_request(&cv->a, &cv->ctx, in, &cv->out, &cv->message) : -99;
	if (cv->rc == 0)
		cv->text = sl_json_serialize(&cv->a, cv->out, &(size_t){ 0 });
}

static void conv_response(struct conv *cv, enum sl_route route, enum sl_format format,
                          const char *body)
{
	sl_arena_init(&cv->a, NULL, ARENA_LIMIT_BYTES);
	ctx_init(&cv->ctx, route, format);
	cv->out = NULL;
	cv->text = NULL;
	cv->message = NULL;
	struct sl_json *in = parse_text(&cv->a, body);
	cv->rc = in ? sl_convert_response(&cv->a, &cv->ctx, in, &cv->out, &cv->message) : -99;
	if (cv->rc == 0)
		cv->text = sl_json_serialize(&cv->a, cv->out, &(size_t){ 0 });
}

static bool contains(const char *hay, const char *needle)
{
	return hay && strstr(hay, needle) != NULL;
}

#define CHECK_CONTAINS(hay, needle)                                                            \
	do {                                                                                   \
		if (!contains((hay), (needle)))                                                \
			FAIL_AT(__func__ + 5, "\"%s\" not in %s", (needle),                    \
			        (hay) ? (hay) : "(null)");                                     \
	} while (0)

/* Request errors: each bad input gives SL_ERROR and a message naming it. */
TEST(request_errors_name_the_field)
{
	static const struct {
		enum sl_route route;
		enum sl_format format;
		const char *body;
		const char *message_part;
	} cases[] = {
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC, "[]", "JSON object" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC, "{\"model\":\"m\"}", "messages must be an array" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":3}", "n > 1" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":\"2\"}", "n must be" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true}", "logprobs" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}",
		  "max_tokens must be a positive integer" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}",
		  "temperature must be a number" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "messages[0]: unknown role \"wizard\"" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC, "{\"messages\":[7]}", "messages[0] must be an object" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\"}]}]}",
		  "messages[0].content[0]: content type \"input_audio\"" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"ftp://x\"}}]}]}",
		  "http(s) or data: URL" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png,abc\"}}]}]}",
		  "only base64 data: URLs" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c1\",\"function\":{\"name\":\"f\",\"arguments\":\"{bad\"}}]}]}",
		  "messages[0].tool_calls[0].function.arguments is not valid JSON" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c1\",\"function\":{\"name\":\"f\",\"arguments\":\"[1]\"}}]}]}",
		  "must be a JSON object" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages[0].tool_call_id" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[],\"tools\":[{\"type\":\"web_search\"}]}", "tool type \"web_search\"" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[],\"reasoning_effort\":\"max\"}", "reasoning_effort must be one of" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[],\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{}}}",
		  "response_format.json_schema.schema" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC, "{\"messages\":[],\"stop\":[1]}", "stop must be" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"file\",\"file\":{\"file_id\":\"f\"}}]}]}",
		  "file_data" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"file\",\"file\":{\"file_data\":\"data:text/plain;base64,//79\"}}]}]}",
		  "not base64 of UTF-8 text" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"system\",\"content\":[{\"type\":\"image_url\"}]}]}",
		  "messages[0].content[0]: system messages take text parts only" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
		  "\"tool_choice\":{\"type\":\"function\",\"function\":{}}}", "tool_choice.function.name" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
		  "\"tool_choice\":\"sometimes\"}", "tool_choice must be" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[],\"response_format\":{\"type\":\"xml\"}}", "response_format.type \"xml\"" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC, "{\"messages\":[],\"tools\":{}}", "tools must be an array" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":[]}}]}",
		  "tools[0].function.parameters must be an object" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"assistant\",\"function_call\":{\"name\":\"f\"}}]}", "function_call is deprecated" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"file\",\"file\":{\"file_data\":\"data:image/gif;base64,R0lG\"}}]}]}",
		  "file type image/gif is not supported" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI, "{\"messages\":[],\"system\":[{\"type\":\"image\"}]}", "system[0] must be a text block" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI, "{\"messages\":[],\"system\":5}", "system must be a string" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI, "{\"messages\":[],\"stop_sequences\":\"x\"}", "stop_sequences must be" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI,
		  "{\"messages\":[],\"tools\":[{\"name\":\"t\",\"input_schema\":{}}],\"tool_choice\":{\"type\":\"sometimes\"}}",
		  "tool_choice.type must be" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI,
		  "{\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"name\":\"t\"}]}]}",
		  "tool_use needs id and name" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI,
		  "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"a\","
		  "\"content\":[{\"type\":\"search_result\"}]}]}]}", "block type \"search_result\" cannot be converted" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI, "{\"messages\":{}}", "messages" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI,
		  "{\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}", "role must be \"user\" or \"assistant\"" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI,
		  "{\"messages\":[],\"tools\":[{\"type\":\"web_search_20250305\",\"name\":\"web_search\"}]}",
		  "tool type \"web_search_20250305\"" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI,
		  "{\"messages\":[],\"tools\":[{\"name\":\"t\"}]}", "tools[0].input_schema" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI,
		  "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"source\":{\"type\":\"file\",\"file_id\":\"x\"}}]}]}",
		  "image source type \"file\"" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI,
		  "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"document\",\"source\":{\"type\":\"url\",\"url\":\"https://x/a.pdf\"}}]}]}",
		  "document source type \"url\"" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI,
		  "{\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"server_tool_use\"}]}]}",
		  "block type \"server_tool_use\"" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI,
		  "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\"}]}]}", "tool_use_id" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI, "{\"messages\":[],\"max_tokens\":-5}", "max_tokens" },
		{ SL_ROUTE_RESPONSES, SL_FORMAT_OPENAI, "{\"input\":\"x\",\"previous_response_id\":\"resp_1\"}",
		  "previous_response_id" },
		{ SL_ROUTE_RESPONSES, SL_FORMAT_ANTHROPIC, "{\"input\":[{\"type\":\"item_reference\",\"id\":\"x\"}]}",
		  "item type \"item_reference\"" },
		{ SL_ROUTE_RESPONSES, SL_FORMAT_ANTHROPIC, "{\"input\":\"x\",\"tools\":[{\"type\":\"web_search\"}]}",
		  "tool type \"web_search\"" },
		{ SL_ROUTE_RESPONSES, SL_FORMAT_OPENAI, "{\"input\":42}", "input must be a string or an array" },
		{ SL_ROUTE_RESPONSES, SL_FORMAT_OPENAI, "{\"input\":[{\"type\":\"function_call\"}]}", "call_id" },
		{ SL_ROUTE_COMPLETIONS, SL_FORMAT_ANTHROPIC, "{\"prompt\":[\"a\",\"b\"]}", "one prompt" },
		{ SL_ROUTE_COMPLETIONS, SL_FORMAT_ANTHROPIC, "{\"prompt\":[1,2,3]}", "token arrays" },
		{ SL_ROUTE_COMPLETIONS, SL_FORMAT_ANTHROPIC, "{\"prompt\":\"a\",\"echo\":true}", "echo" },
		{ SL_ROUTE_COMPLETIONS, SL_FORMAT_OPENAI, "{\"prompt\":\"a\",\"suffix\":\"b\"}", "suffix" },
		{ SL_ROUTE_COMPLETIONS, SL_FORMAT_ANTHROPIC, "{\"prompt\":\"a\",\"logprobs\":3}", "logprobs" },
		{ SL_ROUTE_COUNT_TOKENS, SL_FORMAT_OPENAI, "{\"messages\":[]}", "answered locally" },
		{ SL_ROUTE_EMBEDDINGS, SL_FORMAT_ANTHROPIC, "{\"input\":\"x\"}", "embeddings are not available" },
		{ SL_ROUTE_MODELS, SL_FORMAT_OPENAI, "{}", "no request body" },
	};
	for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++) {
		struct conv cv;
		conv_request(&cv, cases[i].route, cases[i].format, cases[i].body);
		if (cv.rc != SL_ERROR || !contains(cv.message, cases[i].message_part))
			FAIL_AT("request_errors_name_the_field", "case %zu (%s): rc %d, message \"%s\"", i,
			        cases[i].body, cv.rc, cv.message ? cv.message : "(null)");
		CHECK(cv.out == NULL);
		sl_arena_release(&cv.a);
	}
}

TEST(response_errors_for_bad_upstream_bodies)
{
	static const struct {
		enum sl_route route;
		enum sl_format format;
		const char *body;
		const char *message_part;
	} cases[] = {
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI, "[]", "not a JSON object" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI, "{\"choices\":[]}", "no choices" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI, "{\"choices\":[{}]}", "no message" },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI, "{\"error\":{\"message\":\"x\"}}", "error object" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC, "{\"type\":\"error\"}", "error object" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC, "{\"id\":\"m\"}", "no content array" },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"content\":[{\"type\":\"tool_use\",\"input\":{}}]}", "tool_use block 0" },
		{ SL_ROUTE_RESPONSES, SL_FORMAT_OPENAI,
		  "{\"choices\":[{\"message\":{\"tool_calls\":[{\"function\":{}}]}}]}", "tool call 0" },
		{ SL_ROUTE_COMPLETIONS, SL_FORMAT_ANTHROPIC, "\"text\"", "not a JSON object" },
	};
	for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++) {
		struct conv cv;
		conv_response(&cv, cases[i].route, cases[i].format, cases[i].body);
		if (cv.rc != SL_ERROR || !contains(cv.message, cases[i].message_part))
			FAIL_AT("response_errors_for_bad_upstream_bodies", "case %zu: rc %d, message \"%s\"",
			        i, cv.rc, cv.message ? cv.message : "(null)");
		sl_arena_release(&cv.a);
	}
}

/* The per-model default max_tokens, and the thinking budget clamp. */
TEST(max_tokens_default_and_budget_clamp)
{
	struct conv cv;
	sl_arena_init(&cv.a, NULL, 0);
	ctx_init(&cv.ctx, SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC);
	cv.ctx.default_max_tokens = 64000;
	struct sl_json *in = parse_text(&cv.a, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
	                                       "\"reasoning_effort\":\"high\"}");
	CHECK_EQ_INT(sl_convert_request(&cv.a, &cv.ctx, in, &cv.out, &cv.message), 0);
	char *t = sl_json_serialize(&cv.a, cv.out, &(size_t){ 0 });
	CHECK_CONTAINS(t, "\"max_tokens\":64000");
	CHECK_CONTAINS(t, "\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":24576}");
	CHECK(cv.ctx.thinking);
	sl_arena_release(&cv.a);

	conv_request(&cv, SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
	             "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning_effort\":\"medium\"}");
	CHECK_CONTAINS(cv.text, "\"max_tokens\":4096");
	CHECK_CONTAINS(cv.text, "\"budget_tokens\":3072"); /* 8192 clamped to 3/4 of 4096 */
	sl_arena_release(&cv.a);

	conv_request(&cv, SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
	             "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1000,"
	             "\"reasoning_effort\":\"low\"}");
	CHECK(cv.rc == 0 && !contains(cv.text, "thinking") && !cv.ctx.thinking);
	sl_arena_release(&cv.a);

	conv_request(&cv, SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
	             "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning_effort\":\"none\"}");
	CHECK(cv.rc == 0 && !contains(cv.text, "thinking") && !cv.ctx.thinking);
	sl_arena_release(&cv.a);

	/* budget -> effort thresholds */
	static const struct {
		int budget;
		const char *effort;
	} b[] = { { 1024, "low" }, { 4095, "low" }, { 4096, "medium" }, { 8192, "medium" },
		  { 16383, "medium" }, { 16384, "high" }, { 24576, "high" }, { 64000, "high" } };
	for (size_t i = 0; i < SL_ARRAY_LEN(b); i++) {
		char body[200], want[64];
		snprintf(body, sizeof body, "{\"messages\":[],\"max_tokens\":99999,\"thinking\":"
		         "{\"type\":\"enabled\",\"budget_tokens\":%d}}", b[i].budget);
		snprintf(want, sizeof want, "\"reasoning_effort\":\"%s\"", b[i].effort);
		conv_request(&cv, SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI, body);
		CHECK_CONTAINS(cv.text, want);
		CHECK(cv.ctx.thinking);
		sl_arena_release(&cv.a);
	}
}

/* Tool schemas, texts and image data are shared with the input, not copied. */
TEST(subtrees_are_shared_not_copied)
{
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	struct sl_convert_ctx ctx;
	ctx_init(&ctx, SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI);
	struct sl_json *in = parse_text(&a,
		"{\"max_tokens\":10,\"tools\":[{\"name\":\"t\",\"input_schema\":{\"type\":\"object\"}}],"
		"\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hello\"},"
		"{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"https://x/y.png\"}}]}]}");
	struct sl_json *out;
	const char *msg;
	CHECK_EQ_INT(sl_convert_request(&a, &ctx, in, &out, &msg), 0);
	struct sl_json *schema_in = sl_json_get(sl_json_get(in, "tools")->u.items[0], "input_schema");
	struct sl_json *fn = sl_json_get(sl_json_get(out, "tools")->u.items[0], "function");
	CHECK(sl_json_get(fn, "parameters") == schema_in);
	struct sl_json *text_in = sl_json_get(
		sl_json_get(sl_json_get(in, "messages")->u.items[0], "content")->u.items[0], "text");
	struct sl_json *parts = sl_json_get(sl_json_get(out, "messages")->u.items[0], "content");
	CHECK(sl_json_get(parts->u.items[0], "text") == text_in);
	sl_arena_release(&a);

	/* data: URL -> base64 source: data points into the URL string. */
	sl_arena_init(&a, NULL, 0);
	ctx_init(&ctx, SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC);
	in = parse_text(&a, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
	                    "\"image_url\":{\"url\":\"data:image/png;base64,iVBORw0KGgo=\"}}]}]}");
	CHECK_EQ_INT(sl_convert_request(&a, &ctx, in, &out, &msg), 0);
	const struct sl_json *url = sl_json_get(sl_json_get(sl_json_get(
		sl_json_get(in, "messages")->u.items[0], "content")->u.items[0], "image_url"), "url");
	const struct sl_json *src = sl_json_get(sl_json_get(
		sl_json_get(out, "messages")->u.items[0], "content")->u.items[0], "source");
	const struct sl_json *data = sl_json_get(src, "data");
	CHECK(data && data->u.str == url->u.str + strlen("data:image/png;base64,"));
	CHECK(data && data->u.str[data->len] == '\0');
	sl_arena_release(&a);
}

/* A small arena makes every conversion fail cleanly, never crash. */
TEST(arena_exhaustion_fails_cleanly)
{
	static const char body[] =
		"{\"model\":\"m\",\"max_tokens\":100,\"system\":[{\"type\":\"text\",\"text\":\"sys\"}],"
		"\"tools\":[{\"name\":\"t\",\"description\":\"d\",\"input_schema\":{\"type\":\"object\"}}],"
		"\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":"
		"[{\"type\":\"thinking\",\"thinking\":\"hm\",\"signature\":\"s\"},{\"type\":\"tool_use\","
		"\"id\":\"t1\",\"name\":\"t\",\"input\":{\"a\":1}}]},{\"role\":\"user\",\"content\":"
		"[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\",\"content\":\"ok\"},{\"type\":\"text\","
		"\"text\":\"next\"}]}]}";
	int failures = 0, successes = 0;
	for (size_t limit = 64; limit <= 64 * 1024; limit += 64) {
		struct sl_arena in_arena, a;
		sl_arena_init(&in_arena, NULL, 0);
		struct sl_json *in = parse_text(&in_arena, body);
		sl_arena_init(&a, NULL, limit);
		struct sl_convert_ctx ctx;
		ctx_init(&ctx, SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI);
		struct sl_json *out;
		const char *msg;
		int rc = sl_convert_request(&a, &ctx, in, &out, &msg);
		if (rc == 0) {
			successes++;
			CHECK(!a.failed);
		} else {
			failures++;
			CHECK(msg != NULL);
		}
		size_t n;
		static const char err_body[] = "{\"error\":{\"message\":\"x\"}}";
		const char *e = sl_convert_error(&a, &ctx, 500, err_body, strlen(err_body), &n);
		CHECK(e && n > 0 && e[0] == '{');
		sl_arena_release(&a);
		sl_arena_release(&in_arena);
	}
	CHECK(failures > 0 && successes > 0);
}

TEST(error_body_shapes_and_types)
{
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	struct sl_convert_ctx ctx;
	size_t n;
	ctx_init(&ctx, SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI);
	static const struct {
		unsigned status;
		const char *anthropic_type, *openai_type;
	} t[] = {
		{ 400, "invalid_request_error", "invalid_request_error" },
		{ 401, "authentication_error", "authentication_error" },
		{ 402, "billing_error", "insufficient_quota" },
		{ 403, "permission_error", "permission_error" },
		{ 404, "not_found_error", "not_found" },
		{ 413, "request_too_large", "payload_too_large" },
		{ 422, "invalid_request_error", "invalid_request_error" },
		{ 429, "rate_limit_error", "rate_limit_error" },
		{ 500, "api_error", "server_error" },
		{ 502, "api_error", "server_error" },
		{ 503, "overloaded_error", "overloaded" },
		{ 504, "timeout_error", "upstream_timeout" },
		{ 529, "overloaded_error", "overloaded" },
		{ 418, "invalid_request_error", "invalid_request_error" },
	};
	for (size_t i = 0; i < SL_ARRAY_LEN(t); i++) {
		char want[128];
		ctx.route = SL_ROUTE_MESSAGES;
		const char *e = sl_convert_error(&a, &ctx, t[i].status, "", 0, &n);
		snprintf(want, sizeof want, "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":"
		         "\"upstream returned HTTP %u\"}}", t[i].anthropic_type, t[i].status);
		CHECK_EQ_MEM(e, n, want);
		ctx.route = SL_ROUTE_CHAT_COMPLETIONS;
		e = sl_convert_error(&a, &ctx, t[i].status, NULL, 0, &n);
		snprintf(want, sizeof want, "{\"error\":{\"message\":\"upstream returned HTTP %u\","
		         "\"type\":\"%s\",\"param\":null,\"code\":null}}", t[i].status, t[i].openai_type);
		CHECK_EQ_MEM(e, n, want);
	}
	/* count_tokens is an Anthropic route */
	ctx.route = SL_ROUTE_COUNT_TOKENS;
	static const char slow[] = "{\"error\":{\"message\":\"slow down\"}}";
	const char *e = sl_convert_error(&a, &ctx, 429, slow, strlen(slow), &n);
	CHECK_EQ_MEM(e, n, "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"slow down\"}}");
	/* Long non-JSON bodies are cut on a character boundary. */
	char big[5000];
	memset(big, 'x', sizeof big);
	memcpy(big + 2047, "\xc3\xa9", 2); /* straddles the 2048-byte cut */
	ctx.route = SL_ROUTE_CHAT_COMPLETIONS;
	e = sl_convert_error(&a, &ctx, 500, big, sizeof big, &n);
	struct sl_json *v;
	struct sl_json_error err;
	CHECK(sl_json_parse(&a, e, n, NULL, &v, &err) == 0);
	CHECK_EQ_INT(sl_json_get(sl_json_get(v, "error"), "message")->len, 2047);
	sl_arena_release(&a);
}

TEST(usage_from_responses)
{
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	struct sl_usage u;
	struct sl_json *v = parse_text(&a, "{\"usage\":{\"input_tokens\":10,\"output_tokens\":20,"
	                                   "\"cache_read_input_tokens\":30,\"cache_creation_input_tokens\":40}}");
	sl_usage_from_response(v, SL_FORMAT_ANTHROPIC, &u);
	CHECK(u.input_tokens == 10 && u.output_tokens == 20 && u.cache_read_tokens == 30 &&
	      u.cache_write_tokens == 40);
	v = parse_text(&a, "{\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":7,\"total_tokens\":107,"
	                   "\"prompt_tokens_details\":{\"cached_tokens\":60}}}");
	sl_usage_from_response(v, SL_FORMAT_OPENAI, &u);
	CHECK(u.input_tokens == 40 && u.output_tokens == 7 && u.cache_read_tokens == 60 &&
	      u.cache_write_tokens == -1);
	v = parse_text(&a, "{\"usage\":{\"prompt_tokens\":5,\"total_tokens\":5}}"); /* embeddings */
	sl_usage_from_response(v, SL_FORMAT_OPENAI, &u);
	CHECK(u.input_tokens == 5 && u.output_tokens == -1 && u.cache_read_tokens == -1);
	v = parse_text(&a, "{\"usage\":{\"input_tokens\":50,\"output_tokens\":9,"
	                   "\"input_tokens_details\":{\"cached_tokens\":20}}}"); /* Responses */
	sl_usage_from_response(v, SL_FORMAT_OPENAI, &u);
	CHECK(u.input_tokens == 30 && u.output_tokens == 9 && u.cache_read_tokens == 20);
	v = parse_text(&a, "{\"id\":\"x\"}");
	sl_usage_from_response(v, SL_FORMAT_ANTHROPIC, &u);
	CHECK(u.input_tokens == -1 && u.output_tokens == -1 && u.cache_write_tokens == -1);
	sl_usage_from_response(NULL, SL_FORMAT_OPENAI, &u);
	CHECK(u.input_tokens == -1);
	sl_arena_release(&a);
}

/* The scalar rule of docs/convert.md, byte by byte, for checking the 16-byte
 * path of the estimator on every alignment and mix. */
static uint64_t reference_units(const unsigned char *s, size_t n)
{
	uint64_t q = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned ch = s[i];
		if (ch < 0x80)
			q += (isalnum((int)ch) || ch == ' ' || ch == '\n' || ch == '\t') ? 3 : 6;
		else if (ch >= 0xF0)
			q += 24;
		else if (ch >= 0xE0)
			q += 11;
		else if (ch >= 0xC0)
			q += 4;
	}
	return q;
}

TEST(count_tokens_text_blocks_match_byte_rule)
{
	/* every byte value that can stand in a JSON string unescaped, in
	 * lengths around the 16-byte blocks, ASCII-only and mixed */
	uint32_t seed = 12345;
	for (int round = 0; round < 400; round++) {
		struct sl_arena a;
		sl_arena_init(&a, NULL, 0);
		unsigned char text[200];
		size_t n = (size_t)round % 70 + (round > 200 ? 100 : 0);
		bool ascii = round % 3 != 0;
		for (size_t i = 0; i < n; i++) {
			seed = seed * 1103515245u + 12345u;
			unsigned ch = (seed >> 16) & 0xff;
			if (ascii)
				ch = 0x1e + ch % 0x61; /* printable, and some become tabs and newlines */
			if (ch == '"' || ch == '\\' || ch < 0x20)
				ch = "\t\nx"[ch % 3];
			text[i] = (unsigned char)ch;
		}
		/* the JSON text: tabs and newlines escaped */
		char body[600];
		int len = snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"");
		for (size_t i = 0; i < n; i++) {
			if (text[i] == '\t' || text[i] == '\n') {
				body[len++] = '\\';
				body[len++] = text[i] == '\t' ? 't' : 'n';
			} else {
				body[len++] = (char)text[i];
			}
		}
		len += snprintf(body + len, sizeof body - (size_t)len, "\"}]}");
		struct sl_json *v = NULL;
		struct sl_json_error e;
		/* random high bytes are not always valid UTF-8: skip those the parser refuses */
		if (sl_json_parse(&a, body, (size_t)len, NULL, &v, &e) == 0)
			CHECK_EQ_INT(sl_count_tokens_local(v),
			             3 + 4 + (int64_t)((reference_units(text, n) + 11) / 12));
		sl_arena_release(&a);
	}
	/* past 255 blocks, where the per-lane counts are folded */
	static char big[20000], big_body[20100];
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = "ab.c d;e"[i % 8];
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	int len = snprintf(big_body, sizeof big_body,
	                   "{\"messages\":[{\"role\":\"user\",\"content\":\"%.*s\"}]}",
	                   (int)sizeof big, big);
	struct sl_json *v = NULL;
	struct sl_json_error e;
	CHECK(sl_json_parse(&a, big_body, (size_t)len, NULL, &v, &e) == 0);
	CHECK_EQ_INT(sl_count_tokens_local(v),
	             3 + 4 + (int64_t)((reference_units((const unsigned char *)big, sizeof big) + 11) / 12));
	sl_arena_release(&a);
}

TEST(count_tokens_local_estimate)
{
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	/* 40 ASCII bytes = 10 tokens + 3 base + 4 per message */
	struct sl_json *v = parse_text(&a, "{\"messages\":[{\"role\":\"user\",\"content\":"
	                                   "\"0123456789012345678901234567890123456789\"}]}");
	CHECK_EQ_INT(sl_count_tokens_local(v), 17);
	/* system + blocks + an image */
	v = parse_text(&a, "{\"system\":\"abcd\",\"messages\":[{\"role\":\"user\",\"content\":["
	                   "{\"type\":\"text\",\"text\":\"abcdefgh\"},{\"type\":\"image\",\"source\":{}}]}]}");
	CHECK_EQ_INT(sl_count_tokens_local(v), 3 + 4 + 1 + 4 + 2 + 765);
	/* CJK: one token per character; Cyrillic: one per two */
	v = parse_text(&a, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xe4\xbd\xa0\xe5\xa5\xbd\"}]}");
	CHECK_EQ_INT(sl_count_tokens_local(v), 3 + 4 + 2);
	v = parse_text(&a, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\"}]}");
	CHECK_EQ_INT(sl_count_tokens_local(v), 3 + 4 + 2);
	/* punctuation costs twice a letter: "a.b;" = 3 + 6 + 3 + 6 twelfths */
	v = parse_text(&a, "{\"messages\":[{\"role\":\"user\",\"content\":\"a.b;a.b;\"}]}");
	CHECK_EQ_INT(sl_count_tokens_local(v), 3 + 4 + 3);
	/* tools: preamble + per tool + name + description + schema bytes / 4 */
	v = parse_text(&a, "{\"messages\":[],\"tools\":[{\"name\":\"get\",\"description\":\"abcd\","
	                   "\"input_schema\":{\"type\":\"object\"}}]}");
	CHECK_EQ_INT(sl_count_tokens_local(v), 3 + 16 + 8 + 1 + 1 + 5);
	/* earlier thinking is free; tool_use counts name + input JSON */
	v = parse_text(&a, "{\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\","
	                   "\"thinking\":\"long long long\"},{\"type\":\"tool_use\",\"name\":\"abcd\","
	                   "\"input\":{\"a\":1}}]}]}");
	CHECK_EQ_INT(sl_count_tokens_local(v), 3 + 4 + 4 + 1 + 2);
	CHECK_EQ_INT(sl_count_tokens_local(NULL), SL_ERROR);
	v = parse_text(&a, "[]");
	CHECK_EQ_INT(sl_count_tokens_local(v), SL_ERROR);
	sl_arena_release(&a);
}

/* ctx outputs for every route/format pair. */
TEST(ctx_outputs)
{
	static const struct {
		enum sl_route route;
		enum sl_format format;
		const char *body;
		enum sl_route upstream_route;
		bool stream, usage, thinking;
	} cases[] = {
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[],\"stream\":true}", SL_ROUTE_MESSAGES, true, false, false },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[],\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
		  SL_ROUTE_MESSAGES, true, true, false },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_OPENAI,
		  "{\"messages\":[],\"stream\":true}", SL_ROUTE_CHAT_COMPLETIONS, true, false, false },
		{ SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_OPENAI,
		  "{\"messages\":[],\"stream\":false}", SL_ROUTE_CHAT_COMPLETIONS, false, false, false },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI,
		  "{\"messages\":[],\"stream\":true,\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":2000}}",
		  SL_ROUTE_CHAT_COMPLETIONS, true, true, true },
		{ SL_ROUTE_MESSAGES, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[],\"stream\":true}", SL_ROUTE_MESSAGES, true, true, false },
		{ SL_ROUTE_RESPONSES, SL_FORMAT_OPENAI,
		  "{\"input\":\"x\",\"stream\":true}", SL_ROUTE_CHAT_COMPLETIONS, true, true, false },
		{ SL_ROUTE_RESPONSES, SL_FORMAT_ANTHROPIC,
		  "{\"input\":\"x\",\"stream\":true,\"reasoning\":{\"effort\":\"low\"}}", SL_ROUTE_MESSAGES,
		  true, true, true },
		{ SL_ROUTE_COMPLETIONS, SL_FORMAT_ANTHROPIC,
		  "{\"prompt\":\"x\",\"stream\":true}", SL_ROUTE_MESSAGES, true, false, false },
		{ SL_ROUTE_COMPLETIONS, SL_FORMAT_OPENAI,
		  "{\"prompt\":\"x\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
		  SL_ROUTE_CHAT_COMPLETIONS, true, true, false },
		{ SL_ROUTE_COUNT_TOKENS, SL_FORMAT_ANTHROPIC,
		  "{\"messages\":[]}", SL_ROUTE_COUNT_TOKENS, false, true, false },
		{ SL_ROUTE_EMBEDDINGS, SL_FORMAT_OPENAI, "{\"input\":\"x\"}", SL_ROUTE_EMBEDDINGS,
		  false, false, false },
	};
	for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++) {
		struct conv cv;
		conv_request(&cv, cases[i].route, cases[i].format, cases[i].body);
		if (cv.rc != 0 || cv.ctx.upstream_route != cases[i].upstream_route ||
		    cv.ctx.stream != cases[i].stream || cv.ctx.client_wants_usage != cases[i].usage ||
		    cv.ctx.thinking != cases[i].thinking)
			FAIL_AT("ctx_outputs", "case %zu: rc %d (%s) route %s stream %d usage %d thinking %d",
			        i, cv.rc, cv.message ? cv.message : "", sl_route_name(cv.ctx.upstream_route),
			        cv.ctx.stream, cv.ctx.client_wants_usage, cv.ctx.thinking);
		/* Every OpenAI-format upstream stream asks for usage. */
		if (cv.rc == 0 && cases[i].stream && cv.ctx.upstream_route == SL_ROUTE_CHAT_COMPLETIONS)
			CHECK_CONTAINS(cv.text, "\"stream_options\":{\"include_usage\":true}");
		sl_arena_release(&cv.a);
	}
}

/* Round trips through both converters keep what clients depend on: ids,
 * tool inputs, signatures, redacted thinking. */
TEST(round_trip_anthropic_history_through_openai)
{
	static const char body[] =
		"{\"model\":\"m\",\"max_tokens\":2048,\"messages\":[{\"role\":\"user\",\"content\":\"go\"},"
		"{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"plan\","
		"\"signature\":\"c2ln\"},{\"type\":\"redacted_thinking\",\"data\":\"UkVE\"},"
		"{\"type\":\"text\",\"text\":\"calling\"},{\"type\":\"tool_use\",\"id\":\"toolu_01\","
		"\"name\":\"read\",\"input\":{\"path\":\"/a\",\"n\":1.50}},{\"type\":\"tool_use\","
		"\"id\":\"toolu_02\",\"name\":\"read\",\"input\":{}}]},{\"role\":\"user\",\"content\":["
		"{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_01\",\"content\":\"A\"},"
		"{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_02\",\"content\":\"B\"}]}]}";
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	struct sl_json *in = parse_text(&a, body), *chat, *back;
	const char *msg;
	struct sl_convert_ctx ctx;
	ctx_init(&ctx, SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI);
	CHECK_EQ_INT(sl_convert_request(&a, &ctx, in, &chat, &msg), 0);
	ctx_init(&ctx, SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC);
	ctx.upstream_model = "m";
	CHECK_EQ_INT(sl_convert_request(&a, &ctx, chat, &back, &msg), 0);
	char *t = back ? sl_json_serialize(&a, back, &(size_t){ 0 }) : NULL;
	CHECK_CONTAINS(t, "{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":"
	                  "\"plan\",\"signature\":\"c2ln\"},{\"type\":\"redacted_thinking\",\"data\":"
	                  "\"UkVE\"},{\"type\":\"text\",\"text\":\"calling\"},{\"type\":\"tool_use\","
	                  "\"id\":\"toolu_01\",\"name\":\"read\",\"input\":{\"path\":\"/a\",\"n\":1.50}},"
	                  "{\"type\":\"tool_use\",\"id\":\"toolu_02\",\"name\":\"read\",\"input\":{}}]}");
	CHECK_CONTAINS(t, "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":"
	                  "\"toolu_01\",\"content\":\"A\"},{\"type\":\"tool_result\",\"tool_use_id\":"
	                  "\"toolu_02\",\"content\":\"B\"}]}");
	sl_arena_release(&a);
}

/* An Anthropic response converted to chat and back keeps its blocks. */
TEST(round_trip_responses)
{
	static const char body[] =
		"{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"x\",\"content\":["
		"{\"type\":\"thinking\",\"thinking\":\"t\",\"signature\":\"sig\"},{\"type\":\"text\","
		"\"text\":\"hi\"},{\"type\":\"tool_use\",\"id\":\"toolu_9\",\"name\":\"f\",\"input\":"
		"{\"q\":[1,2]}}],\"stop_reason\":\"tool_use\",\"stop_sequence\":null,\"usage\":{"
		"\"input_tokens\":5,\"cache_creation_input_tokens\":7,\"cache_read_input_tokens\":11,"
		"\"output_tokens\":13}}";
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	struct sl_json *in = parse_text(&a, body), *chat, *back;
	const char *msg;
	struct sl_convert_ctx ctx;
	ctx_init(&ctx, SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_ANTHROPIC);
	CHECK_EQ_INT(sl_convert_response(&a, &ctx, in, &chat, &msg), 0);
	ctx_init(&ctx, SL_ROUTE_MESSAGES, SL_FORMAT_OPENAI);
	ctx.client_model = "x";
	CHECK_EQ_INT(sl_convert_response(&a, &ctx, chat, &back, &msg), 0);
	char *t = back ? sl_json_serialize(&a, back, &(size_t){ 0 }) : NULL;
	CHECK_EQ_MEM(t, t ? strlen(t) : 0, body);
	sl_arena_release(&a);
}

int main(int argc, char **argv)
{
	update_mode = argc > 1 && strcmp(argv[1], "--update") == 0;
	run_fixtures();
	if (update_mode)
		return test_summary();
	RUN(request_errors_name_the_field);
	RUN(response_errors_for_bad_upstream_bodies);
	RUN(max_tokens_default_and_budget_clamp);
	RUN(subtrees_are_shared_not_copied);
	RUN(arena_exhaustion_fails_cleanly);
	RUN(error_body_shapes_and_types);
	RUN(usage_from_responses);
	RUN(count_tokens_local_estimate);
	RUN(count_tokens_text_blocks_match_byte_rule);
	RUN(ctx_outputs);
	RUN(round_trip_anthropic_history_through_openai);
	RUN(round_trip_responses);
	printf("%d passed, %d failed\n", test_passed_num, test_failed_num);
	return test_summary();
}
