/* softdirty C scanner: coalesce /proc/PID/pagemap entries into ranges, and
 * loop the PAGEMAP_SCAN ioctl.  A plain shared library (not a Python
 * extension) loaded with ctypes by softdirty/scanner.py, which also holds the
 * pure-Python twin that must give identical results.
 *
 * Every pagemap number comes from pagemap_abi.h, generated from
 * softdirty/pagemap.py; the ABI of this file is in scanner.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "pagemap_abi.h"
#include "scanner.h"

#define SD_API __attribute__((visibility("default")))
#define SD_PAGE_BYTES (1ULL << SD_PAGE_SHIFT)
#define SD_ENTRY_BYTES 8ULL
#define SD_DEFAULT_WINDOW 65536ULL    /* entries per pread: 512 KiB */
#define SD_MAX_WINDOW (1ULL << 24)    /* 128 MiB of entries: anything larger is a bug */

#ifndef SD_BUILD_ID
#define SD_BUILD_ID "unknown"
#endif

_Static_assert(sizeof(struct sd_pm_scan_arg) == SD_PM_SCAN_ARG_SIZE, "struct pm_scan_arg is 96 bytes");
_Static_assert(sizeof(struct sd_page_region) == SD_PAGE_REGION_SIZE, "struct page_region is 24 bytes");
_Static_assert(sizeof(struct sd_scan_state) == 8 * 8, "ctypes mirrors sd_scan_state as 8 x u64");
_Static_assert(sizeof(struct sd_fd_result) == 3 * 8, "ctypes mirrors sd_fd_result as 3 x u64");

static sd_ioctl_hook_t ioctl_hook;

SD_API void sd_test_set_ioctl_hook(sd_ioctl_hook_t hook) { ioctl_hook = hook; }

SD_API int64_t sd_abi_version(void) { return SD_ABI_VERSION; }

SD_API const char *sd_build_id(void) { return SD_BUILD_ID; }

/* Lets the loader check that this build used the current pagemap_abi.h. */
SD_API uint64_t sd_pagemap_scan_cmd(void) { return SD_PAGEMAP_SCAN; }

/* Entries may sit at any byte offset of a Python buffer: load through memcpy
 * (a plain mov on x86-64) instead of dereferencing a misaligned pointer. */
static inline uint64_t load_entry(const unsigned char *p, uint64_t i)
{
    uint64_t v;
    memcpy(&v, p + i * SD_ENTRY_BYTES, sizeof v);
    return v;
}

/* Close the open run into out; 0 when out is full (the run stays open). */
static int emit_run(struct sd_scan_state *st, uint64_t *out, uint64_t out_cap)
{
    uint64_t *slot;

    if (st->out_len >= out_cap)
        return 0;
    slot = out + 3 * st->out_len;
    slot[0] = st->run_start;
    slot[1] = st->run_end;
    slot[2] = st->run_key;
    st->out_len++;
    st->ranges_emitted++;
    st->run_open = 0;
    return 1;
}

/* Coalesce n entries for pages start_addr, start_addr + 4 KiB, ...
 *
 * An entry matches if (e & match_mask) == match_value; matching pages at
 * consecutive addresses with equal e & return_mask form one range.  Returns
 * the number of entries consumed: fewer than n only when out filled up, in
 * which case the caller drains out (out_len = 0) and calls again with the
 * rest.  The last run stays open in *st; sd_scan_flush() closes it. */
SD_API int64_t sd_scan_buffer(const void *entries, uint64_t n, uint64_t start_addr, uint64_t match_mask,
                              uint64_t match_value, uint64_t return_mask, uint64_t *out, uint64_t out_cap,
                              struct sd_scan_state *st)
{
    const unsigned char *p = entries;
    uint64_t i = 0, matched = 0;

