/* A target process for the uffd back-end tests (tests/test_uffd*.py).
 *
 *   uffd_target ctl                 commands on stdin, one answer line each (see do_ctl)
 *   uffd_target read                blocks in read(0): prints "read <ret> <errno> <data>"
 *   uffd_target nanosleep MS        prints "nanosleep <ret> <errno> <elapsed_ns>"
 *   uffd_target futex               main thread in FUTEX_WAIT, woken by a thread after a stdin line
 *   uffd_target futex-timeout MS    FUTEX_WAIT with a timeout: expect ETIMEDOUT after >= MS
 *   uffd_target spin                never makes a system call after "ready"
 *   uffd_target writer NPAGES LOG RATE HUGE   the logging writer (see do_writer)
 *   uffd_target seize PID           PTRACE_SEIZE PID, then sleep (makes PID "already traced")
 *   uffd_target seccomp-kill|seccomp-errno|seccomp-allow   install a filter, then ctl
 *
 * Everything prints "ready ..." once set up, and flushes every line.
 */
#define _GNU_SOURCE
#include <alloca.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define HUGE (2UL << 20)

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* -- blocking calls ---------------------------------------------------------------- */

static int do_read(void)
{
    char buf[64];
    say("ready %d", getpid());
    ssize_t n = read(0, buf, sizeof buf);
    int e = n < 0 ? errno : 0;
    while (n > 0 && (buf[n - 1] == '\n'))
        n--;
    say("read %zd %d %.*s", n, e, (int)(n > 0 ? n : 0), buf);
    return 0;
}

static int do_nanosleep(long ms)
{
    struct timespec req = {ms / 1000, (ms % 1000) * 1000000L}, rem = {0, 0};
    say("ready %d", getpid());
    uint64_t t0 = now_ns();
    int r = nanosleep(&req, &rem);
    int e = r ? errno : 0;
    say("nanosleep %d %d %llu", r, e, (unsigned long long)(now_ns() - t0));
    return 0;
}

static uint32_t futex_word;

static void *waker(void *arg)
{
    char buf[16];
    (void)arg;
    if (read(0, buf, sizeof buf) < 0)
        return NULL;
    __atomic_store_n(&futex_word, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &futex_word, FUTEX_WAKE, 1, NULL, NULL, 0);
    return NULL;
}

static int do_futex(long timeout_ms)
{
    pthread_t t;
    if (timeout_ms < 0 && pthread_create(&t, NULL, waker, NULL))
        return 1;
    say("ready %d", getpid());
    struct timespec ts = {timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};
    uint64_t t0 = now_ns();
    long r = syscall(SYS_futex, &futex_word, FUTEX_WAIT, 0, timeout_ms < 0 ? NULL : &ts, NULL, 0);
    int e = r ? errno : 0;
    say("futex %ld %d %llu %u", r, e, (unsigned long long)(now_ns() - t0),
        __atomic_load_n(&futex_word, __ATOMIC_SEQ_CST));
    return 0;
}

static volatile uint64_t spin_counter;

static __attribute__((noreturn)) int do_spin(void)
{
    say("ready %d %p", getpid(), (void *)&spin_counter);
    for (;;)
        spin_counter++;
}

/* -- the logging writer ----------------------------------------------------------
 * LOG is a file mapped shared with the test: a header of u64s
 *   [0] count (release-stored after each record)  [1] buffer base  [2] npages
 *   [3] stop (set by the test)  [4] done (set by us when we stopped)  [5] capacity
 * then one u64 per write: the address written.  Writes start after a line on
 * stdin, go to pseudo-random pages at RATE writes per millisecond, and each is
 * logged after the store, so "logged" implies "written".
 */
struct loghdr {
    uint64_t count, base, npages, stop, done, capacity, pad[2];
};

