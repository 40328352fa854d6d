/*
 * router.h - maps a request target to a route of SPEC section 1, and finds
 * the "model" of a JSON request body without parsing the whole document.
 */
#ifndef SLUICE_ROUTER_H
#define SLUICE_ROUTER_H

#include "sluice/common.h"
#include "sluice/config.h"

enum sl_route {
	SL_ROUTE_NONE = 0,
	SL_ROUTE_CHAT_COMPLETIONS,
	SL_ROUTE_COMPLETIONS,
	SL_ROUTE_EMBEDDINGS,
	SL_ROUTE_IMAGES_GENERATIONS,
	SL_ROUTE_RESPONSES,
	SL_ROUTE_MESSAGES,
	SL_ROUTE_COUNT_TOKENS,
	SL_ROUTE_MODELS,  /* GET /v1/models */
	SL_ROUTE_MODEL,   /* GET /v1/models/{id} */
	SL_ROUTE_HEALTH,  /* GET /healthz */
};

struct sl_route_match {
	enum sl_route route;
	enum sl_format format; /* the client's wire format: decides the error shape */
	bool is_post;          /* true: POST only; false: GET (and HEAD) only */
	struct sl_str suffix;  /* path after "/v1", e.g. "/chat/completions" */
	struct sl_str query;   /* "?a=b" including '?', or empty */
	struct sl_str model_id; /* SL_ROUTE_MODEL: the {id}, still percent-encoded */
};

/*
 * sl_router_match classifies target[0..len) (origin-form). Accepts the
 * prefixes "/v1", "/openai/v1" and "/api/v1". Always fills out->format (an
 * unknown path under an Anthropic-looking prefix is still OpenAI-shaped).
 * Returns the route, SL_ROUTE_NONE when nothing matches.
 */
enum sl_route sl_router_match(const char *target, size_t len, struct sl_route_match *out);

/* sl_route_name returns a static name for logs ("chat_completions"...). */
const char *sl_route_name(enum sl_route route);

/*
 * sl_json_find_model scans a JSON object for its top-level "model" member.
 * Nested values are skipped without being parsed; keys written with escapes
 * are decoded before comparison, and a second top-level "model" is rejected
 * (a gateway and an upstream must never disagree on which one counts).
 *
 * On success returns 0 and sets *out_start and *out_end to the offsets of the
 * value's string contents (between the quotes, still escaped) and
 * *out_escaped when the contents contain a backslash. Returns -ENOENT when
 * the object has no "model", -EINVAL when it is not a string, and SL_ERROR
 * when the body is not a well-formed JSON object at the top level.
 */
int sl_json_find_model(const char *body, size_t len, size_t *out_start, size_t *out_end,
                       bool *out_escaped);

/*
 * sl_json_unescape_string decodes the JSON string contents in[0..len) into
 * out (capacity out_cap). Returns the decoded length, or SL_ERROR on a bad
 * escape, a lone surrogate, a control byte, or when out is too small.
 */
ssize_t sl_json_unescape_string(const char *in, size_t len, char *out, size_t out_cap);

#endif
