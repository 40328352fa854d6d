/*
 * tls.c - BoringSSL over the reactors' io_uring (see tls.h).
 *
 * A connection's life with TLS, in the reactor's terms:
 *   recv completion -> sl_tls_on_recv: the ciphertext is offered to
 *       BoringSSL through our BIO (it copies what it needs into its record
 *       buffer); the handshake advances, or records are decrypted into TLS
 *       buffers handed to sl_proxy_on_data like recv buffers.
 *   a send is due -> sl_tls_send: queued plaintext is encrypted into the
 *       output block while it has room for a whole record; the block is sent.
 *   send completion -> sl_tls_on_sent: the rest of the block is sent, then
 *       more plaintext encrypted.
 * Every call into BoringSSL ends with the output block sent if it holds
 * bytes (a handshake flight, an alert, records).
 */
#include "sluice/tls.h"
#include "sluice/reactor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* The output block: room for two full records and their overhead. */
#define TLS_OUT_BYTES 32768
/* Encrypt a record only with this much room beyond its plaintext (record
 * header, AEAD tag, and whatever post-handshake message is pending). */
#define TLS_RECORD_SLACK 1024
#define TLS_RECORD_MAX 16384
/* Ciphertext kept per connection while it waits for a TLS buffer. */
#define TLS_BACKLOG_MAX (256 * 1024)
#define SYSTEM_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

struct tls_listener {
	SSL_CTX **ctx; /* one per certificate; ctx[0] is the default */
	X509 **leaf;   /* its leaf certificate, for SNI matching */
	uint32_t num;
};

struct tls_listener_set {
	struct tls_listener *l; /* one per config listener (num 0: plain) */
	uint32_t num;
};

struct sl_tls {
	const struct sl_config *cfg;
	_Atomic(struct tls_listener_set *) listeners;
	SSL_CTX **clients; /* per provider; NULL: plain http */
	char **client_host; /* the name verified and sent as SNI (no port) */
	bool *client_host_is_ip;
};

static BIO_METHOD *bio_method;
static _Atomic uint64_t stat_counts[6];
static __thread char last_error[256];

const char *sl_tls_last_error(void)
{
	return last_error;
}

void sl_tls_stats(struct sl_tls_stats *out)
{
	out->server_handshakes = atomic_load(&stat_counts[0]);
	out->server_resumed = atomic_load(&stat_counts[1]);
	out->server_failed = atomic_load(&stat_counts[2]);
	out->client_handshakes = atomic_load(&stat_counts[3]);
	out->client_resumed = atomic_load(&stat_counts[4]);
	out->client_failed = atomic_load(&stat_counts[5]);
}

static void count(unsigned i)
{
	atomic_fetch_add_explicit(&stat_counts[i], 1, memory_order_relaxed);
}

bool sl_tls_in_use(const struct sl_config *cfg)
{
	for (uint32_t i = 0; i < cfg->num_listeners; i++)
		if (cfg->listeners[i].tls)
			return true;
	for (uint32_t i = 0; i < cfg->num_providers; i++)
		if (cfg->providers[i].tls)
			return true;
	return false;
}

/* The first error on BoringSSL's queue as text (and the queue cleared). */
static void ssl_error_text(char *buf, size_t len)
{
	uint32_t e = ERR_get_error();
	if (e)
		ERR_error_string_n(e, buf, len);
	else
		snprintf(buf, len, "unknown error");
	ERR_clear_error();
}

/* --- the BIO ---------------------------------------------------------------- */

static int bio_read(BIO *b, char *out, int len)
{
	struct sl_conn *c = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	if (c->tls_in_len == 0) {
		BIO_set_retry_read(b);
		return -1;
	}
	size_t n = SL_MIN((size_t)len, c->tls_in_len);
	memcpy(out, c->tls_in, n);
	c->tls_in += n;
	c->tls_in_len -= n;
	return (int)n;
}

