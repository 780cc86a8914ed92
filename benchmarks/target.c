/* bench_target: the process the benchmarks track.  A plain C program, so
 * that what we measure is tracking cost, not an interpreter's.
 *
 * It reads one command per line on stdin and answers one line on stdout
 * ("ok ..." or "err ...").  Regions are numbered from 0 in mapping order.
 *
 *   map BYTES                  -> ok ID ADDR   private anonymous, MAP_NORESERVE, MADV_NOHUGEPAGE
 *   unmap ID                   -> ok
 *   touch ID FIRST STRIDE COUNT MODE
 *                              -> ok          pages FIRST, FIRST+STRIDE, ... (COUNT of them):
 *                                             MODE w writes a byte, r reads one (maps the zero page:
 *                                             page tables and present PTEs at no memory cost)
 *   runs ID STRIDE RUNLEN COUNT SEED
 *                              -> ok PAGES     COUNT runs of RUNLEN written pages, one run every
 *                                             STRIDE pages, starting at page SEED % STRIDE
 *   run ID SECONDS WORDS       -> ok WRITES NS write-heavy loop: WORDS 8-byte words (1..512) into
 *                                             every page in turn
 *   rate ID PAGES_PER_S SECONDS
 *                              -> ok WRITES NS paced writer, one page per write, pages in a fixed
 *                                             odd-stride order (distinct until it wraps)
 *   quit
 *
 * SIGUSR1 ends a run or rate loop early (it then answers as usual).
 *
 * MADV_NOHUGEPAGE keeps every measurement at 4 KiB granularity (a THP would
 * turn thousands of entries into one PMD-level answer). */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096ULL
#define MAX_REGIONS 64

struct region {
    unsigned char *base;
    uint64_t bytes;
};

static struct region regions[MAX_REGIONS];
static int nregions;
static volatile uint64_t sink;
static volatile sig_atomic_t stop_flag; /* SIGUSR1 ends a run or rate loop early */

static void on_usr1(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static struct region *get(long id)
{
    if (id < 0 || id >= nregions || !regions[id].base)
        return NULL;
    return &regions[id];
}

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void cmd_map(uint64_t bytes)
{
    void *p;

    if (nregions >= MAX_REGIONS || bytes == 0 || bytes % PAGE) {
        reply("err bad map");
        return;
    }
    p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        reply("err mmap %s", strerror(errno));
        return;
    }
    madvise(p, bytes, MADV_NOHUGEPAGE);
    regions[nregions].base = p;
    regions[nregions].bytes = bytes;
    reply("ok %d %" PRIu64, nregions, (uint64_t)(uintptr_t)p);
    nregions++;
}

static void cmd_touch(struct region *r, uint64_t first, uint64_t stride, uint64_t count, char mode)
{
    uint64_t pages = r->bytes / PAGE, i, acc = 0;

    if (stride == 0 || (count && first + (count - 1) * stride >= pages)) {
        reply("err touch out of range");
        return;
    }
    for (i = 0; i < count; i++) {
        unsigned char *p = r->base + (first + i * stride) * PAGE;
        if (mode == 'w')
            *(volatile unsigned char *)p = (unsigned char)(i | 1);
        else
            acc += *(volatile unsigned char *)p;
    }
    sink = acc;
    reply("ok");
}

static void cmd_runs(struct region *r, uint64_t stride, uint64_t runlen, uint64_t count, uint64_t seed)
{
    uint64_t pages = r->bytes / PAGE, first, i, j, n = 0;

    if (stride == 0 || runlen == 0 || runlen > stride) {
        reply("err bad runs");
        return;
    }
    first = seed % (stride - runlen + 1);
    if (count && first + (count - 1) * stride + runlen > pages) {
        reply("err runs out of range");
        return;
    }
    for (i = 0; i < count; i++)
        for (j = 0; j < runlen; j++) {
            volatile uint64_t *p = (volatile uint64_t *)(r->base + (first + i * stride + j) * PAGE);
            *p = *p + 1;
            n++;
        }
    reply("ok %" PRIu64, n);
}

