/*
 * reactor.c - the per-core event loop: ring setup, provided buffers,
 * connection slots, send queues, timers and the completion dispatch.
 * Protocol decisions live in proxy.c; this file only moves bytes and
 * keeps the bookkeeping that makes io_uring safe to use (a slot is never
 * reused while an operation that references it is in flight).
 */
#include "sluice/reactor.h"
#include "sluice/usagelog.h"
#include "sluice/gate.h"
#include "sluice/tls.h"

#include <openssl/ssl.h>

#include "config.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define SL_RING_ENTRIES 4096
#define SL_BUF_GROUP 0
#define SL_DRAIN_TIMEOUT_MS 30000 /* SIGTERM: in-flight exchanges get this long */

static uint64_t monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* --- timers ---------------------------------------------------------------- */

void sl_timer_queue_init(struct sl_timer_queue *q, uint32_t duration_ms, enum sl_timer_kind kind)
{
	q->list.prev = q->list.next = &q->list;
	q->duration_ms = duration_ms;
	q->kind = (uint8_t)kind;
}

void sl_timer_cancel(struct sl_timer *t)
{
	if (!t->queue)
		return;
	t->prev->next = t->next;
	t->next->prev = t->prev;
	t->prev = t->next = NULL;
	t->queue = NULL;
}

void sl_timer_arm(struct sl_reactor *r, struct sl_timer *t, struct sl_timer_queue *q)
{
	sl_timer_cancel(t);
	t->deadline_ms = r->now_ms + q->duration_ms;
	t->queue = q;
	t->prev = q->list.prev;
	t->next = &q->list;
	q->list.prev->next = t;
	q->list.prev = t;
}

static uint64_t queue_next(const struct sl_timer_queue *q)
{
	return q->list.next != &q->list ? q->list.next->deadline_ms : UINT64_MAX;
}

#define FOR_EACH_QUEUE(r, q, body)                                                      \
	do {                                                                            \
		struct sl_timer_queue *fixed_[] = { &(r)->header_q, &(r)->body_q,       \
			                            &(r)->keepalive_q, &(r)->send_q,    \
			                            &(r)->up_pool_q };                  \
		for (size_t i_ = 0; i_ < SL_ARRAY_LEN(fixed_); i_++) {                  \
			struct sl_timer_queue *q = fixed_[i_];                          \
			body;                                                           \
		}                                                                       \
		for (uint32_t p_ = 0; p_ < (r)->config->num_providers; p_++) {          \
			struct sl_upstream_pool *up_ = &(r)->upstreams[p_];             \
			struct sl_timer_queue *ups_[] = { &up_->connect_q, &up_->first_q,  \
				                          &up_->idle_q };               \
			for (size_t j_ = 0; j_ < 3; j_++) {                             \
				struct sl_timer_queue *q = ups_[j_];                    \
				body;                                                   \
			}                                                               \
		}                                                                       \
	} while (0)

static uint64_t next_deadline(struct sl_reactor *r)
{
	uint64_t next = UINT64_MAX;
	FOR_EACH_QUEUE(r, q, next = SL_MIN(next, queue_next(q)));
	return next;
}

static void expire_timers(struct sl_reactor *r)
{
	FOR_EACH_QUEUE(r, q, {
		/* bounded: each expiry unlinks one timer */
		while (q->list.next != &q->list && q->list.next->deadline_ms <= r->now_ms) {
			struct sl_timer *t = q->list.next;
			sl_timer_cancel(t);
			struct sl_conn *c = (struct sl_conn *)((char *)t - offsetof(struct sl_conn, timer));
			sl_proxy_on_timer(r, c, (enum sl_timer_kind)q->kind);
		}
	});
}

/* --- submission helpers ---------------------------------------------------- */

struct io_uring_sqe *sl_reactor_sqe(struct sl_reactor *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
	if (SL_UNLIKELY(!sqe)) {
		io_uring_submit(&r->ring);
		sqe = io_uring_get_sqe(&r->ring);
		SL_ASSERT(sqe != NULL);
	}
	return sqe;
}

static void arm_accept(struct sl_reactor *r, uint32_t i)
{
	struct io_uring_sqe *sqe = sl_reactor_sqe(r);
	io_uring_prep_multishot_accept(sqe, r->listen_fds[i], NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, sl_ud(SL_OP_ACCEPT, 0, i));
}

static void arm_eventfd(struct sl_reactor *r)
{
	struct io_uring_sqe *sqe = sl_reactor_sqe(r);
	io_uring_prep_read(sqe, r->event_fd, &r->event_value, sizeof r->event_value, 0);
	io_uring_sqe_set_data64(sqe, sl_ud(SL_OP_EVENTFD, 0, 0));
}

/* --- provided buffers ------------------------------------------------------ */