static int bio_write(BIO *b, const char *in, int len)
{
	struct sl_conn *c = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	if (!c->tls_out) {
		struct sl_reactor *r = sl_reactor_current();
		size_t cap = 0;
		c->tls_out = r ? sl_bufpool_get(&r->mem, TLS_OUT_BYTES, &cap) : NULL;
		if (!c->tls_out)
			return -1; /* out of memory: the connection fails */
		c->tls_out_cap = (uint32_t)cap;
		c->tls_out_len = c->tls_out_off = 0;
	}
	size_t room = c->tls_out_cap - c->tls_out_len;
	if (room == 0) {
		BIO_set_retry_write(b);
		return -1;
	}
	size_t n = SL_MIN((size_t)len, room);
	memcpy(c->tls_out + c->tls_out_len, in, n);
	c->tls_out_len += (uint32_t)n;
	return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long larg, void *parg)
{
	(void)b, (void)larg, (void)parg;
	return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static int bio_setup(void)
{
	if (bio_method)
		return 0;
	BIO_METHOD *m = BIO_meth_new(BIO_TYPE_SOURCE_SINK | BIO_get_new_index(), "sluice");
	if (!m || !BIO_meth_set_read(m, bio_read) || !BIO_meth_set_write(m, bio_write) ||
	    !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create))
		return -ENOMEM;
	bio_method = m;
	return 0;
}

/* --- contexts ------------------------------------------------------------------- */

/* path relative to the config file's directory, into buf. */
static const char *config_path(const struct sl_config *cfg, const char *path, char *buf,
                               size_t len)
{
	if (path[0] == '/' || !cfg->config_dir)
		return path;
	snprintf(buf, len, "%s/%s", cfg->config_dir, path);
	return buf;
}

/* ALPN: http/1.1 or nothing (a client offering only other protocols is
 * refused with no_application_protocol, as RFC 7301 asks). */
static int alpn_select(SSL *ssl, const uint8_t **out, uint8_t *out_len, const uint8_t *in,
                       unsigned in_len, void *arg)
{
	(void)ssl, (void)arg;
	for (unsigned i = 0; i < in_len;) {
		unsigned n = in[i];
		if (i + 1 + n > in_len)
			break;
		if (n == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
			*out = in + i + 1;
			*out_len = 8;
			return SSL_TLSEXT_ERR_OK;
		}
		i += 1 + n;
	}
	return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* SNI: the first certificate (in config order) valid for the name asked. */
static int servername_cb(SSL *ssl, int *alert, void *arg)
{
	(void)alert;
	const struct tls_listener *l = arg;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	if (!name || l->num < 2)
		return SSL_TLSEXT_ERR_OK;
	size_t len = strlen(name);
	for (uint32_t i = 0; i < l->num; i++) {
		if (X509_check_host(l->leaf[i], name, len, 0, NULL) == 1) {
			if (i > 0)
				SSL_set_SSL_CTX(ssl, l->ctx[i]);
			return SSL_TLSEXT_ERR_OK;
		}
	}
	return SSL_TLSEXT_ERR_OK; /* the default certificate */
}

static const char server_ciphers[] = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                     "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                     "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

static void listener_free(struct tls_listener *l)
{
	for (uint32_t i = 0; i < l->num; i++) {
		SSL_CTX_free(l->ctx[i]);
		X509_free(l->leaf[i]);
	}
	free(l->ctx);
	free(l->leaf);
}

static void listener_set_free(struct tls_listener_set *s)
{
	if (!s)
		return;
	for (uint32_t i = 0; i < s->num; i++)
		listener_free(&s->l[i]);
	free(s->l);
	free(s);
}

static int listener_load(const struct sl_config *cfg, const struct sl_listener_config *lc,
                         struct tls_listener *l, char *err, size_t err_len)
{
	const struct sl_listener_tls_config *t = lc->tls;
	char pbuf[4096], kbuf[4096];
	uint8_t ticket_keys[48];
	bool have_ticket_keys = false;
	if (t->ticket_key_file) {
		const char *path = config_path(cfg, t->ticket_key_file, pbuf, sizeof pbuf);
		uint8_t *data;
		size_t len;
		int rc = sl_read_file_at(AT_FDCWD, path, 4096, &data, &len);
		if (rc) {
			snprintf(err, err_len, "listener %s: ticket_key_file %s: %s", lc->address, path,
			         strerror(-rc));
			return rc;
		}
		if (len != sizeof ticket_keys) {
			free(data);
			snprintf(err, err_len,
			         "listener %s: ticket_key_file %s: expected 48 bytes (openssl rand 48), "
			         "found %zu",
			         lc->address, path, len);
			return -EINVAL;
		}
		memcpy(ticket_keys, data, sizeof ticket_keys);
		explicit_bzero(data, len);
		free(data);
		have_ticket_keys = true;
	}
	l->ctx = calloc(t->num_certs, sizeof *l->ctx);
	l->leaf = calloc(t->num_certs, sizeof *l->leaf);
	if (!l->ctx || !l->leaf)
		return -ENOMEM;
	for (uint32_t i = 0; i < t->num_certs; i++) {
		const struct sl_tls_cert_config *cc = &t->certs[i];
		const char *cert = config_path(cfg, cc->cert, pbuf, sizeof pbuf);
		const char *key = config_path(cfg, cc->key, kbuf, sizeof kbuf);
		SSL_CTX *ctx = SSL_CTX_new(TLS_method());
		if (!ctx)
			return -ENOMEM;
		l->ctx[i] = ctx;
		l->num = i + 1;
		char why[200];
		if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
			ssl_error_text(why, sizeof why);
			snprintf(err, err_len, "listener %s: certificate %s: %s", lc->address, cert, why);
			return -EINVAL;
		}
		if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_check_private_key(ctx) != 1) {
			ssl_error_text(why, sizeof why);
			snprintf(err, err_len, "listener %s: key %s: %s", lc->address, key, why);
			return -EINVAL;
		}
		l->leaf[i] = X509_up_ref(SSL_CTX_get0_certificate(ctx)) ? SSL_CTX_get0_certificate(ctx)
		                                                         : NULL;
		if (cc->ocsp) {
			const char *path = config_path(cfg, cc->ocsp, pbuf, sizeof pbuf);
			uint8_t *der;
			size_t len;
			int rc = sl_read_file_at(AT_FDCWD, path, 1 << 20, &der, &len);
			if (rc || !SSL_CTX_set_ocsp_response(ctx, der, len)) {
				snprintf(err, err_len, "listener %s: ocsp %s: %s", lc->address, path,
				         rc ? strerror(-rc) : "not accepted");
				if (!rc)
					free(der);
				return rc ? rc : -EINVAL;
			}
			free(der);
		}
		if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
		    !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
		    !SSL_CTX_set_strict_cipher_list(ctx, server_ciphers)) {
			snprintf(err, err_len, "listener %s: TLS settings refused", lc->address);
			return -EINVAL;
		}
		SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
		/* Resumption by tickets only: no server-side session cache (and
		 * no lock around one). Without a ticket key file BoringSSL makes
		 * random keys and rotates them itself. */
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
		if (!t->session_tickets)
			SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
		else if (have_ticket_keys &&
		         !SSL_CTX_set_tlsext_ticket_keys(ctx, ticket_keys, sizeof ticket_keys))
			return -EINVAL;
	}
	explicit_bzero(ticket_keys, sizeof ticket_keys);
	SSL_CTX_set_tlsext_servername_callback(l->ctx[0], servername_cb);
	SSL_CTX_set_tlsext_servername_arg(l->ctx[0], l);
	return 0;
}

