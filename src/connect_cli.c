/*
 * connect_cli.c - `sluice connect`: points the user's local tools at a
 * gateway, like the installers of commercial gateways do.
 *
 *   sluice connect --url URL --key KEY [--write] [--check] [--home DIR] [TOOL ...]
 *
 * TOOLs: claude-code, aider, shell (the OpenAI and Anthropic SDKs,
 * LangChain, n8n and everything else that reads the usual environment
 * variables), cursor, cline. Without TOOLs: the ones found in the home
 * directory, and shell. Without --write it prints what it would do; with
 * it, it changes only what each tool reads:
 *
 *   claude-code  ~/.claude/settings.json: "env" gets ANTHROPIC_BASE_URL and
 *                ANTHROPIC_AUTH_TOKEN; every other setting is kept
 *   aider        ~/.aider.conf.yml: openai-api-base and openai-api-key lines
 *                replaced or added; every other line is kept
 *   shell        ~/.config/sluice/env.sh: the exports, to source
 *   cursor,      their settings live in the editor's own database: printed
 *   cline        instructions instead
 *
 * A file is replaced whole (written beside it, fsync'ed, renamed), the old
 * one kept once as FILE.bak, and created 0600: it holds the key.
 *
 * --check asks the gateway for GET /v1/models with the key first (a
 * blocking client: this is a command, not the gateway; https verified
 * against the system's CAs, or SSL_CERT_FILE) and stops if that fails.
 */
#include "sluice/connect.h"

#include "sluice/common.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

struct opts {
	const char *url; /* without a trailing slash */
	const char *key;
	const char *home;
	bool write;
	bool check;
};

static void connect_usage(FILE *out)
{
	fputs("usage: sluice connect --url URL --key KEY [--write] [--check] [--home DIR] [TOOL ...]\n"
	      "\n"
	      "Points local tools at the gateway at URL (e.g. https://llm.example.com) with\n"
	      "the client key KEY. TOOLs: claude-code, aider, shell, cursor, cline; without\n"
	      "any, those found in the home directory, and shell. Without --write it only\n"
	      "prints what it would change. --check first asks the gateway for its models\n"
	      "with the key, and stops if it cannot.\n",
	      out);
}

/* Writes text to path whole: a temporary beside it, fsync, rename; the old
 * file kept as path.bak the first time. */
static int replace_file(const char *path, const char *text, size_t len)
{
	char tmp[4096], bak[4096];
	if ((size_t)snprintf(tmp, sizeof tmp, "%s.sluice-tmp", path) >= sizeof tmp ||
	    (size_t)snprintf(bak, sizeof bak, "%s.bak", path) >= sizeof bak)
		return -ENAMETOOLONG;
	struct stat st;
	if (stat(path, &st) == 0 && stat(bak, &st) != 0 && link(path, bak) != 0 && errno != EEXIST)
		return -errno;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	int rc = sl_write_all(fd, text, len);
	if (rc) {
		close(fd);
		unlink(tmp);
		return rc;
	}
	if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
		int e = errno;
		unlink(tmp);
		return -e;
	}
	return 0;
}

/* mkdir -p of path's directory part (mode 0700 for what it creates). */
static int make_parent(const char *path)
{
	char dir[4096];
	if ((size_t)snprintf(dir, sizeof dir, "%s", path) >= sizeof dir)
		return -ENAMETOOLONG;
	for (char *p = dir + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(dir, 0700) != 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	return 0;
}

static bool exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

static int report(const struct opts *o, const char *tool, const char *path, int rc)
{
	if (rc)
		fprintf(stderr, "sluice connect: %s: %s: %s\n", tool, path, strerror(-rc));
	else
		printf("%s: %s %s\n", tool, o->write ? "wrote" : "would write", path);
	return rc ? 1 : 0;
}

static int connect_claude_code(const struct opts *o)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/.claude/settings.json", o->home);
	json_t *root = NULL;
	if (exists(path)) {
		json_error_t err;
		root = json_load_file(path, 0, &err);
		if (!root || !json_is_object(root)) {
			fprintf(stderr, "sluice connect: claude-code: %s is not a JSON object (%s); "
			                "left as it is\n", path, root ? "not an object" : err.text);
			json_decref(root);
			return 1;
		}
	} else {
		root = json_object();
	}
	json_t *env = json_object_get(root, "env");
	if (!json_is_object(env)) {
		env = json_object();
		json_object_set_new(root, "env", env);
	}
	json_object_set_new(env, "ANTHROPIC_BASE_URL", json_string(o->url));
	json_object_set_new(env, "ANTHROPIC_AUTH_TOKEN", json_string(o->key));
	int rc = 0;
	if (o->write) {
		char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		rc = !text ? -ENOMEM : make_parent(path);
		if (text && rc == 0) {
			size_t n = strlen(text);
			text[n] = '\n'; /* json_dumps leaves room for the NUL we replace */
			rc = replace_file(path, text, n + 1);
		}
		free(text);
	}
	json_decref(root);
	return report(o, "claude-code", path, rc);
}