void sl_buf_return(struct sl_reactor *r, uint16_t bid)
{
	if (bid >= r->buf_count) { /* a TLS buffer (tls.h) */
		SL_ASSERT_HOT(bid < r->buf_count + r->tls_buf_count);
		SL_ASSERT(r->tls_buf_free_num < r->tls_buf_count);
		r->tls_buf_free[r->tls_buf_free_num++] = bid;
		return;
	}
	SL_ASSERT(r->buf_out > 0);
	io_uring_buf_ring_add(r->buf_ring, r->buf_base + (size_t)bid * r->buf_size, r->buf_size,
	                      bid, io_uring_buf_ring_mask(r->buf_count),
	                      (int)r->buf_pending_returns);
	r->buf_pending_returns++;
	r->buf_out--;
}

int sl_tls_buf_get(struct sl_reactor *r)
{
	return r->tls_buf_free_num ? r->tls_buf_free[--r->tls_buf_free_num] : -1;
}

static __thread struct sl_reactor *current_reactor;

struct sl_reactor *sl_reactor_current(void)
{
	return current_reactor;
}

static void buf_flush_returns(struct sl_reactor *r)
{
	if (r->buf_pending_returns) {
		io_uring_buf_ring_advance(r->buf_ring, (int)r->buf_pending_returns);
		r->buf_pending_returns = 0;
	}
}

/* --- connections ------------------------------------------------------------ */

struct sl_conn *sl_conn_alloc(struct sl_reactor *r, int fd, enum sl_conn_kind kind)
{
	if (r->conn_free_num == 0)
		return NULL;
	uint32_t slot = r->conn_free[--r->conn_free_num];
	struct sl_conn *c = &r->conns[slot];
	SL_ASSERT(c->kind == SL_CONN_FREE && c->inflight == 0);
	uint32_t gen = c->gen;
	memset(c, 0, offsetof(struct sl_conn, sq));
	c->sq.head = c->sq.num = c->sq.num_inflight = 0;
	c->sq.head_off = 0;
	memset(&c->cx, 0, sizeof c->cx);
	memset(&c->ux, 0, sizeof c->ux);
	c->have_peer = false;
	c->gen = gen;
	c->slot = slot;
	c->fd = fd;
	c->kind = (uint8_t)kind;
	return c;
}

void sl_send_entry_release(struct sl_reactor *r, struct sl_send_entry *e)
{
	if (e->owner == SL_OWN_RING)
		sl_buf_return(r, e->bid);
	else if (e->owner == SL_OWN_POOL)
		sl_bufpool_put(&r->mem, e->block, (size_t)1 << e->block_class);
	e->owner = SL_OWN_NONE;
}

static void starved_unlink(struct sl_reactor *r, struct sl_conn *c)
{
	for (struct sl_conn **p = &r->starved; *p; p = &(*p)->starved_next) {
		if (*p == c) {
			*p = c->starved_next;
			break;
		}
	}
	c->recv_starved = false;
	c->starved_next = NULL;
}

static void deferred_unlink(struct sl_reactor *r, struct sl_conn *c)
{
	for (struct sl_conn **p = &r->deferred; *p; p = &(*p)->deferred_next) {
		if (*p == c) {
			*p = c->deferred_next;
			break;
		}
	}
	c->flush_pending = false;
	c->deferred_next = NULL;
}

static void conn_maybe_free(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->kind == SL_CONN_FREE || !c->closing || c->inflight != 0)
		return;
	if (c->recv_starved)
		starved_unlink(r, c);
	if (c->flush_pending)
		deferred_unlink(r, c);
	sl_proxy_on_release(r, c);
	if (c->ssl || c->tls_out || c->tls_backlog.p)
		sl_tls_release(r, c);
	for (unsigned i = 0; i < c->stash_num; i++)
		sl_buf_return(r, c->stash[i].bid);
	c->stash_num = 0;
	for (; c->ovf_num; c->ovf_num--) {
		uint16_t bid = c->ovf_head;
		c->ovf_head = r->ovf_next[bid];
		sl_buf_return(r, bid);
	}
	while (c->sq.num) {
		sl_send_entry_release(r, &c->sq.entries[c->sq.head]);
		c->sq.head = (uint8_t)((c->sq.head + 1) & (SL_SENDQ_CAP - 1));
		c->sq.num--;
	}
	sl_bufpool_put(&r->mem, c->in, c->in_cap);
	c->in = NULL;
	sl_bufpool_put(&r->mem, c->ux.pinned, c->ux.pinned_cap);
	c->ux.pinned = NULL;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->kind = SL_CONN_FREE;
	c->closing = false;
	c->gen = (c->gen + 1) & 0xFFFFFF;
	r->conn_free[r->conn_free_num++] = c->slot;
}

void sl_conn_close(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	sl_timer_cancel(&c->timer);
	if (c->inflight) {
		/* Cancel whatever is pending on the socket; the completions come
		 * back with -ECANCELED (or their real result) and the slot is
		 * freed when the last one is seen. */
		struct io_uring_sqe *sqe = sl_reactor_sqe(r);
		io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
		io_uring_sqe_set_data64(sqe, sl_ud(SL_OP_CANCEL, c->gen, c->slot));
	}
	conn_maybe_free(r, c);
}

