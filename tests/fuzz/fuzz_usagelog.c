/*
 * libFuzzer driver for the usage log reader and record codec (usagelog.h).
 *
 * The input is a segment's body (frames). On any input:
 *   - three files are scanned by sl_ulog_scan_file: the input alone, as a
 *     whole file (a header or not); a valid header followed by the input;
 *     and the same with the checksum of every frame that is whole made
 *     right, so the fuzzer gets past the CRC to the record decoder and the
 *     seq checks rather than stopping at the first frame;
 *   - every scan keeps the reader's invariants: it returns 0; the visitor
 *     is called once per counted record, with consecutive seqs starting at
 *     first_seq (or at expected_seq when one was given); good_bytes <=
 *     file_bytes, good_bytes is the header plus the visited frames (each
 *     visited record re-encodes to its frame's payload length), and equals
 *     file_bytes when no damage is reported; a bad header counts nothing;
 *     with the checksums made right no frame is ever a checksum mismatch;
 *   - when a scan counts records, scanning again expecting its first seq
 *     gives the same count, and expecting first seq + 1 gives a seq gap at
 *     the first frame;
 *   - sl_usage_record_decode on the raw bytes never reads past them (the
 *     payload is an exact-size heap copy, for ASan), and when it accepts a
 *     payload, encoding the result gives the same bytes back;
 *   - sl_ulog_segment_name accepts a name only if formatting its (core,
 *     first_seq) back gives that name.
 */
#include "sluice/usagelog.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(e) SL_ASSERT(e)

/* The scanned file: a memfd (no disk, nothing left behind), opened by the
 * reader through its /proc/self/fd path. */
static char path[64];
static int fd = -1;

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void file_set(const uint8_t *p, size_t len)
{
	if (fd < 0) {
		fd = memfd_create("fuzz-usagelog", MFD_CLOEXEC);
		CHECK(fd >= 0);
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	}
	CHECK(ftruncate(fd, 0) == 0);
	size_t off = 0;
	while (off < len) {
		ssize_t n = pwrite(fd, p + off, len - off, (off_t)off);
		CHECK(n > 0);
		off += (size_t)n;
	}
}

struct visits {
	uint64_t num;
	uint64_t next_seq; /* UINT64_MAX: any */
	uint64_t frame_bytes;
};

static int visit(void *arg, uint64_t seq, const struct sl_usage_record *rec)
{
	struct visits *v = arg;
	if (v->num > 0 || v->next_seq != UINT64_MAX) {
		if (seq != v->next_seq) {
			fprintf(stderr, "visit %" PRIu64 ": seq %" PRIu64 ", expected %" PRIu64 "\n",
			        v->num, seq, v->next_seq);
			abort();
		}
	}
	v->next_seq = seq + 1;
	uint8_t buf[SL_ULOG_PAYLOAD_MAX];
	int n = sl_usage_record_encode(rec, buf, sizeof buf);
	CHECK(n > 0);
	v->frame_bytes += SL_ULOG_FRAME_HEAD + (uint64_t)n;
	v->num++;
	return 0;
}

/* scan_checked: one scan with every invariant checked; returns it. */
static struct sl_ulog_scan scan_checked(uint64_t expected_seq, bool crcs_fixed)
{
	struct sl_ulog_scan sc;
	struct visits v = { .next_seq = expected_seq };
	int rc = sl_ulog_scan_file(path, expected_seq, &sc, visit, &v);
	CHECK(rc == 0);
	CHECK(v.num == sc.records);
	CHECK(sc.good_bytes <= sc.file_bytes);
	CHECK(sc.damage >= SL_ULOG_OK && sc.damage <= SL_ULOG_SEQ_GAP);
	if (sc.damage == SL_ULOG_OK)
		CHECK(sc.good_bytes == sc.file_bytes);
	if (sc.damage == SL_ULOG_BAD_HEADER) {
		CHECK(sc.records == 0);
	} else {
		CHECK(sc.good_bytes == SL_ULOG_HEADER_LEN + v.frame_bytes);
	}
	if (sc.records == 0) {
		CHECK(sc.first_seq == expected_seq);
	} else {
		CHECK(sc.last_seq - sc.first_seq + 1 == sc.records);
		CHECK(v.next_seq == sc.last_seq + 1);
		if (expected_seq != UINT64_MAX)
			CHECK(sc.first_seq == expected_seq);
	}
	if (crcs_fixed)
		CHECK(sc.damage != SL_ULOG_BAD_CRC);
	return sc;
}

