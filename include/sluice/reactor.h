/*
 * reactor.h - one thread, one core, one io_uring.
 *
 * A reactor owns everything its connections touch: the ring, a provided-buffer
 * ring that every recv lands in, a slab of connection slots, a block pool for
 * request and response heads/bodies, timer queues and per-provider pools of
 * idle upstream connections. Nothing is shared with other reactors on the
 * request path; cross-core messages (shutdown now; reconciliation and reload
 * later) arrive through a Concurrency Kit MPSC ring plus an eventfd the
 * reactor keeps a read pending on.
 *
 * Completions are dispatched by user_data = op (8 bits) | generation (24) |
 * slot (32): a completion for a slot that has since been recycled carries an
 * old generation and is recognised as stale (its buffer, if any, is still
 * returned to the ring).
 */
#ifndef SLUICE_REACTOR_H
#define SLUICE_REACTOR_H

#include "sluice/common.h"
#include "sluice/config.h"
#include "sluice/gate.h"
#include "sluice/usage.h"
#include "sluice/http1.h"
#include "sluice/pool.h"
#include "sluice/router.h"
#include "sluice/arena.h"
#include "sluice/buf.h"
#include "sluice/route.h"
#include "sluice/metrics.h"
#include "sluice/accesslog.h"

struct sl_convert_ctx;
struct sl_gate;
struct sl_transcoder;
struct sl_tls;
struct ssl_st;
struct ssl_session_st;

#include <ck_ring.h>
#include <stdatomic.h>
#include <liburing.h>
#include <pthread.h>
#include <netinet/in.h>
#include <sys/uio.h>

/* --- timers ---------------------------------------------------------------
 * Every deadline of a given kind has the same duration, so a queue per kind
 * stays sorted by appending: arming is O(1) (unlink, append), expiry pops from
 * the head. The reactor's io_uring wait is bounded by the earliest head. */
struct sl_timer {
	struct sl_timer *prev, *next;
	uint64_t deadline_ms;
	struct sl_timer_queue *queue; /* NULL when not armed */
};

struct sl_timer_queue {
	struct sl_timer list; /* sentinel */
	uint32_t duration_ms;
	uint8_t kind; /* enum sl_timer_kind */
};

enum sl_timer_kind {
	SL_TIMER_HEADER,      /* client: head not complete in time -> 408 */
	SL_TIMER_BODY,        /* client: body stalled -> 408 */
	SL_TIMER_KEEPALIVE,   /* client idle between requests -> close */
	SL_TIMER_SEND,        /* client not reading its response -> close */
	SL_TIMER_UP_CONNECT,  /* upstream connect -> 502 */
	SL_TIMER_UP_FIRST,    /* upstream response head -> 504 */
	SL_TIMER_UP_IDLE,     /* upstream body stalled -> end the stream */
	SL_TIMER_UP_POOL,     /* pooled upstream connection idle -> close */
};

/* --- send queue -----------------------------------------------------------
 * Bytes waiting to be sent on a connection, in order. Each entry says who
 * owns its memory so the bytes are released when sent: a provided recv buffer
 * (relayed without copying), a pool block, or static/config memory. */
enum sl_owner { SL_OWN_NONE = 0, SL_OWN_RING, SL_OWN_POOL };

struct sl_send_entry {
	const char *ptr;
	uint32_t len;
	uint8_t owner;
	uint8_t block_class; /* SL_OWN_POOL: log2 capacity */
	uint16_t bid;        /* SL_OWN_RING: buffer id */
	void *block;         /* SL_OWN_POOL */
};

/* Entries per connection. The relay pauses its upstream at
 * limits.send_queue_buffers_max entries; the rest is slack for the completions
 * a multishot recv may still deliver before the pause takes effect (the kernel
 * posts at most 32 per wake-up). */
#define SL_SENDQ_CAP 64
#define SL_SEND_IOV_MAX 16
#define SL_STASH_MAX 8 /* pipelined recvs held while a request is in progress */
_Static_assert((SL_SENDQ_CAP & (SL_SENDQ_CAP - 1)) == 0, "SL_SENDQ_CAP is a power of two");

