/*
 * test_usage.c - unit and property tests for the token-usage scanner.
 * Includes src/usage.c to reach its static matchers.
 *
 * The samples are realistic bodies and streams of each upstream API. Every
 * sample is also fed cut in two at every offset, in three pieces, and byte
 * by byte, each piece in an exact-size heap copy, so that under ASan a read
 * past the bytes handed to the scanner is caught; the result must not
 * depend on the cuts. The last lines ("# throughput ...") are a quick
 * measurement, not a test: they are not counted.
 */
#include "../../src/usage.c"

#include "test.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LIT(s) (s), (sizeof(s) - 1)

/* ---- samples ------------------------------------------------------------- */

static const char openai_chat_body[] =
	"{\n"
	"  \"id\": \"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\n"
	"  \"object\": \"chat.completion\",\n"
	"  \"created\": 1741570283,\n"
	"  \"model\": \"gpt-4o-2024-08-06\",\n"
	"  \"choices\": [\n"
	"    {\n"
	"      \"index\": 0,\n"
	"      \"message\": {\n"
	"        \"role\": \"assistant\",\n"
	"        \"content\": \"Sure. The report said \\\"prompt_tokens\\\": 5 and "
	"\\\"completion_tokens\\\":1, \\\\\\\"cached_tokens\\\\\\\":9.\",\n"
	"        \"refusal\": null,\n"
	"        \"annotations\": []\n"
	"      },\n"
	"      \"logprobs\": null,\n"
	"      \"finish_reason\": \"stop\"\n"
	"    }\n"
	"  ],\n"
	"  \"usage\": {\n"
	"    \"prompt_tokens\": 1117,\n"
	"    \"completion_tokens\": 46,\n"
	"    \"total_tokens\": 1163,\n"
	"    \"prompt_tokens_details\": {\n"
	"      \"cached_tokens\": 1024,\n"
	"      \"audio_tokens\": 0\n"
	"    },\n"
	"    \"completion_tokens_details\": {\n"
	"      \"reasoning_tokens\": 0,\n"
	"      \"audio_tokens\": 0,\n"
	"      \"accepted_prediction_tokens\": 0,\n"
	"      \"rejected_prediction_tokens\": 0\n"
	"    }\n"
	"  },\n"
	"  \"service_tier\": \"default\",\n"
	"  \"system_fingerprint\": \"fp_fc9f1d7035\"\n"
	"}\n";

#define CHUNK_HEAD "data: {\"id\":\"chatcmpl-C1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283," \
	"\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_06737a9306\","
static const char openai_chat_stream[] =
	CHUNK_HEAD "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\","
	"\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
	CHUNK_HEAD "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,"
	"\"finish_reason\":null}],\"usage\":null}\n\n"
	CHUNK_HEAD "\"choices\":[{\"index\":0,\"delta\":{\"content\":\" {\\\"prompt_tokens\\\": 1, "
	"\\\"completion_tokens\\\":2}\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
	CHUNK_HEAD "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_7\","
	"\"type\":\"function\",\"function\":{\"name\":\"log\",\"arguments\":\"{\\\"output_tokens\\\": 3,"
	"\\\"cached_tokens\\\":4}\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
	CHUNK_HEAD "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],"
	"\"usage\":null}\n\n"
	CHUNK_HEAD "\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10,"
	"\"total_tokens\":29,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},"
	"\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,"
	"\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n"
	"data: [DONE]\n\n";

/* Some OpenAI-compatible providers send the running usage in every chunk. */
static const char openai_chat_stream_every_chunk[] =
	CHUNK_HEAD "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A\"}}],"
	"\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":1,\"total_tokens\":13}}\n\n"
	CHUNK_HEAD "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"B\"}}],"
	"\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2,\"total_tokens\":14}}\n\n"
	CHUNK_HEAD "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],"
	"\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\n\n"
	"data: [DONE]\n\n";

static const char openai_completions_body[] =
	"{\"id\":\"cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7\",\"object\":\"text_completion\",\"created\":1589478378,"
	"\"model\":\"gpt-3.5-turbo-instruct\",\"choices\":[{\"text\":\"\\n\\nThis is indeed a test\","
	"\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}],"
	"\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}";

static const char openai_embeddings_body[] =
	"{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":"
	"[0.0023064255,-0.009327292,-0.0028842222,0.015797347,-0.0073521524]}],"
	"\"model\":\"text-embedding-3-small\",\"usage\":{\"prompt_tokens\":8,\"total_tokens\":8}}";

#define RESPONSE_HEAD "\"id\":\"resp_67ccd2bed1ec8190\",\"object\":\"response\",\"created_at\":1741476542,"
#define RESPONSE_PARAMS                                                                       \
	"\"parallel_tool_calls\":true,\"previous_response_id\":null,\"reasoning\":{\"effort\":\"low\"," \
	"\"summary\":null},\"store\":true,\"temperature\":1.0,\"text\":{\"format\":{\"type\":\"text\"}}," \
	"\"tool_choice\":\"auto\",\"tools\":[],\"top_p\":1.0,\"truncation\":\"disabled\","