static void cmd_run(struct region *r, double seconds, uint64_t words)
{
    uint64_t pages = r->bytes / PAGE, writes = 0, p = 0, t0 = now_ns(), t, end;

    if (words == 0 || words > PAGE / 8) {
        reply("err bad words per page");
        return;
    }
    end = t0 + (uint64_t)(seconds * 1e9);
    for (;;) {
        uint64_t k;
        for (k = 0; k < 4096; k += words) {
            volatile uint64_t *w = (volatile uint64_t *)(r->base + p * PAGE);
            uint64_t j;
            for (j = 0; j < words; j++)
                w[j] = writes + j;
            writes += words;
            if (++p == pages)
                p = 0;
        }
        t = now_ns();
        if (t >= end || stop_flag)
            break;
    }
    stop_flag = 0;
    reply("ok %" PRIu64 " %" PRIu64, writes, t - t0);
}

/* Paced: at time t we should have made rate * t writes.  After a pause
 * (frozen, descheduled) the schedule restarts instead of catching up with a
 * burst: a frozen writer does not owe the writes it could not make. */
static void cmd_rate(struct region *r, double rate, double seconds)
{
    uint64_t pages = r->bytes / PAGE, writes = 0, base_writes = 0, i = 0;
    uint64_t step = (pages / 2 + 1) | 1; /* odd: with a power-of-two page count, visits every page once per wrap */
    uint64_t t0 = now_ns(), base = t0, end = t0 + (uint64_t)(seconds * 1e9), t;

    if (rate <= 0) {
        reply("err bad rate");
        return;
    }
    for (;;) {
        double due;
        t = now_ns();
        if (t >= end || stop_flag)
            break;
        due = (double)(t - base) * 1e-9 * rate;
        if (due - (double)(writes - base_writes) > rate * 0.01 + 64) { /* > 10 ms behind: we were paused */
            base = t;
            base_writes = writes;
            continue;
        }
        while ((double)(writes - base_writes) < due) {
            volatile uint64_t *w = (volatile uint64_t *)(r->base + (i % pages) * PAGE);
            *w = writes;
            writes++;
            i += step;
        }
    }
    stop_flag = 0;
    reply("ok %" PRIu64 " %" PRIu64, writes, t - t0);
}

int main(void)
{
    char line[512], cmd[32];
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART; /* fgets must not see EINTR */
    sigaction(SIGUSR1, &sa, NULL);
    setvbuf(stdout, NULL, _IOFBF, 1 << 12);
    reply("ready %d", (int)getpid());
    while (fgets(line, sizeof line, stdin)) {
        unsigned long long a = 0, b = 0, c = 0, d = 0;
        double x = 0, y = 0;
        long id = -1;
        char mode = 0;
        struct region *r;

        if (sscanf(line, "%31s", cmd) != 1)
            continue;
        if (!strcmp(cmd, "quit")) {
            reply("ok");
            return 0;
        } else if (!strcmp(cmd, "map") && sscanf(line, "%*s %llu", &a) == 1) {
            cmd_map(a);
        } else if (!strcmp(cmd, "unmap") && sscanf(line, "%*s %ld", &id) == 1 && (r = get(id))) {
            munmap(r->base, r->bytes);
            r->base = NULL;
            reply("ok");
        } else if (!strcmp(cmd, "touch") && sscanf(line, "%*s %ld %llu %llu %llu %c", &id, &a, &b, &c, &mode) == 5 &&
                   (r = get(id))) {
            cmd_touch(r, a, b, c, mode);
        } else if (!strcmp(cmd, "runs") && sscanf(line, "%*s %ld %llu %llu %llu %llu", &id, &a, &b, &c, &d) == 5 &&
                   (r = get(id))) {
            cmd_runs(r, a, b, c, d);
        } else if (!strcmp(cmd, "run") && sscanf(line, "%*s %ld %lf %llu", &id, &x, &a) == 3 && (r = get(id))) {
            cmd_run(r, x, a);
        } else if (!strcmp(cmd, "rate") && sscanf(line, "%*s %ld %lf %lf", &id, &x, &y) == 3 && (r = get(id))) {
            cmd_rate(r, x, y);
        } else {
            reply("err bad command: %s", cmd);
        }
    }
    return 0;
}
