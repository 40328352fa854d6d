/*
 * usage.h - finds the token usage an upstream reported in a response body
 * while the body is relayed, without parsing or copying it.
 *
 * The relay hands every piece of the upstream body to sl_usage_scanner_feed
 * as it passes (a piece may end anywhere, inside a key or a number). The
 * scanner is a byte-level state machine of a few bytes: it never allocates,
 * never fails and keeps no pointer into the data. It reads JSON bodies and
 * SSE streams (data: lines carrying JSON) of both upstream formats alike
 * (enum sl_format); it needs no framing and no format hint:
 *
 *   key                           field               format and place
 *   "prompt_tokens"               input_tokens        OpenAI chat, completions, embeddings
 *   "input_tokens"                input_tokens        OpenAI Responses; Anthropic Messages
 *   "completion_tokens"           output_tokens       OpenAI chat, completions
 *   "output_tokens"               output_tokens       OpenAI Responses; Anthropic Messages
 *   "cached_tokens"               cache_read_tokens   OpenAI, in prompt_/input_tokens_details
 *   "cache_read_input_tokens"     cache_read_tokens   Anthropic
 *   "cache_creation_input_tokens" cache_write_tokens  Anthropic
 *
 * Every other key is ignored: total_tokens (recomputed from the fields),
 * reasoning_tokens (already inside the output count), the per-TTL breakdown
 * of Anthropic's cache_creation object, max_output_tokens and the rest.
 *
 * A key is recognised where the body holds the bytes `"name"`, optional JSON
 * whitespace, `:`, optional whitespace, then a digit, and the opening quote
 * is not escaped (not preceded by an odd run of backslashes). Its value is
 * the run of digits that follows (saturating at SL_USAGE_TOKENS_MAX); a key
 * followed by anything else (null, a string, a minus sign) is ignored. Keys
 * are recognised anywhere in the body, at any depth: streams repeat usage
 * (OpenAI providers that send it in every chunk, Anthropic's message_start
 * then message_delta), and the last value seen for a field wins.
 *
 * Why generated text cannot forge usage: in both formats the model's text,
 * the arguments of its tool calls (OpenAI "arguments", Anthropic
 * "partial_json") and the text of its thinking are JSON strings, so every
 * quote in them reaches us escaped (\" with an odd run of backslashes before
 * it) and never opens a key. One exception: a non-streamed Anthropic message
 * carries tool_use "input" as a real JSON object written by the model, so a
 * model (or a prompt injection) can put {"input_tokens": 1} there. That body
 * ends with its real "usage" object, after "content", and the real usage
 * carries all four Anthropic keys, so last-value-wins overwrites every forged
 * value. What remains is a forged key the real usage lacks (an OpenAI
 * spelling, "cached_tokens", or a cache field an older upstream omits): it
 * can only raise a field from zero, never lower a real count. Similarly a
 * client's own JSON schema echoed in an OpenAI Responses object comes before
 * the real usage. The scanner does not track string or nesting context, so
 * this rests on the upstream writing valid JSON with usage after content.
 */
#ifndef SLUICE_USAGE_H
#define SLUICE_USAGE_H

#include "sluice/common.h"

/* Bits of sl_token_usage.fields_seen: which fields a body reported (a field not
 * seen stays 0). SL_USAGE_CACHE_READ_IN_INPUT is set when the last cache-read
 * value came from OpenAI's "cached_tokens", which OpenAI counts inside
 * prompt_tokens/input_tokens; it is clear when it came from Anthropic's
 * "cache_read_input_tokens", which Anthropic counts apart from input_tokens. */
#define SL_USAGE_INPUT (1u << 0)
#define SL_USAGE_OUTPUT (1u << 1)
#define SL_USAGE_CACHE_READ (1u << 2)
#define SL_USAGE_CACHE_WRITE (1u << 3)
#define SL_USAGE_CACHE_READ_IN_INPUT (1u << 4)
#define SL_USAGE_CACHE_WRITE_1H (1u << 5) /* Anthropic cache_creation.ephemeral_1h_input_tokens */

/* Every count saturates here, and so does sl_usage_total_tokens, so that a
 * sum of a few counts cannot wrap. */
#define SL_USAGE_TOKENS_MAX (UINT64_MAX / 2)

struct sl_token_usage {
	uint64_t input_tokens;       /* OpenAI prompt_tokens or input_tokens; Anthropic input_tokens (uncached) */
	uint64_t output_tokens;      /* completion_tokens / output_tokens */
	uint64_t cache_read_tokens;  /* OpenAI cached_tokens; Anthropic cache_read_input_tokens */
	uint64_t cache_write_tokens; /* Anthropic cache_creation_input_tokens (5-minute + 1-hour) */
	uint64_t cache_write_1h_tokens; /* of which 1-hour: cache_creation.ephemeral_1h_input_tokens */
	uint32_t fields_seen;        /* SL_USAGE_* bits */
};

/* The scanner's state between feeds; private to usage.c (16 bytes). */
struct sl_usage_scanner {
	uint64_t value;        /* the number being read */
	uint8_t state;         /* what the bytes so far have started */
	uint8_t key;           /* the key being read or just read: index of its name */
	uint8_t key_pos;       /* bytes of a split key matched so far */
	uint8_t key_mask;      /* names a split key can still be, one bit each */
	uint8_t backslash_odd; /* the input so far ends in an odd run of '\' */
	uint8_t reserved[3];
};

/*
 * sl_usage_scanner_init readies s for a new body. Call it once per response
 * body, before the first feed; the body's sl_usage is the caller's and starts
 * zeroed (struct sl_token_usage u = { 0 }).
 */
void sl_usage_scanner_init(struct sl_usage_scanner *s);

/*
 * sl_usage_scanner_feed scans the next len bytes of the body (data may be
 * NULL when len is 0) and updates *usage in place: each recognised key sets
 * its field and its fields_seen bit. Pass the same usage to every feed of
 * one body. Never fails; any bytes are accepted. The result does not depend
 * on how the body is cut into pieces: a key or a number split across feeds
 * is matched as if whole. A number is stored digit by digit, so a body cut
 * short inside a number leaves the digits that arrived.
 */
void sl_usage_scanner_feed(struct sl_usage_scanner *s, const char *data, size_t len,
                           struct sl_token_usage *usage);

/*
 * sl_usage_total_tokens returns the tokens a response consumed: input +
 * output + cache_write + cache_read, except that cache_read is left out
 * when SL_USAGE_CACHE_READ_IN_INPUT says it is already inside input (OpenAI),
 * so cached prompt tokens are never counted twice. Saturates at
 * SL_USAGE_TOKENS_MAX.
 */
uint64_t sl_usage_total_tokens(const struct sl_token_usage *u);

#endif