static const char responses_body[] =
	"{" RESPONSE_HEAD "\"status\":\"completed\",\"error\":null,\"incomplete_details\":null,"
	"\"instructions\":null,\"max_output_tokens\":1024,\"model\":\"gpt-4.1-2025-04-14\","
	"\"output\":[{\"type\":\"message\",\"id\":\"msg_67ccd2bf\",\"status\":\"completed\","
	"\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"In a peaceful grove "
	"\\\"input_tokens\\\":0\",\"annotations\":[]}]}]," RESPONSE_PARAMS
	"\"usage\":{\"input_tokens\":36,\"input_tokens_details\":{\"cached_tokens\":0},"
	"\"output_tokens\":87,\"output_tokens_details\":{\"reasoning_tokens\":64},"
	"\"total_tokens\":123},\"user\":null,\"metadata\":{}}";

static const char responses_stream[] =
	"event: response.created\n"
	"data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{" RESPONSE_HEAD
	"\"status\":\"in_progress\",\"error\":null,\"max_output_tokens\":2048,\"model\":\"gpt-4.1\","
	"\"output\":[]," RESPONSE_PARAMS "\"usage\":null,\"user\":null,\"metadata\":{}}}\n\n"
	"event: response.in_progress\n"
	"data: {\"type\":\"response.in_progress\",\"sequence_number\":1,\"response\":{" RESPONSE_HEAD
	"\"status\":\"in_progress\",\"output\":[],\"usage\":null}}\n\n"
	"event: response.output_text.delta\n"
	"data: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_1\","
	"\"output_index\":0,\"content_index\":0,\"delta\":\"Hi \\\"output_tokens\\\": 1\"}\n\n"
	"event: response.function_call_arguments.delta\n"
	"data: {\"type\":\"response.function_call_arguments.delta\",\"sequence_number\":5,"
	"\"item_id\":\"fc_1\",\"output_index\":1,\"delta\":\"{\\\"input_tokens\\\":2\"}\n\n"
	"event: response.completed\n"
	"data: {\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{" RESPONSE_HEAD
	"\"status\":\"completed\",\"max_output_tokens\":2048,\"model\":\"gpt-4.1\",\"output\":[],"
	RESPONSE_PARAMS "\"usage\":{\"input_tokens\":2006,\"input_tokens_details\":"
	"{\"cached_tokens\":1920},\"output_tokens\":312,\"output_tokens_details\":"
	"{\"reasoning_tokens\":256},\"total_tokens\":2318},\"user\":null,\"metadata\":{}}}\n\n";

static const char anthropic_body[] =
	"{\"id\":\"msg_013Zva2CMHLNnXjNJJKqJ2EF\",\"type\":\"message\",\"role\":\"assistant\","
	"\"model\":\"claude-sonnet-4-20250514\",\"content\":[{\"type\":\"text\",\"text\":"
	"\"Hi! \\\"cache_read_input_tokens\\\":7\"}],\"stop_reason\":\"end_turn\","
	"\"stop_sequence\":null,\"usage\":{\"input_tokens\":2095,\"cache_creation_input_tokens\":0,"
	"\"cache_read_input_tokens\":0,\"cache_creation\":{\"ephemeral_5m_input_tokens\":0,"
	"\"ephemeral_1h_input_tokens\":0},\"output_tokens\":503,\"service_tier\":\"standard\"}}";

#define ANTHROPIC_START                                                                       \
	"event: message_start\n"                                                              \
	"data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\"," \
	"\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-20250514\"," \
	"\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,"         \
	"\"cache_creation_input_tokens\":1024,\"cache_read_input_tokens\":2048,"              \
	"\"cache_creation\":{\"ephemeral_5m_input_tokens\":1024,\"ephemeral_1h_input_tokens\":0}," \
	"\"output_tokens\":2,\"service_tier\":\"standard\"}}}\n\n"
#define ANTHROPIC_BLOCKS                                                                      \
	"event: content_block_start\n"                                                        \
	"data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n" \
	"event: ping\n"                                                                       \
	"data: {\"type\": \"ping\"}\n\n"                                                      \
	"event: content_block_delta\n"                                                        \
	"data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n" \
	"event: content_block_delta\n"                                                        \
	"data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","  \
	"\"text\":\"! \\\"output_tokens\\\": 1, \\\\\\\"input_tokens\\\\\\\":1\"}}\n\n"        \
	"event: content_block_stop\n"                                                         \
	"data: {\"type\":\"content_block_stop\",\"index\":0}\n\n"                             \
	"event: content_block_start\n"                                                        \
	"data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\"," \
	"\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\n\n" \
	"event: content_block_delta\n"                                                        \
	"data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\"," \
	"\"partial_json\":\"{\\\"input_tokens\\\": 1\"}}\n\n"                                 \
	"event: content_block_stop\n"                                                         \
	"data: {\"type\":\"content_block_stop\",\"index\":1}\n\n"
