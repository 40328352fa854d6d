/*
 * main.c - the command line: `sluice serve`, `sluice check-config`,
 * `sluice version`. serve loads the config, opens one SO_REUSEPORT listening
 * socket per reactor per listener, starts one reactor thread per CPU, and
 * waits for signals: SIGTERM/SIGINT drain in-flight exchanges and exit 0.
 */
#include "sluice/connect.h"
#include "sluice/config.h"
#include "sluice/credit.h"
#include "sluice/gate.h"
#include "sluice/keys.h"
#include "sluice/usagelog.h"
#include "sluice/reactor.h"
#include "sluice/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define LISTEN_BACKLOG 4096

static void usage(FILE *out)
{
	fputs("usage: sluice serve [-c FILE] [--threads N]\n"
	      "       sluice check-config -c FILE\n"
	      "       sluice keys create|import|list|show|update|revoke|topup ... (sluice keys --help)\n"
	      "       sluice usage verify|export|totals ... (sluice usage --help)\n"
	      "       sluice connect --url URL --key KEY [--write] [TOOL ...] (sluice connect --help)\n"
	      "       sluice version\n"
	      "\n"
	      "serve without -c runs the embedded demo config: it listens on\n"
	      "127.0.0.1:8080 and routes to the bundled mock (build/sluice-mock) on\n"
	      "127.0.0.1:9100.\n",
	      out);
}

static int open_listener(const struct sl_listener_config *l, const struct sockaddr *addr,
                         socklen_t addr_len, char *err, size_t err_len)
{
	int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, err_len, "%s: socket: %s", l->address, strerror(errno));
		return -1;
	}
	int one = 1;
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
	    bind(fd, addr, addr_len) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
		snprintf(err, err_len, "%s: %s", l->address, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static void format_addr(const struct sockaddr_storage *ss, char *out, size_t out_len)
{
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
		port = ntohs(a->sin_port);
		snprintf(out, out_len, "%s:%u", host, port);
	} else {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
		port = ntohs(a->sin6_port);
		snprintf(out, out_len, "[%s]:%u", host, port);
	}
}

/* --- reactor start-up handshake (start-up only: a mutex is fine here) --- */
static pthread_mutex_t ready_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ready_cond = PTHREAD_COND_INITIALIZER;
static uint32_t ready_num;
static int ready_err;

static void on_reactor_ready(struct sl_reactor *r, int rc)
{
	pthread_mutex_lock(&ready_lock);
	ready_num++;
	if (rc && !ready_err)
		ready_err = rc;
	pthread_cond_signal(&ready_cond);
	pthread_mutex_unlock(&ready_lock);
}

/* Checks the usage log (cutting a torn tail a crash left) and opens one
 * writer per reactor, each continuing its core's sequence. */
static int open_usage_logs(const struct sl_config *cfg, struct sl_gate *gate,
                           struct sl_reactor *reactors, uint32_t n)
{
	char dir[PATH_MAX];
	if ((size_t)snprintf(dir, sizeof dir, "%s/usage", cfg->data_dir) >= sizeof dir) {
		fprintf(stderr, "sluice: usage log: data_dir path too long\n");
		return -1;
	}
	if (mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
		fprintf(stderr, "sluice: usage log: %s: %s\n", cfg->data_dir, strerror(errno));
		return -1;
	}
	uint64_t *next = calloc(n, sizeof *next);
	if (!next)
		return -1;
	int rc = sl_ulog_recover(dir, next, n, stderr);
	if (rc) {
		fprintf(stderr, "sluice: usage log: %s: %s\n", dir, strerror(-rc));
		free(next);
		return -1;
	}
	char msg[256];
	if (gate && (rc = sl_gate_credit_load(gate, dir, msg, sizeof msg)) != 0) {
		fprintf(stderr, "sluice: %s\n", msg);
		free(next);
		return -1;
	}
	for (uint32_t i = 0; i < n && rc == 0; i++) {
		struct sl_ulog_config uc = { .dir = dir,
			                     .core = i,
			                     .next_seq = next[i],
			                     .buffer_bytes = cfg->usage_log.buffer_bytes,
			                     .flush_ms = cfg->usage_log.flush_ms,
			                     .segment_bytes_max = cfg->usage_log.segment_bytes_max,
			                     .segment_age_max_s = cfg->usage_log.segment_age_max_s,
			                     .strict = cfg->usage_log.strict };
		rc = sl_ulog_open(&reactors[i].ulog, &uc);
		if (rc)
			fprintf(stderr, "sluice: usage log: %s: %s\n", dir, strerror(-rc));
	}
	free(next);
	return rc ? -1 : 0;
}

