/*
 * convert.h - OpenAI <-> Anthropic wire-format conversion: requests,
 * non-streaming responses, errors, and SSE streams.
 *
 * The proxy calls these only when the client's format differs from the
 * provider's (or for a route the provider does not speak, like /v1/responses
 * on either format, or legacy /v1/completions on a chat-only provider); a
 * same-format request keeps the zero-copy pass-through path.
 *
 * Every function takes an arena for the trees it builds; nothing is freed
 * individually. Errors in a client's request are reported as a message for
 * a 400 invalid_request_error, never a crash.
 */
#ifndef SLUICE_CONVERT_H
#define SLUICE_CONVERT_H

#include "sluice/buf.h"
#include "sluice/config.h"
#include "sluice/json.h"
#include "sluice/router.h"

/* What a conversion needs besides the body. The proxy fills the inputs; the
 * request conversion fills the outputs. */
struct sl_convert_ctx {
	/* in */
	enum sl_route route;             /* the client's route */
	enum sl_format upstream_format;  /* the provider's format */
	const char *upstream_model;      /* id to send upstream */
	const char *client_model;        /* id the client asked for (echoed back) */
	uint32_t default_max_tokens;     /* Anthropic upstream, when the client gives none */
	const char *request_id;          /* for generated ids */
	int64_t created_s;               /* unix time for "created" fields */
	int64_t estimated_input_tokens;  /* local count of the client's request (0: none):
	                                    what an Anthropic message_start reports
	                                    before an OpenAI upstream's usage arrives */

	/* out, set by sl_convert_request */
	enum sl_route upstream_route;    /* SL_ROUTE_CHAT_COMPLETIONS or SL_ROUTE_MESSAGES, ... */
	bool stream;                     /* the client asked for a stream */
	bool client_wants_usage;         /* OpenAI client: stream_options.include_usage */
	bool thinking;                   /* reasoning/thinking was requested */
};

/*
 * sl_convert_request builds the upstream request body for ctx->route in the
 * client's format -> ctx->upstream_format, with "model" set to
 * ctx->upstream_model. For an OpenAI-format upstream stream it always sets
 * stream_options.include_usage (the gateway bills from it). Returns 0 and
 * *out, or SL_ERROR with *out_message (static or arena text) for a 400.
 */
int sl_convert_request(struct sl_arena *a, struct sl_convert_ctx *ctx, const struct sl_json *in,
                       struct sl_json **out, const char **out_message);

/*
 * sl_convert_response converts a successful non-streaming upstream response
 * body (upstream format) into the client's format for ctx->route. Returns 0
 * and *out, or SL_ERROR with *out_message (the upstream sent something that
 * is not a valid response: the proxy answers 502 upstream_error).
 */
int sl_convert_response(struct sl_arena *a, const struct sl_convert_ctx *ctx,
                        const struct sl_json *in, struct sl_json **out,
                        const char **out_message);

/*
 * sl_convert_error turns an upstream error response (status, body in any
 * shape, possibly not JSON) into an error body in the client's format,
 * keeping the upstream's message and mapping its type. Never fails: on
 * arena exhaustion it returns a static body. Returns the body text.
 */
const char *sl_convert_error(struct sl_arena *a, const struct sl_convert_ctx *ctx,
                             unsigned status, const char *body, size_t body_len,
                             size_t *out_len);

/*
 * sl_count_tokens_local estimates the input tokens of an Anthropic
 * count_tokens request (messages, system, tools) for a model no Anthropic
 * upstream can count. Method and error bound are documented in convert.c.
 */
int64_t sl_count_tokens_local(const struct sl_json *request);

/* --- streams ------------------------------------------------------------------ */

struct sl_transcoder;

/*
 * sl_transcoder_create makes the per-stream state for converting the
 * upstream's SSE stream (upstream format) into the client's (ctx->route's
 * format: Anthropic Messages events, OpenAI chat.completion.chunk, or the
 * Responses API events). The state is allocated from a (which lives as long
 * as the stream); per-event scratch memory is recycled internally, so memory
 * stays bounded however long the stream runs. pool backs that scratch memory
 * (NULL: malloc).
 */
struct sl_transcoder *sl_transcoder_create(struct sl_arena *a, struct sl_bufpool *pool,
                                           const struct sl_convert_ctx *ctx);

/*
 * sl_transcoder_feed consumes the next bytes of the upstream body (SSE text,
 * already de-chunked; any split point) and appends the client's SSE bytes for
 * every complete upstream event to out. Returns 0, or SL_ERROR when the
 * upstream stream is malformed (an event over 1 MiB, bad JSON in a data
 * line): the caller then calls sl_transcoder_finish(..., false, ...).
 */
int sl_transcoder_feed(struct sl_transcoder *t, const char *data, size_t len, struct sl_buf *out);

/*
 * sl_transcoder_finish ends the client's stream: after a complete upstream
 * stream it emits whatever closing events are still due; after a cut or
 * malformed one (upstream_ok false) it emits an error event in the client's
 * format. Releases the scratch memory. Calling feed afterwards is an error.
 */
int sl_transcoder_finish(struct sl_transcoder *t, bool upstream_ok, const char *error_message,
                         struct sl_buf *out);

/* Usage seen in the stream so far (for billing): input, output, cache read,
 * cache write tokens; -1 where the upstream has not reported it. */
struct sl_usage {
	int64_t input_tokens;
	int64_t output_tokens;
	int64_t cache_read_tokens;
	int64_t cache_write_tokens;
};
void sl_transcoder_usage(const struct sl_transcoder *t, struct sl_usage *out);

/*
 * sl_usage_from_response extracts usage from a non-stream response body in
 * the given format (-1 where absent).
 */
void sl_usage_from_response(const struct sl_json *body, enum sl_format format,
                            struct sl_usage *out);

#endif
