/*
 * test.h - the unit-test convention: one line per case, "PASS name" or
 * "FAIL name: why (file:line)", and an exit status of 1 if any case failed.
 * tests/run counts those lines across all test programs. A test program may
 * #include the .c file it tests to reach its static functions.
 *
 *   TEST(parses_simple_get) { ...; CHECK(x == 1); CHECK_EQ_INT(n, 3); }
 *   int main(void) { RUN(parses_simple_get); return test_summary(); }
 */
#ifndef SLUICE_TEST_H
#define SLUICE_TEST_H

#include <stdio.h>
#include <string.h>

static int test_failed_num, test_passed_num, test_current_failed;

#define TEST(name) static void test_##name(void)
#define RUN(name)                                                                      \
	do {                                                                           \
		test_current_failed = 0;                                               \
		test_##name();                                                         \
		if (test_current_failed) {                                             \
			test_failed_num++;                                             \
		} else {                                                               \
			test_passed_num++;                                             \
			printf("PASS %s\n", #name);                                    \
		}                                                                      \
	} while (0)

#define FAIL_AT(name, ...)                                                             \
	do {                                                                           \
		if (!test_current_failed) {                                            \
			printf("FAIL %s: ", name);                                     \
			printf(__VA_ARGS__);                                           \
			printf(" (%s:%d)\n", __FILE__, __LINE__);                      \
		}                                                                      \
		test_current_failed = 1;                                               \
	} while (0)

#define CHECK(cond)                                                                    \
	do {                                                                           \
		if (!(cond))                                                           \
			FAIL_AT(__func__ + 5, "CHECK(%s)", #cond);                     \
	} while (0)
#define CHECK_EQ_INT(a, b)                                                             \
	do {                                                                           \
		long long a_ = (long long)(a), b_ = (long long)(b);                    \
		if (a_ != b_)                                                          \
			FAIL_AT(__func__ + 5, "%s == %lld, expected %lld", #a, a_, b_); \
	} while (0)
#define CHECK_EQ_MEM(p, n, lit)                                                        \
	do {                                                                           \
		if ((size_t)(n) != strlen(lit) || memcmp((p), (lit), (n)) != 0)        \
			FAIL_AT(__func__ + 5, "%s is \"%.*s\", expected \"%s\"", #p,  \
			        (int)(n), (const char *)(p), (lit));                   \
	} while (0)

static inline int test_summary(void)
{
	return test_failed_num ? 1 : 0;
}

#endif
