/*
 * usage_cli.c - `sluice usage verify|export|totals`: the operator's and the
 * billing side's view of the usage log (usagelog.h).
 *
 * verify walks every core's segments and reports damage and gaps; export
 * prints the records that pass the filters, as CSV or JSON lines; totals
 * sums the same filtered stream per key, model or day, so its TOTAL always
 * equals the sum over what export prints.
 *
 * Order. Records are streamed one segment at a time, in log order: core by
 * core, each core in sequence order. That is not time order, and a merge
 * by time would not make it so: a record is appended when its request
 * ends, while time_unix_ms is when its head arrived. Sort the output when
 * order matters. Nothing is held in memory but the totals' groups.
 *
 * Damage. Each segment is scanned with the seq its file name says it starts
 * at; a name that does not follow on from the previous segment's last good
 * record is a gap. A segment whose header names another core than its file
 * name (a copy, a bad rename) is left out, lest it be billed twice. verify
 * reports every problem; export and totals warn on stderr, keep the good
 * records before a damage, skip the rest of that segment, go on with the
 * next one and exit 1, so that a script never takes a partial export for a
 * whole one.
 *
 * Exit status: 0 clean, 1 damage or an error (message on stderr), 2 usage
 * error.
 */
#include "sluice/config.h"
#include "sluice/router.h"
#include "sluice/usagelog.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

enum output_format { FORMAT_DEFAULT = 0, FORMAT_TEXT, FORMAT_CSV, FORMAT_JSONL };
enum group_by { BY_KEY = 0, BY_MODEL, BY_DAY };

/* A record passes when from_ms <= time_unix_ms < to_ms and each given
 * string equals its field. */
struct filter {
	uint64_t from_ms;
	uint64_t to_ms; /* UINT64_MAX: no end */
	const char *key_id;
	const char *model;
};

struct cli_opts {
	const char *data_dir;
	const char *config_path;
	const char *usage_dir;
	enum output_format format;
	enum group_by by;
	bool by_given;
	bool filter_given;
	struct filter filter;
};

static void usage(FILE *f)
{
	fputs("usage: sluice usage verify [--dir USAGE_DIR]\n"
	      "       sluice usage export [--format csv|jsonl] [FILTERS]\n"
	      "       sluice usage totals [--by key|model|day] [--format text|csv] [FILTERS]\n"
	      "filters: [--from T] [--to T] [--key KEY_ID] [--model MODEL]\n"
	      "options for all: [--data-dir DIR | -c CONFIG] [--dir USAGE_DIR]\n"
	      "\n"
	      "The log is read from USAGE_DIR, by default DIR/usage where DIR is the\n"
	      "config's data_dir (./data without -c). T is unix seconds, YYYY-MM-DD or\n"
	      "YYYY-MM-DDTHH:MM:SSZ (UTC); --from is inclusive, --to exclusive.\n"
	      "Records come core by core in log order, not sorted by time.\n"
	      "Exit status 1 when the log is damaged: verify lists the damage;\n"
	      "export and totals warn, skip the rest of each damaged segment, and go on.\n",
	      f);
}

/* --- argument parsing -------------------------------------------------------- */

/* parse_time reads T: unix seconds, "YYYY-MM-DD" or "YYYY-MM-DDTHH:MM:SSZ"
 * (UTC). Returns 0 with *out_unix_ms set, or -EINVAL. */
static int parse_time(const char *text, uint64_t *out_unix_ms)
{
	size_t len = strlen(text);
	if (len && strspn(text, "0123456789") == len) {
		char *end;
		errno = 0;
		unsigned long long s = strtoull(text, &end, 10);
		if (errno || s > UINT64_MAX / 1000)
			return -EINVAL;
		*out_unix_ms = (uint64_t)s * 1000;
		return 0;
	}
	static const char pattern[] = "dddd-dd-ddTdd:dd:ddZ";
	if (len != 10 && len != sizeof(pattern) - 1)
		return -EINVAL;
	int v[6] = { 0 }, field = 0;
	for (size_t i = 0; i < len; i++) {
		if (pattern[i] != 'd') {
			if (text[i] != pattern[i])
				return -EINVAL;
			field++;
		} else if (text[i] >= '0' && text[i] <= '9') {
			v[field] = v[field] * 10 + (text[i] - '0');
		} else {
			return -EINVAL;
		}
	}
	struct tm tm = { .tm_year = v[0] - 1900, .tm_mon = v[1] - 1, .tm_mday = v[2],
		         .tm_hour = v[3], .tm_min = v[4], .tm_sec = v[5] };
	time_t t = timegm(&tm);
	/* timegm normalises out-of-range fields (Feb 30, 24:00): refuse those */
	if (t < 0 || tm.tm_year != v[0] - 1900 || tm.tm_mon != v[1] - 1 || tm.tm_mday != v[2] ||
	    tm.tm_hour != v[3] || tm.tm_min != v[4] || tm.tm_sec != v[5])
		return -EINVAL;
	*out_unix_ms = (uint64_t)t * 1000;
	return 0;
}