void sl_conn_recv_arm(struct sl_reactor *r, struct sl_conn *c)
{
	/* FREE: a close with nothing in flight frees the slot at once, and a
	 * completion handler may still hold it */
	if (c->recv_armed || c->closing || c->recv_paused || c->recv_starved || c->tls_starved ||
	    c->kind == SL_CONN_FREE)
		return;
	struct io_uring_sqe *sqe = sl_reactor_sqe(r);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = SL_BUF_GROUP;
	io_uring_sqe_set_data64(sqe, sl_ud(SL_OP_RECV, c->gen, c->slot));
	c->recv_armed = true;
	c->inflight++;
}

void sl_conn_recv_cancel(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->recv_armed) {
		struct io_uring_sqe *sqe = sl_reactor_sqe(r);
		io_uring_prep_cancel64(sqe, sl_ud(SL_OP_RECV, c->gen, c->slot), 0);
		io_uring_sqe_set_data64(sqe, sl_ud(SL_OP_CANCEL, c->gen, c->slot));
	}
}

void sl_conn_recv_pause(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->recv_paused)
		return;
	c->recv_paused = true;
	sl_conn_recv_cancel(r, c);
	if (c->recv_starved)
		starved_unlink(r, c);
}

void sl_conn_recv_resume(struct sl_reactor *r, struct sl_conn *c)
{
	if (!c->recv_paused)
		return;
	c->recv_paused = false;
	sl_conn_recv_arm(r, c);
}

void sl_conn_send_push_ring(struct sl_reactor *r, struct sl_conn *c, uint16_t bid,
                            const char *ptr, size_t len)
{
	if (c->ovf_num == 0) {
		struct sl_send_entry e = { .ptr = ptr, .len = (uint32_t)len, .owner = SL_OWN_RING,
			                   .bid = bid };
		if (sl_conn_send_push(c, &e))
			return;
	}
	uint32_t off = (uint32_t)(ptr - (r->buf_base + (size_t)bid * r->buf_size));
	SL_ASSERT(off < r->buf_size && len <= r->buf_size - off);
	r->ovf_off[bid] = off;
	r->ovf_len[bid] = (uint32_t)len;
	if (c->ovf_num++ == 0)
		c->ovf_head = bid;
	else
		r->ovf_next[c->ovf_tail] = bid;
	c->ovf_tail = bid;
}

/* Moves chained overflow buffers into the send queue while it has room. */
static void ovf_drain(struct sl_reactor *r, struct sl_conn *c)
{
	while (c->ovf_num && c->sq.num < SL_SENDQ_CAP) {
		uint16_t bid = c->ovf_head;
		struct sl_send_entry e = {
			.ptr = r->buf_base + (size_t)bid * r->buf_size + r->ovf_off[bid],
			.len = r->ovf_len[bid],
			.owner = SL_OWN_RING,
			.bid = bid,
		};
		(void)sl_conn_send_push(c, &e);
		c->ovf_head = r->ovf_next[bid];
		c->ovf_num--;
	}
}

bool sl_conn_send_push(struct sl_conn *c, const struct sl_send_entry *e)
{
	if (c->sq.num >= SL_SENDQ_CAP)
		return false;
	c->sq.entries[(c->sq.head + c->sq.num) & (SL_SENDQ_CAP - 1)] = *e;
	c->sq.num++;
	return true;
}

static void send_flush_now(struct sl_reactor *r, struct sl_conn *c);

void sl_conn_send_flush(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->send_busy || c->sq.num == 0 || c->closing)
		return;
	if (c->flush_deferred) {
		if (!c->flush_pending) {
			c->flush_pending = true;
			c->deferred_next = r->deferred;
			r->deferred = c;
		}
		return;
	}
	send_flush_now(r, c);
}

/* release_deferred (end of a loop turn, and when the usage log's durable
 * seq moved): sends what waited, except for exchanges whose record is not
 * durable yet. */
static void release_deferred(struct sl_reactor *r)
{
	uint64_t durable = r->ulog ? sl_ulog_durable_seq(r->ulog) : UINT64_MAX;
	for (struct sl_conn **p = &r->deferred; *p;) {
		struct sl_conn *c = *p;
		if (!c->closing && c->durable_wait && durable < c->durable_wait) {
			p = &c->deferred_next;
			continue;
		}
		*p = c->deferred_next;
		c->flush_pending = false;
		c->deferred_next = NULL;
		if (!c->closing && !c->send_busy && c->sq.num)
			send_flush_now(r, c);
	}
}

/* A write or fsync of the usage log failed for good: the records some
 * responses wait for may be lost, so those clients never see them end. */
