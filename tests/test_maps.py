"""The maps parser: every kind of line the kernel prints, and garbage."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softdirty.maps import MapsFormatError, Vma, parse_line, parse_maps

SAMPLE = """\
55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1311                       /usr/bin/cat
55d0c1e4c000-55d0c1e6d000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000001000 rw-s 00000000 00:05 4242                       /dev/shm/with space (deleted)
7f0000001000-7f0000002000 rw-p 00000000 00:00 0                          [anon:my name]
7f0000002000-7f0000003000 r--p 00001000 fd:01 77                         /tmp/new\\012line
7ffd5a3c1000-7ffd5a3e2000 rw-p 00000000 00:00 0                          [stack]
7ffd5a3f0000-7ffd5a3f4000 r--p 00000000 00:00 0                          [vvar]
7ffd5a3f4000-7ffd5a3f6000 r-xp 00000000 00:00 0                          [vdso]
7f0000003000-7f0000004000 ---p 00000000 00:00 0{TRAILING_SPACE}
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
""".format(
    TRAILING_SPACE=" "  # the kernel pads a line without a path with a space
)


def test_sample_lines() -> None:
    vmas = parse_maps(SAMPLE)
    assert [v.path for v in vmas] == [
        "/usr/bin/cat", "[heap]", "/dev/shm/with space", "[anon:my name]", "/tmp/new\nline",
        "[stack]", "[vvar]", "[vdso]", "", "[vsyscall]",
    ]
    assert vmas[0].offset == 0 and vmas[0].dev == "fd:01" and vmas[0].inode == 1311
    assert vmas[2].deleted and vmas[2].shared and vmas[2].writable
    assert vmas[4].offset == 0x1000 and not vmas[4].deleted
    assert vmas[1].anonymous and not vmas[0].anonymous
    assert vmas[6].special and vmas[7].special and vmas[9].special
    assert vmas[8].perms == "---p" and not vmas[8].readable
    assert vmas[9].start == 0xFFFFFFFFFF600000 and vmas[9].pages == 1


def test_own_maps_parse_and_cover_a_fresh_mapping() -> None:
    import mmap

    m = mmap.mmap(-1, 3 * 4096)
    try:
        import ctypes

        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        with open(f"/proc/{os.getpid()}/maps") as f:
            vmas = parse_maps(f.read())
        assert any(addr in v and v.writable for v in vmas)
    finally:
        import gc

        gc.collect()


@pytest.mark.parametrize(
    "line",
    [
        "",
        "garbage",
        "0000-1000 rw-p 0 00:00",  # too few fields
        "zz-1000 rw-p 00000000 00:00 0",
        "2000-1000 rw-p 00000000 00:00 0",  # inverted
        "1001-2000 rw-p 00000000 00:00 0",  # unaligned
        "1000-2000 rwzp 00000000 00:00 0",  # bad perms
        "1000-2000 rw-p 00000000 0000 0",  # bad dev
        "1000-2000 rw-p 00000000 00:00 x",  # bad inode
    ],
)
def test_garbage_is_a_clear_error(line: str) -> None:
    with pytest.raises(MapsFormatError):
        parse_line(line)


paths = st.one_of(
    st.just(""),
    st.sampled_from(["[heap]", "[stack]", "[vdso]", "[anon:x y]"]),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\r\\"), min_size=1,
            max_size=40).map(lambda s: "/" + s.strip()),
)


@given(
    start=st.integers(0, (1 << 35) - 2).map(lambda p: p * 4096),
    pages=st.integers(1, 1 << 20),
    perms=st.tuples(st.sampled_from("r-"), st.sampled_from("w-"), st.sampled_from("x-"), st.sampled_from("ps")),
    offset=st.integers(0, 1 << 40),
    inode=st.integers(0, 1 << 40),
    path=paths,
    deleted=st.booleans(),
)
def test_format_parse_round_trip(start: int, pages: int, perms: tuple[str, ...], offset: int, inode: int,
                                 path: str, deleted: bool) -> None:
    # "\\012" and a literal " (deleted)" suffix are ambiguous in the kernel's own
    # format too; the alphabet has no backslash and we drop the suffix here.
    path = path.rstrip().removesuffix(" (deleted)")
    deleted = deleted and bool(path)
    vma = Vma(start, start + pages * 4096, "".join(perms), offset, "fd:01", inode, path, deleted)
    assert parse_line(vma.format()) == vma


@given(st.text(max_size=200))
def test_fuzz_never_crashes(text: str) -> None:
    try:
        parse_maps(text)
    except MapsFormatError:
        pass


def test_hugetlbfs_devices_from_mountinfo_match_maps_format() -> None:
    from softdirty.maps import hugetlbfs_devices, mark_hugetlb

    mountinfo = (
        "22 1 0:21 / /dev/shm rw - tmpfs tmpfs rw\n"
        "42 27 0:39 / /mnt/huge rw,relatime - hugetlbfs none rw,pagesize=2M\n"
        "43 27 259:3 / /data rw shared:1 - ext4 /dev/nvme0n1p3 rw\n"
    )
    devs = hugetlbfs_devices(mountinfo)
    assert devs == frozenset({"00:27"})
    vmas = [
        Vma(0x1000, 0x201000, "rw-s", 0, "00:27", 5, "/mnt/huge/x"),
        Vma(0x400000, 0x600000, "rw-p", 0, "00:11", 9, "/anon_hugepage", deleted=True),
        Vma(0x600000, 0x601000, "rw-s", 0, "00:15", 7, "/dev/shm/y"),
    ]
    assert [v.hugetlb for v in mark_hugetlb(vmas, devs)] == [True, True, False]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to reserve a huge page for the SysV segment "
                    "(CI and the VMs run as root)")
def test_sysv_shm_hugetlb_segment_is_marked_hugetlb() -> None:
    """A SHM_HUGETLB segment lives on the kernel's internal hugetlbfs mount, which mountinfo does not list."""
    import ctypes

    from softdirty.process import LiveProcess

    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.shmdt.argtypes = [ctypes.c_void_p]
    pool = "/proc/sys/vm/nr_hugepages"
    with open(pool) as f:
        reserved = int(f.read())
    with open(pool, "w") as f:
        f.write(str(reserved + 1))
    try:
        shmid = libc.shmget(0, 2 << 20, 0o1000 | 0o4000 | 0o600)  # IPC_PRIVATE, IPC_CREAT|SHM_HUGETLB
        if shmid < 0:
            pytest.skip(f"no 2 MiB huge page could be reserved (errno {ctypes.get_errno()}): "
                        "the pool could not grow on this machine")
        addr = libc.shmat(shmid, None, 0)
        libc.shmctl(shmid, 0, None)  # IPC_RMID: gone when detached
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        try:
            with LiveProcess(os.getpid()) as proc:
                vma = next(v for v in proc.read_maps() if v.start <= addr < v.end)
            assert vma.path.startswith("/SYSV") and vma.hugetlb, vma
        finally:
            libc.shmdt(addr)
    finally:
        with open(pool, "w") as f:
            f.write(str(reserved))
