/*
 * test_proxyproto.c - the PROXY protocol header parser: both versions,
 * every way a header can arrive split, and the malformed ones refused.
 */
#include "../../src/proxyproto.c"
#include "test.h"

#include <arpa/inet.h>

#define MAX SL_PROXYPROTO_BYTES_DEFAULT

static const char v2sig[] = "\r\n\r\n\0\r\nQUIT\n";

/* A v2 header: signature, ver_cmd, family, then addr_len bytes of addr. */
static size_t v2(unsigned char *out, unsigned ver_cmd, unsigned fam, const void *addr,
                 size_t addr_len)
{
	memcpy(out, v2sig, 12);
	out[12] = (unsigned char)ver_cmd;
	out[13] = (unsigned char)fam;
	out[14] = (unsigned char)(addr_len >> 8);
	out[15] = (unsigned char)addr_len;
	if (addr_len)
		memcpy(out + 16, addr, addr_len);
	return 16 + addr_len;
}

static const char *src_text(const struct sl_proxyproto *pp, char *buf)
{
	if (pp->src.sin6_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)&pp->src)->sin_addr, buf,
		          INET6_ADDRSTRLEN);
	else
		inet_ntop(AF_INET6, &pp->src.sin6_addr, buf, INET6_ADDRSTRLEN);
	return buf;
}

static unsigned src_port(const struct sl_proxyproto *pp)
{
	return ntohs(pp->src.sin6_family == AF_INET
	                     ? ((const struct sockaddr_in *)(const void *)&pp->src)->sin_port
	                     : pp->src.sin6_port);
}

/* Every prefix of a valid header is "more" (0); the whole is its length. */
static int every_prefix_wants_more(const char *h, size_t n)
{
	struct sl_proxyproto pp;
	for (size_t i = 0; i < n; i++)
		if (sl_proxyproto_parse(h, i, MAX, &pp) != 0)
			return (int)i + 1;
	return 0;
}

TEST(v1_tcp4)
{
	const char *h = "PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\nGET / HTTP/1.1\r\n";
	struct sl_proxyproto pp;
	size_t hl = strlen("PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n");
	CHECK_EQ_INT(sl_proxyproto_parse(h, strlen(h), MAX, &pp), hl);
	char t[INET6_ADDRSTRLEN];
	CHECK_EQ_INT(pp.version, 1);
	CHECK(pp.has_address);
	CHECK(strcmp(src_text(&pp, t), "203.0.113.7") == 0);
	CHECK_EQ_INT(src_port(&pp), 51234);
	CHECK_EQ_INT(every_prefix_wants_more(h, hl), 0);
}

TEST(v1_tcp6_and_unknown)
{
	const char *h = "PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n";
	struct sl_proxyproto pp;
	char t[INET6_ADDRSTRLEN];
	CHECK_EQ_INT(sl_proxyproto_parse(h, strlen(h), MAX, &pp), strlen(h));
	CHECK(pp.has_address);
	CHECK_EQ_INT(pp.src.sin6_family, AF_INET6);
	CHECK(strcmp(src_text(&pp, t), "2001:db8::1") == 0);
	CHECK_EQ_INT(src_port(&pp), 65535);
	/* the longest TCP6 line (104 bytes) and the longest line there is:
	 * UNKNOWN with both addresses (107) */
	const char *tcp6 = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	                   "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
	CHECK_EQ_INT(sl_proxyproto_parse(tcp6, strlen(tcp6), MAX, &pp), 104);
	const char *longest = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	                      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
	CHECK_EQ_INT(strlen(longest), SL_PROXYPROTO_V1_MAX);
	CHECK_EQ_INT(sl_proxyproto_parse(longest, strlen(longest), MAX, &pp), 107);
	CHECK_EQ_INT(every_prefix_wants_more(longest, 107), 0);
	const char *u = "PROXY UNKNOWN\r\n";
	CHECK_EQ_INT(sl_proxyproto_parse(u, strlen(u), MAX, &pp), strlen(u));
	CHECK(!pp.has_address);
	const char *u2 = "PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n";
	CHECK_EQ_INT(sl_proxyproto_parse(u2, strlen(u2), MAX, &pp), strlen(u2));
	CHECK(!pp.has_address);
}