struct sl_sendq {
	struct sl_send_entry entries[SL_SENDQ_CAP];
	uint32_t head_off; /* bytes of entries[head] already sent */
	uint8_t head;
	uint8_t num;
	uint8_t num_inflight; /* entries covered by the send in flight */
};

/* --- connections ------------------------------------------------------------ */
enum sl_conn_kind { SL_CONN_FREE = 0, SL_CONN_CLIENT, SL_CONN_UPSTREAM };

enum sl_client_state {
	SL_CLIENT_IDLE = 1, /* keep-alive: no byte of the next request yet */
	SL_CLIENT_HEAD,     /* reading the request head */
	SL_CLIENT_BODY,     /* reading the request body */
	SL_CLIENT_EXCHANGE, /* request handed to an upstream; response not complete */
	SL_CLIENT_FLUSH,    /* response complete; draining the send queue */
};

enum sl_upstream_state {
	SL_UP_CONNECTING = 1,
	SL_UP_WAIT_HEAD, /* request being sent or sent; no response head yet */
	SL_UP_BODY,      /* relaying the response body */
	SL_UP_POOLED,    /* idle in the keep-alive pool */
};

enum sl_convert_mode {
	SL_CONVERT_NONE = 0, /* bytes relayed as they are */
	SL_CONVERT_STREAM,   /* SSE transcoded event by event */
	SL_CONVERT_BUFFER,   /* body collected, converted at its end */
};

struct sl_reactor;

struct sl_conn {
	int fd;
	uint32_t slot;
	uint32_t gen;
	uint8_t kind;  /* enum sl_conn_kind */
	uint8_t state; /* enum sl_client_state or sl_upstream_state */
	uint16_t inflight; /* SQEs in flight that reference this slot */

	bool recv_armed;    /* a multishot recv is pending */
	bool recv_paused;   /* backpressure: do not re-arm */
	bool recv_starved;  /* recv ended with -ENOBUFS; on the starved list */
	bool send_busy;     /* a send is in flight */
	bool closing;       /* torn down once inflight reaches 0 */
	bool close_after_flush;
	bool keep_alive;
	bool pp_pending;    /* client: its PROXY protocol header is still to come */
	bool admin_conn;    /* client of the admin listener (/metrics, /healthz) */

	struct sl_timer timer;
	struct sl_conn *peer;          /* client <-> upstream of the exchange */
	struct sl_conn *starved_next;  /* reactor's starved list */
	/* strict usage log (usagelog.h): the client's sends wait for the end
	 * of the loop turn (flush_deferred), and once its exchange has ended,
	 * until the usage log is durable past durable_wait */
	bool flush_deferred;
	bool flush_pending;           /* on the reactor's deferred list */
	uint64_t durable_wait;        /* 0: none; else the log's durable seq needed */
	struct sl_conn *deferred_next;
	struct sl_conn *pool_next;     /* upstream: provider idle pool (LIFO) */

	/* Received bytes that must be contiguous (client request; a response head
	 * split across recvs). A pool block. */
	char *in;
	size_t in_len;
	size_t in_cap;

	/* TLS (tls.h); ssl NULL: a plain connection */
	struct ssl_st *ssl;
	char *tls_out;             /* ciphertext to send: a pool block */
	uint32_t tls_out_cap, tls_out_len, tls_out_off;
	uint32_t tls_write_retry;  /* an SSL_write to repeat with this length (0: none) */
	const char *tls_in;        /* ciphertext being fed to BoringSSL */
	size_t tls_in_len;
	struct sl_buf tls_backlog; /* ciphertext kept while no TLS buffer was free */
	bool tls_ready;            /* handshake done */
	bool tls_starved;          /* waiting for a TLS buffer; recv not re-armed */
	bool tls_client;           /* upstream side */
	bool tls_shutdown;         /* close_notify sent: close once it is out */
	struct sl_conn *tls_starved_next;