static const char anthropic_stream[] =
	ANTHROPIC_START ANTHROPIC_BLOCKS
	"event: message_delta\n"
	"data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},"
	"\"usage\":{\"output_tokens\":89}}\n\n"
	"event: message_stop\n"
	"data: {\"type\":\"message_stop\"}\n\n";

/* Newer message_delta events repeat the input and cache counts. */
static const char anthropic_stream_full_delta[] =
	ANTHROPIC_START ANTHROPIC_BLOCKS
	"event: message_delta\n"
	"data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},"
	"\"usage\":{\"input_tokens\":480,\"cache_creation_input_tokens\":1000,"
	"\"cache_read_input_tokens\":2000,\"output_tokens\":91,"
	"\"server_tool_use\":{\"web_search_requests\":0}}}\n\n"
	"event: message_stop\n"
	"data: {\"type\":\"message_stop\"}\n\n";

/* A non-streamed tool_use "input" is real JSON the model wrote: the forged
 * keys in it are real keys, and the real usage after them must win. */
static const char anthropic_tool_forgery_body[] =
	"{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-20250514\","
	"\"content\":[{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"record\",\"input\":"
	"{\"input_tokens\":1,\"output_tokens\":0,\"cached_tokens\":99,\"prompt_tokens\":3,"
	"\"cache_creation_input_tokens\":77,\"cache_read_input_tokens\":5}}],"
	"\"stop_reason\":\"tool_use\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":300,"
	"\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":40}}";

struct sample {
	const char *name;
	const char *text;
	size_t len;
};

#define SAMPLE(s) { #s, s, sizeof(s) - 1 }
static const struct sample samples[] = {
	SAMPLE(openai_chat_body),
	SAMPLE(openai_chat_stream),
	SAMPLE(openai_chat_stream_every_chunk),
	SAMPLE(openai_completions_body),
	SAMPLE(openai_embeddings_body),
	SAMPLE(responses_body),
	SAMPLE(responses_stream),
	SAMPLE(anthropic_body),
	SAMPLE(anthropic_stream),
	SAMPLE(anthropic_stream_full_delta),
	SAMPLE(anthropic_tool_forgery_body),
};

/* ---- helpers ------------------------------------------------------------- */

/* feed_copy feeds text[0..len) from an exact-size heap copy. */
static void feed_copy(struct sl_usage_scanner *s, const char *text, size_t len, struct sl_token_usage *u)
{
	char *p = malloc(len ? len : 1);
	if (p == NULL)
		abort();
	memcpy(p, text, len);
	sl_usage_scanner_feed(s, len ? p : NULL, len, u);
	free(p);
}

/* scan_cuts feeds text cut at the sorted offsets cuts[0..num_cuts). */
static struct sl_token_usage scan_cuts(const char *text, size_t len, const size_t *cuts, size_t num_cuts)
{
	struct sl_usage_scanner s;
	struct sl_token_usage u = { 0 };
	sl_usage_scanner_init(&s);
	size_t from = 0;
	for (size_t i = 0; i < num_cuts; i++) {
		feed_copy(&s, text + from, cuts[i] - from, &u);
		from = cuts[i];
	}
	feed_copy(&s, text + from, len - from, &u);
	return u;
}

static struct sl_token_usage scan(const char *text, size_t len)
{
	return scan_cuts(text, len, NULL, 0);
}

static struct sl_token_usage scan_bytewise(const char *text, size_t len)
{
	struct sl_usage_scanner s;
	struct sl_token_usage u = { 0 };
	sl_usage_scanner_init(&s);
	for (size_t i = 0; i < len; i++) {
		feed_copy(&s, text + i, 1, &u);
		sl_usage_scanner_feed(&s, NULL, 0, &u); /* empty feeds change nothing */
	}
	return u;
}

static bool usage_eq(const struct sl_token_usage *a, const struct sl_token_usage *b)
{
	return a->input_tokens == b->input_tokens && a->output_tokens == b->output_tokens &&
	       a->cache_read_tokens == b->cache_read_tokens &&
	       a->cache_write_tokens == b->cache_write_tokens && a->fields_seen == b->fields_seen;
}

/* split_mismatch: the first cut offset at which feeding text in two pieces
 * differs from feeding it whole, len + 1 if byte by byte differs, or -1. */
static long split_mismatch(const char *text, size_t len)
{
	struct sl_token_usage whole = scan(text, len);
	for (size_t cut = 0; cut <= len; cut++) {
		struct sl_token_usage u = scan_cuts(text, len, &cut, 1);
		if (!usage_eq(&u, &whole))
			return (long)cut;
	}
	struct sl_token_usage b = scan_bytewise(text, len);
	if (!usage_eq(&b, &whole))
		return (long)len + 1;
	return -1;
}

#define CHECK_USAGE(u, in, out, cread, cwrite, bits)                                   \
	do {                                                                           \
		CHECK_EQ_INT((u).input_tokens, (in));                                  \
		CHECK_EQ_INT((u).output_tokens, (out));                                \
		CHECK_EQ_INT((u).cache_read_tokens, (cread));                          \
		CHECK_EQ_INT((u).cache_write_tokens, (cwrite));                        \
		CHECK_EQ_INT((u).fields_seen, (bits));                                 \
	} while (0)