TEST(v1_malformed)
{
	static const char *const bad[] = {
		"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\n",     /* LF without CR */
		"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\rX",    /* CR without LF */
		"PROXY TCP4  203.0.113.7 192.0.2.1 51234 443\r\n",  /* two spaces */
		"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443 \r\n",  /* trailing space */
		"PROXY TCP4 203.0.113.7 192.0.2.1 51234\r\n",       /* a field missing */
		"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443 9\r\n", /* a field more */
		"PROXY TCP4 2001:db8::1 192.0.2.1 51234 443\r\n",   /* v6 in TCP4 */
		"PROXY TCP6 203.0.113.7 2001:db8::2 51234 443\r\n", /* v4 in TCP6 */
		"PROXY TCP4 203.0.113.256 192.0.2.1 1 2\r\n",
		"PROXY TCP4 203.0.113.7 192.0.2.1 65536 443\r\n",
		"PROXY TCP4 203.0.113.7 192.0.2.1 -1 443\r\n",
		"PROXY TCP4 203.0.113.7 192.0.2.1 123456 443\r\n",
		"PROXY TCP5 203.0.113.7 192.0.2.1 1 2\r\n",
		"PROXY tcp4 203.0.113.7 192.0.2.1 1 2\r\n",
		"PROXY\r\n",
		"PROXY \r\n",
		"PROXY TCP4 203.0.113.7\t192.0.2.1 1 2\r\n",
		"PROXY UNKNOWNX\r\n",
		"proxy TCP4 203.0.113.7 192.0.2.1 1 2\r\n",
		"GET / HTTP/1.1\r\n",
		"PROXX",
		"\x16\x03\x01\x02\x00", /* a TLS ClientHello */
	};
	struct sl_proxyproto pp;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (sl_proxyproto_parse(bad[i], strlen(bad[i]), MAX, &pp) != -1)
			FAIL_AT("v1_malformed", "accepted %zu: %s", i, bad[i]);
	}
	/* no CRLF within 107 bytes */
	char lots[200];
	memset(lots, '1', sizeof lots);
	memcpy(lots, "PROXY UNKNOWN ", 14);
	CHECK_EQ_INT(sl_proxyproto_parse(lots, 106, MAX, &pp), 0);
	CHECK_EQ_INT(sl_proxyproto_parse(lots, 107, MAX, &pp), -1);
	CHECK_EQ_INT(sl_proxyproto_parse(lots, sizeof lots, MAX, &pp), -1);
}

TEST(v2_tcp4_tcp6_with_tlvs)
{
	unsigned char h[256];
	unsigned char a4[12 + 9] = { 198, 51, 100, 9, 192, 0, 2, 1, 0xC8, 0x1F, 0x01, 0xBB,
		                     /* a TLV: PP2_TYPE_AUTHORITY "a.b.c" */
		                     0x02, 0x00, 0x05, 'a', '.', 'b', '.', 'c', 0 };
	size_t n = v2(h, 0x21, 0x11, a4, 12 + 8);
	memcpy(h + n, "GET", 3);
	struct sl_proxyproto pp;
	char t[INET6_ADDRSTRLEN];
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n + 3, MAX, &pp), n);
	CHECK_EQ_INT(pp.version, 2);
	CHECK(pp.has_address);
	CHECK(strcmp(src_text(&pp, t), "198.51.100.9") == 0);
	CHECK_EQ_INT(src_port(&pp), 51231);
	CHECK_EQ_INT(every_prefix_wants_more((char *)h, n), 0);

	unsigned char a6[36] = { 0x20, 0x01, 0x0d, 0xb8, [15] = 0x05, [16] = 0x20, [17] = 0x01,
		                 [32] = 0x30, [33] = 0x39, [34] = 0x01, [35] = 0xBB };
	n = v2(h, 0x21, 0x21, a6, 36);
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, MAX, &pp), n);
	CHECK(pp.has_address);
	CHECK(strcmp(src_text(&pp, t), "2001:db8::5") == 0);
	CHECK_EQ_INT(src_port(&pp), 12345);
	CHECK_EQ_INT(every_prefix_wants_more((char *)h, n), 0);
}

