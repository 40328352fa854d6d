/*
 * proxyproto.c - the PROXY protocol header, versions 1 and 2 (see
 * include/sluice/proxyproto.h for what is accepted and what is taken).
 *
 * Written from HAProxy's specification (doc/proxy-protocol.txt). Strict
 * where the specification is: single spaces and CRLF in v1, the version
 * nibble and the family byte in v2; a receiver that guessed would hand an
 * attacker who reaches the port directly a way to choose their address.
 */
#include "sluice/proxyproto.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

static const char v1_prefix[] = "PROXY ";
static const unsigned char v2_sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
	                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

/* "0".."65535", one to five digits */
static bool parse_port(const char *p, size_t n, uint16_t *out)
{
	if (n == 0 || n > 5)
		return false;
	unsigned v = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		v = v * 10 + (unsigned)(p[i] - '0');
	}
	if (v > 65535)
		return false;
	*out = (uint16_t)v;
	return true;
}

static bool parse_addr(int family, const char *p, size_t n, void *out)
{
	char text[INET6_ADDRSTRLEN];
	if (n == 0 || n >= sizeof text)
		return false;
	memcpy(text, p, n);
	text[n] = '\0';
	return inet_pton(family, text, out) == 1;
}

/* The line without its CRLF: "PROXY TCP4 src dst sport dport". */
static bool parse_v1_line(const char *line, size_t n, struct sl_proxyproto *out)
{
	const char *tok[6];
	size_t tok_len[6];
	size_t num = 0, start = 0;
	for (size_t i = 0; i <= n; i++) {
		if (i < n && line[i] != ' ')
			continue;
		if (num == 2 && tok_len[1] == 7 && memcmp(tok[1], "UNKNOWN", 7) == 0)
			break; /* UNKNOWN: whatever follows is ignored */
		if (num == 6 || i == start)
			return false; /* too many fields, or two spaces in a row */
		tok[num] = line + start;
		tok_len[num] = i - start;
		num++;
		start = i + 1;
	}
	out->version = 1;
	out->has_address = false;
	if (num == 2 && tok_len[1] == 7 && memcmp(tok[1], "UNKNOWN", 7) == 0)
		return true;
	if (num != 6 || tok_len[1] != 4)
		return false;
	int family;
	if (memcmp(tok[1], "TCP4", 4) == 0)
		family = AF_INET;
	else if (memcmp(tok[1], "TCP6", 4) == 0)
		family = AF_INET6;
	else
		return false;
	unsigned char src[16], dst[16];
	uint16_t sport, dport;
	if (!parse_addr(family, tok[2], tok_len[2], src) ||
	    !parse_addr(family, tok[3], tok_len[3], dst) ||
	    !parse_port(tok[4], tok_len[4], &sport) || !parse_port(tok[5], tok_len[5], &dport))
		return false;
	memset(&out->src, 0, sizeof out->src);
	if (family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)(void *)&out->src;
		a->sin_family = AF_INET;
		a->sin_port = htons(sport);
		memcpy(&a->sin_addr, src, 4);
	} else {
		out->src.sin6_family = AF_INET6;
		out->src.sin6_port = htons(sport);
		memcpy(&out->src.sin6_addr, src, 16);
	}
	out->has_address = true;
	return true;
}

static ssize_t parse_v1(const char *buf, size_t len, size_t max_bytes, struct sl_proxyproto *out)
{
	size_t limit = SL_PROXYPROTO_V1_MAX < max_bytes ? SL_PROXYPROTO_V1_MAX : max_bytes;
	size_t scan = len < limit ? len : limit;
	for (size_t i = 0; i < scan; i++) {
		if (buf[i] == '\r') {
			if (i + 1 == len)
				return 0; /* the LF may be next */
			if (buf[i + 1] != '\n')
				return -1;
			return parse_v1_line(buf, i, out) ? (ssize_t)(i + 2) : -1;
		}
		if (buf[i] == '\n' || (unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] > 0x7e)
			return -1;
	}
	return len >= limit ? -1 : 0;
}

static ssize_t parse_v2(const unsigned char *b, size_t len, size_t max_bytes,
                        struct sl_proxyproto *out)
{
	if (len < SL_PROXYPROTO_V2_FIXED)
		return 0;
	unsigned version = b[12] >> 4, command = b[12] & 0x0f;
	if (version != 2 || command > 1)
		return -1;
	size_t total = SL_PROXYPROTO_V2_FIXED + ((size_t)b[14] << 8 | b[15]);
	if (total > max_bytes)
		return -1;
	unsigned family = b[13] >> 4, transport = b[13] & 0x0f;
	size_t need; /* the address block's size for the family */
	switch (family) {
	case 0: need = 0; break;   /* AF_UNSPEC */
	case 1: need = 12; break;  /* AF_INET */
	case 2: need = 36; break;  /* AF_INET6 */
	case 3: need = 216; break; /* AF_UNIX */
	default: need = SIZE_MAX;
	}
	if (command == 1 && (need == SIZE_MAX || transport > 2 ||
	                     (family == 0) != (transport == 0) ||
	                     total - SL_PROXYPROTO_V2_FIXED < need))
		return -1;
	if (len < total)
		return 0;
	out->version = 2;
	out->has_address = false;
	if (command == 0 || transport != 1)
		return (ssize_t)total; /* LOCAL, UNSPEC, UDP: the socket's address */
	const unsigned char *a = b + SL_PROXYPROTO_V2_FIXED;
	memset(&out->src, 0, sizeof out->src);
	if (family == 1) {
		struct sockaddr_in *in = (struct sockaddr_in *)(void *)&out->src;
		in->sin_family = AF_INET;
		memcpy(&in->sin_addr, a, 4);
		memcpy(&in->sin_port, a + 8, 2); /* both in network order */
		out->has_address = true;
	} else if (family == 2) {
		out->src.sin6_family = AF_INET6;
		memcpy(&out->src.sin6_addr, a, 16);
		memcpy(&out->src.sin6_port, a + 32, 2);
		out->has_address = true;
	}
	return (ssize_t)total;
}

ssize_t sl_proxyproto_parse(const char *buf, size_t len, size_t max_bytes,
                            struct sl_proxyproto *out)
{
	if (len == 0)
		return 0;
	if (buf[0] == 'P') {
		size_t n = len < 6 ? len : 6;
		if (memcmp(buf, v1_prefix, n) != 0)
			return -1;
		return len < 6 ? 0 : parse_v1(buf, len, max_bytes, out);
	}
	size_t n = len < sizeof v2_sig ? len : sizeof v2_sig;
	if (memcmp(buf, v2_sig, n) != 0)
		return -1;
	return parse_v2((const unsigned char *)buf, len, max_bytes, out);
}