	/* client: recv buffers of pipelined requests that arrived while one was
	 * in progress and did not fit in in[] */
	uint8_t stash_num;
	struct {
		uint16_t bid;
		uint16_t off;
		uint32_t len;
	} stash[SL_STASH_MAX];

	/* Relay buffers that arrived after the send queue filled (the upstream's
	 * recv cancel was still in flight): a chain of buffer ids through the
	 * reactor's ovf_* arrays, moved into sq as it drains. Bounded by the
	 * buffer ring itself. */
	uint32_t ovf_num;
	uint16_t ovf_head;
	uint16_t ovf_tail;

	struct sl_sendq sq;
	struct msghdr msg;
	struct iovec iov[SL_SEND_IOV_MAX];

	/* client: the exchange in progress */
	struct {
		uint32_t head_len;
		uint32_t body_scan_off;     /* chunked: next undecoded byte in in[] */
		uint64_t body_len;          /* bytes of body so far / total */
		uint64_t content_length;
		uint8_t framing;            /* enum sl_http_framing */
		uint8_t route;              /* enum sl_route */
		uint8_t format;             /* enum sl_format of the route */
		bool sent_continue;
		bool response_started;      /* a response byte was queued to the client */
		bool retried;               /* a stale pooled connection was replaced */
		bool http10;                /* HTTP/1.0 client: no chunked responses */
		/* format conversion (NULL conv: zero-copy pass-through) */
		struct sl_convert_ctx *conv;
		struct sl_transcoder *tc;
		struct sl_arena arena;      /* the exchange's trees; released at its end */
		struct sl_buf pending;      /* converted output waiting for queue room */
		struct sl_chunked chunked;
		uint64_t started_ms;
		char request_id[28];
		/* admission (gate.h): the key, the limit tickets to settle when
		 * the exchange ends, and what the rate-limit headers report */
		struct sl_gate_key key;
		bool has_report;
		bool key_ticket_held;
		bool model_ticket_held;
		uint32_t model_index;
		struct sl_limit_ticket key_ticket;
		struct sl_limit_ticket model_ticket;
		struct sl_limit_report report;
		uint64_t tokens_actual; /* UINT64_MAX: the upstream did not say */
		bool scan_usage;        /* a token limit needs the real usage */
		struct sl_usage_scanner usage_scan;
		struct sl_token_usage usage;
		/* the usage record (usagelog.h), written once the exchange ends
		 * if its model was known */
		bool routed;
		bool stream;              /* the response was an event stream */
		uint16_t status;          /* of the response head sent */
		uint64_t first_byte_ms;   /* monotonic; 0: nothing sent yet */
		const struct sl_model_target *target;
		uint64_t request_bytes;   /* the request body's length */
		uint64_t relayed_bytes;   /* of the upstream's response body */
		uint32_t events;          /* of an upstream event stream */
		bool last_was_nl;         /* the last byte relayed was '\n' */
		bool upstream_done;       /* the upstream's response ended whole */
		bool credit_held;         /* credit.h: settle credit_hold at the end */
		int64_t credit_hold;
		uint32_t credit_plan;     /* paid by plan window credit_plan - 1; 0: the balance */
		uint32_t images;          /* images/generations: images in the response */
		/* routing (route.h): this exchange's attempts, before its
		 * response's first byte */
		uint8_t attempts;
		bool model_escaped;       /* the body's "model" value has escapes */
		uint32_t model_start, model_end; /* the value's offsets in the body */
		bool attempt_inflight;    /* route_inflight[attempt_key] counts it */
		bool retry_pending;       /* a backoff timeout is out (SL_OP_RETRY) */
		uint16_t last_status;     /* the last failed attempt, for the final answer */
		uint32_t attempt_key;     /* global key index of the attempt */
		uint64_t attempts_deadline_ms;
		struct sl_route_pick tried[SL_ROUTE_ATTEMPTS_MAX];
		char last_type[24];
		char last_msg[192];
		struct __kernel_timespec retry_ts;
		uint8_t img_tail_len;
		char img_tail[10];        /* the last bytes of the previous piece */
		/* the access log line (accesslog.h), written once the request ends */
		bool access_pending;      /* a request began and has no line yet */
		bool has_model;           /* model_index names the model asked for */
		uint8_t method;           /* enum sl_http_method; 0: the head never parsed */
		uint16_t target_len;
		uint32_t target_off;      /* the request target, in in[] */
		uint8_t path_len;         /* path: the target's first bytes, kept when */
		char path[63];            /* in[] is released mid-response */
		uint64_t billed_input, billed_output; /* as in the usage record */
		int64_t billed_cost;
	} cx;

