/*
 * keys_cli.c - `sluice keys create|import|list|show|update|revoke|topup`.
 *
 * Output: human-readable lines, or one JSON value with --json. The only
 * output that ever contains key material is create's key (shown once); the
 * install secret and the stored hashes are never printed. import reads the
 * key text from stdin (never argv, which any user sees in ps) and prints
 * only the new id. Exit status 0 on success, 1 with a message on stderr
 * otherwise, 2 for a usage error.
 */
#include "sluice/config.h"
#include "sluice/credit.h"
#include "sluice/keys.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <openssl/mem.h>

struct cli_opts {
	const char *data_dir;
	const char *config_path;
	const char *name;
	const char *tier;
	const char *models;
	const char *parent;
	bool json;
};

static void usage(FILE *f)
{
	fputs("usage: sluice keys create --name NAME --tier TIER [--models a,b] [--parent ID]\n"
	      "       sluice keys import --name NAME --tier TIER [--models a,b] [--parent ID] < KEYFILE\n"
	      "       sluice keys list\n"
	      "       sluice keys show ID\n"
	      "       sluice keys update ID [--name NAME] [--tier TIER] [--models a,b]\n"
	      "       sluice keys revoke ID\n"
	      "       sluice keys topup ID AMOUNT_USD\n"
	      "options for all: [--data-dir DIR | -c CONFIG] [--json]\n"
	      "\n"
	      "create makes a new key and prints it once; only its HMAC is stored.\n"
	      "import stores an existing key (e.g. migrated from another gateway) read\n"
	      "as one line from stdin, never from the command line: 20..256 printable\n"
	      "ASCII characters, no spaces. It prints the new key id, never the key;\n"
	      "a key already in the store is refused.\n",
	      f);
}

/* Field values are printable ASCII (checked by the store), so JSON escaping
 * needs only the quote and the backslash. */
static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			putchar('\\');
		putchar(*s);
	}
	putchar('"');
}

static void json_models(const char *models)
{
	putchar('[');
	const char *p = models;
	while (*p) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		char buf[SL_KEY_MODELS_LEN_MAX + 1];
		memcpy(buf, p, len);
		buf[len] = 0;
		if (p != models)
			putchar(',');
		json_str(buf);
		p += len + (comma ? 1 : 0);
	}
	putchar(']');
}

/* What each key spent per the usage log, in pico-dollars (the balance less
 * this is what a prepaid key may still use; docs/billing.md): one replay per
 * command. */
struct spent_ctx {
	const struct sl_keystore *ks;
	int64_t *spent; /* parallel to ks->keys */
};

static void spent_visit(void *arg, const char *key_id, const struct sl_credit_spent *s)
{
	struct spent_ctx *x = arg;
	const struct sl_key *k = sl_keys_find(x->ks, key_id);
	if (k)
		x->spent[k - x->ks->keys] = s->total;
}

static int64_t *spent_load(const struct sl_keystore *ks, const char *data_dir)
{
	int64_t *spent = calloc(ks->num_keys ? ks->num_keys : 1, sizeof *spent);
	char dir[PATH_MAX];
	if (!spent || (size_t)snprintf(dir, sizeof dir, "%s/usage", data_dir) >= sizeof dir) {
		free(spent);
		return NULL;
	}
	struct spent_ctx x = { ks, spent };
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	/* what a clean stop summarised, then the records after it */
	char state[PATH_MAX];
	struct sl_credit_snapshot base;
	bool have_base = (size_t)snprintf(state, sizeof state, "%s/%s", data_dir,
	                                  SL_CREDIT_STATE_NAME) < sizeof state &&
	                 sl_credit_snapshot_read(state, &base) == 0;
	int64_t rc = sl_credit_replay(dir, (uint64_t)now.tv_sec * 1000, have_base ? &base : NULL,
	                              spent_visit, NULL, &x);
	if (have_base)
		sl_credit_snapshot_free(&base);
	if (rc < 0) {
		free(spent);
		return NULL;
	}
	return spent;
}

static int64_t spent_of(const struct sl_keystore *ks, const int64_t *spent, const struct sl_key *k)
{
	return spent && k >= ks->keys && k < ks->keys + ks->num_keys ? spent[k - ks->keys] : 0;
}