static int listener_set_load(const struct sl_config *cfg, struct tls_listener_set **out,
                             char *err, size_t err_len)
{
	struct tls_listener_set *s = calloc(1, sizeof *s);
	if (!s || !(s->l = calloc(cfg->num_listeners ? cfg->num_listeners : 1, sizeof *s->l))) {
		free(s);
		return -ENOMEM;
	}
	s->num = cfg->num_listeners;
	for (uint32_t i = 0; i < cfg->num_listeners; i++) {
		if (!cfg->listeners[i].tls)
			continue;
		int rc = listener_load(cfg, &cfg->listeners[i], &s->l[i], err, err_len);
		if (rc) {
			if (!err[0])
				snprintf(err, err_len, "listener %s: %s", cfg->listeners[i].address,
				         strerror(-rc));
			listener_set_free(s);
			return rc;
		}
	}
	*out = s;
	return 0;
}

/* Client sessions: the newest session of each provider is kept per reactor
 * and offered by its next new connection (tls.h). */
static int new_session_cb(SSL *ssl, SSL_SESSION *session)
{
	struct sl_conn *c = SSL_get_app_data(ssl);
	struct sl_reactor *r = sl_reactor_current();
	if (!r || !c)
		return 0;
	struct sl_upstream_pool *pool = &r->upstreams[c->ux.provider];
	if (pool->tls_session)
		SSL_SESSION_free(pool->tls_session);
	pool->tls_session = session;
	return 1; /* the reference is ours */
}

