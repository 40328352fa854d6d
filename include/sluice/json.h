/*
 * json.h - an exact, bounded JSON reader and writer for the conversion path.
 *
 * Exact: numbers keep the text they were written with (never a float round
 * trip); strings are validated (UTF-8, escapes, surrogate pairs) and decoded;
 * serialisation re-escapes only what JSON requires. Bounded: depth and total
 * size limits give a clear error, and every node lives in the caller's arena
 * (no malloc per node). Values are immutable once built and may be shared by
 * several trees: a converter can put a subtree of the input (a tool schema,
 * say) into its output without copying it.
 */
#ifndef SLUICE_JSON_H
#define SLUICE_JSON_H

#include "sluice/arena.h"
#include "sluice/common.h"

enum sl_json_type {
	SL_JSON_NULL = 0,
	SL_JSON_FALSE,
	SL_JSON_TRUE,
	SL_JSON_NUMBER, /* u.str: the number's text as written, len bytes */
	SL_JSON_STRING, /* u.str: decoded UTF-8, len bytes, NUL-terminated */
	SL_JSON_ARRAY,  /* u.items[0..len) */
	SL_JSON_OBJECT, /* u.members[0..len), in input order, duplicates kept */
	SL_JSON_RAW,    /* u.str: pre-serialised JSON text, written verbatim */
};

struct sl_json;

struct sl_json_member {
	const char *key; /* decoded UTF-8, NUL-terminated */
	uint32_t key_len;
	struct sl_json *value;
};

struct sl_json {
	uint8_t type;
	uint32_t len; /* bytes (NUMBER, STRING, RAW) or count (ARRAY, OBJECT) */
	uint32_t cap; /* ARRAY/OBJECT built with the append functions: capacity */
	union {
		const char *str;
		struct sl_json **items;
		struct sl_json_member *members;
	} u;
};

struct sl_json_limits {
	uint32_t depth_max;  /* nesting of arrays/objects (default 128) */
	size_t text_len_max; /* input bytes (default: no limit beyond the arena) */
};

struct sl_json_error {
	size_t offset;       /* byte offset in the input where parsing stopped */
	const char *message; /* static text, e.g. "invalid UTF-8 in string" */
};

/*
 * sl_json_parse parses text[0..len) (one value, surrounding whitespace
 * allowed) into nodes allocated from a. Returns 0 and *out, or SL_ERROR with
 * err filled (syntax, invalid UTF-8, lone surrogate, depth or size over the
 * limits, arena exhausted: message says which). limits may be NULL.
 */
int sl_json_parse(struct sl_arena *a, const char *text, size_t len,
                  const struct sl_json_limits *limits, struct sl_json **out,
                  struct sl_json_error *err);

/* --- reading ------------------------------------------------------------- */

/* sl_json_get returns the value of the LAST member named key of an object
 * (as most parsers do), or NULL when v is not an object or has no such key. */
struct sl_json *sl_json_get(const struct sl_json *v, const char *key);

/* Typed accessors: NULL / false / default when absent or of another type. */
const char *sl_json_get_str(const struct sl_json *v, const char *key, uint32_t *out_len);
bool sl_json_get_bool(const struct sl_json *v, const char *key, bool dflt);
/* An integer member written without fraction or exponent; returns false when
 * absent, not an integer, or out of int64 range. */
bool sl_json_get_int(const struct sl_json *v, const char *key, int64_t *out);
bool sl_json_is_str(const struct sl_json *v, const char *s); /* string equal to s */

/* --- building (all allocations from the arena; NULL on failure) ---------- */

struct sl_json *sl_json_null(struct sl_arena *a);
struct sl_json *sl_json_bool(struct sl_arena *a, bool b);
struct sl_json *sl_json_int(struct sl_arena *a, int64_t n);
struct sl_json *sl_json_number_text(struct sl_arena *a, const char *text, size_t len);
/* sl_json_str copies s; sl_json_str_ref points at s, which must outlive the
 * tree (a literal, or arena memory). Both take validated UTF-8. */
struct sl_json *sl_json_str(struct sl_arena *a, const char *s, size_t len);
struct sl_json *sl_json_str_ref(struct sl_arena *a, const char *s, size_t len);
/* sl_json_raw copies json_text (which must be one valid JSON value: it is
 * written verbatim); sl_json_raw_ref points at it, which must outlive the tree. */
struct sl_json *sl_json_raw(struct sl_arena *a, const char *json_text, size_t len);
struct sl_json *sl_json_raw_ref(struct sl_arena *a, const char *json_text, size_t len);
struct sl_json *sl_json_array(struct sl_arena *a);
struct sl_json *sl_json_object(struct sl_arena *a);
/* Append; return false (and set a->failed) when the arena is exhausted.
 * The key is referenced, not copied: a literal or arena memory. */
bool sl_json_push(struct sl_arena *a, struct sl_json *array, struct sl_json *item);
bool sl_json_set(struct sl_arena *a, struct sl_json *object, const char *key,
                 struct sl_json *value);

/* --- writing --------------------------------------------------------------- */

/* sl_json_serialized_len returns the exact byte length sl_json_write produces. */
size_t sl_json_serialized_len(const struct sl_json *v);

/* sl_json_write writes v compactly (no whitespace) into out, which must hold
 * sl_json_serialized_len(v) bytes; returns the number of bytes written. */
size_t sl_json_write(const struct sl_json *v, char *out);

/* sl_json_serialize allocates the text from a; NULL on failure. */
char *sl_json_serialize(struct sl_arena *a, const struct sl_json *v, size_t *out_len);

/* sl_json_escaped_len / sl_json_escape: JSON string contents for s[0..len)
 * (without the quotes), as sl_json_write escapes them. */
size_t sl_json_escaped_len(const char *s, size_t len);
size_t sl_json_escape(const char *s, size_t len, char *out);

#endif