/* CHECK_TEXT: text scans to the given usage whole and at every cut. */
#define CHECK_TEXT(lit, in, out, cread, cwrite, bits)                                  \
	do {                                                                           \
		struct sl_token_usage u_ = scan(LIT(lit));                                   \
		CHECK_USAGE(u_, in, out, cread, cwrite, bits);                         \
		CHECK_EQ_INT(split_mismatch(LIT(lit)), -1);                            \
	} while (0)

#define IN SL_USAGE_INPUT
#define OUT SL_USAGE_OUTPUT
#define CREAD SL_USAGE_CACHE_READ
#define CWRITE SL_USAGE_CACHE_WRITE
#define CIN SL_USAGE_CACHE_READ_IN_INPUT
#define C1H SL_USAGE_CACHE_WRITE_1H

/* ---- each format --------------------------------------------------------- */

TEST(openai_chat_body)
{
	struct sl_token_usage u = scan(LIT(openai_chat_body));
	CHECK_USAGE(u, 1117, 46, 1024, 0, IN | OUT | CREAD | CIN);
	CHECK_EQ_INT(sl_usage_total_tokens(&u), 1163); /* cached is inside prompt */
}

TEST(openai_chat_stream_include_usage)
{
	struct sl_token_usage u = scan(LIT(openai_chat_stream));
	CHECK_USAGE(u, 19, 10, 0, 0, IN | OUT | CREAD | CIN);
	CHECK_EQ_INT(sl_usage_total_tokens(&u), 29);
}

TEST(openai_chat_stream_usage_every_chunk)
{
	struct sl_token_usage u = scan(LIT(openai_chat_stream_every_chunk));
	CHECK_USAGE(u, 12, 3, 0, 0, IN | OUT);
	CHECK_EQ_INT(sl_usage_total_tokens(&u), 15);
}

TEST(openai_completions_body)
{
	struct sl_token_usage u = scan(LIT(openai_completions_body));
	CHECK_USAGE(u, 5, 7, 0, 0, IN | OUT);
}

TEST(openai_embeddings_body)
{
	struct sl_token_usage u = scan(LIT(openai_embeddings_body));
	CHECK_USAGE(u, 8, 0, 0, 0, IN);
	CHECK_EQ_INT(sl_usage_total_tokens(&u), 8);
}

TEST(responses_body)
{
	/* max_output_tokens and reasoning_tokens are not counts of this body. */
	struct sl_token_usage u = scan(LIT(responses_body));
	CHECK_USAGE(u, 36, 87, 0, 0, IN | OUT | CREAD | CIN);
	CHECK_EQ_INT(sl_usage_total_tokens(&u), 123);
}

TEST(responses_stream)
{
	struct sl_token_usage u = scan(LIT(responses_stream));
	CHECK_USAGE(u, 2006, 312, 1920, 0, IN | OUT | CREAD | CIN);
	CHECK_EQ_INT(sl_usage_total_tokens(&u), 2318);
}

TEST(anthropic_body)
{
	struct sl_token_usage u = scan(LIT(anthropic_body));
	CHECK_USAGE(u, 2095, 503, 0, 0, IN | OUT | CREAD | CWRITE | C1H);
	CHECK_EQ_INT(sl_usage_total_tokens(&u), 2598);
}

TEST(anthropic_stream)
{
	/* message_start: input and cache counts, output 2; message_delta: the
	 * cumulative output, 89. Anthropic counts cache reads apart from input. */
	struct sl_token_usage u = scan(LIT(anthropic_stream));
	CHECK_USAGE(u, 472, 89, 2048, 1024, IN | OUT | CREAD | CWRITE | C1H);
	CHECK_EQ_INT(sl_usage_total_tokens(&u), 472 + 89 + 2048 + 1024);
}

TEST(anthropic_stream_cut_after_message_start)
{
	/* A stream that ends early keeps what message_start reported. */
	struct sl_token_usage u = scan(LIT(ANTHROPIC_START ANTHROPIC_BLOCKS));
	CHECK_USAGE(u, 472, 2, 2048, 1024, IN | OUT | CREAD | CWRITE | C1H);
}

TEST(anthropic_stream_delta_repeats_fields)
{
	struct sl_token_usage u = scan(LIT(anthropic_stream_full_delta));
	CHECK_USAGE(u, 480, 91, 2000, 1000, IN | OUT | CREAD | CWRITE | C1H);
}

TEST(anthropic_tool_input_forgery_overwritten)
{
	struct sl_token_usage u = scan(LIT(anthropic_tool_forgery_body));
	CHECK_USAGE(u, 300, 40, 0, 0, IN | OUT | CREAD | CWRITE);
	CHECK_EQ_INT(sl_usage_total_tokens(&u), 340);
}

/* ---- cuts ---------------------------------------------------------------- */

