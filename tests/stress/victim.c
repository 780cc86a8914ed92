/* A short-lived target: writes its pages until it exits by itself after argv[1] microseconds.
 * argv[1] == -1: run until killed; -2: write every page once, then sleep until killed.
 * argv[2] == "nodump": PR_SET_DUMPABLE 0 first.  Prints "ready" once its memory is set up. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000L + ts.tv_nsec / 1000;
}

int main(int argc, char **argv) {
    long life = argc > 1 ? atol(argv[1]) : 0;
    if (argc > 2 && strcmp(argv[2], "nodump") == 0) prctl(PR_SET_DUMPABLE, 0);
    volatile char *p = mmap(0, 64 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 2;
    for (int i = 0; i < 64; i++) p[i * 4096] = 1;
    printf("ready %lu\n", (unsigned long)p);
    fflush(stdout);
    if (life == -2)
        for (;;) pause();
    long end = now_us() + life;
    for (unsigned long i = 0;; i++) {
        p[(i % 64) * 4096] += 1;
        if ((i & 1023) == 0) {
            if (life >= 0 && now_us() >= end) break;
            if (life < 0) usleep(1000);
        }
    }
    return 0;
}