/* Replaces the line "name: ..." of a YAML file's top level, or appends it. */
static int yaml_set(char **text, size_t *len, const char *name, const char *value)
{
	char line[4096];
	int ln = snprintf(line, sizeof line, "%s: \"%s\"\n", name, value);
	if (ln < 0 || (size_t)ln >= sizeof line)
		return -ENAMETOOLONG;
	size_t nl = strlen(name);
	char *t = *text;
	for (size_t off = 0; off < *len;) {
		char *eol = memchr(t + off, '\n', *len - off);
		size_t end = eol ? (size_t)(eol - t) + 1 : *len;
		if (end - off > nl && memcmp(t + off, name, nl) == 0 && t[off + nl] == ':') {
			char *n = malloc(*len - (end - off) + (size_t)ln + 1);
			if (!n)
				return -ENOMEM;
			memcpy(n, t, off);
			memcpy(n + off, line, (size_t)ln);
			memcpy(n + off + ln, t + end, *len - end);
			*len = *len - (end - off) + (size_t)ln;
			free(t);
			*text = n;
			return 0;
		}
		off = end;
	}
	bool need_nl = *len && t[*len - 1] != '\n';
	char *n = realloc(t, *len + need_nl + (size_t)ln + 1);
	if (!n)
		return -ENOMEM;
	if (need_nl)
		n[(*len)++] = '\n';
	memcpy(n + *len, line, (size_t)ln);
	*len += (size_t)ln;
	*text = n;
	return 0;
}

static int connect_aider(const struct opts *o)
{
	char path[4096], base[4096];
	snprintf(path, sizeof path, "%s/.aider.conf.yml", o->home);
	snprintf(base, sizeof base, "%s/v1", o->url);
	uint8_t *bytes = NULL;
	size_t len = 0;
	int rc = sl_read_file_at(AT_FDCWD, path, 1 << 20, &bytes, &len);
	if (rc == -ENOENT)
		rc = 0; /* a new file */
	char *text = (char *)bytes;
	if (rc == 0)
		rc = yaml_set(&text, &len, "openai-api-base", base);
	if (rc == 0)
		rc = yaml_set(&text, &len, "openai-api-key", o->key);
	if (rc == 0 && o->write)
		rc = replace_file(path, text ? text : "", len);
	free(text);
	return report(o, "aider", path, rc);
}

static int connect_shell(const struct opts *o)
{
	char path[4096], text[8192];
	snprintf(path, sizeof path, "%s/.config/sluice/env.sh", o->home);
	int n = snprintf(text, sizeof text,
	                 "# written by sluice connect: source it from your shell's rc file\n"
	                 "export OPENAI_BASE_URL='%s/v1'\n"
	                 "export OPENAI_API_BASE='%s/v1'\n"
	                 "export OPENAI_API_KEY='%s'\n"
	                 "export ANTHROPIC_BASE_URL='%s'\n"
	                 "export ANTHROPIC_API_KEY='%s'\n",
	                 o->url, o->url, o->key, o->url, o->key);
	int rc = n < 0 || (size_t)n >= sizeof text ? -ENAMETOOLONG : 0;
	if (rc == 0 && o->write && (rc = make_parent(path)) == 0)
		rc = replace_file(path, text, (size_t)n);
	int status = report(o, "shell", path, rc);
	if (rc == 0)
		printf("shell: then: . %s   (OpenAI and Anthropic SDKs, LangChain, n8n, curl)\n", path);
	return status;
}

static int connect_editor(const struct opts *o, const char *tool)
{
	if (strcmp(tool, "cursor") == 0)
		printf("cursor: Settings > Models: OpenAI API key: your key; Override OpenAI Base URL: "
		       "%s/v1; then add the models you use by their id\n", o->url);
	else
		printf("cline: API Provider: OpenAI Compatible; Base URL: %s/v1; API Key: your key; "
		       "Model ID: a model id (or API Provider: Anthropic with a custom base URL %s)\n",
		       o->url, o->url);
	return 0;
}