TEST(every_split_point_and_byte_by_byte)
{
	for (size_t i = 0; i < SL_ARRAY_LEN(samples); i++) {
		long at = split_mismatch(samples[i].text, samples[i].len);
		if (at >= 0)
			FAIL_AT("every_split_point_and_byte_by_byte", "%s differs when cut at %ld%s",
			        samples[i].name, at, at == (long)samples[i].len + 1 ? " (bytewise)" : "");
	}
}

TEST(three_pieces)
{
	static const char text[] =
		"data: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":480,"
		"\"cache_creation_input_tokens\":10,\"cache_read_input_tokens\":\\\\\"x\","
		"\"cached_tokens\" :\t 2000,\"output_tokens\":91}}\n\n";
	size_t len = sizeof(text) - 1;
	struct sl_token_usage whole = scan(text, len);
	CHECK_USAGE(whole, 480, 91, 2000, 10, IN | OUT | CREAD | CWRITE | CIN);
	for (size_t a = 0; a <= len; a++) {
		for (size_t b = a; b <= len; b++) {
			size_t cuts[2] = { a, b };
			struct sl_token_usage u = scan_cuts(text, len, cuts, 2);
			if (!usage_eq(&u, &whole)) {
				FAIL_AT("three_pieces", "differs when cut at %zu and %zu", a, b);
				return;
			}
		}
	}
}

TEST(fast_and_split_name_paths_agree)
{
	/* Whole: match_name_whole decides (28 or more bytes follow the quote).
	 * Cut after the quote, or near the end of a piece: key_step does. */
	for (int i = 0; i < NUM_NAMES; i++) {
		char text[128];
		int n = snprintf(text, sizeof(text), "{\"%s\":123,\"padding_padding_padding\":0}",
		                 names[i].str);
		SL_ASSERT(n > 0 && (size_t)n < sizeof(text));
		struct sl_token_usage whole = scan(text, (size_t)n);
		CHECK(whole.fields_seen & names[i].field);
		uint64_t v = names[i].field == IN      ? whole.input_tokens
		             : names[i].field == OUT   ? whole.output_tokens
		             : names[i].field == CREAD ? whole.cache_read_tokens
		             : names[i].field == C1H   ? whole.cache_write_1h_tokens
		                                       : whole.cache_write_tokens;
		CHECK_EQ_INT(v, 123);
		CHECK_EQ_INT(split_mismatch(text, (size_t)n), -1);
		/* Exactly at the end of a piece: no padding after. */
		n = snprintf(text, sizeof(text), "\"%s\":45", names[i].str);
		struct sl_token_usage tight = scan(text, (size_t)n);
		CHECK(tight.fields_seen & names[i].field);
		CHECK_EQ_INT(split_mismatch(text, (size_t)n), -1);
		/* Both matchers agree on the name itself. */
		char padded[NAME_LEN_MAX + 8];
		memset(padded, 'x', sizeof(padded));
		memcpy(padded, names[i].str, names[i].len);
		padded[names[i].len] = '"';
		CHECK_EQ_INT(match_name_whole(padded), i);
		uint8_t mask = NAMES_ALL;
		for (uint8_t pos = 0; pos <= names[i].len && mask; pos++)
			mask = key_step(mask, pos, (unsigned char)padded[pos]);
		CHECK_EQ_INT(mask, 1u << i);
	}
}

/* ---- key recognition ----------------------------------------------------- */

TEST(escaped_key_in_content_ignored)
{
	/* The model's text is a JSON string: its quotes arrive escaped. */
	CHECK_TEXT("{\"content\":\"say \\\"input_tokens\\\":5\"}", 0, 0, 0, 0, 0);
	CHECK_TEXT("{\"text\":\"\\\\\\\"output_tokens\\\\\\\":5\"}", 0, 0, 0, 0, 0);
	CHECK_TEXT("{\"text\":\"\\\\\\\\\\\"output_tokens\\\\\\\":5\"}", 0, 0, 0, 0, 0);
	/* Odd runs of backslashes escape the quote, even runs do not. */
	CHECK_TEXT("\\\"input_tokens\":1", 0, 0, 0, 0, 0);
	CHECK_TEXT("\\\\\\\"input_tokens\":3", 0, 0, 0, 0, 0);
	CHECK_TEXT("\\\\\"input_tokens\":2", 2, 0, 0, 0, IN);
	CHECK_TEXT("\\\\\\\\\"input_tokens\":4", 4, 0, 0, 0, IN);
	/* A string ending in an escaped backslash closes; the next key counts. */
	CHECK_TEXT("{\"path\":\"C:\\\\\",\"output_tokens\":6}", 0, 6, 0, 0, OUT);
	/* Escaped closing quote of the name: "input_tokens\" is no key. */
	CHECK_TEXT("{\"input_tokens\\\":5}", 0, 0, 0, 0, 0);
}

