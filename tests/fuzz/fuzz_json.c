/*
 * libFuzzer driver for the JSON reader and writer, differential against
 * jansson (json_loadb with JSON_DECODE_ANY | JSON_ALLOW_NUL: any value at the
 * top level, \u0000 allowed in strings; trailing data rejected as RFC 8259
 * requires).
 *
 * On any input:
 *   - sluice and jansson agree on accept/reject, except for the principled
 *     differences below, where the comparison is skipped (neither side is
 *     weakened);
 *   - when both accept, the trees are equal: strings and keys byte for byte,
 *     arrays in order, objects as jansson sees them (last duplicate wins),
 *     numbers by value (jansson keeps no text);
 *   - our serialisation is read by jansson as an equal tree, and jansson's
 *     serialisation is read by us as an equal tree;
 *   - our round trip is a fixed point: parse(write(x)) writes the same bytes,
 *     and sl_json_serialized_len is exactly what sl_json_write writes;
 *   - a parse in an arena too small fails with "arena exhausted", never a
 *     crash, or succeeds with the same output.
 *
 * Principled differences (skipped):
 *   - depth: we stop at 128 nested containers (the gateway's limit), jansson
 *     at 2048;
 *   - numbers: we keep the text of any valid number; jansson rejects
 *     integers outside int64 and reals that overflow a double (1e400);
 *   - keys containing U+0000: we keep them (keys have a length), jansson
 *     refuses them even with JSON_ALLOW_NUL;
 *   - a raw NUL byte right after a number or a literal ("5\0", "[true\0]"):
 *     jansson skips it (its lexer ungets the byte and then mistakes the NUL
 *     for an empty look-ahead buffer), we reject it as RFC 8259 requires.
 */
#include "sluice/json.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(e) SL_ASSERT(e)

/* jansson_can_represent: false when jansson is expected to reject the tree
 * for one of the principled reasons above. */
static bool jansson_can_represent(const struct sl_json *v)
{
	switch (v->type) {
	case SL_JSON_NUMBER: {
		bool integer = strpbrk(v->u.str, ".eE") == NULL;
		errno = 0;
		if (integer) {
			(void)strtoll(v->u.str, NULL, 10);
			return errno != ERANGE;
		}
		double d = strtod(v->u.str, NULL);
		return !((d == HUGE_VAL || d == -HUGE_VAL) && errno == ERANGE);
	}
	case SL_JSON_ARRAY:
		for (uint32_t i = 0; i < v->len; i++)
			if (!jansson_can_represent(v->u.items[i]))
				return false;
		return true;
	case SL_JSON_OBJECT:
		for (uint32_t i = 0; i < v->len; i++) {
			const struct sl_json_member *m = &v->u.members[i];
			if (memchr(m->key, '\0', m->key_len))
				return false;
			if (!jansson_can_represent(m->value))
				return false;
		}
		return true;
	default:
		return true;
	}
}

/* same_tree: our tree v equals jansson's j (see the header comment). */
static bool same_tree(const struct sl_json *v, const json_t *j)
{
	switch (v->type) {
	case SL_JSON_NULL:
		return json_is_null(j);
	case SL_JSON_TRUE:
		return json_is_true(j);
	case SL_JSON_FALSE:
		return json_is_false(j);
	case SL_JSON_STRING:
		return json_is_string(j) && json_string_length(j) == v->len &&
		       memcmp(json_string_value(j), v->u.str, v->len) == 0;
	case SL_JSON_NUMBER:
		if (strpbrk(v->u.str, ".eE") == NULL)
			return json_is_integer(j) &&
			       json_integer_value(j) == strtoll(v->u.str, NULL, 10);
		if (json_is_real(j)) {
			double a = strtod(v->u.str, NULL), b = json_real_value(j);
			return memcmp(&a, &b, sizeof(a)) == 0;
		}
		/* jansson writes integral reals with ".0", but reading back our
		 * own text keeps the form: a real it is. */
		return false;
	case SL_JSON_ARRAY:
		if (!json_is_array(j) || json_array_size(j) != v->len)
			return false;
		for (uint32_t i = 0; i < v->len; i++)
			if (!same_tree(v->u.items[i], json_array_get(j, i)))
				return false;
		return true;
	case SL_JSON_OBJECT: {
		if (!json_is_object(j))
			return false;
		/* Unique keys: a member counts if no later member has its key. */
		size_t unique = 0;
		for (uint32_t i = 0; i < v->len; i++) {
			const struct sl_json_member *m = &v->u.members[i];
			bool later = false;
			for (uint32_t k = i + 1; k < v->len && !later; k++)
				later = v->u.members[k].key_len == m->key_len &&
				        memcmp(v->u.members[k].key, m->key, m->key_len) == 0;
			if (later)
				continue;
			unique++;
			const json_t *jv = json_object_getn(j, m->key, m->key_len);
			if (!jv || !same_tree(m->value, jv))
				return false;
		}
		return unique == json_object_size(j);
	}
	case SL_JSON_RAW:
		return false; /* the reader never makes RAW nodes */
	}
	return false;
}

