"""The userfaultfd ABI (include/uapi/linux/userfaultfd.h): the numbers we use."""

from __future__ import annotations

import struct

from softdirty.pagemap import _IOC_READ, _IOC_WRITE, _ioc

UFFD_API = 0xAA
UFFDIO = 0xAA  # ioctl type
UFFD_USER_MODE_ONLY = 1  # userfaultfd() flag: no kernel-mode faults, allowed unprivileged

UFFD_FEATURE_EVENT_FORK = 1 << 1
UFFD_FEATURE_EVENT_REMAP = 1 << 2
UFFD_FEATURE_EVENT_REMOVE = 1 << 3
UFFD_FEATURE_EVENT_UNMAP = 1 << 6
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15

UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 1 << 1

UFFDIO_API_STRUCT = struct.Struct("<3Q")  # api, features, ioctls
UFFDIO_REGISTER_STRUCT = struct.Struct("<4Q")  # range.start, range.len, mode, ioctls
UFFDIO_RANGE_STRUCT = struct.Struct("<2Q")  # start, len
UFFDIO_WRITEPROTECT_STRUCT = struct.Struct("<3Q")  # range.start, range.len, mode

UFFDIO_API = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x3F, UFFDIO_API_STRUCT.size)
UFFDIO_REGISTER = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x00, UFFDIO_REGISTER_STRUCT.size)
UFFDIO_UNREGISTER = _ioc(_IOC_READ, UFFDIO, 0x01, UFFDIO_RANGE_STRUCT.size)
UFFDIO_WRITEPROTECT = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x06, UFFDIO_WRITEPROTECT_STRUCT.size)