static int client_load(const struct sl_config *cfg, uint32_t i, SSL_CTX **out, char *err,
                       size_t err_len)
{
	const struct sl_provider_config *p = &cfg->providers[i];
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	if (!ctx)
		return -ENOMEM;
	*out = ctx;
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
	    !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION))
		return -EINVAL;
	static const uint8_t alpn[] = "\x08http/1.1";
	if (SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1) != 0)
		return -ENOMEM;
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
	SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
	if (p->tls_insecure_skip_verify) {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
		return 0;
	}
	char buf[4096];
	const char *ca = p->ca_file ? config_path(cfg, p->ca_file, buf, sizeof buf) : SYSTEM_CA_BUNDLE;
	if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
		char why[200];
		ssl_error_text(why, sizeof why);
		snprintf(err, err_len, "provider %s: CA file %s: %s", p->name, ca, why);
		return -EINVAL;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	return 0;
}

int sl_tls_create(const struct sl_config *cfg, struct sl_tls **out, char *err, size_t err_len)
{
	*out = NULL;
	err[0] = '\0';
	if (!sl_tls_in_use(cfg))
		return 0;
	if (bio_setup())
		return -ENOMEM;
	struct sl_tls *t = calloc(1, sizeof *t);
	if (!t)
		return -ENOMEM;
	t->cfg = cfg;
	uint32_t np = cfg->num_providers ? cfg->num_providers : 1;
	t->clients = calloc(np, sizeof *t->clients);
	t->client_host = calloc(np, sizeof *t->client_host);
	t->client_host_is_ip = calloc(np, sizeof *t->client_host_is_ip);
	struct tls_listener_set *set = NULL;
	int rc = (!t->clients || !t->client_host || !t->client_host_is_ip) ? -ENOMEM : 0;
	if (!rc)
		rc = listener_set_load(cfg, &set, err, err_len);
	if (!rc)
		atomic_store(&t->listeners, set);
	for (uint32_t i = 0; !rc && i < cfg->num_providers; i++) {
		const struct sl_provider_config *p = &cfg->providers[i];
		if (!p->tls)
			continue;
		rc = client_load(cfg, i, &t->clients[i], err, err_len);
		if (rc)
			break;
		/* the host without port or brackets */
		const char *h = p->host;
		size_t n;
		if (h[0] == '[') {
			h++;
			n = strcspn(h, "]");
		} else {
			n = strcspn(h, ":");
		}
		if (!(t->client_host[i] = strndup(h, n))) {
			rc = -ENOMEM;
			break;
		}
		struct in6_addr a6;
		struct in_addr a4;
		t->client_host_is_ip[i] = inet_pton(AF_INET, t->client_host[i], &a4) == 1 ||
		                          inet_pton(AF_INET6, t->client_host[i], &a6) == 1;
		if (p->tls_insecure_skip_verify)
			fprintf(stderr,
			        "sluice: WARNING: provider %s: tls_insecure_skip_verify is set: its "
			        "certificate is NOT verified; anyone on the path can read and change "
			        "this traffic, provider keys included\n",
			        p->name);
	}
	if (rc) {
		if (!err[0])
			snprintf(err, err_len, "TLS setup: %s", strerror(-rc));
		sl_tls_free(t);
		return rc;
	}
	*out = t;
	return 0;
}

int sl_tls_reload(struct sl_tls *t, void (*wait_quiescent)(void *), void *arg, char *msg,
                  size_t msg_len)
{
	if (!t) {
		snprintf(msg, msg_len, "no TLS listener");
		return 0;
	}
	struct tls_listener_set *set;
	char err[512] = "";
	int rc = listener_set_load(t->cfg, &set, err, sizeof err);
	if (rc) {
		snprintf(msg, msg_len, "certificate reload failed, keeping the old ones: %s", err);
		return rc;
	}
	struct tls_listener_set *old = atomic_exchange(&t->listeners, set);
	wait_quiescent(arg);
	listener_set_free(old); /* live connections keep their contexts' references */
	uint32_t n = 0;
	for (uint32_t i = 0; i < set->num; i++)
		n += set->l[i].num;
	snprintf(msg, msg_len, "certificates reloaded: %u", n);
	return 0;
}

void sl_tls_free(struct sl_tls *t)
{
	if (!t)
		return;
	listener_set_free(atomic_load(&t->listeners));
	for (uint32_t i = 0; t->clients && i < t->cfg->num_providers; i++) {
		SSL_CTX_free(t->clients[i]);
		free(t->client_host[i]);
	}
	free(t->clients);
	free(t->client_host);
	free(t->client_host_is_ip);
	free(t);
}

