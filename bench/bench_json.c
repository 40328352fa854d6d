/*
 * bench_json.c - parse + serialise throughput of sluice's JSON against
 * jansson and cJSON, in the same run, on three generated LLM requests:
 *
 *   1 KB   an OpenAI chat request: system + user message, a few options;
 *   60 KB  an Anthropic messages request as coding agents send it: system
 *          blocks with cache_control, 30 tools with JSON-schema input, a few
 *          turns of tool_use / tool_result;
 *   1 MB   a long OpenAI multi-turn tool loop with file contents in tool
 *          results.
 *
 * Text is generated deterministically (fixed PRNG seed): words, newlines,
 * quotes, tabs, backslashes, and some non-ASCII (accents, CJK, emoji), so
 * the escaping paths matter as they do in real traffic.
 *
 *   build/bench_json [seconds_per_case]      (default 0.5)
 *
 * Each figure is MB/s of input JSON per core, from the fastest ~50 us batch
 * of ops over seconds_per_case (robust to other load on the machine); one
 * op is parse + compact serialise + free.
 */
#include "sluice/json.h"
#include "sluice/pool.h"

#include <cjson/cJSON.h>
#include <jansson.h>
#include <string.h>
#include <time.h>

/* --- deterministic generator ------------------------------------------------ */

struct gen {
	char *p;
	size_t len, cap;
	uint64_t rng;
};

static uint64_t rnd(struct gen *g)
{
	g->rng ^= g->rng << 13;
	g->rng ^= g->rng >> 7;
	g->rng ^= g->rng << 17;
	return g->rng;
}

static void put(struct gen *g, const char *s, size_t n)
{
	if (g->len + n + 1 > g->cap) {
		g->cap = (g->len + n + 1) * 2;
		g->p = realloc(g->p, g->cap);
		if (!g->p)
			abort();
	}
	memcpy(g->p + g->len, s, n);
	g->len += n;
	g->p[g->len] = '\0';
}

static void puts_(struct gen *g, const char *s)
{
	put(g, s, strlen(s));
}

static void putf(struct gen *g, const char *fmt, ...) SL_PRINTF(2, 3);
static void putf(struct gen *g, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	put(g, tmp, (size_t)n);
}

static const char *const words[] = {
	"the", "model", "request", "function", "returns", "value", "error", "file", "line",
	"please", "update", "config", "test", "build", "server", "stream", "token", "user",
	"assistant", "because", "should", "would", "implementation", "buffer", "parser",
	"with", "from", "into", "which", "when", "this", "that", "code", "change", "add",
	"caf\xc3\xa9", "na\xc3\xafve", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", "\xf0\x9f\x9a\x80",
	"r\xc3\xa9sum\xc3\xa9", "\xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82",
};

/* text writes about n bytes of JSON string contents (no quotes): prose with
 * \n every line, some \"quoted\" words, and code-like lines with \t and \\. */
static void text(struct gen *g, size_t n)
{
	size_t start = g->len, line = 0;
	while (g->len - start < n) {
		uint64_t r = rnd(g);
		size_t nwords = SL_ARRAY_LEN(words);
		/* mostly ASCII words; a non-ASCII one about 1 in 20 */
		size_t w = (r % 20 == 0) ? 35 + (r >> 8) % (nwords - 35) : (r >> 8) % 35;
		if ((r >> 20) % 17 == 0) {
			puts_(g, "\\\"");
			puts_(g, words[w]);
			puts_(g, "\\\"");
		} else if ((r >> 20) % 53 == 0) {
			puts_(g, "C:\\\\path\\\\");
			puts_(g, words[w]);
		} else {
			puts_(g, words[w]);
		}
		line += strlen(words[w]) + 1;
		if (line > 60 + (r >> 32) % 40) {
			puts_(g, (r >> 40) % 4 == 0 ? "\\n\\t" : "\\n");
			line = 0;
		} else {
			puts_(g, " ");
		}
	}
}

static void gen_small(struct gen *g)
{
	puts_(g, "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"system\",\"content\":\"");
	text(g, 200);
	puts_(g, "\"},{\"role\":\"user\",\"content\":\"");
	text(g, 520);
	puts_(g, "\"}],\"temperature\":0.7,\"top_p\":1,\"max_tokens\":1024,\"stream\":true,"
	         "\"stream_options\":{\"include_usage\":true},\"user\":\"user-1234\","
	         "\"metadata\":{\"session\":\"b6f1c9d2-8a1e-4f0b-9b7e-2f3c4d5e6f70\"}}");
}

