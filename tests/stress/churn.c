/* A target that churns its address space and logs every step to stdout (binary records).
 *
 * Slots of 1..16 pages are mmap'd, written, munmap'd, mremap'd (moved or grown) and
 * mprotect'd at random.  Each store is logged AFTER it happened, so a record the reader
 * has seen is a write that is already in memory.  Starts when a byte arrives on stdin;
 * stops after argv[1] operations or when stdout closes.  argv[2]: random seed; argv[3]: "nomremap".
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/mman.h>
#include <unistd.h>

enum { OP_WRITE = 0, OP_UNMAP = 1, OP_MAP = 2, OP_RO = 3, OP_RW = 4 };
struct rec { uint32_t seq, op; uint64_t addr, len; };
#define SLOTS 8
static struct { char *p; size_t len; int ro; } slot[SLOTS];
static uint32_t seq;

static void out(uint32_t op, void *addr, size_t len) {
    struct rec r = { seq++, op, (uint64_t)(uintptr_t)addr, len };
    if (write(1, &r, sizeof r) != sizeof r) _exit(0);
}

static void map_slot(int i) {
    size_t len = (1 + rand() % 16) * 4096;
    char *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) _exit(3);
    slot[i].p = p; slot[i].len = len; slot[i].ro = 0;
    out(OP_MAP, p, len);
}

int main(int argc, char **argv) {
    long ops = argc > 1 ? atol(argv[1]) : 100000;
    srand(argc > 2 ? atoi(argv[2]) : 1);
    int no_mremap = argc > 3 && argv[3][0] == 'n'; /* argv[3] "nomremap": mmap/munmap/mprotect only */
    for (int i = 0; i < SLOTS; i++) map_slot(i);
    char go;
    if (read(0, &go, 1) != 1) return 0;
    for (long n = 0; n < ops; n++) {
        int i = rand() % SLOTS, r = rand() % 100;
        if ((n & 15) == 0) usleep(20); /* let harvests interleave with the churn */
        if (r < 80) {
            if (slot[i].ro) continue;
            size_t page = rand() % (slot[i].len / 4096);
            volatile char *a = slot[i].p + page * 4096 + (rand() % 4096);
            *a += 1;
            out(OP_WRITE, (void *)a, 1);
        } else if (r < 85) {
            munmap(slot[i].p, slot[i].len);
            out(OP_UNMAP, slot[i].p, slot[i].len);
            map_slot(i);
        } else if (r < 90) {
            if (no_mremap) continue;
            /* grow, moving if need be: the old range is gone, the new one is a mapping */
            size_t len = slot[i].len + (1 + rand() % 4) * 4096;
            char *p = mremap(slot[i].p, slot[i].len, len, MREMAP_MAYMOVE);
            if (p == MAP_FAILED) {
                /* tell why: the maps around the slot (a tracker must not split our mappings) */
                char cmd[128];
                perror("churn: mremap");
                fprintf(stderr, "slot %p len %zx\n", slot[i].p, slot[i].len);
                snprintf(cmd, sizeof cmd, "cat /proc/%d/maps >&2", (int)getpid());
                if (system(cmd)) {}
                _exit(4);
            }
            out(OP_UNMAP, slot[i].p, slot[i].len);
            slot[i].p = p; slot[i].len = len;
            out(OP_MAP, p, len);
            if (slot[i].ro) mprotect(p, len, PROT_READ);
        } else if (r < 95) {
            mprotect(slot[i].p, slot[i].len, PROT_READ);
            slot[i].ro = 1;
            out(OP_RO, slot[i].p, slot[i].len);
        } else {
            mprotect(slot[i].p, slot[i].len, PROT_READ | PROT_WRITE);
            slot[i].ro = 0;
            out(OP_RW, slot[i].p, slot[i].len);
        }
    }
    return 0;
}