/* --- connections ------------------------------------------------------------------ */

static int attach(struct sl_reactor *r, struct sl_conn *c, SSL_CTX *ctx)
{
	SSL *ssl = SSL_new(ctx);
	BIO *bio = ssl ? BIO_new(bio_method) : NULL;
	if (!bio) {
		SSL_free(ssl);
		return -ENOMEM;
	}
	BIO_set_data(bio, c);
	sl_buf_init(&c->tls_backlog, &r->mem, TLS_BACKLOG_MAX);
	SSL_set_bio(ssl, bio, bio); /* the same BIO both ways: one reference, BIO_new's */
	SSL_set_app_data(ssl, c);
	c->ssl = ssl;
	c->tls_ready = false;
	c->tls_in = NULL;
	c->tls_in_len = 0;
	return 0;
}

int sl_tls_attach_server(struct sl_reactor *r, struct sl_conn *c, uint32_t l)
{
	/* The listener set is read once; the SSL keeps its context alive. */
	struct tls_listener_set *set = atomic_load_explicit(&r->tls->listeners, memory_order_acquire);
	if (l >= set->num || set->l[l].num == 0)
		return -EINVAL;
	int rc = attach(r, c, set->l[l].ctx[0]);
	if (rc)
		return rc;
	SSL_set_accept_state(c->ssl);
	c->tls_client = false;
	return 0;
}

int sl_tls_attach_client(struct sl_reactor *r, struct sl_conn *c, uint32_t p)
{
	struct sl_tls *t = r->tls;
	int rc = attach(r, c, t->clients[p]);
	if (rc)
		return rc;
	SSL *ssl = c->ssl;
	SSL_set_connect_state(ssl);
	c->tls_client = true;
	const char *host = t->client_host[p];
	if (!t->client_host_is_ip[p])
		SSL_set_tlsext_host_name(ssl, host);
	if (!r->config->providers[p].tls_insecure_skip_verify) {
		X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
		int ok = t->client_host_is_ip[p] ? X509_VERIFY_PARAM_set1_ip_asc(param, host)
		                                 : SSL_set1_host(ssl, host);
		if (!ok)
			return -ENOMEM;
	}
	struct sl_upstream_pool *pool = &r->upstreams[p];
	if (pool->tls_session)
		SSL_set_session(ssl, pool->tls_session);
	return 0;
}

void sl_tls_release(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->ssl) {
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	if (c->tls_out) {
		sl_bufpool_put(&r->mem, c->tls_out, c->tls_out_cap);
		c->tls_out = NULL;
	}
	sl_buf_release(&c->tls_backlog);
	if (c->tls_starved) {
		for (struct sl_conn **p = &r->tls_starved; *p; p = &(*p)->tls_starved_next)
			if (*p == c) {
				*p = c->tls_starved_next;
				break;
			}
		c->tls_starved = false;
	}
	c->tls_out_cap = c->tls_out_len = c->tls_out_off = 0;
	c->tls_write_retry = 0;
}

static void tls_send_out(struct sl_reactor *r, struct sl_conn *c);

/* A fatal TLS error on c: the handshake failed, or a record did not
 * verify. Ends the connection the way a reset would. */
static void tls_fail(struct sl_reactor *r, struct sl_conn *c, int ssl_err)
{
	char why[200];
	bool verify_failed = ssl_err == SSL_ERROR_SSL &&
	                     ERR_GET_REASON(ERR_peek_error()) == SSL_R_CERTIFICATE_VERIFY_FAILED;
	if (ssl_err == SSL_ERROR_SSL) {
		ssl_error_text(why, sizeof why);
	} else {
		snprintf(why, sizeof why, "%s", ssl_err == SSL_ERROR_ZERO_RETURN ? "closed" : "I/O");
		ERR_clear_error();
	}
	if (!c->tls_ready) {
		if (c->tls_client) {
			long v = SSL_get_verify_result(c->ssl);
			if (verify_failed && v != X509_V_OK)
				snprintf(last_error, sizeof last_error, "certificate verify failed: %s",
				         X509_verify_cert_error_string(v));
			else
				snprintf(last_error, sizeof last_error, "TLS handshake failed: %s", why);
			count(5);
			tls_send_out(r, c); /* the alert, if any, on its way */
			sl_proxy_on_connect(r, c, -EPROTO);
			return;
		}
		count(2);
		tls_send_out(r, c);
		sl_conn_close(r, c);
		return;
	}
	snprintf(last_error, sizeof last_error, "TLS error: %s", why);
	sl_proxy_on_eof(r, c, -EPROTO);
}