TEST(escape_parity_across_many_pieces)
{
	/* A run of 1..9 backslashes cut into single bytes before the quote. */
	for (int run = 0; run < 10; run++) {
		char text[64];
		memset(text, '\\', (size_t)run);
		memcpy(text + run, "\"output_tokens\":8", 17);
		size_t len = (size_t)run + 17;
		struct sl_token_usage u = scan_bytewise(text, len);
		CHECK_EQ_INT(u.output_tokens, run % 2 ? 0 : 8);
		CHECK_EQ_INT(split_mismatch(text, len), -1);
	}
}

TEST(whitespace_around_colon)
{
	CHECK_TEXT("{\"input_tokens\": 42}", 42, 0, 0, 0, IN);
	CHECK_TEXT("{\"input_tokens\" :\r\n\t 43}", 43, 0, 0, 0, IN);
	CHECK_TEXT("{\"input_tokens\"\n:\n44\n}", 44, 0, 0, 0, IN);
	/* Not JSON whitespace: a vertical tab or a form feed ends the key. */
	CHECK_TEXT("{\"input_tokens\":\v45}", 0, 0, 0, 0, 0);
	CHECK_TEXT("{\"input_tokens\"\f:45}", 0, 0, 0, 0, 0);
}

TEST(key_followed_by_non_number_ignored)
{
	CHECK_TEXT("{\"output_tokens\":null}", 0, 0, 0, 0, 0);
	CHECK_TEXT("{\"output_tokens\":\"5\"}", 0, 0, 0, 0, 0);
	CHECK_TEXT("{\"output_tokens\":-5}", 0, 0, 0, 0, 0);
	CHECK_TEXT("{\"output_tokens\":true}", 0, 0, 0, 0, 0);
	CHECK_TEXT("{\"output_tokens\":{\"x\":5}}", 0, 0, 0, 0, 0);
	CHECK_TEXT("{\"output_tokens\" 5}", 0, 0, 0, 0, 0);
	/* A null after a count keeps the count. */
	CHECK_TEXT("{\"output_tokens\":7} {\"output_tokens\":null}", 0, 7, 0, 0, OUT);
	/* The count is the leading digit run. */
	CHECK_TEXT("{\"output_tokens\":12.9}", 0, 12, 0, 0, OUT);
	CHECK_TEXT("{\"output_tokens\":0}", 0, 0, 0, 0, OUT);
}

TEST(anthropic_one_hour_cache_writes)
{
	/* cache_creation_input_tokens counts every write; the 1-hour ones are
	 * also given apart, to be priced apart */
	struct sl_token_usage u =
	    scan(LIT("{\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":300,"
	             "\"cache_read_input_tokens\":0,\"cache_creation\":{\"ephemeral_5m_input_tokens\":"
	             "100,\"ephemeral_1h_input_tokens\":200},\"output_tokens\":5}}"));
	CHECK_USAGE(u, 10, 5, 0, 300, IN | OUT | CREAD | CWRITE | C1H);
	CHECK_EQ_INT(u.cache_write_1h_tokens, 200);
	CHECK_EQ_INT(sl_usage_total_tokens(&u), 315);
}

TEST(other_keys_ignored)
{
	CHECK_TEXT("{\"total_tokens\":1,\"reasoning_tokens\":2,\"max_output_tokens\":3,"
	           "\"max_tokens\":4,\"audio_tokens\":5,\"ephemeral_5m_input_tokens\":6,"
	           "\"ephemeral_2h_input_tokens\":7,\"accepted_prediction_tokens\":8,"
	           "\"web_search_requests\":9,\"input_tokens_details\":{},\"Input_tokens\":10,"
	           "\"INPUT_TOKENS\":11,\"input_token\":12,\"input_tokensx\":13,"
	           "\"xinput_tokens\":14,\" input_tokens\":15,\"input_tokens \":16,"
	           "\"cache_tokens\":17,\"cached_token\":18,\"cache_read_tokens\":19,"
	           "\"cache_creation_tokens\":20,\"completion\":21,\"prompt\":22,\"\":23}",
	           0, 0, 0, 0, 0);
}

TEST(near_misses_of_every_name_ignored)
{
	/* Each name with one byte dropped, changed, or added, at every place. */
	for (int i = 0; i < NUM_NAMES; i++) {
		const struct name *n = &names[i];
		for (int pos = 0; pos <= n->len; pos++) {
			for (int kind = 0; kind < 3; kind++) {
				if (kind != 2 && pos == n->len)
					continue;
				char key[64];
				size_t k = 0;
				for (int j = 0; j < n->len; j++) {
					if (j == pos && kind == 2)
						key[k++] = '_';
					if (j == pos && kind == 0)
						continue;
					key[k++] = j == pos && kind == 1 ? (char)(n->str[j] ^ 1) : n->str[j];
				}
				if (pos == n->len && kind == 2)
					key[k++] = 's';
				char text[128];
				int len = snprintf(text, sizeof(text), "{\"%.*s\":5,\"%.*s\": 6}", (int)k, key,
				                   (int)k, key);
				struct sl_token_usage u = scan(text, (size_t)len);
				if (u.fields_seen != 0 || split_mismatch(text, (size_t)len) != -1) {
					FAIL_AT("near_misses_of_every_name_ignored", "%s matched", text);
					return;
				}
			}
		}
	}
}

