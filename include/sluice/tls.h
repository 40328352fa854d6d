/*
 * tls.h - TLS on both sides with BoringSSL, driven by the reactors' io_uring.
 *
 * BoringSSL never touches a socket. Each TLS connection has one BIO of our
 * own: reads take ciphertext from the recv buffer being processed (no copy
 * into a memory BIO), writes append ciphertext to the connection's output
 * block (a pool block), which the reactor sends like any other bytes.
 * Plaintext is decrypted into the reactor's TLS buffers: extra buffers of
 * recv_buffer_bytes beside the provided-buffer ring, with buffer ids above
 * the ring's, so the protocol layer relays decrypted bytes exactly as it
 * relays plain ones (a buffer id, returned with sl_buf_return). Outgoing
 * plaintext waits in the connection's send queue and is encrypted when the
 * previous ciphertext has been sent: the same backpressure as plain sends.
 *
 * Contexts: one server SSL_CTX per certificate of a TLS listener (the first
 * is the default; SNI picks another whose certificate names the host), one
 * client SSL_CTX per https provider (verification against the system CA
 * bundle or the provider's ca_file, host name checked, ALPN http/1.1).
 * Contexts are shared by every reactor (BoringSSL's SSL_CTX is thread-safe;
 * a handshake takes its internal read lock for the ticket keys, nothing on
 * an established connection does). SIGHUP builds new listener contexts and
 * swaps them in; connections keep the context they started with.
 *
 * Allocation: BoringSSL allocates an SSL, its BIO and its record buffers
 * with malloc per connection (not per request: keep-alive and the upstream
 * pools reuse them); BoringSSL releases its record buffers while a
 * connection is idle.
 */
#ifndef SLUICE_TLS_H
#define SLUICE_TLS_H

#include "sluice/common.h"
#include "sluice/config.h"

struct sl_reactor;
struct sl_conn;
struct sl_tls;

/* True when some listener or provider uses TLS (the reactors then set up
 * their TLS buffers). */
bool sl_tls_in_use(const struct sl_config *cfg);

/* sl_tls_create loads every listener's certificates and keys and builds
 * every https provider's client context. Returns 0, or -errno with a line
 * naming the file or provider in err. *out is NULL when nothing uses TLS. */
int sl_tls_create(const struct sl_config *cfg, struct sl_tls **out, char *err, size_t err_len);

/* sl_tls_reload (control thread, SIGHUP) loads the listeners' certificates
 * again and swaps them in; wait_quiescent(arg) must return once no reactor
 * can hold a pointer read before the swap. On error the old certificates
 * stay. A one-line summary goes to msg. */
int sl_tls_reload(struct sl_tls *t, void (*wait_quiescent)(void *), void *arg, char *msg,
                  size_t msg_len);

void sl_tls_free(struct sl_tls *t);

/* --- per connection (reactor.c, proxy.c) --------------------------------- */

/* sl_tls_attach_server makes an accepted connection on listener l a TLS
 * server connection; sl_tls_attach_client makes an upstream connection to
 * provider p a TLS client (its handshake starts when the TCP connect
 * completes; the proxy hears of the connect only once the handshake is
 * done). 0, or -ENOMEM. */
int sl_tls_attach_server(struct sl_reactor *r, struct sl_conn *c, uint32_t l);
int sl_tls_attach_client(struct sl_reactor *r, struct sl_conn *c, uint32_t p);

/* Reactor hooks for a connection with c->ssl set. */
void sl_tls_on_connected(struct sl_reactor *r, struct sl_conn *c);
void sl_tls_on_recv(struct sl_reactor *r, struct sl_conn *c, const char *data, size_t len);
void sl_tls_send(struct sl_reactor *r, struct sl_conn *c);
void sl_tls_on_sent(struct sl_reactor *r, struct sl_conn *c, size_t n);
/* sl_tls_shutdown sends close_notify on an established connection before a
 * graceful close: true while it is on its way (the send's completion comes
 * back through the proxy's on_sent), false when there is nothing to wait
 * for. */
bool sl_tls_shutdown(struct sl_reactor *r, struct sl_conn *c);
void sl_tls_release(struct sl_reactor *r, struct sl_conn *c);
/* TLS buffers came back: connections waiting for one go on. */
void sl_tls_restart_starved(struct sl_reactor *r);

/* Why the last handshake of this thread failed, for an error message. */
const char *sl_tls_last_error(void);

/* Counters of the process (all reactors). */
struct sl_tls_stats {
	uint64_t server_handshakes, server_resumed, server_failed;
	uint64_t client_handshakes, client_resumed, client_failed;
};
void sl_tls_stats(struct sl_tls_stats *out);

#endif