/* write_checked serialises v into the arena, checking the length contract. */
static char *write_checked(struct sl_arena *a, const struct sl_json *v, size_t *out_len)
{
	size_t len = sl_json_serialized_len(v);
	char *out = sl_arena_alloc(a, len + 16);
	CHECK(out != NULL);
	memset(out + len, 0x5a, 16);
	size_t n = sl_json_write(v, out);
	CHECK(n == len);
	for (int i = 0; i < 16; i++)
		CHECK(out[len + i] == 0x5a); /* nothing written past the length */
	*out_len = len;
	return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data;
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	struct sl_json *v = NULL;
	struct sl_json_error err;
	int rc = sl_json_parse(&a, text, size, NULL, &v, &err);
	CHECK(rc == 0 || rc == SL_ERROR);
	CHECK((rc == 0) == (v != NULL));
	if (rc != 0)
		CHECK(err.message != NULL && err.offset <= size && !a.failed);

	json_error_t jerr;
	json_t *j = json_loadb(text, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);

	bool skip = (rc != 0 && strcmp(err.message, "nesting too deep") == 0) ||
	            (rc == 0 && !jansson_can_represent(v)) ||
	            (rc != 0 && j && err.offset > 0 && err.offset < size && data[err.offset] == 0 &&
	             (isalnum(data[err.offset - 1])));
	if (!skip) {
		if ((rc == 0) != (j != NULL)) {
			fprintf(stderr, "accept/reject differs: sluice %s (%s at %zu), jansson %s (%s)\n",
			        rc == 0 ? "accepts" : "rejects", rc ? err.message : "", rc ? err.offset : 0,
			        j ? "accepts" : "rejects", j ? "" : jerr.text);
			abort();
		}
	}

	if (rc == 0) {
		size_t len1, len2;
		char *out1 = write_checked(&a, v, &len1);

		/* Fixed point. */
		struct sl_json *w;
		CHECK(sl_json_parse(&a, out1, len1, NULL, &w, &err) == 0);
		char *out2 = write_checked(&a, w, &len2);
		CHECK(len1 == len2 && memcmp(out1, out2, len1) == 0);

		if (j && !skip) {
			CHECK(same_tree(v, j));
			/* jansson reads our output as the same tree. */
			json_t *j2 = json_loadb(out1, len1, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
			CHECK(j2 != NULL && json_equal(j, j2));
			json_decref(j2);
			/* We read jansson's output as the same tree. */
			size_t jlen = json_dumpb(j, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY);
			char *jout = sl_arena_alloc(&a, jlen + 1);
			CHECK(jout && json_dumpb(j, jout, jlen, JSON_COMPACT | JSON_ENCODE_ANY) == jlen);
			struct sl_json *u;
			CHECK(sl_json_parse(&a, jout, jlen, NULL, &u, &err) == 0);
			CHECK(same_tree(u, j));
		}

		/* A small arena: a clean failure or the same output. */
		struct sl_arena small;
		size_t limit = 64 + (size * 7 + (size_t)(data[0]) * 13) % (size * 4 + 1);
		sl_arena_init(&small, NULL, limit);
		struct sl_json *s;
		if (sl_json_parse(&small, text, size, NULL, &s, &err) == 0) {
			CHECK(!small.failed);
			size_t len3 = sl_json_serialized_len(s);
			char *out3 = malloc(len3 + 1);
			CHECK(out3 && sl_json_write(s, out3) == len1 && memcmp(out3, out1, len1) == 0);
			free(out3);
		} else {
			CHECK(small.failed && strcmp(err.message, "arena exhausted") == 0);
		}
		CHECK(small.used_bytes <= limit);
		sl_arena_release(&small);
	}
	json_decref(j);
	sl_arena_release(&a);
	return 0;
}