static void *reactor_thread(void *arg)
{
	struct sl_reactor *r = arg;
	int rc = sl_reactor_run(r, on_reactor_ready);
	if (rc)
		fprintf(stderr, "sluice: reactor %u: %s\n", r->index, strerror(-rc));
	return NULL;
}

/* The CPUs this process may run on (so `taskset` does what one expects). */
static uint32_t allowed_cpus(int *cpus, uint32_t max)
{
	cpu_set_t set;
	uint32_t n = 0;
	if (sched_getaffinity(0, sizeof set, &set) == 0) {
		for (int i = 0; i < CPU_SETSIZE && n < max; i++)
			if (CPU_ISSET(i, &set))
				cpus[n++] = i;
	}
	if (n == 0)
		cpus[n++] = -1;
	return n;
}

static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

struct quiesce {
	struct sl_gate *gate;
	struct sl_reactor *reactors;
	uint32_t n;
};

/* Returns once every reactor has passed a loop turn (tls.h reload). */
static void wait_quiescent(void *arg)
{
	struct quiesce *q = arg;
	sl_gate_synchronize(q->gate, q->reactors, q->n);
}

static int serve(struct sl_config *cfg, uint32_t threads_override)
{
	int cpus[CPU_SETSIZE];
	uint32_t num_cpus = allowed_cpus(cpus, CPU_SETSIZE);
	uint32_t n = threads_override ? threads_override : cfg->threads;
	if (n == 0)
		n = num_cpus;
	raise_fd_limit();

	/* the access log: one O_APPEND file for every reactor (accesslog.h);
	 * opened first, so that a bad path stops the start with nothing else
	 * to undo */
	char alog_path[PATH_MAX] = "";
	int alog_fd = -1;
	if (cfg->access_log.path) {
		const char *ap = cfg->access_log.path;
		if (ap[0] == '/' || !cfg->config_dir)
			snprintf(alog_path, sizeof alog_path, "%s", ap);
		else
			snprintf(alog_path, sizeof alog_path, "%s/%s", cfg->config_dir, ap);
		alog_fd = sl_alog_open(alog_path);
		if (alog_fd < 0) {
			fprintf(stderr, "sluice: access_log: cannot open %s: %s\n", alog_path,
			        strerror(-alog_fd));
			return 1;
		}
	}

	/* Listening sockets: one per reactor per listener, all SO_REUSEPORT on
	 * the same address. A port of 0 is resolved by the first bind and
	 * reused by the rest, so every reactor shares the one port. */
	int *fds = calloc((size_t)n * cfg->num_listeners, sizeof *fds);
	if (!fds)
		return 1;
	char err[512], first_addr[80] = "";
	struct sockaddr_storage *bound = calloc(cfg->num_listeners, sizeof *bound);
	if (!bound)
		return 1;
	for (uint32_t l = 0; l < cfg->num_listeners; l++) {
		struct sockaddr_storage addr = cfg->listeners[l].addr;
		socklen_t addr_len = cfg->listeners[l].addr_len;
		for (uint32_t i = 0; i < n; i++) {
			int fd = open_listener(&cfg->listeners[l], (struct sockaddr *)&addr, addr_len,
			                       err, sizeof err);
			if (fd < 0) {
				fprintf(stderr, "sluice: listen %s\n", err);
				return 1;
			}
			if (i == 0) {
				socklen_t len = sizeof addr;
				getsockname(fd, (struct sockaddr *)&addr, &len);
				bound[l] = addr;
				if (l == 0)
					format_addr(&addr, first_addr, sizeof first_addr);
			}
			fds[(size_t)i * cfg->num_listeners + l] = fd;
		}
	}

	/* Signals go to this thread only: reactors never see them. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);

	struct sl_gate *gate = NULL;
	int grc = sl_gate_create(cfg, n, &gate, err, sizeof err);
	if (grc) {
		fprintf(stderr, "sluice: %s\n", err[0] ? err : strerror(-grc));
		return 1;
	}
	if (!cfg->auth.required)
		fprintf(stderr, "sluice: WARNING: auth mode is \"none\": every request is served "
		                "without a client key and without limits\n");

	struct sl_tls *tls = NULL;
	int trc = sl_tls_create(cfg, &tls, err, sizeof err);
	if (trc) {
		fprintf(stderr, "sluice: %s\n", err);
		return 1;
	}

	struct sl_routing *route = NULL;
	if (sl_route_create(cfg, &route) != 0)
		return 1;

	uint32_t id_prefix = 0;
	RAND_bytes((uint8_t *)&id_prefix, sizeof id_prefix);
	struct sl_reactor *reactors = calloc(n, sizeof *reactors);
	if (!reactors)
		return 1;
	for (uint32_t i = 0; i < n; i++) {
		int *mine = malloc(cfg->num_listeners * sizeof *mine);
		if (!mine)
			return 1;
		memcpy(mine, fds + (size_t)i * cfg->num_listeners, cfg->num_listeners * sizeof *mine);
		int cpu = cpus[i % num_cpus];
		int rc = sl_reactor_init(&reactors[i], i, cpu, cfg, mine, cfg->num_listeners);
		if (rc) {
			fprintf(stderr, "sluice: reactor %u: %s\n", i, strerror(-rc));
			return 1;
		}
		reactors[i].id_prefix = id_prefix;
		reactors[i].gate = gate;
		reactors[i].tls = tls;
		reactors[i].route = route;
		reactors[i].all = reactors;
		reactors[i].num_all = n;
		reactors[i].route_inflight =
		        calloc(sl_route_num_keys(route) + 1, sizeof *reactors[i].route_inflight);
		if (!reactors[i].route_inflight)
			return 1;
		RAND_bytes((uint8_t *)&reactors[i].rnd, sizeof reactors[i].rnd);
	}
	free(fds);
	if (alog_fd >= 0) {
		for (uint32_t i = 0; i < n; i++) {
			if (sl_alog_init(&reactors[i].alog, alog_fd, cfg->access_log.buffer_bytes,
			                 cfg->access_log.flush_ms) != 0)
				return 1;
		}
	}
	if (cfg->usage_log.enabled && open_usage_logs(cfg, gate, reactors, n) != 0)
		return 1;
	if (!cfg->usage_log.enabled && gate) {
		char msg[256];
		if (sl_gate_credit_load(gate, NULL, msg, sizeof msg) != 0)
			return 1;
	}
	for (uint32_t i = 0; i < n; i++)
		pthread_create(&reactors[i].thread, NULL, reactor_thread, &reactors[i]);

	pthread_mutex_lock(&ready_lock);
	while (ready_num < n)
		pthread_cond_wait(&ready_cond, &ready_lock);
	int start_err = ready_err;
	pthread_mutex_unlock(&ready_lock);
	if (start_err) {
		fprintf(stderr, "sluice: cannot start: io_uring: %s\n", strerror(-start_err));
		return 1;
	}
	if ((grc = sl_gate_start(gate))) {
		fprintf(stderr, "sluice: cannot start the rate-limit reconciler: %s\n", strerror(-grc));
		return 1;
	}
	fprintf(stderr, "sluice: %u reactor%s, config %s\n", n, n == 1 ? "" : "s", cfg->origin);
	for (uint32_t l = 0; l < cfg->num_listeners; l++) {
		char a[80];
		format_addr(&bound[l], a, sizeof a);
		fprintf(stderr, "sluice: listening on %s%s%s%s\n", a, cfg->listeners[l].tls ? " (tls)" : "",
		        cfg->listeners[l].proxy_protocol ? " (proxy protocol)" : "",
		        cfg->listeners[l].admin ? " (admin)" : "");
	}
	fprintf(stderr, "sluice: ready on %s\n", first_addr);

	for (;;) {
		int sig = 0;
		sigwait(&sigs, &sig);
		if (sig == SIGTERM || sig == SIGINT)
			break;
		if (sig == SIGHUP) {
			char msg[320];
			sl_gate_reload_keys(gate, reactors, n, msg, sizeof msg);
			fprintf(stderr, "sluice: SIGHUP: %s\n", msg);
			sl_route_reenable_keys(route); /* provider keys refused with 401/403 */
			if (alog_fd >= 0) {
				/* log rotation: the file was moved, a new one takes its fd */
				int arc = sl_alog_reopen(alog_fd, alog_path);
				if (arc)
					fprintf(stderr, "sluice: SIGHUP: access log %s not reopened: %s\n",
					        alog_path, strerror(-arc));
				else
					fprintf(stderr, "sluice: SIGHUP: access log reopened\n");
			}
			if (tls) {
				struct quiesce q = { gate, reactors, n };
				sl_tls_reload(tls, wait_quiescent, &q, msg, sizeof msg);
				fprintf(stderr, "sluice: SIGHUP: %s\n", msg);
			}
		}
	}
	fprintf(stderr, "sluice: shutting down: draining in-flight requests\n");
	for (uint32_t i = 0; i < n; i++) {
		struct sl_msg msg = { .type = SL_MSG_SHUTDOWN };
		sl_reactor_post(&reactors[i], &msg);
	}
	bool logs_clean = cfg->usage_log.enabled;
	uint64_t *next_seq = calloc(n, sizeof *next_seq);
	for (uint32_t i = 0; i < n; i++) {
		pthread_join(reactors[i].thread, NULL);
		logs_clean = logs_clean && reactors[i].ulog_clean;
		if (next_seq)
			next_seq[i] = reactors[i].ulog_next_seq;
	}
	/* only once all have stopped: one serving /metrics reads the others */
	for (uint32_t i = 0; i < n; i++)
		sl_reactor_destroy(&reactors[i]);
	if (alog_fd >= 0)
		close(alog_fd);
	free(reactors);
	/* every record is on disk: summarise them for the next start */
	if (logs_clean && next_seq) {
		int src = sl_gate_credit_save(gate, next_seq, n);
		if (src)
			fprintf(stderr, "sluice: cannot write %s: %s (the next start replays the log)\n",
			        SL_CREDIT_STATE_NAME, strerror(-src));
	}
	free(next_seq);
	sl_gate_free(gate); /* stops the reconciler; writes limits.state */
	sl_tls_free(tls);
	sl_route_free(route);
	free(bound);
	fprintf(stderr, "sluice: stopped\n");
	return 0;
}