/* Resolves the usage directory into out[out_len]: --dir, else
 * <data_dir>/usage with data_dir from --data-dir, else the config's
 * data_dir, else "./data" (the same rule as `sluice keys`). */
static int resolve_usage_dir(const struct cli_opts *o, char *out, size_t out_len)
{
	if (o->usage_dir) {
		if ((size_t)snprintf(out, out_len, "%s", o->usage_dir) >= out_len)
			goto too_long;
		return 0;
	}
	const char *data_dir = o->data_dir;
	struct sl_config *config = NULL;
	if (!data_dir && o->config_path) {
		char err[512];
		if (sl_config_load_file(o->config_path, &config, err, sizeof(err)) != 0) {
			fprintf(stderr, "sluice usage: %s\n", err);
			return -1;
		}
		data_dir = config->data_dir;
	}
	if (!data_dir)
		data_dir = "./data";
	int n = snprintf(out, out_len, "%s/usage", data_dir);
	sl_config_free(config);
	if ((size_t)n >= out_len)
		goto too_long;
	return 0;
too_long:
	fprintf(stderr, "sluice usage: the usage directory's path is too long\n");
	return -1;
}

/* --- text output ------------------------------------------------------------ */

/* utf8_len returns the length of the valid UTF-8 sequence at p[0..len)
 * (len >= 1), or 0 when it is not one: a stray continuation byte, an
 * overlong form, a surrogate, or a character cut short, as the log's
 * SL_ULOG_STR_MAX limit cuts a long multi-byte name. */
static size_t utf8_len(const uint8_t *p, size_t len)
{
	uint8_t c = p[0];
	size_t n;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if ((c & 0xf0) == 0xe0)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	if (n > len)
		return 0;
	uint32_t cp = c & (0x7fu >> n);
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3fu);
	}
	if (n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff)))
		return 0;
	if (n == 4 && (cp < 0x10000 || cp > 0x10ffff))
		return 0;
	return n;
}

enum escape {
	ESC_JSON, /* a quoted JSON string */
	ESC_CSV,  /* one RFC 4180 field, quoted when it must be */
	ESC_TEXT, /* for a terminal: control bytes become '?' */
};

/* put_string writes s[0..len) for how. Strings in the log are whatever a
 * client sent (a model name may hold any byte), so bytes that are not
 * valid UTF-8 are replaced: by U+FFFD for JSON and CSV, by '?' for text. */
static void put_string(FILE *f, const char *s, size_t len, enum escape how)
{
	const uint8_t *p = (const uint8_t *)s;
	bool quote = how == ESC_JSON;
	if (how == ESC_CSV)
		for (size_t i = 0; i < len && !quote; i++)
			quote = p[i] == ',' || p[i] == '"' || p[i] == '\r' || p[i] == '\n';
	if (quote)
		putc('"', f);
	for (size_t i = 0; i < len;) {
		size_t n = utf8_len(p + i, len - i);
		if (n == 0) {
			fputs(how == ESC_TEXT ? "?" : "\xef\xbf\xbd", f);
			i++;
			continue;
		}
		if (n > 1) {
			fwrite(p + i, 1, n, f);
			i += n;
			continue;
		}
		uint8_t c = p[i++];
		if (how == ESC_JSON && (c == '"' || c == '\\'))
			fprintf(f, "\\%c", c);
		else if (how == ESC_JSON && c < 0x20)
			fprintf(f, "\\u%04x", c);
		else if (how == ESC_CSV && c == '"')
			fputs("\"\"", f);
		else if (how == ESC_TEXT && (c < 0x20 || c == 0x7f))
			putc('?', f);
		else
			putc(c, f);
	}
	if (quote)
		putc('"', f);
}

/* The columns a text table needs for s: one per character, one per byte
 * put_string(ESC_TEXT) replaces. */
static size_t text_width(const char *s, size_t len)
{
	size_t w = 0;
	for (size_t i = 0; i < len; w++) {
		size_t n = utf8_len((const uint8_t *)s + i, len - i);
		i += n ? n : 1;
	}
	return w;
}

/* "2026-11-22T10:31:00.042Z" into out (80 bytes: room for any int the
 * compiler sees in struct tm); a time gmtime cannot represent, or past
 * 9999, is printed as its milliseconds. */
static void format_time_ms(uint64_t unix_ms, char *out, size_t out_len)
{
	time_t t = (time_t)(unix_ms / 1000);
	struct tm tm;
	if (!gmtime_r(&t, &tm) || tm.tm_year > 9999 - 1900) {
		snprintf(out, out_len, "%" PRIu64, unix_ms);
		return;
	}
	snprintf(out, out_len, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1,
	         tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(unix_ms % 1000));
}