static void drop_durable_waiters(struct sl_reactor *r)
{
	for (;;) { /* from the head each time: a close may unlink its conn */
		struct sl_conn *c = r->deferred;
		while (c && !(c->durable_wait && !c->closing))
			c = c->deferred_next;
		if (!c)
			break;
		c->durable_wait = 0;
		sl_conn_close(r, c);
	}
}

static void send_flush_now(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->ssl) {
		sl_tls_send(r, c); /* encrypts what is queued, sends the ciphertext */
		return;
	}
	unsigned n = SL_MIN((unsigned)c->sq.num, (unsigned)SL_SEND_IOV_MAX);
	for (unsigned i = 0; i < n; i++) {
		struct sl_send_entry *e = &c->sq.entries[(c->sq.head + i) & (SL_SENDQ_CAP - 1)];
		uint32_t off = i == 0 ? c->sq.head_off : 0;
		c->iov[i].iov_base = (void *)(e->ptr + off);
		c->iov[i].iov_len = e->len - off;
	}
	struct io_uring_sqe *sqe = sl_reactor_sqe(r);
	if (n == 1) {
		io_uring_prep_send(sqe, c->fd, c->iov[0].iov_base, c->iov[0].iov_len, MSG_NOSIGNAL);
	} else {
		memset(&c->msg, 0, sizeof c->msg);
		c->msg.msg_iov = c->iov;
		c->msg.msg_iovlen = n;
		io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
	}
	io_uring_sqe_set_data64(sqe, sl_ud(SL_OP_SEND, c->gen, c->slot));
	c->sq.num_inflight = (uint8_t)n;
	c->send_busy = true;
	c->inflight++;
}

/* Drops res sent bytes from the head of c's queue. */
static void sendq_consume(struct sl_reactor *r, struct sl_conn *c, size_t res)
{
	while (res > 0) {
		SL_ASSERT(c->sq.num > 0);
		struct sl_send_entry *e = &c->sq.entries[c->sq.head];
		size_t left = e->len - c->sq.head_off;
		if (res < left) {
			c->sq.head_off += (uint32_t)res;
			return;
		}
		res -= left;
		sl_send_entry_release(r, e);
		c->sq.head = (uint8_t)((c->sq.head + 1) & (SL_SENDQ_CAP - 1));
		c->sq.num--;
		c->sq.head_off = 0;
	}
	/* Zero-length entries at the head are done too. */
	while (c->sq.num && c->sq.entries[c->sq.head].len == 0) {
		sl_send_entry_release(r, &c->sq.entries[c->sq.head]);
		c->sq.head = (uint8_t)((c->sq.head + 1) & (SL_SENDQ_CAP - 1));
		c->sq.num--;
	}
	/* An empty queue restarts at entry 0: a connection that never queues
	 * much touches only the first entries of its array. */
	if (c->sq.num == 0)
		c->sq.head = 0;
}

void sl_conn_unhold(struct sl_reactor *r, struct sl_conn *c)
{
	SL_ASSERT(c->inflight > 0);
	c->inflight--;
	conn_maybe_free(r, c);
}

void sl_tls_sendq_consume(struct sl_reactor *r, struct sl_conn *c, size_t n)
{
	sendq_consume(r, c, n);
	ovf_drain(r, c);
}

/* --- completion handlers ------------------------------------------------------ */

static struct sl_conn *conn_of(struct sl_reactor *r, uint64_t ud)
{
	uint32_t slot = (uint32_t)ud;
	SL_ASSERT(slot < r->conn_cap);
	struct sl_conn *c = &r->conns[slot];
	SL_ASSERT(c->kind != SL_CONN_FREE && c->gen == ((ud >> 32) & 0xFFFFFF));
	return c;
}

static void handle_recv(struct sl_reactor *r, struct io_uring_cqe *cqe)
{
	struct sl_conn *c = conn_of(r, cqe->user_data);
	bool more = cqe->flags & IORING_CQE_F_MORE;
	bool has_buf = cqe->flags & IORING_CQE_F_BUFFER;
	uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
	if (has_buf)
		r->buf_out++;
	if (!more) {
		c->recv_armed = false;
		c->inflight--;
	}
	int res = cqe->res;
	if (c->closing) {
		if (has_buf)
			sl_buf_return(r, bid);
	} else if (res > 0) {
		SL_ASSERT(has_buf);
		char *data = r->buf_base + (size_t)bid * r->buf_size;
		size_t len = (size_t)res;
		if (c->pp_pending) {
			/* the PROXY header comes before TLS and HTTP: what follows it
			 * moves to the buffer's start, where the relay expects data */
			c->inflight++; /* held, as for TLS below */
			size_t used = sl_proxy_pp_feed(r, c, data, len);
			c->inflight--;
			len -= used;
			if (len && !c->closing)
				memmove(data, data + used, len);
		}
		if (c->closing || len == 0) {
			sl_buf_return(r, bid);
		} else if (c->ssl) {
			c->inflight++; /* held: a close inside must not free the slot under us */
			sl_tls_on_recv(r, c, data, len);
			c->inflight--;
			sl_buf_return(r, bid);
		} else if (!sl_proxy_on_data(r, c, bid, data, len)) {
			sl_buf_return(r, bid);
		}
		if (!more && !c->closing)
			sl_conn_recv_arm(r, c);
	} else if (res == -ENOBUFS) {
		SL_METRIC_INC(r->stats.recv_enobufs);
		if (!c->recv_paused && !c->recv_starved) {
			c->recv_starved = true;
			c->starved_next = r->starved;
			r->starved = c;
		}
	} else if (res == -ECANCELED) {
		/* Paused on purpose: resume re-arms. But a pause and its resume
		 * within one turn leave the cancel in flight while the recv still
		 * counts as armed (the resume's arm was a no-op): re-arm here. */
		if (!c->closing)
			sl_conn_recv_arm(r, c);
	} else {
		if (has_buf)
			sl_buf_return(r, bid);
		sl_proxy_on_eof(r, c, res);
	}
	conn_maybe_free(r, c);
}