/* --- --check: GET /v1/models ------------------------------------------------ */

/* Reads the response of a GET into buf (at most cap - 1 bytes, NUL-ended);
 * its length, or -1. */
static ssize_t read_all(int fd, SSL *ssl, char *buf, size_t cap)
{
	size_t len = 0;
	while (len < cap - 1) {
		int n = ssl ? SSL_read(ssl, buf + len, (int)(cap - 1 - len))
		            : (int)read(fd, buf + len, cap - 1 - len);
		if (n < 0 && !ssl && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	return len ? (ssize_t)len : -1;
}

static int check_gateway(const struct opts *o)
{
	bool tls = strncmp(o->url, "https://", 8) == 0;
	const char *hostport = o->url + (tls ? 8 : 7);
	char host[256], port[8] = "";
	size_t hl = strcspn(hostport, "/");
	const char *colon = hostport[0] == '[' ? strchr(hostport, ']') : hostport;
	colon = colon ? memchr(colon, ':', hl - (size_t)(colon - hostport)) : NULL;
	size_t name_len = colon ? (size_t)(colon - hostport) : hl;
	if (name_len == 0 || name_len >= sizeof host) {
		fprintf(stderr, "sluice connect: --check: no host in %s\n", o->url);
		return 1;
	}
	memcpy(host, hostport, name_len);
	host[name_len] = '\0';
	if (host[0] == '[') { /* [v6] */
		memmove(host, host + 1, name_len);
		host[strcspn(host, "]")] = '\0';
	}
	snprintf(port, sizeof port, "%.*s", colon ? (int)(hl - name_len - 1) : 3,
	         colon ? colon + 1 : (tls ? "443" : "80"));
	const char *path = hostport + hl; /* a base path, if any: "" or "/prefix" */

	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL;
	int gai = getaddrinfo(host, port, &hints, &ai);
	if (gai) {
		fprintf(stderr, "sluice connect: --check: %s: %s\n", host, gai_strerror(gai));
		return 1;
	}
	int fd = -1;
	for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, 0);
		struct timeval tv = { .tv_sec = 10 };
		if (fd >= 0) {
			setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
			setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
		}
		if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(ai);
	if (fd < 0) {
		fprintf(stderr, "sluice connect: --check: cannot connect to %s port %s: %s\n", host,
		        port, strerror(errno));
		return 1;
	}
	SSL_CTX *ctx = NULL;
	SSL *ssl = NULL;
	int status = 1;
	if (tls) {
		ctx = SSL_CTX_new(TLS_method());
		if (!ctx)
			goto out;
		SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
		/* the gateway's own choice of bundle (tls.c), or SSL_CERT_FILE */
		const char *ca = getenv("SSL_CERT_FILE");
		if (SSL_CTX_load_verify_locations(ctx, ca ? ca : "/etc/ssl/certs/ca-certificates.crt",
		                                  NULL) != 1)
			ERR_clear_error(); /* then nothing verifies: the handshake says so */
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
		ssl = SSL_new(ctx);
		if (!ssl)
			goto out;
		SSL_set_fd(ssl, fd);
		unsigned char ip[16];
		bool is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
		if (!is_ip)
			SSL_set_tlsext_host_name(ssl, host);
		if (!(is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host)
		            : SSL_set1_host(ssl, host)))
			goto out;
		if (SSL_connect(ssl) != 1) {
			char why[256];
			ERR_error_string_n(ERR_get_error(), why, sizeof why);
			long v = SSL_get_verify_result(ssl);
			bool verify = v != X509_V_OK && v != X509_V_ERR_INVALID_CALL;
			fprintf(stderr, "sluice connect: --check: TLS to %s: %s\n", host,
			        verify ? X509_verify_cert_error_string(v) : why);
			goto out;
		}
	}
	char req[4096];
	int n = snprintf(req, sizeof req,
	                 "GET %s/v1/models HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
	                 "User-Agent: sluice-connect\r\nConnection: close\r\n\r\n",
	                 path, host, o->key);
	if (n < 0 || (size_t)n >= sizeof req ||
	    (ssl ? SSL_write(ssl, req, n) != n : write(fd, req, (size_t)n) != n)) {
		fprintf(stderr, "sluice connect: --check: cannot send the request\n");
		goto out;
	}
	static char resp[1 << 20];
	if (read_all(fd, ssl, resp, sizeof resp) < 0 || strncmp(resp, "HTTP/1.", 7) != 0) {
		fprintf(stderr, "sluice connect: --check: no HTTP answer from %s\n", o->url);
		goto out;
	}
	int code = atoi(resp + 9);
	const char *body = strstr(resp, "\r\n\r\n");
	if (code != 200) {
		fprintf(stderr, "sluice connect: --check: the gateway answered %d%s%.300s\n", code,
		        body ? ": " : "", body ? body + 4 : "");
		goto out;
	}
	json_error_t err;
	json_t *j = body ? json_loads(body + 4, JSON_DISABLE_EOF_CHECK, &err) : NULL;
	json_t *data = j ? json_object_get(j, "data") : NULL;
	if (!json_is_array(data)) {
		fprintf(stderr, "sluice connect: --check: 200 without a model list (chunked? "
		                "not a gateway?)\n");
		json_decref(j);
		goto out;
	}
	printf("check: %s accepts the key: %zu models\n", o->url, json_array_size(data));
	json_decref(j);
	status = 0;
out:
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	return status;
}