TEST(failed_key_does_not_hide_the_next)
{
	/* Not JSON, but deterministic: the byte that ends a failed key is read
	 * again as the possible start of the next one. */
	CHECK_TEXT("\"input_tokens\"\"output_tokens\":3", 0, 3, 0, 0, OUT);
	CHECK_TEXT("\"input_tokens\" \"output_tokens\":3", 0, 3, 0, 0, OUT);
	CHECK_TEXT("\"input_tokens\":\"output_tokens\":3", 0, 3, 0, 0, OUT);
	CHECK_TEXT("\"input_tokens\":1\"output_tokens\":3", 1, 3, 0, 0, IN | OUT);
	CHECK_TEXT("\"input_to\"output_tokens\":3", 0, 3, 0, 0, OUT);
	CHECK_TEXT("\"\"output_tokens\":3", 0, 3, 0, 0, OUT);
}

TEST(huge_numbers_saturate)
{
	CHECK_TEXT("{\"input_tokens\":9223372036854775806}", SL_USAGE_TOKENS_MAX - 1, 0, 0, 0, IN);
	CHECK_TEXT("{\"input_tokens\":9223372036854775807}", SL_USAGE_TOKENS_MAX, 0, 0, 0, IN);
	CHECK_TEXT("{\"input_tokens\":9223372036854775808}", SL_USAGE_TOKENS_MAX, 0, 0, 0, IN);
	CHECK_TEXT("{\"input_tokens\":18446744073709551615}", SL_USAGE_TOKENS_MAX, 0, 0, 0, IN);
	CHECK_TEXT("{\"input_tokens\":18446744073709551616}", SL_USAGE_TOKENS_MAX, 0, 0, 0, IN);
	CHECK_TEXT("{\"input_tokens\":000000000000000000000000000000000000000000000000000000000007}",
	           7, 0, 0, 0, IN);
	CHECK_TEXT("{\"input_tokens\":99999999999999999999999999999999999999999999999999999999999}",
	           SL_USAGE_TOKENS_MAX, 0, 0, 0, IN);
	struct sl_token_usage u = scan(LIT("{\"input_tokens\":99999999999999999999999,"
	                             "\"output_tokens\":99999999999999999999999,"
	                             "\"cache_creation_input_tokens\":99999999999999999999999,"
	                             "\"cache_read_input_tokens\":99999999999999999999999}"));
	CHECK_EQ_INT(u.cache_write_tokens, SL_USAGE_TOKENS_MAX);
	CHECK(sl_usage_total_tokens(&u) == SL_USAGE_TOKENS_MAX);
}

TEST(last_value_wins)
{
	CHECK_TEXT("{\"input_tokens\":5}{\"input_tokens\":3}{\"prompt_tokens\":4}", 4, 0, 0, 0, IN);
	CHECK_TEXT("{\"output_tokens\":1}{\"completion_tokens\":100}{\"output_tokens\":2}", 0, 2, 0,
	           0, OUT);
	/* The cache-read flavour follows the key that set it last. */
	CHECK_TEXT("{\"cache_read_input_tokens\":7,\"cached_tokens\":8}", 0, 0, 8, 0, CREAD | CIN);
	CHECK_TEXT("{\"cached_tokens\":8,\"cache_read_input_tokens\":7}", 0, 0, 7, 0, CREAD);
	/* Smaller values win too: no max is kept. */
	CHECK_TEXT("{\"output_tokens\":1000}{\"output_tokens\":9}", 0, 9, 0, 0, OUT);
}

TEST(number_cut_short_keeps_its_digits)
{
	CHECK_TEXT("{\"output_tokens\":12", 0, 12, 0, 0, OUT);
	CHECK_TEXT("{\"output_tokens\": ", 0, 0, 0, 0, 0);
	CHECK_TEXT("{\"output_tokens\"", 0, 0, 0, 0, 0);
	CHECK_TEXT("{\"output_tok", 0, 0, 0, 0, 0);
}

TEST(total_tokens)
{
	struct sl_token_usage openai = { .input_tokens = 100, .output_tokens = 20, .cache_read_tokens = 80,
		                   .fields_seen = IN | OUT | CREAD | CIN };
	CHECK_EQ_INT(sl_usage_total_tokens(&openai), 120);
	struct sl_token_usage anthropic = { .input_tokens = 20, .output_tokens = 20, .cache_read_tokens = 80,
		                      .cache_write_tokens = 5,
		                      .fields_seen = IN | OUT | CREAD | CWRITE };
	CHECK_EQ_INT(sl_usage_total_tokens(&anthropic), 125);
	struct sl_token_usage none = { 0 };
	CHECK_EQ_INT(sl_usage_total_tokens(&none), 0);
	struct sl_token_usage big = { .input_tokens = UINT64_MAX, .output_tokens = UINT64_MAX };
	CHECK(sl_usage_total_tokens(&big) == SL_USAGE_TOKENS_MAX);
}

