/* Generated from softdirty/pagemap.py by softdirty.pagemap.c_header(). Do not edit. */
#ifndef SOFTDIRTY_PAGEMAP_ABI_H
#define SOFTDIRTY_PAGEMAP_ABI_H

#define SD_PAGE_SHIFT 0xcULL
#define SD_PM_PFRAME_MASK 0x7fffffffffffffULL
#define SD_PM_SOFT_DIRTY 0x80000000000000ULL
#define SD_PM_MMAP_EXCLUSIVE 0x100000000000000ULL
#define SD_PM_UFFD_WP 0x200000000000000ULL
#define SD_PM_GUARD_REGION 0x400000000000000ULL
#define SD_PM_FILE 0x2000000000000000ULL
#define SD_PM_SWAP 0x4000000000000000ULL
#define SD_PM_PRESENT 0x8000000000000000ULL
#define SD_PM_FLAGS_MASK 0xe780000000000000ULL
#define SD_PAGEMAP_SCAN 0xc0606610ULL
#define SD_PM_SCAN_ARG_SIZE 0x60ULL
#define SD_PAGE_REGION_SIZE 0x18ULL
#define SD_PM_SCAN_WP_MATCHING 0x1ULL
#define SD_PM_SCAN_CHECK_WPASYNC 0x2ULL
#define SD_PAGE_IS_WPALLOWED 0x1ULL
#define SD_PAGE_IS_WRITTEN 0x2ULL
#define SD_PAGE_IS_FILE 0x4ULL
#define SD_PAGE_IS_PRESENT 0x8ULL
#define SD_PAGE_IS_SWAPPED 0x10ULL
#define SD_PAGE_IS_PFNZERO 0x20ULL
#define SD_PAGE_IS_HUGE 0x40ULL
#define SD_PAGE_IS_SOFT_DIRTY 0x80ULL
#define SD_PAGE_IS_GUARD 0x100ULL

/* struct pm_scan_arg, 12 x u64 */
struct sd_pm_scan_arg {
    unsigned long long size;
    unsigned long long flags;
    unsigned long long start;
    unsigned long long end;
    unsigned long long walk_end;
    unsigned long long vec;
    unsigned long long vec_len;
    unsigned long long max_pages;
    unsigned long long category_inverted;
    unsigned long long category_mask;
    unsigned long long category_anyof_mask;
    unsigned long long return_mask;
};

struct sd_page_region {
    unsigned long long start;
    unsigned long long end;
    unsigned long long categories;
};

#endif