	/* client: its address, fetched on first need (IP blocking) */
	bool have_peer;
	struct sockaddr_in6 peer_addr;

	/* upstream: the request in progress */
	struct {
		uint32_t provider;
		uint8_t framing;
		bool reused;           /* taken from the pool: may have gone stale */
		bool resp_keep_alive;
		bool is_sse;
		bool dechunk;          /* decode chunks in place (HTTP/1.0 client, conversion) */
		uint8_t convert_mode;  /* SL_CONVERT_* */
		uint16_t status;       /* response status (conversion) */
		char retry_after[16];  /* upstream Retry-After, kept for a converted error */
		struct sl_buf body;    /* SL_CONVERT_BUFFER: the whole upstream body */
		char tail[4];          /* last bytes relayed: "\n\n\r\n" = event boundary */
		uint64_t body_left;    /* SL_BODY_LENGTH */
		struct sl_chunked chunked;
		void *pinned;          /* client input still referenced by our send */
		size_t pinned_cap;
	} ux;
};

/* --- cross-core mailbox ----------------------------------------------------- */
enum sl_msg_type {
	SL_MSG_SHUTDOWN = 1,
	SL_MSG_WAKE, /* nothing to do: pass a loop turn (key table reclamation) */
};

struct sl_msg {
	uint32_t type;
	uint32_t arg;
};

#define SL_MAILBOX_CAP 64

/* --- the reactor ------------------------------------------------------------ */
struct sl_upstream_pool {
	struct sl_conn *idle; /* LIFO */
	struct ssl_session_st *tls_session; /* https: the newest session, offered by new connections */
	uint32_t num_idle;
	struct sl_timer_queue connect_q, first_q, idle_q;
};

struct sl_reactor_stats {
	uint64_t accepted;
	uint64_t requests;
	uint64_t upstream_connects;
	uint64_t upstream_reused;
	uint64_t recv_enobufs;
	uint64_t proxy_header_bad; /* connections closed for a bad PROXY header */
	uint64_t loop_turns;
	uint64_t cqes;
};

struct sl_reactor {
	struct io_uring ring;
	uint32_t index;
	int cpu; /* -1: not pinned */
	const struct sl_config *config;
	struct sl_gate *gate;
	pthread_t thread;
	/* the gate epoch this reactor saw at its last turn boundary (gate.h) */
	_Atomic uint64_t gate_seen;
	/* this reactor's usage-log writer (NULL: the log is off) */
	struct sl_ulog *ulog;
	uint64_t ulog_next_seq; /* at exit: the seq its log would have used next */
	bool ulog_clean;        /* at exit: every record written and synced */
	/* x-ratelimit reset times as text (proxy.c reset_text): 0 the window's,
	 * 1 the day's; a time of 0 is never a reset, so zeroed is empty */
	uint64_t reset_text_ms[2];
	char reset_text[2][21];

	int *listen_fds;
	uint32_t num_listen;
	bool accepting;

	/* provided buffers */
	struct io_uring_buf_ring *buf_ring;
	char *buf_base;
	uint32_t buf_size;
	uint32_t buf_count;
	uint32_t buf_pending_returns; /* added, not yet advanced */
	uint32_t buf_out;             /* held by us */
	uint16_t *ovf_next;           /* overflow chains, indexed by buffer id */
	uint32_t *ovf_off;
	uint32_t *ovf_len;

	/* connection slots */
	struct sl_conn *conns;
	uint32_t conn_cap;
	uint32_t *conn_free;
	uint32_t conn_free_num;
	uint32_t num_clients;
	uint32_t num_exchanges;