TEST(v2_local_unspec_unix_udp_keep_the_socket_address)
{
	unsigned char h[512], addr[216] = { 0 };
	struct sl_proxyproto pp;
	/* LOCAL: a health check; any family and length, addresses ignored */
	size_t n = v2(h, 0x20, 0x00, NULL, 0);
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, MAX, &pp), 16);
	CHECK(!pp.has_address);
	n = v2(h, 0x20, 0x11, addr, 3);
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, MAX, &pp), n);
	CHECK(!pp.has_address);
	n = v2(h, 0x21, 0x00, NULL, 0); /* PROXY, AF_UNSPEC */
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, MAX, &pp), 16);
	CHECK(!pp.has_address);
	n = v2(h, 0x21, 0x31, addr, 216); /* unix stream */
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, MAX, &pp), n);
	CHECK(!pp.has_address);
	n = v2(h, 0x21, 0x12, addr, 12); /* UDP over IPv4 */
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, MAX, &pp), n);
	CHECK(!pp.has_address);
}

TEST(v2_malformed)
{
	unsigned char h[512], addr[64] = { 0 };
	struct sl_proxyproto pp;
	size_t n = v2(h, 0x11, 0x11, addr, 12); /* version 1 in a v2 header */
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, MAX, &pp), -1);
	n = v2(h, 0x22, 0x11, addr, 12); /* command 2 */
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, MAX, &pp), -1);
	n = v2(h, 0x21, 0x11, addr, 11); /* IPv4 block too short */
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, MAX, &pp), -1);
	n = v2(h, 0x21, 0x21, addr, 35); /* IPv6 block too short */
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, MAX, &pp), -1);
	n = v2(h, 0x21, 0x41, addr, 12); /* family 4 */
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, MAX, &pp), -1);
	n = v2(h, 0x21, 0x13, addr, 12); /* transport 3 */
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, MAX, &pp), -1);
	n = v2(h, 0x21, 0x10, addr, 12); /* AF_INET with UNSPEC transport */
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, MAX, &pp), -1);
	/* a bad signature is refused at its first wrong byte */
	memcpy(h, v2sig, 12);
	h[5] = 'X';
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, 5, MAX, &pp), 0);
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, 6, MAX, &pp), -1);
	/* the version is judged as soon as byte 13 is there, not at 16 */
	n = v2(h, 0x11, 0x11, addr, 12);
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, 16, MAX, &pp), -1);
}

TEST(v2_length_bound)
{
	static unsigned char h[16 + 65535];
	static unsigned char addr[65535];
	struct sl_proxyproto pp;
	/* exactly the bound: accepted, once complete */
	size_t n = v2(h, 0x21, 0x11, addr, 1000 - 16);
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, 16, 1000, &pp), 0);
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, 1000, &pp), 1000);
	/* one over: refused as soon as the length is read */
	n = v2(h, 0x21, 0x11, addr, 1000 - 15);
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, 16, 1000, &pp), -1);
	/* the largest v2 header there is, with the largest bound */
	n = v2(h, 0x21, 0x11, addr, 65535);
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n, 16 + 65535, &pp), 16 + 65535);
	CHECK_EQ_INT(sl_proxyproto_parse((char *)h, n - 1, 16 + 65535, &pp), 0);
}

int main(void)
{
	RUN(v1_tcp4);
	RUN(v1_tcp6_and_unknown);
	RUN(v1_malformed);
	RUN(v2_tcp4_tcp6_with_tlvs);
	RUN(v2_local_unspec_unix_udp_keep_the_socket_address);
	RUN(v2_malformed);
	RUN(v2_length_bound);
	return test_summary();
}
