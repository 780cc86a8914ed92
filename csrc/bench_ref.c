/* bench_ref: the plain C reference harvester of the benchmarks (not part of
 * the library).  benchmarks/ builds it into a shared object in a build
 * directory and calls it with ctypes; every function times itself with
 * CLOCK_MONOTONIC, so the ctypes call is not counted against C.
 *
 * Each harvester makes the same system calls as the matching softdirty back
 * end and produces the same ranges, written the way a C programmer would:
 *
 *   ref_harvest_sd_pagemap  read maps; per user VMA, pread 64 Ki entries at a
 *                           time and coalesce soft-dirty runs keyed by
 *                           present/swapped (softdirty back end, method "pagemap")
 *   ref_harvest_sd_scan     read maps; per user VMA, PAGEMAP_SCAN with
 *                           PAGE_IS_SOFT_DIRTY, 4096 regions per call (method "scan")
 *   ref_harvest_uffd        read maps; PAGEMAP_SCAN for the ranges not registered
 *                           WP-async; PAGEMAP_SCAN WP_MATCHING | PAGE_IS_WRITTEN over
 *                           the registered span (uffd back end, steady state)
 *
 * and the kernel's ceiling, the bare system calls with no maps and no decoding:
 *
 *   ref_ceiling_pread       pread the entries of the given spans, 64 Ki at a time
 *   ref_ceiling_scan        PAGEMAP_SCAN over the given spans with the given arguments
 *
 * All return 0 or -errno and fill struct ref_stats. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "pagemap_abi.h"

#define API __attribute__((visibility("default")))
#define PAGE (1ULL << SD_PAGE_SHIFT)
#define WINDOW 65536ULL             /* entries per pread, as the library */
#define VEC_LEN 4096ULL             /* regions per PAGEMAP_SCAN, as the library */
#define TASK_SIZE ((1ULL << 47) - PAGE) /* x86-64 4-level user range that pagemap covers */

struct ref_stats {
    uint64_t ns;       /* elapsed, CLOCK_MONOTONIC */
    uint64_t ranges;   /* ranges produced */
    uint64_t pages;    /* pages in them */
    uint64_t syscalls; /* pread / ioctl / read calls */
    uint64_t vmas;     /* VMAs looked at */
};

struct vma {
    uint64_t start, end;
};