static int do_writer(unsigned long npages, const char *logpath, unsigned long rate, int huge)
{
    FILE *f = fopen(logpath, "r+");
    if (!f)
        return 2;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    struct loghdr *h = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fileno(f), 0);
    if (h == MAP_FAILED)
        return 3;
    uint64_t *log = (uint64_t *)(h + 1);
    uint64_t cap = (size - sizeof *h) / 8;
    size_t len = npages * PAGE;
    char *raw = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return 4;
    char *base = (char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
    if (huge) {
        madvise(base, len, MADV_HUGEPAGE);
        memset(base, 1, len); /* THPs exist before the tracker arms them */
    }
    h->base = (uint64_t)base;
    h->npages = npages;
    h->capacity = cap;
    say("ready %d %p", getpid(), (void *)base);
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        return 5;
    uint64_t x = 88172645463325252ULL, t0 = now_ns(), k = 0;
    while (k < cap && !__atomic_load_n(&h->stop, __ATOMIC_ACQUIRE)) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t *p = (uint64_t *)(base + (x % npages) * PAGE + (k % 512) * 8);
        *(volatile uint64_t *)p = k + 1;
        log[k] = (uint64_t)p;
        __atomic_store_n(&h->count, k + 1, __ATOMIC_RELEASE);
        k++;
        while (rate && (now_ns() - t0) * rate < k * 1000000ULL && !h->stop)
            ; /* pace: RATE writes per ms */
    }
    __atomic_store_n(&h->done, 1, __ATOMIC_RELEASE);
    for (;;)
        pause();
}

/* -- seccomp ----------------------------------------------------------------------- */

static int install_filter(unsigned int action_for_uffd)
{
    struct sock_filter prog[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0xC000003E, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_userfaultfd, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, action_for_uffd),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog fprog = {sizeof prog / sizeof prog[0], prog};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog);
}

/* -- ctl: one command per line ------------------------------------------------------
 *   map N            anonymous RW mapping of N pages        -> "ok ADDR"
 *   hmap N           2 MiB-aligned, MADV_HUGEPAGE, N pages  -> "ok ADDR"
 *   write ADDR N     store one byte in each of N pages      -> "ok"
 *   touch ADDR N     load one byte of each of N pages       -> "ok SUM"
 *   unmap ADDR N / dontneed ADDR N / protect ADDR N PROT    -> "ok" or "err ERRNO"
 *   remap ADDR N NEW move N pages to NEW (MREMAP_FIXED)     -> "ok ADDR"
 *   fork             a child that sleeps; prints its pid    -> "ok PID"
 *   sbrk N           grow the heap by N pages               -> "ok OLD_BREAK"
 *   stack N          write N pages below the stack pointer  -> "ok LOWEST_ADDR"
 *   exec             execv ourselves in ctl mode (answers "ready" again)
 *   signals          how many SIGRTMIN we handled            -> "ok COUNT"
 *   getpid / exit
 */
static volatile sig_atomic_t rt_count;

static void on_rt(int sig)
{
    (void)sig;
    rt_count++;
}

static __attribute__((noinline)) unsigned long deep_stack(unsigned long n)
{
    volatile char *p = alloca(n * PAGE);
    for (unsigned long i = n; i-- > 0;) /* top down: the kernel grows the stack a page at a time */
        p[i * PAGE] = 1;
    return (unsigned long)p & ~(PAGE - 1);
}