static void handle_send(struct sl_reactor *r, struct io_uring_cqe *cqe)
{
	struct sl_conn *c = conn_of(r, cqe->user_data);
	c->inflight--;
	c->send_busy = false;
	c->sq.num_inflight = 0;
	if (c->ssl && !c->closing) {
		if (cqe->res < 0)
			sl_proxy_on_send_error(r, c, cqe->res);
		else
			sl_tls_on_sent(r, c, (size_t)cqe->res);
	} else if (!c->closing) {
		if (cqe->res < 0) {
			sl_proxy_on_send_error(r, c, cqe->res);
		} else {
			sendq_consume(r, c, (size_t)cqe->res);
			ovf_drain(r, c);
			sl_conn_send_flush(r, c);
			sl_proxy_on_sent(r, c);
		}
	}
	conn_maybe_free(r, c);
}

static void handle_mailbox(struct sl_reactor *r)
{
	void *item;
	while (ck_ring_dequeue_mpsc(&r->mailbox, r->mailbox_buf, &item)) {
		uintptr_t v = (uintptr_t)item;
		struct sl_msg msg = { .type = (uint32_t)(v >> 32), .arg = (uint32_t)v };
		if (msg.type == SL_MSG_SHUTDOWN && !r->stopping) {
			r->stopping = true;
			r->accepting = false;
			for (uint32_t i = 0; i < r->num_listen; i++) {
				struct io_uring_sqe *sqe = sl_reactor_sqe(r);
				io_uring_prep_cancel_fd(sqe, r->listen_fds[i], IORING_ASYNC_CANCEL_ALL);
				io_uring_sqe_set_data64(sqe, sl_ud(SL_OP_CANCEL, 0, 0));
			}
			sl_proxy_on_shutdown(r);
		}
	}
}

static void handle_cqe(struct sl_reactor *r, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	switch ((enum sl_op)(ud >> 56)) {
	case SL_OP_ACCEPT:
		if (cqe->res >= 0) {
			if (r->accepting)
				sl_proxy_on_accept(r, cqe->res, (uint32_t)ud);
			else
				close(cqe->res);
		} else if (cqe->res != -ECANCELED) {
			fprintf(stderr, "sluice: reactor %u: accept: %s\n", r->index,
			        strerror(-cqe->res));
		}
		if (!(cqe->flags & IORING_CQE_F_MORE) && r->accepting)
			arm_accept(r, (uint32_t)ud);
		break;
	case SL_OP_RECV:
		handle_recv(r, cqe);
		break;
	case SL_OP_SEND:
		handle_send(r, cqe);
		break;
	case SL_OP_CONNECT: {
		struct sl_conn *c = conn_of(r, ud);
		c->inflight--;
		if (!c->closing && c->ssl && cqe->res >= 0)
			sl_tls_on_connected(r, c); /* the proxy hears once the handshake is done */
		else if (!c->closing)
			sl_proxy_on_connect(r, c, cqe->res);
		conn_maybe_free(r, c);
		break;
	}
	case SL_OP_EVENTFD:
		handle_mailbox(r);
		if (!(r->stopping && r->conn_free_num == r->conn_cap))
			arm_eventfd(r);
		break;
	case SL_OP_ULOG_WRITE: {
		int rc = sl_ulog_on_write(r->ulog, &r->ring, cqe->res, sl_ud(SL_OP_ULOG_WRITE, 0, 0),
		                          sl_ud(SL_OP_ULOG_FSYNC, 0, 0));
		if (rc) {
			fprintf(stderr, "sluice: reactor %u: usage log write: %s\n", r->index,
			        strerror(-rc));
			drop_durable_waiters(r);
		}
		break;
	}
	case SL_OP_ULOG_FSYNC: {
		int rc = sl_ulog_on_fsync(r->ulog, &r->ring, cqe->res, sl_ud(SL_OP_ULOG_FSYNC, 0, 0));
		if (rc) {
			fprintf(stderr, "sluice: reactor %u: usage log fdatasync: %s\n", r->index,
			        strerror(-rc));
			drop_durable_waiters(r);
		}
		break;
	}
	case SL_OP_RETRY: {
		struct sl_conn *c = conn_of(r, ud);
		c->inflight--;
		if (!c->closing)
			sl_proxy_on_retry(r, c);
		conn_maybe_free(r, c);
		break;
	}
	case SL_OP_ALOG_WRITE:
		sl_alog_on_write(&r->alog, &r->ring, sl_ud(SL_OP_ALOG_WRITE, 0, 0), cqe->res);
		break;
	case SL_OP_CANCEL:
		break;
	default:
		SL_ASSERT(!"unknown op in user_data");
	}
}

