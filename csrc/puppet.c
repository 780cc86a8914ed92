/*
 * puppet: a real process that performs memory operations on command, so that
 * tests can hold the emulator (softdirty.emulator) against the real kernel.
 *
 *   puppet ARENA_HEX FILE [CPU]
 *
 * All addresses are offsets into a fixed arena at ARENA_HEX.  FILE is opened
 * read-write for file mappings.  One command per line on stdin, one reply per
 * line on stdout:  "OK <value>", "ERR <errno>", "SEGV", "BUS".
 *
 *   mmap OFF LEN PROT FLAGS FILE(0|1) FOFF   (MAP_FIXED is the caller's business)
 *   munmap OFF LEN | mprotect OFF LEN PROT | madvise OFF LEN ADVICE
 *   mremap OFF OLDLEN NEWLEN FLAGS NEWOFF
 *   read OFF | write OFF VALUE
 *   uffd_api FEATURES | uffd_reg OFF LEN MODE | uffd_unreg OFF LEN
 *   uffd_wp OFF LEN MODE | uffd_close
 *   fork            child starts; "c CMD..." sends CMD to it; "c exit" ends it
 *   pid | quit
 *
 * Numbers are parsed with strtoull(..., 0).  Not part of the library build:
 * the tests compile it with gcc into a temporary directory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static uintptr_t arena;
static int file_fd = -1;
static int uffd = -1;
static sigjmp_buf jump;
static volatile sig_atomic_t fault_sig;
static pid_t child = -1;
static FILE *to_child, *from_child;

static void on_fault(int sig)
{
    fault_sig = sig;
    siglongjmp(jump, 1);
}

static unsigned long long num(char **p)
{
    char *tok = strtok_r(NULL, " \t\n", p);
    if (!tok)
        return 0;
    return strtoull(tok, NULL, 0);
}

static void reply_ret(FILE *out, long ret)
{
    if (ret < 0)
        fprintf(out, "ERR %d\n", errno);
    else
        fprintf(out, "OK %ld\n", ret);
}

static void mem_access(FILE *out, uintptr_t addr, int write, unsigned value)
{
    fault_sig = 0;
    if (sigsetjmp(jump, 1)) {
        fprintf(out, "%s\n", fault_sig == SIGBUS ? "BUS" : "SEGV");
        return;
    }
    if (write) {
        *(volatile unsigned char *)addr = (unsigned char)value;
        fprintf(out, "OK 0\n");
    } else {
        unsigned v = *(volatile unsigned char *)addr;
        fprintf(out, "OK %u\n", v);
    }
}

static void serve(FILE *in, FILE *out);

static void do_fork(FILE *out)
{
    int cmd[2], rsp[2];
    if (child > 0) {
        errno = EBUSY;
        reply_ret(out, -1);
        return;
    }
    if (pipe(cmd) || pipe(rsp)) {
        reply_ret(out, -1);
        return;
    }
    fflush(out);
    pid_t pid = fork();
    if (pid < 0) {
        reply_ret(out, -1);
        return;
    }
    if (pid == 0) {
        close(cmd[1]);
        close(rsp[0]);
        FILE *cin = fdopen(cmd[0], "r"), *cout = fdopen(rsp[1], "w");
        serve(cin, cout);
        _exit(0);
    }
    close(cmd[0]);
    close(rsp[1]);
    to_child = fdopen(cmd[1], "w");
    from_child = fdopen(rsp[0], "r");
    child = pid;
    fprintf(out, "OK %d\n", pid);
}

static void relay(FILE *out, const char *line)
{
    char buf[512];
    if (child <= 0) {
        errno = ESRCH;
        reply_ret(out, -1);
        return;
    }
    fputs(line, to_child);
    fflush(to_child);
    if (!fgets(buf, sizeof buf, from_child)) {
        fprintf(out, "ERR %d\n", ESRCH);
        return;
    }
    fputs(buf, out);
    if (!strncmp(line, "exit", 4)) {
        waitpid(child, NULL, 0);
        fclose(to_child);
        fclose(from_child);
        child = -1;
    }
}

static void serve(FILE *in, FILE *out)
{
    char line[512];
    while (fgets(line, sizeof line, in)) {
        char copy[512];
        char *save;
        strcpy(copy, line);
        char *cmd = strtok_r(line, " \t\n", &save);
        if (!cmd)
            continue;
        errno = 0;
        if (!strcmp(cmd, "mmap")) {
            uintptr_t off = num(&save);
            size_t len = num(&save);
            int prot = num(&save), flags = num(&save), usefile = num(&save);
            off_t foff = num(&save);
            void *p = mmap((void *)(arena + off), len, prot, flags, usefile ? file_fd : -1, foff);
            if (p == MAP_FAILED)
                reply_ret(out, -1);
            else
                fprintf(out, "OK %ld\n", (long)((uintptr_t)p - arena));
        } else if (!strcmp(cmd, "munmap")) {
            uintptr_t off = num(&save);
            size_t len = num(&save);
            reply_ret(out, munmap((void *)(arena + off), len));
        } else if (!strcmp(cmd, "mprotect")) {
            uintptr_t off = num(&save);
            size_t len = num(&save);
            int prot = num(&save);
            reply_ret(out, mprotect((void *)(arena + off), len, prot));
        } else if (!strcmp(cmd, "madvise")) {
            uintptr_t off = num(&save);
            size_t len = num(&save);
            int adv = num(&save);
            reply_ret(out, madvise((void *)(arena + off), len, adv));
        } else if (!strcmp(cmd, "mremap")) {
            uintptr_t off = num(&save);
            size_t oldlen = num(&save), newlen = num(&save);
            int flags = num(&save);
            uintptr_t newoff = num(&save);
            void *p = mremap((void *)(arena + off), oldlen, newlen, flags, (void *)(arena + newoff));
            if (p == MAP_FAILED)
                reply_ret(out, -1);
            else
                fprintf(out, "OK %ld\n", (long)((uintptr_t)p - arena));
        } else if (!strcmp(cmd, "read")) {
            uintptr_t off = num(&save);
            mem_access(out, arena + off, 0, 0);
        } else if (!strcmp(cmd, "write")) {
            uintptr_t off = num(&save);
            unsigned v = num(&save);
            mem_access(out, arena + off, 1, v);
        } else if (!strcmp(cmd, "uffd_api")) {
            struct uffdio_api api = {.api = UFFD_API, .features = num(&save)};
            if (uffd < 0)
                uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
            if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api))
                reply_ret(out, -1);
            else
                fprintf(out, "OK %llu\n", (unsigned long long)api.features);
        } else if (!strcmp(cmd, "uffd_reg")) {
            struct uffdio_register reg = {0};
            reg.range.start = arena + num(&save);
            reg.range.len = num(&save);
            reg.mode = num(&save);
            if (ioctl(uffd, UFFDIO_REGISTER, &reg))
                reply_ret(out, -1);
            else
                fprintf(out, "OK %llu\n", (unsigned long long)reg.ioctls);
        } else if (!strcmp(cmd, "uffd_unreg")) {
            struct uffdio_range r;
            r.start = arena + num(&save);
            r.len = num(&save);
            reply_ret(out, ioctl(uffd, UFFDIO_UNREGISTER, &r));
        } else if (!strcmp(cmd, "uffd_wp")) {
            struct uffdio_writeprotect wp = {0};
            wp.range.start = arena + num(&save);
            wp.range.len = num(&save);
            wp.mode = num(&save);
            reply_ret(out, ioctl(uffd, UFFDIO_WRITEPROTECT, &wp));
        } else if (!strcmp(cmd, "uffd_close")) {
            int r = uffd >= 0 ? close(uffd) : 0;
            uffd = -1;
            reply_ret(out, r);
        } else if (!strcmp(cmd, "fork")) {
            do_fork(out);
        } else if (!strcmp(cmd, "c")) {
            relay(out, copy + 2);
        } else if (!strcmp(cmd, "pid")) {
            fprintf(out, "OK %d\n", getpid());
        } else if (!strcmp(cmd, "exit") || !strcmp(cmd, "quit")) {
            fprintf(out, "OK 0\n");
            fflush(out);
            if (child > 0) {
                FILE *devnull = fopen("/dev/null", "w");
                relay(devnull ? devnull : stderr, "exit\n");
                if (devnull)
                    fclose(devnull);
            }
            return;
        } else {
            fprintf(out, "ERR %d\n", EINVAL);
        }
        fflush(out);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s ARENA_HEX FILE [CPU]\n", argv[0]);
        return 2;
    }
    arena = strtoull(argv[1], NULL, 16);
    file_fd = open(argv[2], O_RDWR | O_CLOEXEC);
    if (file_fd < 0) {
        perror(argv[2]);
        return 1;
    }
    if (argc > 3) {
        /* One CPU: faults and madvise share the per-CPU LRU batches, so
         * folio reference counts (reuse vs copy, reclaim) are deterministic. */
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(argv[3]), &set);
        sched_setaffinity(0, sizeof set, &set);
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_fault;
    sa.sa_flags = SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY %d\n", getpid());
    fflush(stdout);
    serve(stdin, stdout);
    return 0;
}
