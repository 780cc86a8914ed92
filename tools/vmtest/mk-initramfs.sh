#!/bin/bash
# Build the tiny vmtest initramfs: busybox-static + the 9p/virtio/overlay
# modules of kernel KVER + init.sh.  Usage: mk-initramfs.sh KVER MODDIR OUT.cpio
#   KVER    kernel release, e.g. 6.1.0-56-amd64
#   MODDIR  its module tree (normally /lib/modules/KVER)
#   OUT     output file (uncompressed newc cpio; the kernel unpacks that fastest)
set -euo pipefail
KVER=$1 MODDIR=$2 OUT=$3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUSYBOX=${VMTEST_BUSYBOX:-/bin/busybox}

die() { echo "mk-initramfs: $*" >&2; exit 1; }
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing: apt-get install busybox-static"
if ! file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked'; then
    # 'file' may be absent; fall back to ldd's verdict.
    ldd "$BUSYBOX" 2>&1 | grep -q 'not a dynamic executable' \
        || die "$BUSYBOX is not static: apt-get install busybox-static"
fi
[ -f "$MODDIR/modules.dep" ] || die "no $MODDIR/modules.dep"

# Wanted modules; their dependencies are resolved from modules.dep and
# loaded first.  Missing ones are skipped (they may be built in).
WANT="virtio_pci 9pnet_virtio 9p overlay"

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/vmtest-initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,lib/vmtest,proc,sys,dev,lower,rw,newroot}
cp "$BUSYBOX" "$STAGE/bin/busybox"
cp "$HERE/init.sh" "$STAGE/init"
chmod 755 "$STAGE/init" "$STAGE/bin/busybox"

declare -A SEEN=()
ORDER=()
add_mod() {  # depth-first: dependencies before the module itself
    local name=$1 line path deps d
    [ -n "${SEEN[$name]:-}" ] && return 0
    SEEN[$name]=1
    line=$(grep -E "/${name}\.ko(\.[a-z]+)?:" "$MODDIR/modules.dep" || true)
    if [ -z "$line" ]; then
        grep -qE "/${name}\.ko" "$MODDIR/modules.builtin" 2>/dev/null \
            || echo "mk-initramfs: note: module $name not found (assuming built in)" >&2
        return 0
    fi
    path=${line%%:*}
    deps=${line#*:}
    for d in $deps; do
        d=${d##*/}; d=${d%%.ko*}
        add_mod "$d"
    done
    case "$path" in
        *.ko)     cp "$MODDIR/$path" "$STAGE/lib/vmtest/$name.ko" ;;
        *.ko.xz)  xz -dc "$MODDIR/$path" >"$STAGE/lib/vmtest/$name.ko" ;;
        *.ko.zst) zstd -qdc "$MODDIR/$path" >"$STAGE/lib/vmtest/$name.ko" ;;
        *.ko.gz)  gzip -dc "$MODDIR/$path" >"$STAGE/lib/vmtest/$name.ko" ;;
        *) die "unknown module format $path" ;;
    esac
    ORDER+=("$name")
}
for m in $WANT; do add_mod "$m"; done
printf '%s\n' "${ORDER[@]}" >"$STAGE/lib/vmtest/modules.order"

(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "mk-initramfs: $OUT ($(du -k "$OUT" | cut -f1) KiB; modules: ${ORDER[*]})" >&2