/* --- walking the log -------------------------------------------------------- */

/* A visitor's return that stops the walk (stdout failed). */
#define WALK_STOP 1

/*
 * One pass over every segment of a usage directory. Problems (damage inside
 * a segment, a gap or an overlap between two, a file that cannot be read)
 * are written to report as lines "<prefix>core N: ..." and counted; verbose
 * (verify) adds a summary line per core. The visitor sees every good record.
 */
struct walk {
	FILE *report;
	const char *prefix;
	bool verbose;
	sl_ulog_visit_fn visit;
	void *visit_arg;
	/* results */
	uint64_t records;
	uint32_t num_cores;
	uint64_t num_problems;
	bool stopped; /* by the visitor */
};

/* What walk_log knows of the core whose segments it is reading. */
struct core_state {
	uint32_t core;
	uint32_t segments;
	uint64_t records;
	uint64_t first_seq, last_seq; /* of its good records, when records > 0 */
	uint64_t next_seq;            /* the seq its next segment should start at; UINT64_MAX: any */
	uint64_t problems;
	const char *prev_path;
	bool prev_damaged;
};

SL_PRINTF(3, 4)
static void problem(struct walk *w, struct core_state *c, const char *fmt, ...)
{
	va_list ap;
	fprintf(w->report, "%score %u: ", w->prefix, c->core);
	va_start(ap, fmt);
	vfprintf(w->report, fmt, ap);
	va_end(ap);
	fputc('\n', w->report);
	c->problems++;
	w->num_problems++;
}

static const char *damage_kind(enum sl_ulog_damage d)
{
	switch (d) {
	case SL_ULOG_OK: return "ok";
	case SL_ULOG_BAD_HEADER: return "bad_header";
	case SL_ULOG_TORN: return "torn";
	case SL_ULOG_BAD_CRC: return "bad_crc";
	case SL_ULOG_BAD_LEN: return "bad_len";
	case SL_ULOG_BAD_RECORD: return "bad_record";
	case SL_ULOG_SEQ_GAP: return "seq_gap";
	}
	return "unknown";
}

static const char *damage_text(enum sl_ulog_damage d)
{
	switch (d) {
	case SL_ULOG_OK: return "no damage";
	case SL_ULOG_BAD_HEADER: return "not a usage segment";
	case SL_ULOG_TORN: return "the file ends inside a frame";
	case SL_ULOG_BAD_CRC: return "a frame's checksum is wrong";
	case SL_ULOG_BAD_LEN: return "a frame length out of range";
	case SL_ULOG_BAD_RECORD: return "checksum right, payload not a record";
	case SL_ULOG_SEQ_GAP: return "a frame's seq is not the one expected";
	}
	return "unknown damage";
}

static void core_summary(const struct walk *w, const struct core_state *c)
{
	if (!w->verbose)
		return;
	printf("core %u: %u segment%s, %" PRIu64 " record%s, ", c->core, c->segments,
	       c->segments == 1 ? "" : "s", c->records, c->records == 1 ? "" : "s");
	if (c->records)
		printf("seq %" PRIu64 "..%" PRIu64, c->first_seq, c->last_seq);
	else
		printf("seq -");
	printf(", damaged %" PRIu64 "\n", c->problems);
}

/* Checks how seg follows the previous segment of its core. */
static void check_continuity(struct walk *w, struct core_state *c, const struct sl_ulog_segment *seg)
{
	if (c->next_seq == UINT64_MAX || seg->first_seq == c->next_seq)
		return;
	if (seg->first_seq > c->next_seq && c->prev_damaged) {
		/* the damage already reported: say what it cost, count it once */
		fprintf(w->report, "%score %u: seq %" PRIu64 "..%" PRIu64 " unreadable (the damage in %s)\n",
		        w->prefix, c->core, c->next_seq, seg->first_seq - 1, c->prev_path);
	} else if (seg->first_seq > c->next_seq) {
		problem(w, c, "gap: seq %" PRIu64 "..%" PRIu64 " missing between %s and %s", c->next_seq,
		        seg->first_seq - 1, c->prev_path, seg->path);
	} else {
		problem(w, c, "overlap: %s starts at seq %" PRIu64 " but %s ends at seq %" PRIu64
		        " (records may be repeated)", seg->path, seg->first_seq, c->prev_path,
		        c->next_seq - 1);
	}
}

/* Reports what the scan of one segment found; misfiled: its header names
 * another core (see header_core). */