    if (!st || (n && !p) || (out_cap && !out))
        return -EINVAL;
    while (i < n) {
        uint64_t addr = start_addr + (i << SD_PAGE_SHIFT);
        uint64_t e = load_entry(p, i);
        uint64_t key, j;

        if ((e & match_mask) != match_value) {
            if (st->run_open && !emit_run(st, out, out_cap))
                break;
            for (i++; i < n; i++) /* skip the rest of the non-matching stretch */
                if ((load_entry(p, i) & match_mask) == match_value)
                    break;
            continue;
        }
        key = e & return_mask;
        if (st->run_open && (addr != st->run_end || key != st->run_key) && !emit_run(st, out, out_cap))
            break;
        if (!st->run_open) {
            st->run_open = 1;
            st->run_start = addr;
            st->run_key = key;
        }
        for (j = i + 1; j < n; j++) { /* the stretch of matches with the same key */
            e = load_entry(p, j);
            if ((e & match_mask) != match_value || (e & return_mask) != key)
                break;
        }
        matched += j - i;
        st->run_end = addr + ((j - i) << SD_PAGE_SHIFT);
        i = j;
    }
    st->entries_seen += i;
    st->pages_matched += matched;
    return (int64_t)i;
}

/* Close the open run: 1 if one was written, 0 if none was open, -ENOSPC if out is full. */
SD_API int64_t sd_scan_flush(struct sd_scan_state *st, uint64_t *out, uint64_t out_cap)
{
    if (!st)
        return -EINVAL;
    if (!st->run_open)
        return 0;
    return emit_run(st, out, out_cap) ? 1 : -ENOSPC;
}

/* Scan [start, end) of a pagemap fd (or any file of packed entries) in
 * windows of window_pages entries (0 = 64 Ki).  Returns out_len (>= 0) with
 * *res saying why it stopped, or -errno.  A read may come back short: whole
 * entries are consumed and the read continues from there; 0 bytes means
 * the data ended (for pagemap: end of the address space, or the target's mm
 * is gone) and is reported as SD_SCAN_EOF with stopped_at < end. */
SD_API int64_t sd_scan_fd(int fd, uint64_t start, uint64_t end, uint64_t match_mask, uint64_t match_value,
                          uint64_t return_mask, uint64_t window_pages, uint64_t *out, uint64_t out_cap,
                          struct sd_scan_state *st, struct sd_fd_result *res)
{
    uint64_t addr = start, first;
    unsigned char *buf = NULL;
    int eof = 0;

    if (!st || !res || !out || out_cap == 0)
        return -EINVAL;
    if (((start | end) & (SD_PAGE_BYTES - 1)) || end < start)
        return -EINVAL;
    if (window_pages == 0)
        window_pages = SD_DEFAULT_WINDOW;
    if (window_pages > SD_MAX_WINDOW)
        return -EINVAL;
    res->status = SD_SCAN_DONE;
    res->stopped_at = start;
    res->reads = 0;

    first = (end - start) >> SD_PAGE_SHIFT;
    if (first > window_pages)
        first = window_pages;
    if (first) {
        buf = malloc(first * SD_ENTRY_BYTES);
        if (!buf)
            return -ENOMEM;
    }
    while (addr < end) {
        uint64_t want = (end - addr) >> SD_PAGE_SHIFT, have;
        ssize_t got;
        int64_t used;

        if (want > window_pages)
            want = window_pages;
        do {
            /* The kernel's rule: the entry of page addr sits at (addr >> 12) * 8. */
            got = pread(fd, buf, want * SD_ENTRY_BYTES, (off_t)((addr >> SD_PAGE_SHIFT) * SD_ENTRY_BYTES));
            res->reads++;
        } while (got < 0 && errno == EINTR);
        if (got < 0) {
            int err = errno;
            free(buf);
            res->stopped_at = addr;
            return -err;
        }
        if (got == 0) {
            eof = 1;
            break;
        }
        have = (uint64_t)got / SD_ENTRY_BYTES;
        if (have == 0) { /* 1..7 bytes: not a stream of whole entries */
            free(buf);
            res->stopped_at = addr;
            return -EIO;
        }
        used = sd_scan_buffer(buf, have, addr, match_mask, match_value, return_mask, out, out_cap, st);
        if (used < 0) {
            free(buf);
            return used;
        }
        addr += (uint64_t)used << SD_PAGE_SHIFT;
        if ((uint64_t)used < have) {
            free(buf);
            res->status = SD_SCAN_OUT_FULL;
            res->stopped_at = addr;
            return (int64_t)st->out_len;
        }
    }
    free(buf);
    res->stopped_at = addr;
    if (sd_scan_flush(st, out, out_cap) < 0) {
        /* Called again from stopped_at, the scan reads nothing (or hits EOF
         * again) and flushes into the drained buffer. */
        res->status = SD_SCAN_OUT_FULL;
        return (int64_t)st->out_len;
    }
    res->status = eof ? SD_SCAN_EOF : SD_SCAN_DONE;
    return (int64_t)st->out_len;
}