TEST(scanner_is_small_and_reusable)
{
	CHECK(sizeof(struct sl_usage_scanner) <= 16);
	struct sl_usage_scanner s;
	struct sl_token_usage u = { 0 };
	sl_usage_scanner_init(&s);
	sl_usage_scanner_feed(&s, LIT("{\"output_tokens\":12"), &u);
	sl_usage_scanner_init(&s); /* next body: no digit carried over */
	struct sl_token_usage v = { 0 };
	sl_usage_scanner_feed(&s, LIT("3}\\"), &v);
	sl_usage_scanner_init(&s); /* no backslash carried over either */
	sl_usage_scanner_feed(&s, LIT("\"input_tokens\":4"), &v);
	CHECK_USAGE(u, 0, 12, 0, 0, OUT);
	CHECK_USAGE(v, 4, 0, 0, 0, IN);
}

/* ---- throughput (printed, not asserted) ---------------------------------- */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* measure: MB/s scanning buf[0..len) in pieces of piece_len, repeated. */
static volatile uint64_t throughput_sink; /* keeps the scans from being optimised out */

static double measure(const char *buf, size_t len, size_t piece_len, int rounds)
{
	double best = 0;
	for (int r = 0; r < rounds; r++) {
		struct sl_usage_scanner s;
		struct sl_token_usage u = { 0 };
		sl_usage_scanner_init(&s);
		double t0 = now_s();
		for (size_t off = 0; off < len; off += piece_len)
			sl_usage_scanner_feed(&s, buf + off, SL_MIN(piece_len, len - off), &u);
		double dt = now_s() - t0;
		throughput_sink += sl_usage_total_tokens(&u);
		double mbs = (double)len / dt / 1e6;
		if (mbs > best)
			best = mbs;
	}
	return best;
}

/* fill_repeated fills buf[0..len) with copies of unit. */
static void fill_repeated(char *buf, size_t len, const char *unit, size_t unit_len)
{
	for (size_t off = 0; off < len; off += unit_len)
		memcpy(buf + off, unit, SL_MIN(unit_len, len - off));
}

static void print_throughput(void)
{
	const size_t len = 32u << 20, piece_len = 16384;
	char *buf = malloc(len);
	if (buf == NULL)
		abort();
	static const char prose[] = "The quick brown fox jumps over the lazy dog, 0123456789.\n";
	fill_repeated(buf, len, LIT(prose));
	double text_mbs = measure(buf, len, piece_len, 5);

	static const char openai_chunk[] =
		"data: {\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\","
		"\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_fc9f1d7035\","
		"\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"logprobs\":null,"
		"\"finish_reason\":null}],\"usage\":null}\n\n";
	fill_repeated(buf, len, LIT(openai_chunk));
	double openai_mbs = measure(buf, len, piece_len, 5);

	static const char anthropic_chunk[] =
		"event: content_block_delta\n"
		"data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
		"\"text\":\" world\"}}\n\n";
	fill_repeated(buf, len, LIT(anthropic_chunk));
	double anthropic_mbs = measure(buf, len, piece_len, 5);

	fill_repeated(buf, len, LIT(openai_chat_body));
	double body_mbs = measure(buf, len, piece_len, 5);

	printf("# throughput (16 KiB pieces, best of 5 over 32 MiB): text without quotes %.0f MB/s, "
	       "OpenAI chat SSE %.0f MB/s, Anthropic SSE %.0f MB/s, OpenAI chat body %.0f MB/s\n",
	       text_mbs, openai_mbs, anthropic_mbs, body_mbs);
	free(buf);
}

int main(void)
{
	RUN(openai_chat_body);
	RUN(openai_chat_stream_include_usage);
	RUN(openai_chat_stream_usage_every_chunk);
	RUN(openai_completions_body);
	RUN(openai_embeddings_body);
	RUN(responses_body);
	RUN(responses_stream);
	RUN(anthropic_body);
	RUN(anthropic_stream);
	RUN(anthropic_stream_cut_after_message_start);
	RUN(anthropic_stream_delta_repeats_fields);
	RUN(anthropic_tool_input_forgery_overwritten);
	RUN(every_split_point_and_byte_by_byte);
	RUN(three_pieces);
	RUN(fast_and_split_name_paths_agree);
	RUN(escaped_key_in_content_ignored);
	RUN(escape_parity_across_many_pieces);
	RUN(whitespace_around_colon);
	RUN(key_followed_by_non_number_ignored);
	RUN(anthropic_one_hour_cache_writes);
	RUN(other_keys_ignored);
	RUN(near_misses_of_every_name_ignored);
	RUN(failed_key_does_not_hide_the_next);
	RUN(huge_numbers_saturate);
	RUN(last_value_wins);
	RUN(number_cut_short_keeps_its_digits);
	RUN(total_tokens);
	RUN(scanner_is_small_and_reusable);
	print_throughput();
	return test_summary();
}