static void check_scan(struct walk *w, struct core_state *c, const struct sl_ulog_segment *seg,
                       const struct sl_ulog_scan *scan, bool misfiled, bool last_of_core)
{
	if (misfiled)
		problem(w, c, "damage: bad_header at byte 8 of %s (the header says core %u: a "
		        "misfiled segment; its records are left out)", seg->path, scan->core);
	if (scan->damage == SL_ULOG_OK)
		return;
	if (scan->damage == SL_ULOG_SEQ_GAP && scan->records == 0) {
		problem(w, c, "damage: seq_gap at byte %" PRIu64 " of %s (its first frame is not seq "
		        "%" PRIu64 ", as its name says)", scan->good_bytes, seg->path, seg->first_seq);
		return;
	}
	problem(w, c, "damage: %s at byte %" PRIu64 " of %s (%s; good records before it: %" PRIu64
	        ", bytes after it not read: %" PRIu64 ")%s", damage_kind(scan->damage), scan->good_bytes,
	        seg->path, damage_text(scan->damage), scan->records, scan->file_bytes - scan->good_bytes,
	        last_of_core && scan->damage == SL_ULOG_TORN
	                ? "; if sluice is running, this may be a write in progress" : "");
}

/* header_core reads the core a segment's header names: the scan reads it
 * too, but only after its records have gone to the visitor, and a segment
 * filed under another core's name (a copy, a bad rename) must not be
 * exported or summed twice. Returns true with *out_core when the file
 * starts with a segment header. */
static bool header_core(const char *path, uint32_t *out_core)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return false;
	uint8_t h[SL_ULOG_HEADER_LEN];
	bool ok = fread(h, 1, sizeof(h), f) == sizeof(h) && memcmp(h, SL_ULOG_MAGIC, 8) == 0;
	fclose(f);
	if (ok)
		*out_core = sl_get_le32(h + 8);
	return ok;
}

/* walk_log runs w over dir. Returns 0 (problems counted in w), or -1 after
 * a message when the directory cannot be listed. */
static int walk_log(struct walk *w, const char *dir)
{
	struct sl_ulog_segment *segs;
	size_t num_segs;
	int rc = sl_ulog_list(dir, &segs, &num_segs);
	if (rc < 0) {
		fprintf(stderr, "sluice usage: cannot read %s: %s\n", dir, strerror(-rc));
		return -1;
	}
	struct core_state c = { 0 };
	for (size_t i = 0; i < num_segs && !w->stopped; i++) {
		const struct sl_ulog_segment *seg = &segs[i];
		bool last_of_core = i + 1 == num_segs || segs[i + 1].core != seg->core;
		if (i == 0 || segs[i - 1].core != seg->core) {
			c = (struct core_state){ .core = seg->core, .next_seq = UINT64_MAX };
			w->num_cores++;
		}
		c.segments++;
		check_continuity(w, &c, seg);

		/* The seq the name promises, not the previous last + 1: they are
		 * the same in a sound log, and after a gap this reads on. */
		uint32_t core;
		bool misfiled = header_core(seg->path, &core) && core != seg->core;
		struct sl_ulog_scan scan;
		rc = sl_ulog_scan_file(seg->path, seg->first_seq, &scan, misfiled ? NULL : w->visit,
		                       w->visit_arg);
		if (rc < 0) {
			problem(w, &c, "cannot read %s: %s", seg->path, strerror(-rc));
			c.prev_damaged = true;
		} else {
			if (rc == WALK_STOP)
				w->stopped = true;
			else
				SL_ASSERT(rc == 0);
			uint64_t before = c.problems;
			if (!w->stopped)
				check_scan(w, &c, seg, &scan, misfiled, last_of_core);
			c.prev_damaged = c.problems != before;
			if (scan.records && !misfiled) {
				if (c.records == 0)
					c.first_seq = scan.first_seq;
				c.last_seq = scan.last_seq;
				c.records += scan.records;
				w->records += scan.records;
			}
		}
		c.next_seq = rc == 0 && scan.records ? scan.last_seq + 1 : seg->first_seq;
		c.prev_path = seg->path;
		if (last_of_core && !w->stopped)
			core_summary(w, &c);
	}
	sl_ulog_list_free(segs, num_segs);
	return 0;
}

/* --- filters ------------------------------------------------------------------ */

/* A filter string longer than SL_ULOG_STR_MAX matches the cut the log
 * stored. */
static bool ustr_equals(struct sl_ustr s, const char *want)
{
	size_t len = strlen(want);
	if (len > SL_ULOG_STR_MAX)
		len = SL_ULOG_STR_MAX;
	return s.len == len && memcmp(s.p, want, len) == 0;
}

static bool filter_match(const struct filter *f, const struct sl_usage_record *rec)
{
	return rec->time_unix_ms >= f->from_ms && rec->time_unix_ms < f->to_ms &&
	       (!f->key_id || ustr_equals(rec->key_id, f->key_id)) &&
	       (!f->model || ustr_equals(rec->model, f->model));
}