static int do_ctl(const char *self)
{
    char line[256], cmd[32];
    unsigned long a, n, b;
    int prot;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_rt;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGRTMIN, &sa, NULL);
    say("ready %d", getpid());
    while (fgets(line, sizeof line, stdin)) {
        a = n = b = 0;
        prot = 0;
        if (sscanf(line, "%31s %lx %lu %lx", cmd, &a, &n, &b) < 1)
            continue;
        if (!strcmp(cmd, "map") || !strcmp(cmd, "hmap")) {
            int huge = cmd[0] == 'h';
            n = a; /* "map N": N was parsed as hex into a */
            sscanf(line, "%*s %lu", &n);
            size_t len = n * PAGE;
            char *p = mmap(NULL, len + (huge ? HUGE : 0), PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) {
                say("err %d", errno);
                continue;
            }
            if (huge) {
                p = (char *)(((uintptr_t)p + HUGE - 1) & ~(HUGE - 1));
                madvise(p, len, MADV_HUGEPAGE);
            }
            say("ok %lx", (unsigned long)p);
        } else if (!strcmp(cmd, "write")) {
            for (unsigned long i = 0; i < n; i++)
                ((volatile char *)a)[i * PAGE] += 1;
            say("ok");
        } else if (!strcmp(cmd, "touch")) {
            unsigned long sum = 0;
            for (unsigned long i = 0; i < n; i++)
                sum += ((volatile char *)a)[i * PAGE];
            say("ok %lu", sum);
        } else if (!strcmp(cmd, "unmap")) {
            say(munmap((void *)a, n * PAGE) ? "err %d" : "ok", errno);
        } else if (!strcmp(cmd, "dontneed")) {
            say(madvise((void *)a, n * PAGE, MADV_DONTNEED) ? "err %d" : "ok", errno);
        } else if (!strcmp(cmd, "protect")) {
            sscanf(line, "%*s %*x %*u %d", &prot);
            say(mprotect((void *)a, n * PAGE, prot) ? "err %d" : "ok", errno);
        } else if (!strcmp(cmd, "remap")) {
            void *p = mremap((void *)a, n * PAGE, n * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)b);
            if (p == MAP_FAILED)
                say("err %d", errno);
            else
                say("ok %lx", (unsigned long)p);
        } else if (!strcmp(cmd, "sbrk")) {
            sscanf(line, "%*s %lu", &n);
            void *old = sbrk((intptr_t)(n * PAGE));
            if (old == (void *)-1)
                say("err %d", errno);
            else
                say("ok %lx", (unsigned long)old);
        } else if (!strcmp(cmd, "stack")) {
            sscanf(line, "%*s %lu", &n);
            say("ok %lx", deep_stack(n));
        } else if (!strcmp(cmd, "fork")) {
            pid_t c = fork();
            if (c == 0) {
                for (;;)
                    pause();
            }
            say("ok %d", c);
        } else if (!strcmp(cmd, "exec")) {
            execl("/proc/self/exe", self, "ctl", (char *)NULL);
            say("err %d", errno);
        } else if (!strcmp(cmd, "signals")) {
            say("ok %d", (int)rt_count);
        } else if (!strcmp(cmd, "getpid")) {
            say("ok %d", getpid());
        } else if (!strcmp(cmd, "exit")) {
            say("ok");
            return 0;
        } else {
            say("err unknown command %s", cmd);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 64;
    const char *mode = argv[1];
    if (!strcmp(mode, "ctl"))
        return do_ctl(argv[0]);
    if (!strcmp(mode, "read"))
        return do_read();
    if (!strcmp(mode, "nanosleep") && argc > 2)
        return do_nanosleep(atol(argv[2]));
    if (!strcmp(mode, "futex"))
        return do_futex(-1);
    if (!strcmp(mode, "futex-timeout") && argc > 2)
        return do_futex(atol(argv[2]));
    if (!strcmp(mode, "spin"))
        return do_spin();
    if (!strcmp(mode, "writer") && argc > 5)
        return do_writer(strtoul(argv[2], NULL, 0), argv[3], strtoul(argv[4], NULL, 0), atoi(argv[5]));
    if (!strcmp(mode, "seize") && argc > 2) {
        pid_t pid = atoi(argv[2]);
        if (ptrace(PTRACE_SEIZE, pid, 0, 0)) {
            say("err %d", errno);
            return 1;
        }
        say("ready %d", getpid());
        for (;;)
            pause();
    }
    if (!strncmp(mode, "seccomp-", 8)) {
        unsigned int act = !strcmp(mode + 8, "kill")    ? SECCOMP_RET_KILL_PROCESS
                           : !strcmp(mode + 8, "errno") ? (SECCOMP_RET_ERRNO | EPERM)
                                                        : SECCOMP_RET_ALLOW;
        if (install_filter(act)) {
            say("err %d", errno);
            return 1;
        }
        return do_ctl(argv[0]);
    }
    return 64;
}