	struct sl_bufpool mem;
	struct sl_conn *starved;
	/* TLS (tls.h): decrypted records land in tls_buf_count more buffers
	 * after the ring's (ids buf_count and up), on a free stack */
	struct sl_tls *tls;
	/* routing (route.h): shared health, this core's attempts in flight per
	 * key, and a random state for weights and jitter */
	struct sl_routing *route;
	uint32_t *route_inflight;
	uint64_t rnd;
	uint32_t tls_buf_count;
	uint32_t tls_buf_free_num;
	uint16_t *tls_buf_free;
	struct sl_conn *tls_starved;
	struct sl_conn *deferred; /* flush_pending connections */

	uint64_t now_ms;
	uint32_t wait_cap_ms; /* SLUICE_WAIT_CAP_MS: bound each wait (valgrind) */
	struct sl_timer_queue header_q, body_q, keepalive_q, send_q, up_pool_q;
	struct sl_upstream_pool *upstreams; /* one per provider */

	/* mailbox */
	int event_fd;
	uint64_t event_value;
	ck_ring_t mailbox;
	ck_ring_buffer_t mailbox_buf[SL_MAILBOX_CAP];
	bool stopping;

	/* scratch for the one request head being parsed right now */
	struct sl_http_header *headers;
	uint64_t request_seq;
	uint32_t id_prefix;

	/* Written only by this reactor, with SL_METRIC_* (metrics.h): read by
	 * whichever reactor serves /metrics. */
	struct sl_reactor_stats stats;
	struct sl_metrics metrics;
	struct sl_alog alog;      /* buf[0] NULL: no access log */
	/* every reactor of the process, for /metrics (set by main before start) */
	struct sl_reactor *all;
	uint32_t num_all;
};

/* user_data encoding */
enum sl_op {
	SL_OP_ACCEPT = 1,
	SL_OP_RECV,
	SL_OP_SEND,
	SL_OP_CONNECT,
	SL_OP_CANCEL,
	SL_OP_EVENTFD,
	SL_OP_ULOG_WRITE, /* the usage log's group commit (usagelog.h) */
	SL_OP_ULOG_FSYNC,
	SL_OP_RETRY, /* a client's backoff before its next upstream attempt */
	SL_OP_ALOG_WRITE, /* the access log's write (accesslog.h) */
};

static inline uint64_t sl_ud(enum sl_op op, uint32_t gen, uint32_t slot)
{
	return (uint64_t)op << 56 | (uint64_t)(gen & 0xFFFFFF) << 32 | slot;
}

/*
 * sl_reactor_init prepares reactor index on the calling thread's behalf:
 * allocates slots, pools and buffers from config limits. The ring itself is
 * created by sl_reactor_run on the reactor's own thread (SINGLE_ISSUER).
 * listen_fds are owned by the reactor afterwards. Returns 0 or -errno.
 */
int sl_reactor_init(struct sl_reactor *r, uint32_t index, int cpu,
                    const struct sl_config *config, int *listen_fds, uint32_t num_listen);

/* sl_reactor_run is the thread body: sets up the ring, signals ready through
 * ready_cb, and loops until a shutdown message and the drain of every
 * connection. Returns 0 or -errno. */
int sl_reactor_run(struct sl_reactor *r, void (*ready_cb)(struct sl_reactor *, int rc));

/* sl_reactor_post queues msg for r from any thread and wakes it. Returns 0,
 * or -EAGAIN when r's mailbox is full. */
int sl_reactor_post(struct sl_reactor *r, const struct sl_msg *msg);

/* sl_reactor_destroy frees what init allocated (after the thread joined). */
void sl_reactor_destroy(struct sl_reactor *r);

/* --- services the reactor offers the protocol layer (proxy.c) ---------------- */

struct io_uring_sqe *sl_reactor_sqe(struct sl_reactor *r);
struct sl_conn *sl_conn_alloc(struct sl_reactor *r, int fd, enum sl_conn_kind kind);
/* sl_conn_close shuts the socket down and frees the slot once no operation is
 * in flight; owned buffers are released then. Idempotent. */