struct ref {
    int dirfd, pagemap_fd;
    uint64_t *out; /* flat (start, end, key) triples */
    uint64_t out_len, out_cap;
    uint64_t floor; /* emit() merges only into ranges at or above this index (one VMA at a time) */
    uint64_t *entries;           /* one pread window */
    struct sd_page_region *vec;  /* one PAGEMAP_SCAN batch */
    struct vma *vmas;
    uint64_t nvmas, vmas_cap;
    char *maps;
    size_t maps_cap;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

API void ref_close(struct ref *r)
{
    if (!r)
        return;
    if (r->pagemap_fd >= 0)
        close(r->pagemap_fd);
    if (r->dirfd >= 0)
        close(r->dirfd);
    free(r->out);
    free(r->entries);
    free(r->vec);
    free(r->vmas);
    free(r->maps);
    free(r);
}

/* Like the library: a /proc/PID directory fd, pagemap opened once and kept. */
API struct ref *ref_open(int pid)
{
    char path[64];
    struct ref *r = calloc(1, sizeof *r);

    if (!r)
        return NULL;
    r->dirfd = r->pagemap_fd = -1;
    snprintf(path, sizeof path, "/proc/%d", pid);
    r->dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (r->dirfd >= 0)
        r->pagemap_fd = openat(r->dirfd, "pagemap", O_RDONLY | O_CLOEXEC);
    r->entries = malloc(WINDOW * 8);
    r->vec = malloc(VEC_LEN * sizeof *r->vec);
    if (r->pagemap_fd < 0 || !r->entries || !r->vec) {
        int err = errno ? errno : ENOMEM;
        ref_close(r);
        errno = err;
        return NULL;
    }
    return r;
}

static int emit(struct ref *r, uint64_t start, uint64_t end, uint64_t key)
{
    if (r->out_len > r->floor && r->out[3 * r->out_len - 2] == start && r->out[3 * r->out_len - 1] == key) {
        r->out[3 * r->out_len - 2] = end;
        return 0;
    }
    if (r->out_len == r->out_cap) {
        uint64_t cap = r->out_cap ? 2 * r->out_cap : 4096;
        uint64_t *p = realloc(r->out, cap * 3 * sizeof *p);
        if (!p)
            return -ENOMEM;
        r->out = p;
        r->out_cap = cap;
    }
    r->out[3 * r->out_len] = start;
    r->out[3 * r->out_len + 1] = end;
    r->out[3 * r->out_len + 2] = key;
    r->out_len++;
    return 0;
}

/* /proc/PID/maps, read whole in 64 KiB reads (as the library), parsed to the
 * user VMAs pagemap covers. */
static int read_maps(struct ref *r, struct ref_stats *st)
{
    size_t len = 0;
    char *line;
    int fd = openat(r->dirfd, "maps", O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -errno;
    for (;;) {
        ssize_t got;
        if (r->maps_cap - len < 65536 + 1) {
            size_t cap = r->maps_cap ? 2 * r->maps_cap : 1 << 17;
            char *p = realloc(r->maps, cap);
            if (!p) {
                close(fd);
                return -ENOMEM;
            }
            r->maps = p;
            r->maps_cap = cap;
        }
        got = read(fd, r->maps + len, 65536);
        st->syscalls++;
        if (got < 0) {
            int err = errno;
            close(fd);
            return -err;
        }
        if (got == 0)
            break;
        len += (size_t)got;
    }
    close(fd);
    r->maps[len] = 0;
    r->nvmas = 0;
    for (line = r->maps; *line;) {
        char *nl = strchr(line, '\n'), *p;
        uint64_t s = strtoull(line, &p, 16), e = strtoull(p + 1, NULL, 16);
        if (e <= TASK_SIZE) {
            if (r->nvmas == r->vmas_cap) {
                uint64_t cap = r->vmas_cap ? 2 * r->vmas_cap : 256;
                struct vma *v = realloc(r->vmas, cap * sizeof *v);
                if (!v)
                    return -ENOMEM;
                r->vmas = v;
                r->vmas_cap = cap;
            }
            r->vmas[r->nvmas].start = s;
            r->vmas[r->nvmas].end = e;
            r->nvmas++;
        }
        if (!nl)
            break;
        line = nl + 1;
    }
    st->vmas = r->nvmas;
    return 0;
}

/* Soft-dirty runs of [start, end) keyed by present|swap, appended to out. */
static int scan_vma_pagemap(struct ref *r, uint64_t start, uint64_t end, struct ref_stats *st, int *no_page)
{
    uint64_t addr = start, run_s = 0, run_e = 0, run_k = 0;
    int open_run = 0, err;

    while (addr < end) {
        uint64_t want = (end - addr) / PAGE, n, i;
        ssize_t got;
        if (want > WINDOW)
            want = WINDOW;
        got = pread(r->pagemap_fd, r->entries, want * 8, (off_t)(addr / PAGE * 8));
        st->syscalls++;
        if (got < 0)
            return -errno;
        if (got < 8)
            return -ESRCH; /* EOF inside the user range: the mm is gone */
        n = (uint64_t)got / 8;
        for (i = 0; i < n; i++) {
            uint64_t e = r->entries[i], a = addr + i * PAGE, k;
            if (!(e & SD_PM_SOFT_DIRTY))
                continue;
            k = e & (SD_PM_PRESENT | SD_PM_SWAP);
            if (open_run && a == run_e && k == run_k) {
                run_e += PAGE;
                continue;
            }
            if (open_run && (err = emit(r, run_s, run_e, run_k)))
                return err;
            open_run = 1;
            run_s = a;
            run_e = a + PAGE;
            run_k = k;
            if (!k)
                *no_page = 1;
        }
        addr += n * PAGE;
    }
    return open_run ? emit(r, run_s, run_e, run_k) : 0;
}

/* PAGEMAP_SCAN looped in batches of VEC_LEN regions; out gets every region.
 * Batches continue each other: emit() merges a region that touches the last. */
static int scan_loop(struct ref *r, uint64_t start, uint64_t end, uint64_t flags, uint64_t inverted, uint64_t mask,
                     uint64_t return_mask, int keep, struct ref_stats *st, int *no_page)
{
    uint64_t pos = start;

    while (pos < end) {
        struct sd_pm_scan_arg arg;
        long n, i;
        memset(&arg, 0, sizeof arg);
        arg.size = sizeof arg;
        arg.flags = flags;
        arg.start = pos;
        arg.end = end;
        arg.vec = (uintptr_t)r->vec;
        arg.vec_len = VEC_LEN;
        arg.category_inverted = inverted;
        arg.category_mask = mask;
        arg.return_mask = return_mask;
        n = ioctl(r->pagemap_fd, SD_PAGEMAP_SCAN, &arg);
        st->syscalls++;
        if (n < 0)
            return -errno;
        for (i = 0; keep && i < n; i++) {
            int err = emit(r, r->vec[i].start, r->vec[i].end, r->vec[i].categories);
            if (err)
                return err;
            if (no_page && !(r->vec[i].categories & return_mask))
                *no_page = 1;
        }
        if (arg.walk_end <= pos)
            break;
        pos = arg.walk_end;
    }
    return 0;
}

static void count(struct ref *r, uint64_t from, struct ref_stats *st)
{
    uint64_t i;
    for (i = from; i < r->out_len; i++)
        st->pages += (r->out[3 * i + 1] - r->out[3 * i]) / PAGE;
    st->ranges = r->out_len;
}

/* A VMA with a soft-dirty run that has no page behind it is VM_SOFTDIRTY:
 * reported whole (as the back end does, NEW_MAPPING). */
static int sd_harvest(struct ref *r, struct ref_stats *st, int use_scan)
{
    uint64_t t0 = now_ns(), v;
    int err;

    memset(st, 0, sizeof *st);
    r->out_len = r->floor = 0;
    if ((err = read_maps(r, st)))
        return err;
    for (v = 0; v < r->nvmas; v++) {
        uint64_t mark = r->out_len;
        int no_page = 0;
        r->floor = mark;
        if (use_scan)
            err = scan_loop(r, r->vmas[v].start, r->vmas[v].end, 0, 0, SD_PAGE_IS_SOFT_DIRTY,
                            SD_PAGE_IS_PRESENT | SD_PAGE_IS_SWAPPED, 1, st, &no_page);
        else
            err = scan_vma_pagemap(r, r->vmas[v].start, r->vmas[v].end, st, &no_page);
        if (err)
            return err;
        if (no_page) {
            r->out_len = mark;
            if ((err = emit(r, r->vmas[v].start, r->vmas[v].end, 0)))
                return err;
        }
    }
    count(r, 0, st);
    st->ns = now_ns() - t0;
    return 0;
}

API int64_t ref_harvest_sd_pagemap(struct ref *r, struct ref_stats *st) { return sd_harvest(r, st, 0); }

API int64_t ref_harvest_sd_scan(struct ref *r, struct ref_stats *st) { return sd_harvest(r, st, 1); }

/* Steady state of the uffd back end: nothing new to register.  The ranges
 * not registered WP-async come from one inverted PAGEMAP_SCAN; the harvest
 * walks from the first registered byte to the last (the kernel skips what
 * is not registered). */
API int64_t ref_harvest_uffd(struct ref *r, struct ref_stats *st)
{
    uint64_t t0 = now_ns(), lo = UINT64_MAX, hi = 0, v, u = 0, nun;

    int err;

    memset(st, 0, sizeof *st);
    r->out_len = r->floor = 0;
    if ((err = read_maps(r, st)))
        return err;
    if (r->nvmas == 0)
        return -ESRCH;
    if ((err = scan_loop(r, r->vmas[0].start, r->vmas[r->nvmas - 1].end, 0, SD_PAGE_IS_WPALLOWED,
                         SD_PAGE_IS_WPALLOWED, 0, 1, st, NULL)))
        return err;
    nun = r->out_len; /* unregistered ranges, sorted: the registered span is what they leave of the VMAs */
    for (v = 0; v < r->nvmas; v++) {
        uint64_t s = r->vmas[v].start, e = r->vmas[v].end, pos = s, k;
        while (u < nun && r->out[3 * u + 1] <= s)
            u++;
        k = u;
        while (pos < e) {
            uint64_t pe;
            if (k < nun && r->out[3 * k] <= pos) { /* unregistered at pos: skip it */
                if (r->out[3 * k + 1] > pos)
                    pos = r->out[3 * k + 1];
                k++;
                continue;
            }
            pe = (k < nun && r->out[3 * k] < e) ? r->out[3 * k] : e;
            if (pos < lo)
                lo = pos;
            if (pe > hi)
                hi = pe;
            pos = pe;
        }
    }
    r->out_len = 0;
    if (lo < hi && (err = scan_loop(r, lo, hi, SD_PM_SCAN_WP_MATCHING, 0, SD_PAGE_IS_WRITTEN,
                                    SD_PAGE_IS_WRITTEN | SD_PAGE_IS_PRESENT | SD_PAGE_IS_SWAPPED | SD_PAGE_IS_HUGE,
                                    1, st, NULL)))
        return err;
    count(r, 0, st);
    st->ns = now_ns() - t0;
    return 0;
}

/* spans: flat (start, end) pairs. */
API int64_t ref_ceiling_pread(struct ref *r, const uint64_t *spans, uint64_t nspans, struct ref_stats *st)
{
    uint64_t t0 = now_ns(), i;

    memset(st, 0, sizeof *st);
    for (i = 0; i < nspans; i++) {
        uint64_t addr = spans[2 * i], end = spans[2 * i + 1];
        while (addr < end) {
            uint64_t want = (end - addr) / PAGE;
            ssize_t got;
            if (want > WINDOW)
                want = WINDOW;
            got = pread(r->pagemap_fd, r->entries, want * 8, (off_t)(addr / PAGE * 8));
            st->syscalls++;
            if (got < 0)
                return -errno;
            if (got < 8)
                return -ESRCH;
            addr += (uint64_t)got / 8 * PAGE;
            st->pages += (uint64_t)got / 8;
        }
    }
    st->vmas = nspans;
    st->ns = now_ns() - t0;
    return 0;
}

API int64_t ref_ceiling_scan(struct ref *r, const uint64_t *spans, uint64_t nspans, uint64_t flags, uint64_t inverted,
                             uint64_t mask, uint64_t return_mask, struct ref_stats *st)
{
    uint64_t t0 = now_ns(), i;
    int err;

    memset(st, 0, sizeof *st);
    r->out_len = 0;
    for (i = 0; i < nspans; i++) {
        /* keep = 0: the regions stay in the kernel's output vector, never looked at */
        if ((err = scan_loop(r, spans[2 * i], spans[2 * i + 1], flags, inverted, mask, return_mask, 0, st, NULL)))
            return err;
    }
    st->vmas = nspans;
    st->ns = now_ns() - t0;
    return 0;
}
