#!/bin/busybox sh
# vmtest guest /init (PID 1 inside the initramfs; runs under busybox-static).
#
#   ttyS0 -> host stdout   (the job's stdout)
#   ttyS1 -> host stderr   (the job's stderr)
#   ttyS2 -> kernel console, saved by the host in console.log
#
# 1. mounts the host root (9p tag "vmtestroot", read-only, cache=loose) as the
#    lower layer of an overlayfs whose upper layer is a tmpfs: the guest sees
#    the host's files at the same paths, may write anywhere, and every such
#    write is thrown away at power-off;
# 2. mounts the per-run job directory (9p tag "vmtestjob", read-write) at
#    /run/vmtest, plus any --rw host directories (tags vmtestrw0, vmtestrw1, ...)
#    read-write at their own paths;
# 3. chroots into the tree, runs /run/vmtest/job.sh with the host's bash (it
#    cds to the host's cwd, restores the host's environment, runs the command
#    and writes its exit status to /run/vmtest/status), kills what the job left
#    behind, and powers the VM off.
# If anything fails before the job starts, the status file gets
# "init-failed" (the host turns that into exit status 125).

export PATH=/bin
/bin/busybox mkdir -p /proc /sys /dev /lower /rw /newroot
/bin/busybox --install -s /bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

VERBOSE=0
grep -qw vmtest.verbose /proc/cmdline && VERBOSE=1
say() { [ "$VERBOSE" = 1 ] && echo "vmtest-init: $*" >/dev/ttyS1; }
R=/newroot
J=$R/run/vmtest
fail() {
    echo "vmtest-init: FATAL: $*" >/dev/ttyS1
    echo "vmtest-init: FATAL: $*" >/dev/kmsg
    echo init-failed >$J/status 2>/dev/null
    sync
    poweroff -f
    sleep 5
    echo o >/proc/sysrq-trigger
}

# Keep both output ttys open in PID 1: a tty forgets its window size when
# its last file descriptor is closed.
exec 7>/dev/ttyS0 8>/dev/ttyS1
for t in /dev/ttyS0 /dev/ttyS1; do
    stty -F $t raw -echo 2>/dev/null      # no \n -> \r\n, no echo
done

say "loading modules"
for m in $(cat /lib/vmtest/modules.order); do
    insmod "/lib/vmtest/$m.ko" 2>/dev/null || say "insmod $m failed (built in?)"
done

# Tunables on the kernel command line (for experiments): vmtest.msize=BYTES,
# vmtest.rootcache=loose|mmap|none|fscache
MSIZE=512000
ROOTCACHE=loose
for a in $(cat /proc/cmdline); do
    case "$a" in
        vmtest.msize=*) MSIZE=${a#*=} ;;
        vmtest.rootcache=*) ROOTCACHE=${a#*=} ;;
    esac
done
P9="trans=virtio,version=9p2000.L,msize=$MSIZE"
mount -t 9p -o "$P9,ro,cache=$ROOTCACHE" vmtestroot /lower || fail "mount 9p root"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay $R \
    || fail "mount overlay"

mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t tmpfs -o mode=0755 tmpfs $R/run
mkdir -p $J
mount -t 9p -o "$P9,cache=none" vmtestjob $J || fail "mount 9p job dir"
[ -f $J/job.sh ] || fail "no job.sh in the job dir"

# Fresh tmpfs on /tmp and /var/tmp, unless the job's working directory is
# inside one of them (then the overlay view of the host directory is kept).
CWD=$(cat $J/cwd 2>/dev/null)
for d in /tmp /var/tmp; do
    case "$CWD/" in
        "$d"/*) say "keeping the overlay view of $d (cwd is inside it)" ;;
        *) mount -t tmpfs -o mode=1777 tmpfs $R$d ;;
    esac
done

# Host directories shared read-write (--rw DIR), one path per line.
i=0
if [ -f $J/rw ]; then
    while IFS= read -r p; do
        [ -n "$p" ] || continue
        mkdir -p "$R$p"
        mount -t 9p -o "$P9,cache=mmap" "vmtestrw$i" "$R$p" || fail "mount --rw $p"
        say "rw share $p"
        i=$((i + 1))
    done <$J/rw
fi

mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
hostname vmtest
ip link set lo up 2>/dev/null

# Terminal size of the host's stdout, if that is a terminal.
if [ -s $J/ttysize ]; then
    read -r rows cols <$J/ttysize
    for t in /dev/ttyS0 /dev/ttyS1; do
        stty -F $t rows "$rows" cols "$cols" 2>/dev/null
    done
fi

# The job's stdout/stderr: the serial tty itself when the host side is a
# terminal, else a pipe (through a cat helper) so isatty() is false as well.
HELPERS=""
OUT=/dev/ttyS0
ERR=/dev/ttyS1
if [ ! -f $J/stdout_tty ]; then
    mkfifo /fifo.out
    cat /fifo.out >/dev/ttyS0 7>&- 8>&- &
    HELPERS="$HELPERS $!"
    OUT=/fifo.out
fi
if [ ! -f $J/stderr_tty ]; then
    mkfifo /fifo.err
    cat /fifo.err >/dev/ttyS1 7>&- 8>&- &
    HELPERS="$HELPERS $!"
    ERR=/fifo.err
fi

say "starting job"
env -i chroot $R /bin/bash /run/vmtest/job.sh </dev/null >$OUT 2>$ERR 7>&- 8>&- &
JOB=$!
wait $JOB
rc=$?
[ -s $J/status ] || echo "$rc" >$J/status
say "job finished, status $(cat $J/status)"

# Kill whatever the job left running (except us, the cat helpers and kernel
# threads), so the helpers see EOF and the output is drained completely.
for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = 1 ] && continue
    case " $HELPERS " in *" $p "*) continue ;; esac
    [ -n "$(cat $d/cmdline 2>/dev/null)" ] || continue   # kernel thread/zombie
    kill -9 "$p" 2>/dev/null
done
[ -n "$HELPERS" ] && wait $HELPERS
sync
poweroff -f
sleep 5
echo o >/proc/sysrq-trigger