/* The key and the URL go into shell quotes, YAML quotes and JSON: refuse
 * what any of them would need escaped. */
static bool plain(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s <= 0x20 || *s == 0x7f || *s == '\'' || *s == '"' || *s == '\\')
			return false;
	return true;
}

int sl_connect_main(int argc, char **argv)
{
	struct opts o = { 0 };
	const char *tools[8];
	int num_tools = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--url") == 0 && i + 1 < argc) {
			o.url = argv[++i];
		} else if (strcmp(a, "--key") == 0 && i + 1 < argc) {
			o.key = argv[++i];
		} else if (strcmp(a, "--home") == 0 && i + 1 < argc) {
			o.home = argv[++i];
		} else if (strcmp(a, "--write") == 0) {
			o.write = true;
		} else if (strcmp(a, "--check") == 0) {
			o.check = true;
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			connect_usage(stdout);
			return 0;
		} else if (a[0] != '-' && num_tools < 8) {
			tools[num_tools++] = a;
		} else {
			connect_usage(stderr);
			return 2;
		}
	}
	if (!o.url || !o.key) {
		connect_usage(stderr);
		return 2;
	}
	if (!o.home && !(o.home = getenv("HOME"))) {
		fprintf(stderr, "sluice connect: no --home and no $HOME\n");
		return 2;
	}
	char url[2048];
	size_t ul = strlen(o.url);
	while (ul && o.url[ul - 1] == '/')
		ul--;
	if ((strncmp(o.url, "http://", 7) != 0 && strncmp(o.url, "https://", 8) != 0) ||
	    ul >= sizeof url || !plain(o.url) || !plain(o.key) || !*o.key) {
		fprintf(stderr, "sluice connect: --url must be http(s)://HOST[:PORT] and neither it nor "
		                "--key may hold spaces, quotes or backslashes\n");
		return 2;
	}
	memcpy(url, o.url, ul);
	url[ul] = '\0';
	o.url = url;

	if (o.check && check_gateway(&o) != 0)
		return 1; /* nothing written for a gateway that does not take the key */
	if (num_tools == 0) {
		char p[4096];
		snprintf(p, sizeof p, "%s/.claude", o.home);
		if (exists(p))
			tools[num_tools++] = "claude-code";
		snprintf(p, sizeof p, "%s/.aider.conf.yml", o.home);
		if (exists(p))
			tools[num_tools++] = "aider";
		tools[num_tools++] = "shell";
	}
	int status = 0;
	for (int i = 0; i < num_tools; i++) {
		const char *t = tools[i];
		if (strcmp(t, "claude-code") == 0)
			status |= connect_claude_code(&o);
		else if (strcmp(t, "aider") == 0)
			status |= connect_aider(&o);
		else if (strcmp(t, "shell") == 0)
			status |= connect_shell(&o);
		else if (strcmp(t, "cursor") == 0 || strcmp(t, "cline") == 0)
			status |= connect_editor(&o, t);
		else {
			fprintf(stderr, "sluice connect: unknown tool '%s' (claude-code, aider, shell, "
			                "cursor, cline)\n", t);
			status = 2;
		}
	}
	if (!o.write && status == 0)
		printf("(nothing written: add --write)\n");
	return status;
}