/* --- export ----------------------------------------------------------------- */

struct export_ctx {
	const struct filter *filter;
	enum output_format format;
};

static const char csv_header[] =
	"time,request_id,key_id,client_ip,route,model,provider,upstream_model,status,"
	"input_tokens,output_tokens,cache_read_tokens,cache_write_tokens,cache_write_1h_tokens,cost_usd,"
	"ttfb_ms,total_ms,stream,usage,attempts,refused\n";

/* The route's name from the router; a value this build does not know (a
 * log written by a newer sluice) is written as its number into number[4]. */
static const char *route_text(uint8_t route, char number[4])
{
	const char *name = sl_route_name((enum sl_route)route);
	if (route == SL_ROUTE_NONE || strcmp(name, "none") != 0)
		return name;
	snprintf(number, 4, "%u", route);
	return number;
}

static int export_visit(void *arg, uint64_t seq, const struct sl_usage_record *rec)
{
	const struct export_ctx *x = arg;
	if (!filter_match(x->filter, rec))
		return 0;
	char when[80], route_number[4], ip[INET6_ADDRSTRLEN] = "";
	format_time_ms(rec->time_unix_ms, when, sizeof(when));
	const char *route = route_text(rec->route, route_number);
	if (rec->ip_family == 4)
		inet_ntop(AF_INET, rec->ip, ip, sizeof(ip));
	else if (rec->ip_family == 6)
		inet_ntop(AF_INET6, rec->ip, ip, sizeof(ip));
	const char *stream = rec->flags & SL_UREC_STREAM ? "true" : "false";
	const char *refused = rec->flags & SL_UREC_REFUSED ? "true" : "false";
	const char *how = rec->flags & SL_UREC_ESTIMATED ? "estimated" : "reported";
	const struct sl_ustr *strings[] = { &rec->request_id, &rec->key_id };
	const struct sl_ustr *more[] = { &rec->model, &rec->provider, &rec->upstream_model };
	FILE *f = stdout;

	if (x->format == FORMAT_CSV) {
		fprintf(f, "%s,", when);
		for (size_t i = 0; i < SL_ARRAY_LEN(strings); i++) {
			put_string(f, strings[i]->p, strings[i]->len, ESC_CSV);
			putc(',', f);
		}
		fprintf(f, "%s,%s,", ip, route);
		for (size_t i = 0; i < SL_ARRAY_LEN(more); i++) {
			put_string(f, more[i]->p, more[i]->len, ESC_CSV);
			putc(',', f);
		}
		char cost[32];
		sl_format_pico_usd(rec->cost_pico_usd, cost, sizeof cost);
		fprintf(f, "%u,%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%s,%" PRIu32
		        ",%" PRIu32 ",%s,%s,%u,%s\n", rec->status, rec->input_tokens, rec->output_tokens,
		        rec->cache_read_tokens, rec->cache_write_tokens, rec->cache_write_1h_tokens, cost,
		        rec->ttfb_ms,
		        rec->total_ms, stream, how, rec->attempts, refused);
	} else {
		static const char *const string_keys[] = { "request_id", "key_id" };
		static const char *const more_keys[] = { "model", "provider", "upstream_model" };
		fprintf(f, "{\"time\":\"%s\"", when);
		for (size_t i = 0; i < SL_ARRAY_LEN(strings); i++) {
			fprintf(f, ",\"%s\":", string_keys[i]);
			put_string(f, strings[i]->p, strings[i]->len, ESC_JSON);
		}
		if (ip[0])
			fprintf(f, ",\"client_ip\":\"%s\"", ip);
		else
			fputs(",\"client_ip\":null", f);
		fprintf(f, ",\"route\":\"%s\"", route);
		for (size_t i = 0; i < SL_ARRAY_LEN(more); i++) {
			fprintf(f, ",\"%s\":", more_keys[i]);
			put_string(f, more[i]->p, more[i]->len, ESC_JSON);
		}
		char cost[32];
		sl_format_pico_usd(rec->cost_pico_usd, cost, sizeof cost);
		fprintf(f, ",\"status\":%u,\"input_tokens\":%" PRIu64 ",\"output_tokens\":%" PRIu64
		        ",\"cache_read_tokens\":%" PRIu64 ",\"cache_write_tokens\":%" PRIu64
		        ",\"cache_write_1h_tokens\":%" PRIu64
		        ",\"cost_usd\":\"%s\",\"cost_pico_usd\":%" PRId64
		        ",\"ttfb_ms\":%" PRIu32 ",\"total_ms\":%" PRIu32
		        ",\"stream\":%s,\"usage\":\"%s\",\"attempts\":%u,\"refused\":%s}\n",
		        rec->status, rec->input_tokens, rec->output_tokens, rec->cache_read_tokens,
		        rec->cache_write_tokens, rec->cache_write_1h_tokens, cost, rec->cost_pico_usd,
		        rec->ttfb_ms, rec->total_ms,
		        stream, how, rec->attempts, refused);
	}
	return ferror(f) ? WALK_STOP : 0;
}