/* Drives the handshake; true once it is done (and the proxy told). */
static bool tls_handshake(struct sl_reactor *r, struct sl_conn *c)
{
	int rc = SSL_do_handshake(c->ssl);
	if (rc != 1) {
		int e = SSL_get_error(c->ssl, rc);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
			tls_send_out(r, c);
			return false;
		}
		tls_fail(r, c, e);
		return false;
	}
	c->tls_ready = true;
	bool resumed = SSL_session_reused(c->ssl);
	count(c->tls_client ? (resumed ? 4 : 3) : (resumed ? 1 : 0));
	tls_send_out(r, c);
	if (c->tls_client && !c->closing)
		sl_proxy_on_connect(r, c, 0);
	return true;
}

void sl_tls_on_connected(struct sl_reactor *r, struct sl_conn *c)
{
	sl_conn_recv_arm(r, c);
	tls_handshake(r, c);
}

static void starve(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->tls_starved)
		return;
	c->tls_starved = true;
	c->tls_starved_next = r->tls_starved;
	r->tls_starved = c;
	sl_conn_recv_cancel(r, c);
}

/* Keeps the unconsumed ciphertext of c in its backlog. false: too much. */
static bool backlog_keep(struct sl_conn *c)
{
	struct sl_buf *b = &c->tls_backlog;
	if (c->tls_in_len == 0)
		return true;
	if (b->p && c->tls_in >= b->p && c->tls_in < b->p + b->cap) {
		/* already the backlog (a restart starved again): slide the rest
		 * to its start */
		memmove(b->p, c->tls_in, c->tls_in_len);
		b->len = c->tls_in_len;
		return true;
	}
	return sl_buf_append(b, c->tls_in, c->tls_in_len);
}

/* Decrypts what c->tls_in offers, record by record, into TLS buffers for
 * the proxy. Returns when BoringSSL wants more ciphertext, the connection
 * ends, or no TLS buffer is free (then the rest waits in the backlog). */
static void tls_process(struct sl_reactor *r, struct sl_conn *c)
{
	if (!c->tls_ready && !tls_handshake(r, c))
		goto out;
	while (!c->closing && c->ssl) {
		int bid = sl_tls_buf_get(r);
		if (bid < 0) {
			starve(r, c);
			goto out;
		}
		char *buf = r->buf_base + (size_t)bid * r->buf_size;
		int n = SSL_read(c->ssl, buf, (int)r->buf_size);
		if (n > 0) {
			if (!sl_proxy_on_data(r, c, (uint16_t)bid, buf, (size_t)n))
				sl_buf_return(r, (uint16_t)bid);
			continue;
		}
		sl_buf_return(r, (uint16_t)bid);
		int e = SSL_get_error(c->ssl, n);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
			break;
		if (e == SSL_ERROR_ZERO_RETURN) { /* close_notify: the peer is done */
			sl_proxy_on_eof(r, c, 0);
			break;
		}
		tls_fail(r, c, e);
		break;
	}
out:
	if (!c->closing && c->ssl) {
		tls_send_out(r, c); /* e.g. a key update or an alert */
		if (c->tls_starved && !backlog_keep(c))
			tls_fail(r, c, SSL_ERROR_SYSCALL);
	}
	c->tls_in = NULL;
	c->tls_in_len = 0;
}

void sl_tls_on_recv(struct sl_reactor *r, struct sl_conn *c, const char *data, size_t len)
{
	if (c->tls_starved) {
		/* completions posted before the cancel: keep them in order */
		c->tls_in = data;
		c->tls_in_len = len;
		if (!backlog_keep(c))
			tls_fail(r, c, SSL_ERROR_SYSCALL);
		c->tls_in = NULL;
		c->tls_in_len = 0;
		return;
	}
	c->tls_in = data;
	c->tls_in_len = len;
	tls_process(r, c);
}