static void print_demo_hint(const struct sl_config *cfg)
{
	char addr[80];
	format_addr(&cfg->listeners[0].addr, addr, sizeof addr);
	const char *key = getenv("SLUICE_DEMO_KEY");
	if (!key || !*key)
		key = "$KEY";
	fprintf(stderr,
	        "sluice: running the embedded demo config (start the mock with build/sluice-mock)\n"
	        "  (a key: build/sluice keys create --name me --tier pro --data-dir ./data)\n"
	        "  curl -s http://%s/v1/models -H 'Authorization: Bearer %s'\n"
	        "  curl -s http://%s/v1/chat/completions -H 'Authorization: Bearer %s' \\\n"
	        "       -H 'Content-Type: application/json' \\\n"
	        "       -d '{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'\n"
	        "  curl -sN http://%s/v1/messages -H 'x-api-key: %s' -H 'Content-Type: application/json' \\\n"
	        "       -d '{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":64,\"stream\":true,"
	        "\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'\n",
	        addr, key, addr, key, addr, key);
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 && argv[1][0] != '-' ? argv[1] : "serve";
	int first_opt = argc > 1 && argv[1][0] != '-' ? 2 : 1;
	if (strcmp(cmd, "version") == 0) {
		printf("sluice %s\n", SLUICE_VERSION);
		return 0;
	}
	if (strcmp(cmd, "help") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(cmd, "keys") == 0)
		return sl_keys_main(argc - 1, argv + 1);
	if (strcmp(cmd, "usage") == 0)
		return sl_ulog_main(argc - 1, argv + 1);
	if (strcmp(cmd, "connect") == 0)
		return sl_connect_main(argc - 1, argv + 1);
	if (strcmp(cmd, "serve") != 0 && strcmp(cmd, "check-config") != 0) {
		fprintf(stderr, "sluice: unknown command '%s'\n", cmd);
		usage(stderr);
		return 2;
	}
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "threads", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config_path = NULL;
	long threads = 0;
	optind = first_opt;
	int opt;
	while ((opt = getopt_long(argc, argv, "c:t:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			config_path = optarg;
			break;
		case 't': {
			char *end;
			threads = strtol(optarg, &end, 10);
			if (*end || threads < 1 || threads > 1024) {
				fprintf(stderr, "sluice: --threads: expected 1..1024\n");
				return 2;
			}
			break;
		}
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}

	struct sl_config *cfg = NULL;
	char err[512];
	int rc;
	if (config_path)
		rc = sl_config_load_file(config_path, &cfg, err, sizeof err);
	else if (strcmp(cmd, "check-config") == 0) {
		fprintf(stderr, "sluice: check-config needs -c FILE\n");
		return 2;
	} else
		rc = sl_config_load_string(sl_config_demo, strlen(sl_config_demo), "<embedded demo>",
		                           &cfg, err, sizeof err);
	if (rc) {
		fprintf(stderr, "%s: %s\n", config_path ? config_path : "<embedded demo>", err);
		return 1;
	}
	if (strcmp(cmd, "check-config") == 0) {
		/* certificates, keys and CA files load as serve would load them */
		struct sl_tls *tls = NULL;
		rc = sl_tls_create(cfg, &tls, err, sizeof err);
		sl_tls_free(tls);
		if (rc) {
			fprintf(stderr, "%s: %s\n", config_path, err);
			sl_config_free(cfg);
			return 1;
		}
		printf("%s: ok\n", config_path);
		sl_config_free(cfg);
		return 0;
	}
	if (!config_path)
		print_demo_hint(cfg);
	rc = serve(cfg, (uint32_t)threads);
	sl_config_free(cfg);
	return rc;
}