/* --- totals ----------------------------------------------------------------- */

struct group {
	char *name; /* not NUL-terminated: a name may hold any byte */
	size_t name_len;
	uint64_t requests;
	uint64_t input_tokens, output_tokens, cache_read_tokens, cache_write_tokens;
	int64_t cost_pico_usd;
};

/* The groups, kept sorted by name (bytewise) so that a lookup is a binary
 * search and the output needs no sort. There are few of them (keys, models
 * or days), so an insertion's memmove costs nothing next to reading the log. */
struct totals {
	const struct filter *filter;
	enum group_by by;
	struct group *groups;
	size_t num_groups, cap;
	struct group total;
	bool out_of_memory;
};

static int name_cmp(const char *a, size_t a_len, const char *b, size_t b_len)
{
	int c = memcmp(a, b, SL_MIN(a_len, b_len));
	if (c)
		return c;
	return a_len < b_len ? -1 : a_len > b_len;
}

/* The group named name[0..len), created if new; NULL when out of memory. */
static struct group *group_get(struct totals *t, const char *name, size_t len)
{
	size_t lo = 0, hi = t->num_groups;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = name_cmp(name, len, t->groups[mid].name, t->groups[mid].name_len);
		if (c == 0)
			return &t->groups[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	if (t->num_groups == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 64;
		struct group *g = realloc(t->groups, cap * sizeof(*g));
		if (!g)
			return NULL;
		t->groups = g;
		t->cap = cap;
	}
	char *copy = malloc(len ? len : 1);
	if (!copy)
		return NULL;
	memcpy(copy, name, len);
	struct group *g = &t->groups[lo];
	memmove(g + 1, g, (t->num_groups - lo) * sizeof(*g));
	t->num_groups++;
	*g = (struct group){ .name = copy, .name_len = len };
	return g;
}

static void group_add(struct group *g, const struct sl_usage_record *rec)
{
	g->requests++;
	g->input_tokens += rec->input_tokens;
	g->output_tokens += rec->output_tokens;
	g->cache_read_tokens += rec->cache_read_tokens;
	g->cache_write_tokens += rec->cache_write_tokens;
	g->cost_pico_usd += rec->cost_pico_usd;
}

static int totals_visit(void *arg, uint64_t seq, const struct sl_usage_record *rec)
{
	struct totals *t = arg;
	if (!filter_match(t->filter, rec))
		return 0;
	char day[48];
	const char *name;
	size_t len;
	if (t->by == BY_KEY) {
		name = rec->key_id.p;
		len = rec->key_id.len;
	} else if (t->by == BY_MODEL) {
		name = rec->model.p;
		len = rec->model.len;
	} else {
		/* the day in UTC of the request's time */
		time_t secs = (time_t)(rec->time_unix_ms / 1000);
		struct tm tm;
		if (gmtime_r(&secs, &tm) && tm.tm_year <= 9999 - 1900)
			snprintf(day, sizeof(day), "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1,
			         tm.tm_mday);
		else
			snprintf(day, sizeof(day), "invalid");
		name = day;
		len = strlen(day);
	}
	struct group *g = group_get(t, name, len);
	if (!g) {
		t->out_of_memory = true;
		return WALK_STOP;
	}
	group_add(g, rec);
	group_add(&t->total, rec);
	return 0;
}

/* The numeric cells of one table row, formatted. */
#define TOTALS_NUM_CELLS 6
static void group_cells(const struct group *g, bool usd, char cells[TOTALS_NUM_CELLS][32])
{
	snprintf(cells[0], 32, "%" PRIu64, g->requests);
	snprintf(cells[1], 32, "%" PRIu64, g->input_tokens);
	snprintf(cells[2], 32, "%" PRIu64, g->output_tokens);
	snprintf(cells[3], 32, "%" PRIu64, g->cache_read_tokens);
	snprintf(cells[4], 32, "%" PRIu64, g->cache_write_tokens);
	(void)usd; /* dollars, exact, in both formats */
	sl_format_pico_usd(g->cost_pico_usd, cells[5], 32);
}

static void totals_print_csv(const struct totals *t, const char *group_title)
{
	char cells[TOTALS_NUM_CELLS][32];
	printf("%s,requests,input_tokens,output_tokens,cache_read_tokens,cache_write_tokens,"
	       "cost_usd\n", group_title);
	for (size_t i = 0; i <= t->num_groups; i++) {
		const struct group *g = i < t->num_groups ? &t->groups[i] : &t->total;
		if (i < t->num_groups)
			put_string(stdout, g->name, g->name_len, ESC_CSV);
		else
			fputs("TOTAL", stdout);
		group_cells(g, false, cells);
		for (int c = 0; c < TOTALS_NUM_CELLS; c++)
			printf(",%s", cells[c]);
		putchar('\n');
	}
}

/* An aligned table: names left, numbers right, cost in dollars. */
static void totals_print_text(const struct totals *t, const char *group_title)
{
	static const char *const titles[TOTALS_NUM_CELLS] = { "requests", "input", "output",
		                                              "cache_read", "cache_write", "cost_usd" };
	static const char none[] = "(none)";
	char cells[TOTALS_NUM_CELLS][32];
	size_t name_width = SL_MAX(strlen(group_title), strlen("TOTAL"));
	size_t width[TOTALS_NUM_CELLS];
	for (int c = 0; c < TOTALS_NUM_CELLS; c++)
		width[c] = strlen(titles[c]);
	for (size_t i = 0; i <= t->num_groups; i++) {
		const struct group *g = i < t->num_groups ? &t->groups[i] : &t->total;
		if (i < t->num_groups)
			name_width = SL_MAX(name_width,
			                    g->name_len ? text_width(g->name, g->name_len) : strlen(none));
		group_cells(g, true, cells);
		for (int c = 0; c < TOTALS_NUM_CELLS; c++)
			width[c] = SL_MAX(width[c], strlen(cells[c]));
	}
	printf("%-*s", (int)name_width, group_title);
	for (int c = 0; c < TOTALS_NUM_CELLS; c++)
		printf("  %*s", (int)width[c], titles[c]);
	putchar('\n');
	for (size_t i = 0; i <= t->num_groups; i++) {
		const struct group *g = i < t->num_groups ? &t->groups[i] : &t->total;
		size_t w;
		if (i == t->num_groups) {
			fputs("TOTAL", stdout);
			w = strlen("TOTAL");
		} else if (g->name_len == 0) {
			fputs(none, stdout);
			w = strlen(none);
		} else {
			put_string(stdout, g->name, g->name_len, ESC_TEXT);
			w = text_width(g->name, g->name_len);
		}
		printf("%*s", (int)(name_width - w), "");
		group_cells(g, true, cells);
		for (int c = 0; c < TOTALS_NUM_CELLS; c++)
			printf("  %*s", (int)width[c], cells[c]);
		putchar('\n');
	}
}

static void totals_free(struct totals *t)
{
	for (size_t i = 0; i < t->num_groups; i++)
		free(t->groups[i].name);
	free(t->groups);
}

/* --- the subcommands ---------------------------------------------------------- */

static int cmd_verify(const char *dir)
{
	struct walk w = { .report = stdout, .prefix = "", .verbose = true };
	if (walk_log(&w, dir) < 0)
		return 1;
	printf("records %" PRIu64 ", cores %u, damaged %" PRIu64 "\n", w.records, w.num_cores,
	       w.num_problems);
	return w.num_problems ? 1 : 0;
}

/* Runs a walk for export or totals: warnings on stderr. Returns 0, or -1
 * after a message (the directory, or stdout). *out_problems: how many. */
static int walk_quietly(const char *sub, const char *dir, sl_ulog_visit_fn visit, void *arg,
                        uint64_t *out_problems)
{
	char prefix[64];
	snprintf(prefix, sizeof(prefix), "sluice usage %s: warning: ", sub);
	struct walk w = { .report = stderr, .prefix = prefix, .visit = visit, .visit_arg = arg };
	if (walk_log(&w, dir) < 0)
		return -1;
	*out_problems = w.num_problems;
	return 0;
}

static int cmd_export(const char *dir, const struct cli_opts *o)
{
	struct export_ctx x = { .filter = &o->filter, .format = o->format };
	if (x.format == FORMAT_CSV)
		fputs(csv_header, stdout);
	uint64_t problems;
	if (walk_quietly("export", dir, export_visit, &x, &problems) < 0)
		return 1;
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "sluice usage export: cannot write output\n");
		return 1;
	}
	if (problems) {
		fprintf(stderr, "sluice usage export: %" PRIu64 " problem%s in the log: records past "
		        "the damage were not exported (see sluice usage verify)\n", problems,
		        problems == 1 ? "" : "s");
		return 1;
	}
	return 0;
}