static void print_key_json(const struct sl_key *k, const char *secret_key, int64_t spent)
{
	char usd[32];
	sl_keys_format_usd(k->balance_micro_usd, usd, sizeof(usd));
	printf("{\"id\":\"%s\",", k->id);
	if (secret_key)
		printf("\"key\":\"%s\",", secret_key);
	printf("\"name\":");
	json_str(k->name);
	printf(",\"tier\":");
	json_str(k->tier);
	printf(",\"status\":\"%s\",\"balance_usd\":\"%s\",\"balance_micro_usd\":%" PRId64 ",\"models\":",
	       k->status == SL_KEY_ACTIVE ? "active" : "revoked", usd, k->balance_micro_usd);
	json_models(k->models);
	printf(",\"parent\":");
	if (k->parent[0])
		json_str(k->parent);
	else
		printf("null");
	int64_t available = k->balance_micro_usd * SL_PICO_PER_MICRO - spent;
	char spent_usd[32], avail[32];
	sl_format_pico_usd(spent, spent_usd, sizeof spent_usd);
	sl_format_pico_usd(available, avail, sizeof avail);
	printf(",\"created\":%" PRId64 ",\"last_used\":%" PRId64 ",\"spent_usd\":\"%s\""
	       ",\"spent_pico_usd\":%" PRId64 ",\"available_usd\":\"%s\",\"available_pico_usd\":%" PRId64
	       "}",
	       k->created_unix_s, k->last_used_unix_s, spent_usd, spent, avail, available);
}

static void print_key_text(const struct sl_key *k, int64_t spent)
{
	char usd[32], spent_usd[32], avail[32];
	sl_keys_format_usd(k->balance_micro_usd, usd, sizeof(usd));
	sl_format_pico_usd(spent, spent_usd, sizeof spent_usd);
	sl_format_pico_usd(k->balance_micro_usd * SL_PICO_PER_MICRO - spent, avail, sizeof avail);
	printf("id:        %s\nname:      %s\ntier:      %s\nstatus:    %s\nbalance:   $%s (top-ups)\n"
	       "spent:     $%s (usage log)\navailable: $%s\n"
	       "models:    %s\nparent:    %s\ncreated:   %" PRId64 "\nlast_used: %" PRId64 "\n",
	       k->id, k->name, k->tier, k->status == SL_KEY_ACTIVE ? "active" : "revoked", usd,
	       spent_usd, avail, k->models[0] ? k->models : "(all)", k->parent[0] ? k->parent : "-",
	       k->created_unix_s, k->last_used_unix_s);
}

static const char *errno_text(int rc)
{
	switch (-rc) {
	case ENOENT:
		return "no such key";
	case EINVAL:
		return "invalid value";
	case ERANGE:
		return "amount out of range";
	case EWOULDBLOCK:
		return "the data directory stayed locked by another sluice process for 10 s";
	case EBADMSG:
		return "the key snapshot or secret is corrupt";
	case EEXIST:
		return "this key is already in the store";
	default:
		return strerror(-rc);
	}
}

/* Reads the key to import: one line from stdin, the trailing newline (or
 * CRLF) stripped. On a terminal it prompts on stderr and turns echo off.
 * Returns the length, or -1 with a message (empty input, more than one
 * line, longer than SL_KEY_TEXT_LEN_MAX). buf must hold
 * SL_KEY_TEXT_LEN_MAX + 3 bytes. */
static ssize_t read_import_key(char *buf, size_t buf_len)
{
	struct termios saved = {0};
	bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved) == 0;
	if (tty) {
		struct termios quiet = saved;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		(void)tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
		fputs("key to import (not echoed): ", stderr);
	}
	/* read(2), not stdio: no copy of the key left in a FILE buffer */
	size_t len = 0;
	bool too_long = false;
	while (len < buf_len - 1) {
		ssize_t n = read(STDIN_FILENO, buf + len, buf_len - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		if (tty && memchr(buf + len - n, '\n', (size_t)n))
			break; /* a terminal gives one line per read */
	}
	if (len == buf_len - 1) { /* full: too long unless that was all */
		char extra;
		too_long = tty ? !memchr(buf, '\n', len) : read(STDIN_FILENO, &extra, 1) > 0;
	}
	if (tty) {
		(void)tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
		fputc('\n', stderr);
	}
	buf[len] = 0;
	if (len && buf[len - 1] == '\n')
		buf[--len] = 0;
	if (len && buf[len - 1] == '\r')
		buf[--len] = 0;
	if (too_long || len > SL_KEY_TEXT_LEN_MAX) {
		fprintf(stderr, "sluice keys import: the key is longer than %d characters\n", SL_KEY_TEXT_LEN_MAX);
		return -1;
	}
	if (len == 0) {
		fprintf(stderr, "sluice keys import: no key on stdin\n");
		return -1;
	}
	if (memchr(buf, '\n', len)) {
		fprintf(stderr, "sluice keys import: expected one line on stdin\n");
		return -1;
	}
	if (len < SL_KEY_IMPORT_LEN_MIN) {
		fprintf(stderr, "sluice keys import: the key is shorter than %d characters\n",
		        SL_KEY_IMPORT_LEN_MIN);
		return -1;
	}
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)buf[i] <= ' ' || (unsigned char)buf[i] > 0x7e) {
			fprintf(stderr, "sluice keys import: the key must be printable ASCII without spaces "
			                "(character %zu is not)\n", i + 1);
			return -1;
		}
	return (ssize_t)len;
}