/* --- setup and loop ------------------------------------------------------------ */

int sl_reactor_init(struct sl_reactor *r, uint32_t index, int cpu,
                    const struct sl_config *config, int *listen_fds, uint32_t num_listen)
{
	*r = (struct sl_reactor){ 0 };
	r->index = index;
	r->cpu = cpu;
	r->config = config;
	r->listen_fds = listen_fds;
	r->num_listen = num_listen;
	r->event_fd = -1;
	const struct sl_limits_config *lim = &config->limits;

	r->conn_cap = lim->connections_per_core;
	r->conns = calloc(r->conn_cap, sizeof *r->conns);
	r->conn_free = calloc(r->conn_cap, sizeof *r->conn_free);
	r->headers = calloc(lim->headers_num_max + 1, sizeof *r->headers);
	r->upstreams = calloc(config->num_providers ? config->num_providers : 1,
	                      sizeof *r->upstreams);
	r->metrics.models = calloc(config->num_models ? config->num_models : 1,
	                           sizeof *r->metrics.models);
	if (!r->conns || !r->conn_free || !r->headers || !r->upstreams || !r->metrics.models)
		return -ENOMEM;
	/* Slots are not touched until used (calloc'd pages cost no memory), so
	 * a reactor's RSS follows its live connections, not connections_per_core.
	 * Low slots are handed out first and reused first. */
	for (uint32_t i = 0; i < r->conn_cap; i++)
		r->conn_free[i] = r->conn_cap - 1 - i;
	r->conn_free_num = r->conn_cap;

	int rc = sl_bufpool_init(&r->mem, lim->memory_per_core_bytes);
	if (rc)
		return rc;
	r->buf_size = lim->recv_buffer_bytes;
	r->buf_count = lim->recv_buffers_per_core;
	SL_ASSERT((r->buf_count & (r->buf_count - 1)) == 0 && r->buf_count <= 32768);
	r->tls_buf_count = sl_tls_in_use(config) ? lim->tls_buffers_per_core : 0;
	SL_ASSERT(r->tls_buf_count <= 32768);
	uint32_t all = r->buf_count + r->tls_buf_count;
	r->tls_buf_free = calloc(r->tls_buf_count + 1, sizeof *r->tls_buf_free);
	if (!r->tls_buf_free)
		return -ENOMEM;
	for (uint32_t i = 0; i < r->tls_buf_count; i++)
		r->tls_buf_free[i] = (uint16_t)(all - 1 - i);
	r->tls_buf_free_num = r->tls_buf_count;
	void *bufs = mmap(NULL, (size_t)r->buf_size * all, PROT_READ | PROT_WRITE,
	                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (bufs == MAP_FAILED)
		return -errno;
	r->buf_base = bufs;
	r->ovf_next = calloc(all, sizeof *r->ovf_next);
	r->ovf_off = calloc(all, sizeof *r->ovf_off);
	r->ovf_len = calloc(all, sizeof *r->ovf_len);
	if (!r->ovf_next || !r->ovf_off || !r->ovf_len)
		return -ENOMEM;

	sl_timer_queue_init(&r->header_q, lim->header_timeout_ms, SL_TIMER_HEADER);
	sl_timer_queue_init(&r->body_q, lim->body_timeout_ms, SL_TIMER_BODY);
	sl_timer_queue_init(&r->keepalive_q, lim->keepalive_timeout_ms, SL_TIMER_KEEPALIVE);
	sl_timer_queue_init(&r->send_q, lim->send_timeout_ms, SL_TIMER_SEND);
	sl_timer_queue_init(&r->up_pool_q, lim->keepalive_timeout_ms, SL_TIMER_UP_POOL);
	for (uint32_t p = 0; p < config->num_providers; p++) {
		const struct sl_provider_config *pc = &config->providers[p];
		struct sl_upstream_pool *up = &r->upstreams[p];
		sl_timer_queue_init(&up->connect_q, pc->connect_timeout_ms, SL_TIMER_UP_CONNECT);
		sl_timer_queue_init(&up->first_q, pc->first_byte_timeout_ms, SL_TIMER_UP_FIRST);
		sl_timer_queue_init(&up->idle_q, pc->idle_timeout_ms, SL_TIMER_UP_IDLE);
	}

	/* Under valgrind a thread blocked in io_uring_enter keeps valgrind's
	 * thread lock (it does not know the call blocks), starving the others;
	 * bounding every wait lets it switch threads. Not for production. */
	const char *cap = getenv("SLUICE_WAIT_CAP_MS");
	r->wait_cap_ms = cap ? (uint32_t)strtoul(cap, NULL, 10) : 0;

	ck_ring_init(&r->mailbox, SL_MAILBOX_CAP);
	r->event_fd = eventfd(0, EFD_CLOEXEC);
	if (r->event_fd < 0)
		return -errno;
	return 0;
}

void sl_reactor_destroy(struct sl_reactor *r)
{
	for (uint32_t i = 0; i < r->num_listen; i++)
		if (r->listen_fds[i] >= 0)
			close(r->listen_fds[i]);
	free(r->listen_fds);
	if (r->event_fd >= 0)
		close(r->event_fd);
	if (r->buf_base)
		munmap(r->buf_base, (size_t)r->buf_size * (r->buf_count + r->tls_buf_count));
	free(r->tls_buf_free);
	free(r->route_inflight);
	sl_bufpool_destroy(&r->mem);
	free(r->ovf_next);
	free(r->ovf_off);
	free(r->ovf_len);
	free(r->conns);
	free(r->conn_free);
	free(r->headers);
	free(r->metrics.models);
	sl_alog_destroy(&r->alog);
	for (uint32_t p = 0; r->upstreams && p < r->config->num_providers; p++)
		if (r->upstreams[p].tls_session)
			SSL_SESSION_free(r->upstreams[p].tls_session);
	free(r->upstreams);
}

int sl_reactor_post(struct sl_reactor *r, const struct sl_msg *msg)
{
	void *item = (void *)((uintptr_t)msg->type << 32 | msg->arg);
	if (!ck_ring_enqueue_mpsc(&r->mailbox, r->mailbox_buf, item))
		return -EAGAIN;
	uint64_t one = 1;
	if (write(r->event_fd, &one, sizeof one) < 0)
		return -errno;
	return 0;
}

/* Creates the ring with the best flags the kernel accepts. */
static int ring_setup(struct sl_reactor *r)
{
	static const unsigned flag_sets[] = {
#if SL_HAVE_SETUP_SINGLE_ISSUER && SL_HAVE_SETUP_DEFER_TASKRUN
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
#endif
		IORING_SETUP_COOP_TASKRUN,
		0,
	};
	int rc = -EINVAL;
	for (size_t i = 0; i < SL_ARRAY_LEN(flag_sets); i++) {
		struct io_uring_params p = { 0 };
		p.flags = flag_sets[i] | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
		p.cq_entries = SL_RING_ENTRIES * 4;
		rc = io_uring_queue_init_params(SL_RING_ENTRIES, &r->ring, &p);
		if (rc == 0)
			return 0;
	}
	return rc;
}

static int buf_ring_setup(struct sl_reactor *r)
{
	size_t ring_bytes = (size_t)r->buf_count * sizeof(struct io_uring_buf);
	void *mem = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
	                 -1, 0);
	if (mem == MAP_FAILED)
		return -errno;
	r->buf_ring = mem;
	io_uring_buf_ring_init(r->buf_ring);
	struct io_uring_buf_reg reg = {
		.ring_addr = (uint64_t)(uintptr_t)mem,
		.ring_entries = r->buf_count,
		.bgid = SL_BUF_GROUP,
	};
	int rc = io_uring_register_buf_ring(&r->ring, &reg, 0);
	if (rc)
		return rc;
	int mask = io_uring_buf_ring_mask(r->buf_count);
	for (uint32_t i = 0; i < r->buf_count; i++)
		io_uring_buf_ring_add(r->buf_ring, r->buf_base + (size_t)i * r->buf_size,
		                      r->buf_size, (unsigned short)i, mask, (int)i);
	io_uring_buf_ring_advance(r->buf_ring, (int)r->buf_count);
	return 0;
}