void sl_conn_close(struct sl_reactor *r, struct sl_conn *c);
void sl_conn_recv_arm(struct sl_reactor *r, struct sl_conn *c);
void sl_conn_recv_pause(struct sl_reactor *r, struct sl_conn *c);
/* sl_conn_recv_cancel stops an armed multishot recv; the caller's flag
 * (recv_paused, tls_starved) keeps it from being armed again. */
void sl_conn_recv_cancel(struct sl_reactor *r, struct sl_conn *c);
void sl_conn_recv_resume(struct sl_reactor *r, struct sl_conn *c);
/* sl_conn_send_push appends bytes to c's send queue; returns false (and
 * releases nothing) when the queue is full. sl_conn_send_flush starts a send
 * if none is in flight. */
bool sl_conn_send_push(struct sl_conn *c, const struct sl_send_entry *e);
/* sl_conn_send_push_ring queues bytes of provided buffer bid, chaining them
 * past the queue's end when it is full. Never fails. */
void sl_conn_send_push_ring(struct sl_reactor *r, struct sl_conn *c, uint16_t bid,
                            const char *ptr, size_t len);
void sl_conn_send_flush(struct sl_reactor *r, struct sl_conn *c);
void sl_send_entry_release(struct sl_reactor *r, struct sl_send_entry *e);
void sl_buf_return(struct sl_reactor *r, uint16_t bid);
/* sl_conn_hold keeps c's slot from being freed while work outside a
 * completion handler calls into the protocol layer; sl_conn_unhold lets go
 * (and frees a connection that closed meanwhile). */
static inline void sl_conn_hold(struct sl_conn *c)
{
	c->inflight++;
}
void sl_conn_unhold(struct sl_reactor *r, struct sl_conn *c);
/* tls.c: drops n encrypted bytes from the head of c's send queue. */
void sl_tls_sendq_consume(struct sl_reactor *r, struct sl_conn *c, size_t n);
/* A free TLS buffer's id, or -1. */
int sl_tls_buf_get(struct sl_reactor *r);
/* The reactor of the calling thread (NULL off the reactor threads). */
struct sl_reactor *sl_reactor_current(void);

void sl_timer_arm(struct sl_reactor *r, struct sl_timer *t, struct sl_timer_queue *q);
void sl_timer_cancel(struct sl_timer *t);
void sl_timer_queue_init(struct sl_timer_queue *q, uint32_t duration_ms, enum sl_timer_kind kind);

/* proxy.c: protocol callbacks the reactor calls */
void sl_proxy_on_accept(struct sl_reactor *r, int fd, uint32_t listener);
/* While c->pp_pending: takes the PROXY header's bytes from a recv's data and
 * returns how many it consumed (all of them while the header is
 * incomplete). A bad header closes c. */
size_t sl_proxy_pp_feed(struct sl_reactor *r, struct sl_conn *c, const char *data, size_t len);
/* data is a provided buffer bid; returns true when the proxy kept it (it
 * will come back through sl_buf_return), false to return it now. */
bool sl_proxy_on_data(struct sl_reactor *r, struct sl_conn *c, uint16_t bid, char *data,
                      size_t len);
void sl_proxy_on_eof(struct sl_reactor *r, struct sl_conn *c, int err);
void sl_proxy_on_sent(struct sl_reactor *r, struct sl_conn *c);
void sl_proxy_on_send_error(struct sl_reactor *r, struct sl_conn *c, int err);
void sl_proxy_on_connect(struct sl_reactor *r, struct sl_conn *c, int res);
void sl_proxy_on_timer(struct sl_reactor *r, struct sl_conn *c, enum sl_timer_kind kind);
void sl_proxy_on_release(struct sl_reactor *r, struct sl_conn *c);
void sl_proxy_on_shutdown(struct sl_reactor *r);
/* The backoff of c's exchange elapsed: its next upstream attempt. */
void sl_proxy_on_retry(struct sl_reactor *r, struct sl_conn *c);

#endif