/* One PAGEMAP_SCAN ioctl.  Returns the number of regions written to vec or
 * -errno; *walk_end gets the kernel's walk_end (0 if it never wrote it). */
SD_API int64_t sd_pagemap_scan_once(int fd, uint64_t start, uint64_t end, uint64_t flags, uint64_t inverted,
                                    uint64_t mask, uint64_t anyof, uint64_t return_mask, uint64_t max_pages,
                                    uint64_t *vec, uint64_t vec_len, uint64_t *walk_end)
{
    struct sd_pm_scan_arg arg;
    int64_t r;

    memset(&arg, 0, sizeof arg);
    arg.size = SD_PM_SCAN_ARG_SIZE;
    arg.flags = flags;
    arg.start = start;
    arg.end = end;
    arg.vec = (uintptr_t)vec;
    arg.vec_len = vec_len;
    arg.max_pages = max_pages;
    arg.category_inverted = inverted;
    arg.category_mask = mask;
    arg.category_anyof_mask = anyof;
    arg.return_mask = return_mask;
    /* No EINTR retry: the kernel only fails so on a fatal signal, and with
     * WP_MATCHING a retry would not see again what the first try protected. */
    if (ioctl_hook) {
        r = ioctl_hook(fd, &arg);
    } else {
        r = ioctl(fd, SD_PAGEMAP_SCAN, &arg);
        if (r < 0)
            r = -(int64_t)errno;
    }
    if (walk_end)
        *walk_end = arg.walk_end;
    return r;
}

/* PAGEMAP_SCAN in a loop: batches of up to `batch` regions (0 = as many as
 * out holds), each continued from the previous walk_end, until end, out full
 * or max_pages pages reported.  A region that continues the previous batch's
 * last one (touching, same categories) is merged into it.  Returns the
 * number of regions in out or -errno; *walk_end says where to resume (== end
 * when the walk completed) and *calls counts the ioctls.  out_cap == 0 makes
 * one call without an output vector (e.g. write-protect everything). */
SD_API int64_t sd_pagemap_scan(int fd, uint64_t start, uint64_t end, uint64_t flags, uint64_t inverted,
                               uint64_t mask, uint64_t anyof, uint64_t return_mask, uint64_t max_pages,
                               uint64_t batch, uint64_t *out, uint64_t out_cap, uint64_t *walk_end,
                               uint64_t *calls)
{
    uint64_t n = 0, pos = start, pages = 0, ncalls = 0, we = start;
    int64_t r;

    if (!walk_end || !calls)
        return -EINVAL;
    *walk_end = start;
    *calls = 0;
    if (out_cap == 0) {
        r = sd_pagemap_scan_once(fd, start, end, flags, inverted, mask, anyof, return_mask, max_pages, NULL, 0,
                                 &we);
        *calls = 1;
        *walk_end = we;
        return r < 0 ? r : 0;
    }
    if (!out)
        return -EINVAL;
    if (batch == 0)
        batch = out_cap;
    while (pos < end && n < out_cap && !(max_pages && pages >= max_pages)) {
        uint64_t room = out_cap - n, len = batch < room ? batch : room, k, i;
        uint64_t *vec = out + 3 * n;

        r = sd_pagemap_scan_once(fd, pos, end, flags, inverted, mask, anyof, return_mask,
                                 max_pages ? max_pages - pages : 0, vec, len, &we);
        ncalls++;
        if (r < 0) {
            *walk_end = we;
            *calls = ncalls;
            return r;
        }
        k = (uint64_t)r;
        for (i = 0; i < k; i++)
            pages += (vec[3 * i + 1] - vec[3 * i]) >> SD_PAGE_SHIFT;
        if (k && n && vec[0] == out[3 * n - 2] && vec[2] == out[3 * n - 1]) {
            out[3 * n - 2] = vec[1];
            memmove(vec, vec + 3, (k - 1) * 3 * sizeof *vec);
            k--;
        }
        n += k;
        if (we <= pos) /* no progress (a huge page that max_pages cut): stop here */
            break;
        pos = we;
    }
    *walk_end = pos;
    *calls = ncalls;
    return (int64_t)n;
}