static void restart_starved(struct sl_reactor *r)
{
	/* Re-arm only while buffers are actually available, a few at a time,
	 * so one returned buffer does not wake a thousand receivers. */
	while (r->starved && r->buf_count - r->buf_out > r->buf_count / 8) {
		struct sl_conn *c = r->starved;
		r->starved = c->starved_next;
		c->starved_next = NULL;
		c->recv_starved = false;
		sl_conn_recv_arm(r, c);
	}
}

int sl_reactor_run(struct sl_reactor *r, void (*ready_cb)(struct sl_reactor *, int rc))
{
	if (r->cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(r->cpu, &set);
		(void)pthread_setaffinity_np(pthread_self(), sizeof set, &set);
	}
	current_reactor = r;
	int rc = ring_setup(r);
	if (rc == 0) {
		rc = buf_ring_setup(r);
		if (rc)
			io_uring_queue_exit(&r->ring);
	}
	ready_cb(r, rc);
	if (rc)
		return rc;

	r->now_ms = monotonic_ms();
	r->accepting = true;
	for (uint32_t i = 0; i < r->num_listen; i++)
		arm_accept(r, i);
	arm_eventfd(r);

	uint64_t drain_deadline_ms = 0;
	for (;;) {
		if (r->stopping) {
			/* an access log write in flight owns its buffer: wait for it */
			if (r->conn_free_num == r->conn_cap && !r->alog.busy)
				break;
			if (!drain_deadline_ms)
				drain_deadline_ms = r->now_ms + SL_DRAIN_TIMEOUT_MS;
			if (r->now_ms >= drain_deadline_ms) {
				for (uint32_t i = 0; i < r->conn_cap; i++)
					if (r->conns[i].kind != SL_CONN_FREE)
						sl_conn_close(r, &r->conns[i]);
			}
		}
		buf_flush_returns(r);
		/* a turn boundary: nothing of the key table is held here */
		if (r->gate)
			sl_gate_quiescent(r->gate, &r->gate_seen);
		struct __kernel_timespec ts, *tsp = NULL;
		uint64_t next = next_deadline(r);
		if (r->ulog) {
			/* group commit: one write + fdatasync for what waited */
			if (sl_ulog_flush_due(r->ulog, r->now_ms)) {
				int frc = sl_ulog_flush_start(r->ulog, &r->ring,
				                              sl_ud(SL_OP_ULOG_WRITE, 0, 0), r->now_ms);
				if (frc)
					fprintf(stderr, "sluice: reactor %u: usage log: %s\n",
					        r->index, strerror(-frc));
			}
			next = SL_MIN(next, sl_ulog_next_deadline(r->ulog));
		}
		if (r->alog.buf[0])
			next = SL_MIN(next, sl_alog_tick(&r->alog, &r->ring,
			                                 sl_ud(SL_OP_ALOG_WRITE, 0, 0), r->now_ms));
		if (drain_deadline_ms)
			next = SL_MIN(next, drain_deadline_ms);
		if (r->wait_cap_ms) {
			next = SL_MIN(next, r->now_ms + r->wait_cap_ms);
			sched_yield(); /* valgrind hands its thread lock over here */
		}
		if (next != UINT64_MAX) {
			uint64_t wait_ms = next > r->now_ms ? next - r->now_ms : 0;
			ts.tv_sec = (long long)(wait_ms / 1000);
			ts.tv_nsec = (long long)(wait_ms % 1000) * 1000000;
			tsp = &ts;
		}
		struct io_uring_cqe *cqe;
		rc = io_uring_submit_and_wait_timeout(&r->ring, &cqe, 1, tsp, NULL);
		if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY) {
			fprintf(stderr, "sluice: reactor %u: io_uring_enter: %s\n", r->index,
			        strerror(-rc));
			break;
		}
		r->now_ms = monotonic_ms();
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&r->ring, head, cqe)
		{
			handle_cqe(r, cqe);
			seen++;
		}
		io_uring_cq_advance(&r->ring, seen);
		r->stats.loop_turns++;
		r->stats.cqes += seen;
		expire_timers(r);
		if (r->deferred)
			release_deferred(r);
		buf_flush_returns(r);
		restart_starved(r);
		if (r->tls_starved && r->tls_buf_free_num)
			sl_tls_restart_starved(r);
	}
	io_uring_queue_exit(&r->ring);
	sl_alog_finish(&r->alog); /* what is left, with write(2) */
	if (r->ulog) {
		/* every record of this reactor, written and synced before exit */
		r->ulog_next_seq = sl_ulog_last_seq(r->ulog) + 1;
		int urc = sl_ulog_close(r->ulog);
		r->ulog_clean = urc == 0;
		r->ulog = NULL;
		if (urc)
			fprintf(stderr, "sluice: reactor %u: usage log: records lost at exit: %s\n",
			        r->index, strerror(-urc));
	}
	fprintf(stderr,
	        "sluice: reactor %u: %llu connections, %llu requests, %llu upstream connects, "
	        "%llu pooled reuses, %llu loop turns, %llu completions, %llu recv buffer stalls, "
	        "%llu bad PROXY headers\n",
	        r->index, (unsigned long long)r->stats.accepted, (unsigned long long)r->stats.requests,
	        (unsigned long long)r->stats.upstream_connects,
	        (unsigned long long)r->stats.upstream_reused, (unsigned long long)r->stats.loop_turns,
	        (unsigned long long)r->stats.cqes, (unsigned long long)r->stats.recv_enobufs,
	        (unsigned long long)r->stats.proxy_header_bad);
	return 0;
}