static int cmd_totals(const char *dir, const struct cli_opts *o)
{
	static const char *const titles[] = { [BY_KEY] = "key", [BY_MODEL] = "model", [BY_DAY] = "day" };
	struct totals t = { .filter = &o->filter, .by = o->by };
	uint64_t problems;
	int status = 0;
	if (walk_quietly("totals", dir, totals_visit, &t, &problems) < 0) {
		totals_free(&t);
		return 1;
	}
	if (t.out_of_memory) {
		fprintf(stderr, "sluice usage totals: out of memory\n");
		totals_free(&t);
		return 1;
	}
	if (o->format == FORMAT_CSV)
		totals_print_csv(&t, titles[o->by]);
	else
		totals_print_text(&t, titles[o->by]);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "sluice usage totals: cannot write output\n");
		status = 1;
	}
	if (problems) {
		fprintf(stderr, "sluice usage totals: %" PRIu64 " problem%s in the log: records past "
		        "the damage were not counted (see sluice usage verify)\n", problems,
		        problems == 1 ? "" : "s");
		status = 1;
	}
	totals_free(&t);
	return status;
}

int sl_ulog_main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	const char *sub = argv[1];
	bool verify = strcmp(sub, "verify") == 0, export = strcmp(sub, "export") == 0,
	     totals = strcmp(sub, "totals") == 0;
	if (!verify && !export && !totals) {
		fprintf(stderr, "sluice usage: unknown command '%s'\n", sub);
		usage(stderr);
		return 2;
	}
	static const struct option long_opts[] = {
		{ "data-dir", required_argument, NULL, 'd' }, { "config", required_argument, NULL, 'c' },
		{ "dir", required_argument, NULL, 'D' },      { "format", required_argument, NULL, 'f' },
		{ "from", required_argument, NULL, 'F' },     { "to", required_argument, NULL, 'T' },
		{ "key", required_argument, NULL, 'k' },      { "model", required_argument, NULL, 'm' },
		{ "by", required_argument, NULL, 'b' },       { "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_opts o = { .filter = { .to_ms = UINT64_MAX } };
	int opt;
	optind = 1;
	/* getopt sees argv from the subcommand on, so it is argv[0] to it. */
	while ((opt = getopt_long(argc - 1, argv + 1, "c:h", long_opts, NULL)) != -1) {
		switch (opt) {
		case 'd': o.data_dir = optarg; break;
		case 'c': o.config_path = optarg; break;
		case 'D': o.usage_dir = optarg; break;
		case 'f':
			if (strcmp(optarg, "csv") == 0)
				o.format = FORMAT_CSV;
			else if (strcmp(optarg, "jsonl") == 0)
				o.format = FORMAT_JSONL;
			else if (strcmp(optarg, "text") == 0)
				o.format = FORMAT_TEXT;
			else {
				fprintf(stderr, "sluice usage: --format: expected csv, jsonl or text\n");
				return 2;
			}
			break;
		case 'F':
		case 'T':
			if (parse_time(optarg, opt == 'F' ? &o.filter.from_ms : &o.filter.to_ms) < 0) {
				fprintf(stderr, "sluice usage: --%s: expected unix seconds, YYYY-MM-DD or "
				        "YYYY-MM-DDTHH:MM:SSZ, got '%s'\n", opt == 'F' ? "from" : "to", optarg);
				return 2;
			}
			o.filter_given = true;
			break;
		case 'k': o.filter.key_id = optarg; o.filter_given = true; break;
		case 'm': o.filter.model = optarg; o.filter_given = true; break;
		case 'b':
			if (strcmp(optarg, "key") == 0)
				o.by = BY_KEY;
			else if (strcmp(optarg, "model") == 0)
				o.by = BY_MODEL;
			else if (strcmp(optarg, "day") == 0)
				o.by = BY_DAY;
			else {
				fprintf(stderr, "sluice usage: --by: expected key, model or day\n");
				return 2;
			}
			o.by_given = true;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "sluice usage %s: unexpected argument '%s'\n", sub, argv[1 + optind]);
		return 2;
	}
	if (verify && (o.filter_given || o.format || o.by_given)) {
		fprintf(stderr, "sluice usage verify: filters, --format and --by do not apply\n");
		return 2;
	}
	if (export && o.by_given) {
		fprintf(stderr, "sluice usage export: --by does not apply (see sluice usage totals)\n");
		return 2;
	}
	if (export && o.format == FORMAT_TEXT) {
		fprintf(stderr, "sluice usage export: --format: expected csv or jsonl\n");
		return 2;
	}
	if (totals && o.format == FORMAT_JSONL) {
		fprintf(stderr, "sluice usage totals: --format: expected text or csv\n");
		return 2;
	}
	if (o.filter.from_ms >= o.filter.to_ms) {
		fprintf(stderr, "sluice usage %s: --from must come before --to\n", sub);
		return 2;
	}
	if (!o.format)
		o.format = export ? FORMAT_CSV : FORMAT_TEXT;

	char dir[PATH_MAX];
	if (resolve_usage_dir(&o, dir, sizeof(dir)) < 0)
		return 1;
	if (verify)
		return cmd_verify(dir);
	if (export)
		return cmd_export(dir, &o);
	return cmd_totals(dir, &o);
}