void sl_tls_restart_starved(struct sl_reactor *r)
{
	while (r->tls_starved && r->tls_buf_free_num > r->tls_buf_count / 8) {
		struct sl_conn *c = r->tls_starved;
		r->tls_starved = c->tls_starved_next;
		c->tls_starved_next = NULL;
		c->tls_starved = false;
		if (c->closing)
			continue;
		c->tls_in = c->tls_backlog.p;
		c->tls_in_len = c->tls_backlog.len;
		c->tls_backlog.len = 0;
		sl_conn_hold(c);
		tls_process(r, c);
		if (!c->tls_starved && !c->closing)
			sl_conn_recv_arm(r, c);
		sl_conn_unhold(r, c);
	}
}

/* Encrypts queued plaintext into the output block while a whole record
 * fits. */
static void tls_encrypt(struct sl_reactor *r, struct sl_conn *c)
{
	while (c->sq.num > 0 && !c->closing) {
		struct sl_send_entry *e = &c->sq.entries[c->sq.head];
		size_t left = e->len - c->sq.head_off;
		if (left == 0) {
			sl_tls_sendq_consume(r, c, 0);
			continue;
		}
		size_t room = c->tls_out ? c->tls_out_cap - c->tls_out_len : TLS_OUT_BYTES;
		if (room < TLS_RECORD_SLACK + 512 && !c->tls_write_retry)
			break;
		size_t n = c->tls_write_retry ? c->tls_write_retry
		                              : SL_MIN(SL_MIN(left, room - TLS_RECORD_SLACK),
		                                       (size_t)TLS_RECORD_MAX);
		int rc = SSL_write(c->ssl, e->ptr + c->sq.head_off, (int)n);
		if (rc > 0) {
			c->tls_write_retry = 0;
			sl_tls_sendq_consume(r, c, (size_t)rc);
			continue;
		}
		int err = SSL_get_error(c->ssl, rc);
		if (err == SSL_ERROR_WANT_WRITE) {
			c->tls_write_retry = (uint32_t)n; /* repeat it, same bytes, once sent */
			break;
		}
		tls_fail(r, c, err);
		return;
	}
}

/* Sends what the output block holds (no new encryption). */
static void tls_send_out(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->send_busy || c->closing || !c->ssl || !c->tls_out)
		return;
	if (c->tls_out_off == c->tls_out_len) {
		c->tls_out_off = c->tls_out_len = 0;
		if (!c->tls_write_retry) { /* idle: give the block back */
			sl_bufpool_put(&r->mem, c->tls_out, c->tls_out_cap);
			c->tls_out = NULL;
			c->tls_out_cap = 0;
		}
		return;
	}
	struct io_uring_sqe *sqe = sl_reactor_sqe(r);
	io_uring_prep_send(sqe, c->fd, c->tls_out + c->tls_out_off, c->tls_out_len - c->tls_out_off,
	                   MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, sl_ud(SL_OP_SEND, c->gen, c->slot));
	c->send_busy = true;
	c->inflight++;
}

/* The reactor's send_flush_now for a TLS connection: the one place queued
 * plaintext is encrypted, so a deferred flush (strict usage log) stays
 * deferred. */
void sl_tls_send(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->send_busy || c->closing || !c->ssl)
		return;
	if (c->tls_out && c->tls_out_off == c->tls_out_len)
		c->tls_out_off = c->tls_out_len = 0;
	if (c->tls_ready)
		tls_encrypt(r, c);
	tls_send_out(r, c);
}

bool sl_tls_shutdown(struct sl_reactor *r, struct sl_conn *c)
{
	if (!c->ssl || !c->tls_ready || c->closing)
		return false;
	/* writes the close_notify alert through our BIO into tls_out; we do
	 * not wait for the peer's (a unidirectional shutdown, as HTTP allows) */
	if (SSL_shutdown(c->ssl) < 0) {
		ERR_clear_error();
		return false;
	}
	tls_send_out(r, c);
	return c->send_busy;
}

void sl_tls_on_sent(struct sl_reactor *r, struct sl_conn *c, size_t n)
{
	c->tls_out_off += (uint32_t)n;
	SL_ASSERT(c->tls_out_off <= c->tls_out_len);
	if (!c->tls_ready) {
		/* a handshake flight went out; a WANT_WRITE may be waiting */
		if (c->tls_out_off == c->tls_out_len)
			tls_handshake(r, c);
		else
			tls_send_out(r, c);
		return;
	}
	tls_send_out(r, c);
	if (!c->send_busy && !c->closing)
		sl_conn_send_flush(r, c); /* more plaintext, unless deferred */
	if (!c->closing)
		sl_proxy_on_sent(r, c);
}
