/*
 * proxyproto.h - the PROXY protocol (HAProxy's, versions 1 and 2), by which
 * an L4 load balancer in front of the gateway tells it the client's real
 * address: a header the balancer writes on the connection before any byte
 * of the client's own.
 *
 * A listener with "proxy_protocol": true requires the header on every
 * connection, in either version (told apart by the first bytes). A
 * connection that starts with anything else, or whose header is malformed
 * or longer than limits.proxy_header_bytes_max, is closed without a word:
 * the gateway cannot know whom it would be answering. The header must be
 * complete within limits.header_timeout_ms, like a request head.
 *
 * What is taken from it: the source address and port (TCP over IPv4 or
 * IPv6). LOCAL (v2, the balancer's own health checks), UNKNOWN (v1), and
 * any other family or transport keep the socket's own peer address, as
 * the specification asks. v2 TLVs are skipped.
 *
 * The parser is a pure function over the bytes received so far, so a
 * header split across any number of reads is parsed the same as a whole
 * one. It never reads past len.
 */
#ifndef SLUICE_PROXYPROTO_H
#define SLUICE_PROXYPROTO_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* v1: "PROXY UNKNOWN <39> <39> <5> <5>\r\n" is the longest line, 107 bytes */
#define SL_PROXYPROTO_V1_MAX 107
/* v2: 16 fixed bytes, then the announced length */
#define SL_PROXYPROTO_V2_FIXED 16
#define SL_PROXYPROTO_BYTES_DEFAULT 4096
/* the smallest configurable bound: a v1 header, or v2 with a unix address
 * pair (216 bytes) */
#define SL_PROXYPROTO_BYTES_MIN 232

struct sl_proxyproto {
	int version;      /* 1 or 2 */
	bool has_address; /* false: LOCAL / UNKNOWN / other family: keep the socket's */
	/* the client (source) address; AF_INET fills it as a sockaddr_in */
	struct sockaddr_in6 src;
};

/*
 * sl_proxyproto_parse looks for a PROXY header at the start of buf[0..len).
 * Returns the header's length (> 0) with *out filled; 0 if every byte so
 * far is a valid beginning and more are needed; -1 if it is not a valid
 * header, or would be longer than max_bytes.
 */
ssize_t sl_proxyproto_parse(const char *buf, size_t len, size_t max_bytes,
                            struct sl_proxyproto *out);

#endif