/* Resolves the data directory: --data-dir, else the config's data_dir, else
 * "./data" (the config default). *owned receives a config to free. */
static int resolve_data_dir(struct cli_opts *o, struct sl_config **owned)
{
	*owned = NULL;
	if (o->data_dir)
		return 0;
	if (o->config_path) {
		char err[512];
		if (sl_config_load_file(o->config_path, owned, err, sizeof(err)) != 0) {
			fprintf(stderr, "sluice keys: %s\n", err);
			return -1;
		}
		o->data_dir = (*owned)->data_dir;
		return 0;
	}
	o->data_dir = "./data";
	return 0;
}

int sl_keys_main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	const char *sub = argv[1];
	static const struct option long_opts[] = {
		{ "data-dir", required_argument, NULL, 'd' }, { "config", required_argument, NULL, 'c' },
		{ "name", required_argument, NULL, 'n' },     { "tier", required_argument, NULL, 't' },
		{ "models", required_argument, NULL, 'm' },   { "parent", required_argument, NULL, 'p' },
		{ "json", no_argument, NULL, 'j' },           { "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_opts o = { 0 };
	int opt;
	optind = 1;
	/* getopt sees argv from the subcommand on, so it is argv[0] to it. */
	while ((opt = getopt_long(argc - 1, argv + 1, "c:h", long_opts, NULL)) != -1) {
		switch (opt) {
		case 'd': o.data_dir = optarg; break;
		case 'c': o.config_path = optarg; break;
		case 'n': o.name = optarg; break;
		case 't': o.tier = optarg; break;
		case 'm': o.models = optarg; break;
		case 'p': o.parent = optarg; break;
		case 'j': o.json = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	char **args = argv + 1 + optind;
	int num_args = argc - 1 - optind;

	int want_args;
	bool takes_fields = false;
	if (strcmp(sub, "create") == 0 || strcmp(sub, "import") == 0)
		want_args = 0, takes_fields = true;
	else if (strcmp(sub, "list") == 0)
		want_args = 0;
	else if (strcmp(sub, "show") == 0 || strcmp(sub, "revoke") == 0)
		want_args = 1;
	else if (strcmp(sub, "update") == 0)
		want_args = 1, takes_fields = true;
	else if (strcmp(sub, "topup") == 0)
		want_args = 2;
	else {
		fprintf(stderr, "sluice keys: unknown command '%s'\n", sub);
		usage(stderr);
		return 2;
	}
	if (num_args != want_args) {
		fprintf(stderr, "sluice keys %s: expected %d argument(s), got %d\n", sub, want_args, num_args);
		return 2;
	}
	if (!takes_fields && (o.name || o.tier || o.models || o.parent)) {
		fprintf(stderr, "sluice keys %s: --name/--tier/--models/--parent do not apply\n", sub);
		return 2;
	}
	if (strcmp(sub, "update") == 0 && o.parent) {
		fprintf(stderr, "sluice keys update: the parent cannot be changed\n");
		return 2;
	}
	if ((strcmp(sub, "create") == 0 || strcmp(sub, "import") == 0) && (!o.name || !o.tier)) {
		fprintf(stderr, "sluice keys %s: --name and --tier are required\n", sub);
		return 2;
	}
	/* the key is read before the store is opened: the lock is not held
	 * while an operator pastes */
	char import_key[SL_KEY_TEXT_LEN_MAX + 3];
	ssize_t import_key_len = 0;
	if (strcmp(sub, "import") == 0 && (import_key_len = read_import_key(import_key, sizeof(import_key))) < 0) {
		OPENSSL_cleanse(import_key, sizeof(import_key));
		return 1;
	}
	int64_t amount = 0;
	if (strcmp(sub, "topup") == 0) {
		int rc = sl_keys_parse_usd(args[1], &amount);
		if (rc == 0 && amount == 0)
			rc = -EINVAL;
		if (rc < 0) {
			fprintf(stderr, "sluice keys topup: '%s' is not a positive dollar amount (at most 6 decimals)\n",
			        args[1]);
			return 1;
		}
	}

	struct sl_config *config;
	if (resolve_data_dir(&o, &config) < 0) {
		OPENSSL_cleanse(import_key, sizeof(import_key));
		return 1;
	}
	struct sl_keystore ks;
	struct sl_keys_load_report report;
	int rc = sl_keys_open(&ks, o.data_dir, &report);
	if (rc < 0) {
		fprintf(stderr, "sluice keys: cannot open data directory %s: %s\n", o.data_dir, errno_text(rc));
		sl_config_free(config);
		OPENSSL_cleanse(import_key, sizeof(import_key));
		return 1;
	}
	if (report.journal_cut_bytes)
		fprintf(stderr, "sluice keys: warning: %s journal tail cut at offset %" PRIu64 " (%" PRIu64 " bytes)\n",
		        report.journal_crc_mismatch ? "corrupt" : "torn", report.journal_cut_offset,
		        report.journal_cut_bytes);

	int status = 0;
	const struct sl_key *k = NULL;
	if (strcmp(sub, "create") == 0) {
		char key[SL_KEY_TEXT_LEN + 1];
		struct sl_key rec;
		rc = sl_keys_create(&ks, o.name, o.tier, o.models, o.parent, key, &rec);
		if (rc == 0) {
			if (o.json) {
				print_key_json(&rec, key, 0);
				putchar('\n');
			} else {
				printf("%s\n", key);
				fprintf(stderr, "created %s (the key is shown only once)\n", rec.id);
			}
			OPENSSL_cleanse(key, sizeof(key));
		}
	} else if (strcmp(sub, "import") == 0) {
		struct sl_key rec;
		rc = sl_keys_import(&ks, import_key, (size_t)import_key_len, o.name, o.tier, o.models, o.parent,
		                    &rec);
		OPENSSL_cleanse(import_key, sizeof(import_key));
		if (rc == 0) {
			if (o.json) {
				print_key_json(&rec, NULL, 0);
				putchar('\n');
			} else {
				printf("%s\n", rec.id);
			}
		}
	} else if (strcmp(sub, "list") == 0) {
		int64_t *spent = spent_load(&ks, o.data_dir);
		if (o.json)
			putchar('[');
		for (uint32_t i = 0; i < ks.num_keys; i++) {
			const struct sl_key *r = &ks.keys[i];
			if (o.json) {
				if (i)
					putchar(',');
				print_key_json(r, NULL, spent_of(&ks, spent, r));
			} else {
				char usd[32];
				sl_keys_format_usd(r->balance_micro_usd, usd, sizeof(usd));
				printf("%s  %-7s  %-10s  $%-14s  %s\n", r->id,
				       r->status == SL_KEY_ACTIVE ? "active" : "revoked", r->tier, usd, r->name);
			}
		}
		if (o.json)
			puts("]");
		free(spent);
	} else {
		const char *id = args[0];
		if (strcmp(sub, "update") == 0)
			rc = sl_keys_update(&ks, id, o.name, o.tier, o.models);
		else if (strcmp(sub, "revoke") == 0)
			rc = sl_keys_revoke(&ks, id);
		else if (strcmp(sub, "topup") == 0)
			rc = sl_keys_topup(&ks, id, amount);
		if (rc == 0 && !(k = sl_keys_find(&ks, id)))
			rc = -ENOENT;
		if (rc == 0) {
			int64_t *spent = spent_load(&ks, o.data_dir);
			if (o.json) {
				print_key_json(k, NULL, spent_of(&ks, spent, k));
				putchar('\n');
			} else {
				print_key_text(k, spent_of(&ks, spent, k));
			}
			free(spent);
		}
	}
	if (rc < 0) {
		fprintf(stderr, "sluice keys %s: %s\n", sub, errno_text(rc));
		status = 1;
	}
	if (fflush(stdout) != 0) {
		fprintf(stderr, "sluice keys: cannot write output\n");
		status = 1;
	}
	sl_keys_close(&ks);
	sl_config_free(config);
	return status;
}