/* Merge the sorted runs [a, m) and [m, b) of triples (by start) through tmp. */
static void merge_runs(uint64_t *t, uint64_t a, uint64_t m, uint64_t b, uint64_t *tmp)
{
    uint64_t i = a, j = m, k = 0;

    while (i < m && j < b) {
        uint64_t *src = t[3 * j] < t[3 * i] ? &t[3 * j++] : &t[3 * i++];
        memcpy(tmp + 3 * k++, src, 3 * sizeof *src);
    }
    if (i < m)
        memcpy(tmp + 3 * k, t + 3 * i, 3 * (m - i) * sizeof *t), k += m - i;
    if (j < b)
        memcpy(tmp + 3 * k, t + 3 * j, 3 * (b - j) * sizeof *t), k += b - j;
    memcpy(t + 3 * a, tmp, 3 * k * sizeof *t);
}

/* DirtySet's normalisation, in place, for the usual input: flat (start, end,
 * flags) triples that do not overlap.  Sorts them by start (a natural merge
 * sort: a harvest is a few sorted runs), then merges touching triples with
 * equal flags.  Returns the number of triples left in t; -1 when a range is
 * empty, reversed or not page-aligned, or two ranges overlap (the Python
 * path then cuts overlaps or raises, with the reason); -ENOMEM. */
SD_API int64_t sd_normalize(uint64_t *t, uint64_t n)
{
    uint64_t i, k = 0, prev_end = 0;

    for (i = 1; i < n && t[3 * i] >= t[3 * i - 3]; i++)
        ;
    if (i < n) {
        uint64_t *tmp = malloc(3 * n * sizeof *t), *starts;
        uint64_t runs = 1, width;
        if (!tmp)
            return -ENOMEM;
        starts = malloc((n + 1) * sizeof *starts);
        if (!starts) {
            free(tmp);
            return -ENOMEM;
        }
        starts[0] = 0;
        for (i = 1; i < n; i++)
            if (t[3 * i] < t[3 * i - 3])
                starts[runs++] = i;
        starts[runs] = n;
        for (width = 1; width < runs; width *= 2) /* merge neighbouring runs pairwise */
            for (i = 0; i + width < runs; i += 2 * width) {
                uint64_t hi = i + 2 * width < runs ? i + 2 * width : runs;
                merge_runs(t, starts[i], starts[i + width], starts[hi], tmp);
            }
        free(starts);
        free(tmp);
    }
    for (i = 0; i < n; i++) {
        uint64_t s = t[3 * i], e = t[3 * i + 1], f = t[3 * i + 2];
        if (s >= e || ((s | e) & (SD_PAGE_BYTES - 1)) || (i && s < prev_end))
            return -1;
        if (k && s == prev_end && t[3 * k - 1] == f) {
            t[3 * k - 2] = e;
        } else {
            t[3 * k] = s;
            t[3 * k + 1] = e;
            t[3 * k + 2] = f;
            k++;
        }
        prev_end = e;
    }
    return (int64_t)k;
}
