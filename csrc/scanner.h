/* softdirty C scanner: the public ABI, loaded with ctypes by softdirty/scanner.py.
 *
 * Every struct is made of u64 fields only so that the ctypes mirror is trivial.
 * Bump SD_ABI_VERSION whenever a prototype or a struct changes: the Python side
 * refuses a library whose version differs. */
#ifndef SOFTDIRTY_SCANNER_H
#define SOFTDIRTY_SCANNER_H

#include <stdint.h>

#define SD_ABI_VERSION 2

/* An open run [run_start, run_end) of pages sharing run_key, carried across
 * calls so that windows coalesce seamlessly, plus counters.  Zero it to start. */
struct sd_scan_state {
    uint64_t run_start;
    uint64_t run_end;
    uint64_t run_key;
    uint64_t run_open;       /* 1 while a run is open */
    uint64_t entries_seen;   /* entries consumed */
    uint64_t pages_matched;  /* consumed entries that matched */
    uint64_t ranges_emitted; /* triples written to out, in total */
    uint64_t out_len;        /* triples currently in out; the caller drains and resets it */
};

/* sd_scan_fd() outcome. */
#define SD_SCAN_DONE 0     /* reached end; everything flushed */
#define SD_SCAN_OUT_FULL 1 /* out is full: drain it and call again from stopped_at */
#define SD_SCAN_EOF 2      /* pread returned 0 before end: end of the address space or the mm is gone */

struct sd_fd_result {
    uint64_t stopped_at; /* DONE: end; OUT_FULL: first address not consumed; EOF: where the data ended */
    uint64_t status;     /* SD_SCAN_* */
    uint64_t reads;      /* pread calls made */
};

/* Tests only: route sd_pagemap_scan_once() through hook (NULL = the real
 * ioctl) so that the C loop can be driven by a model kernel.  hook returns
 * the number of regions or -errno.  Not thread-safe; never set it in production. */
struct sd_pm_scan_arg;
typedef int64_t (*sd_ioctl_hook_t)(int fd, struct sd_pm_scan_arg *arg);
void sd_test_set_ioctl_hook(sd_ioctl_hook_t hook);

int64_t sd_abi_version(void);
const char *sd_build_id(void);
uint64_t sd_pagemap_scan_cmd(void);

int64_t sd_scan_buffer(const void *entries, uint64_t n, uint64_t start_addr, uint64_t match_mask,
                       uint64_t match_value, uint64_t return_mask, uint64_t *out, uint64_t out_cap,
                       struct sd_scan_state *st);
int64_t sd_scan_flush(struct sd_scan_state *st, uint64_t *out, uint64_t out_cap);
int64_t sd_scan_fd(int fd, uint64_t start, uint64_t end, uint64_t match_mask, uint64_t match_value,
                   uint64_t return_mask, uint64_t window_pages, uint64_t *out, uint64_t out_cap,
                   struct sd_scan_state *st, struct sd_fd_result *res);
int64_t sd_pagemap_scan_once(int fd, uint64_t start, uint64_t end, uint64_t flags, uint64_t inverted,
                             uint64_t mask, uint64_t anyof, uint64_t return_mask, uint64_t max_pages,
                             uint64_t *vec, uint64_t vec_len, uint64_t *walk_end);
int64_t sd_pagemap_scan(int fd, uint64_t start, uint64_t end, uint64_t flags, uint64_t inverted,
                        uint64_t mask, uint64_t anyof, uint64_t return_mask, uint64_t max_pages,
                        uint64_t batch, uint64_t *out, uint64_t out_cap, uint64_t *walk_end,
                        uint64_t *calls);
int64_t sd_normalize(uint64_t *triples, uint64_t n);

#endif