/* scan_all: the file as it is, then expecting the first seq it found, then
 * the one after it. */
static void scan_all(bool crcs_fixed)
{
	struct sl_ulog_scan any = scan_checked(UINT64_MAX, crcs_fixed);
	if (any.records == 0)
		return;
	struct sl_ulog_scan same = scan_checked(any.first_seq, crcs_fixed);
	CHECK(same.records == any.records && same.damage == any.damage &&
	      same.good_bytes == any.good_bytes);
	if (any.first_seq + 1 != UINT64_MAX) {
		struct sl_ulog_scan gap = scan_checked(any.first_seq + 1, crcs_fixed);
		CHECK(gap.records == 0 && gap.damage == SL_ULOG_SEQ_GAP &&
		      gap.good_bytes == SL_ULOG_HEADER_LEN);
	}
}

/* fix_crcs: walks the frames by their length fields and makes the
 * checksum of every whole frame with a length in range right. */
static void fix_crcs(uint8_t *seg, size_t len)
{
	size_t off = SL_ULOG_HEADER_LEN;
	while (off + SL_ULOG_FRAME_HEAD <= len) {
		uint32_t n = sl_get_le32(seg + off);
		if (n == 0 || n > SL_ULOG_PAYLOAD_MAX || off + SL_ULOG_FRAME_HEAD + n > len)
			return;
		sl_put_le32(seg + off + 4, sl_crc32c(seg + off + 8, 8 + (size_t)n));
		off += SL_ULOG_FRAME_HEAD + n;
	}
}

static void codec(const uint8_t *data, size_t size)
{
	uint8_t *copy = malloc(size ? size : 1);
	CHECK(copy != NULL);
	memcpy(copy, data, size);
	struct sl_usage_record rec;
	if (sl_usage_record_decode(copy, size, &rec) == 0) {
		uint8_t buf[SL_ULOG_PAYLOAD_MAX];
		int n = sl_usage_record_encode(&rec, buf, sizeof buf);
		CHECK(n > 0 && (size_t)n == size);
		CHECK(memcmp(buf, data, size) == 0);
	}
	free(copy);
}

static void segment_name(const uint8_t *data, size_t size)
{
	char name[64];
	if (size >= sizeof name)
		return;
	memcpy(name, data, size);
	name[size] = 0;
	uint32_t core;
	uint64_t first;
	if (!sl_ulog_segment_name(name, &core, &first))
		return;
	char back[64];
	snprintf(back, sizeof back, "usage-c%03" PRIu32 "-%016" PRIx64 ".log", core, first);
	CHECK(strcmp(name, back) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	codec(data, size);
	segment_name(data, size);

	/* the input alone */
	file_set(data, size);
	scan_all(false);

	/* a header (core 0), then the input */
	uint8_t *seg = malloc(SL_ULOG_HEADER_LEN + size);
	CHECK(seg != NULL);
	memcpy(seg, SL_ULOG_MAGIC, 8);
	memset(seg + 8, 0, 8);
	memcpy(seg + SL_ULOG_HEADER_LEN, data, size);
	file_set(seg, SL_ULOG_HEADER_LEN + size);
	scan_all(false);

	/* and with its checksums made right */
	fix_crcs(seg, SL_ULOG_HEADER_LEN + size);
	file_set(seg, SL_ULOG_HEADER_LEN + size);
	scan_all(true);

	/* seqs made consecutive from the first frame's, checksums again */
	size_t off = SL_ULOG_HEADER_LEN;
	uint64_t seq = size >= SL_ULOG_FRAME_HEAD ? get_le64(seg + off + 8) : 0;
	while (off + SL_ULOG_FRAME_HEAD <= SL_ULOG_HEADER_LEN + size) {
		uint32_t n = sl_get_le32(seg + off);
		if (n == 0 || n > SL_ULOG_PAYLOAD_MAX)
			break;
		put_le64(seg + off + 8, seq++);
		off += SL_ULOG_FRAME_HEAD + n;
	}
	fix_crcs(seg, SL_ULOG_HEADER_LEN + size);
	file_set(seg, SL_ULOG_HEADER_LEN + size);
	scan_all(true);

	free(seg);
	return 0;
}