static void schema_property(struct gen *g, int i, int depth)
{
	static const char *const types[] = { "string", "integer", "boolean", "number" };
	putf(g, "\"param_%d\":{", i);
	if (depth == 0 && i % 4 == 3) {
		puts_(g, "\"type\":\"object\",\"description\":\"");
		text(g, 60);
		puts_(g, "\",\"properties\":{");
		for (int k = 0; k < 3; k++) {
			if (k)
				puts_(g, ",");
			schema_property(g, k, depth + 1);
		}
		puts_(g, "},\"required\":[\"param_0\"],\"additionalProperties\":false}");
		return;
	}
	if (i % 5 == 4) {
		puts_(g, "\"type\":\"array\",\"items\":{\"type\":\"string\",\"enum\":[\"auto\","
		         "\"low\",\"high\"]},\"description\":\"");
		text(g, 50);
		puts_(g, "\"}");
		return;
	}
	putf(g, "\"type\":\"%s\",\"description\":\"", types[i % 4]);
	text(g, 55);
	puts_(g, "\"");
	if (i % 4 == 1)
		puts_(g, ",\"minimum\":0,\"maximum\":1000000");
	puts_(g, "}");
}

static void gen_agent(struct gen *g)
{
	puts_(g, "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":32000,\"stream\":true,"
	         "\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":10000},"
	         "\"system\":[{\"type\":\"text\",\"text\":\"");
	text(g, 2000);
	puts_(g, "\",\"cache_control\":{\"type\":\"ephemeral\"}}],\"tools\":[");
	for (int t = 0; t < 30; t++) {
		if (t)
			puts_(g, ",");
		putf(g, "{\"name\":\"tool_%02d\",\"description\":\"", t);
		text(g, 250);
		puts_(g, "\",\"input_schema\":{\"type\":\"object\",\"properties\":{");
		for (int i = 0; i < 6; i++) {
			if (i)
				puts_(g, ",");
			schema_property(g, i, 0);
		}
		puts_(g, "},\"required\":[\"param_0\",\"param_1\"],"
		         "\"$schema\":\"http://json-schema.org/draft-07/schema#\"}}");
	}
	puts_(g, "],\"messages\":[");
	for (int turn = 0; turn < 6; turn++) {
		if (turn)
			puts_(g, ",");
		puts_(g, "{\"role\":\"user\",\"content\":[");
		if (turn) {
			putf(g, "{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_01A%08d\","
			        "\"content\":\"", turn);
			text(g, 900);
			puts_(g, "\"},");
		}
		puts_(g, "{\"type\":\"text\",\"text\":\"");
		text(g, 400);
		puts_(g, "\"}]},{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\","
		         "\"thinking\":\"");
		text(g, 300);
		puts_(g, "\",\"signature\":\"EqQBCkYIBxgCKkDk4n0b3Zk1dW5pY29kZSBzaWduYXR1cmUgZm9y"
		         "IHRlc3Rpbmc=\"},{\"type\":\"text\",\"text\":\"");
		text(g, 200);
		putf(g, "\"},{\"type\":\"tool_use\",\"id\":\"toolu_01A%08d\",\"name\":\"tool_%02d\","
		        "\"input\":{\"param_0\":\"src/main.c\",\"param_1\":%d,\"param_2\":true}}]}",
		     turn + 1, turn * 5, turn * 100);
	}
	puts_(g, "]}");
}

static void gen_large(struct gen *g)
{
	puts_(g, "{\"model\":\"gpt-4.1\",\"stream\":true,\"parallel_tool_calls\":true,"
	         "\"messages\":[{\"role\":\"system\",\"content\":\"");
	text(g, 4000);
	puts_(g, "\"}");
	int turn = 0;
	while (g->len < 1000000) {
		puts_(g, ",{\"role\":\"user\",\"content\":\"");
		text(g, 300);
		putf(g, "\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":"
		        "\"call_%06d\",\"type\":\"function\",\"function\":{\"name\":\"read_file\","
		        "\"arguments\":\"{\\\"path\\\":\\\"src/file_%d.c\\\",\\\"limit\\\":%d}\"}}]},"
		        "{\"role\":\"tool\",\"tool_call_id\":\"call_%06d\",\"content\":\"",
		     turn, turn, 400 + turn, turn);
		text(g, 9000);
		puts_(g, "\"}");
		turn++;
	}
	puts_(g, "],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"read_file\","
	         "\"description\":\"Read a file\",\"parameters\":{\"type\":\"object\","
	         "\"properties\":{\"path\":{\"type\":\"string\"},\"limit\":{\"type\":\"integer\"}},"
	         "\"required\":[\"path\"]}}}]}");
}

/* --- the three libraries ---------------------------------------------------- */

static struct sl_bufpool pool;
static char *dump_buf;
static size_t dump_cap;

static size_t op_sluice(const char *text, size_t len)
{
	struct sl_arena a;
	sl_arena_init(&a, &pool, 64 << 20);
	struct sl_json *v;
	struct sl_json_error err;
	if (sl_json_parse(&a, text, len, NULL, &v, &err) != 0) {
		fprintf(stderr, "sluice: %s at %zu\n", err.message, err.offset);
		exit(1);
	}
	size_t out_len = 0;
	char *out = sl_json_serialize(&a, v, &out_len);
	if (!out)
		abort();
	sl_arena_release(&a);
	return out_len;
}

static size_t op_jansson(const char *text, size_t len)
{
	json_error_t err;
	json_t *j = json_loadb(text, len, 0, &err);
	if (!j) {
		fprintf(stderr, "jansson: %s\n", err.text);
		exit(1);
	}
	size_t n = json_dumpb(j, dump_buf, dump_cap, JSON_COMPACT);
	if (n > dump_cap)
		abort();
	json_decref(j);
	return n;
}

static size_t op_cjson(const char *text, size_t len)
{
	cJSON *j = cJSON_ParseWithLength(text, len);
	if (!j) {
		fprintf(stderr, "cJSON: parse failed\n");
		exit(1);
	}
	char *out = cJSON_PrintUnformatted(j);
	size_t n = strlen(out);
	cJSON_free(out);
	cJSON_Delete(j);
	return n;
}

/* Split timing for sluice: parse only and serialise only. */
static size_t op_sluice_parse(const char *text, size_t len)
{
	struct sl_arena a;
	sl_arena_init(&a, &pool, 64 << 20);
	struct sl_json *v;
	struct sl_json_error err;
	if (sl_json_parse(&a, text, len, NULL, &v, &err) != 0)
		abort();
	sl_arena_release(&a);
	return len;
}

static struct sl_arena ser_arena;
static struct sl_json *ser_tree;

static size_t op_sluice_write(const char *text, size_t len)
{
	size_t n = sl_json_serialized_len(ser_tree);
	sl_json_write(ser_tree, dump_buf);
	return n;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* measure returns MB/s from the fastest batch: op runs in batches of about
 * 50 us for `seconds`, and the quickest batch counts. On a shared machine
 * this is what the code costs; an average would mostly measure the
 * neighbours. */
static double measure(size_t (*op)(const char *, size_t), const char *text, size_t len,
                      double seconds)
{
	double t0 = now_s();
	op(text, len);
	double one = now_s() - t0;
	size_t batch = one > 50e-6 ? 1 : (size_t)(50e-6 / (one > 1e-9 ? one : 1e-9)) + 1;
	double best = 1e30, start = now_s();
	do {
		double b0 = now_s();
		for (size_t k = 0; k < batch; k++)
			op(text, len);
		double t = now_s() - b0;
		if (t < best)
			best = t;
	} while (now_s() - start < seconds);
	return (double)len * (double)batch / best / 1e6;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 0.5;
	if (seconds <= 0)
		seconds = 0.5;
	if (sl_bufpool_init(&pool, (size_t)1 << 30) != 0)
		return 1;
	struct {
		const char *name;
		void (*gen)(struct gen *);
		struct gen g;
	} cases[] = {
		{ "1 KB chat", gen_small, { 0 } },
		{ "60 KB agent", gen_agent, { 0 } },
		{ "1 MB history", gen_large, { 0 } },
	};
	printf("parse + compact serialise, MB/s of input per core (fastest 50 us batch)\n\n");
	printf("| request | bytes | sluice | jansson | cJSON | sluice / jansson | cJSON / jansson |\n");
	printf("|---|---:|---:|---:|---:|---:|---:|\n");
	double split[3][2];
	for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++) {
		struct gen *g = &cases[i].g;
		g->rng = 0x9e3779b97f4a7c15ull + i;
		cases[i].gen(g);
		dump_cap = g->len * 2 + 4096;
		dump_buf = realloc(dump_buf, dump_cap);
		/* Sanity: the generated text is compact JSON, so sluice writes it
		 * back byte for byte, and the other two accept it. */
		sl_arena_init(&ser_arena, NULL, 0);
		struct sl_json_error err;
		if (sl_json_parse(&ser_arena, g->p, g->len, NULL, &ser_tree, &err) != 0) {
			fprintf(stderr, "%s: %s at %zu\n", cases[i].name, err.message, err.offset);
			return 1;
		}
		size_t n = sl_json_write(ser_tree, dump_buf);
		if (n != g->len || memcmp(dump_buf, g->p, n) != 0) {
			fprintf(stderr, "%s: sluice output differs from the input\n", cases[i].name);
			return 1;
		}
		op_jansson(g->p, g->len);
		op_cjson(g->p, g->len);

		double s = measure(op_sluice, g->p, g->len, seconds);
		double j = measure(op_jansson, g->p, g->len, seconds);
		double c = measure(op_cjson, g->p, g->len, seconds);
		split[i][0] = measure(op_sluice_parse, g->p, g->len, seconds);
		split[i][1] = measure(op_sluice_write, g->p, g->len, seconds);
		sl_arena_release(&ser_arena);
		printf("| %s | %zu | %.0f | %.0f | %.0f | %.2fx | %.2fx |\n", cases[i].name, g->len,
		       s, j, c, s / j, c / j);
		fflush(stdout);
	}
	printf("\nsluice alone: parse only / serialise only (len + write), MB/s\n\n");
	for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++)
		printf("  %-14s parse %6.0f   serialise %6.0f\n", cases[i].name, split[i][0],
		       split[i][1]);
	for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++)
		free(cases[i].g.p);
	free(dump_buf);
	sl_bufpool_destroy(&pool);
	return 0;
}
