/*
 * eng_dfu_file: DFU firmware files as bytes in memory: the DFU suffix
 * (DFU 1.1 Appendix B), ST's DfuSe container (UM0391: prefix, targets,
 * elements), and the DfuSe memory layout that an alternate setting's name
 * describes (AN3156: "@Internal Flash  /0x08000000/04*016Kg,...").
 *
 * Nothing here does I/O or allocates beyond what eng_dfu_file_parse()
 * says: the parsed file points into the caller's buffer (an mmapped
 * eng_image), which must outlive it. Error messages name the file and
 * what is wrong ("fw.dfu: DFU suffix CRC mismatch (file says 0x1234abcd,
 * computed 0x...)"), ready to show an operator.
 */
#ifndef ENG_DFU_FILE_H
#define ENG_DFU_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ENG_DFU_SUFFIX_LEN 16
#define ENG_DFU_ID_ANY 0xffff
#define ENG_DFU_BCD_DFUSE 0x011a

/* One DfuSe element: `size` bytes to land at `address`. */
struct eng_dfu_element {
    uint32_t address;
    uint32_t size;
    const uint8_t *data; /* points into the file */
};

/* One DfuSe target: the elements for one alternate setting. */
struct eng_dfu_target {
    uint8_t alt;           /* bAlternateSetting */
    bool named;            /* bTargetNamed */
    char name[256];        /* szTargetName, NUL-terminated */
    unsigned first, count; /* its elements in eng_dfu_file.elements */
};

struct eng_dfu_file {
    /* The suffix (all zero when has_suffix is false). */
    bool has_suffix;
    uint16_t bcd_device, pid, vid, bcd_dfu;
    uint32_t crc;
    /* The file without its suffix: what a plain DFU download sends. */
    const uint8_t *payload;
    size_t payload_len;
    /* DfuSe container: set when the payload starts with "DfuSe". */
    bool dfuse;
    unsigned n_targets, n_elements;
    struct eng_dfu_target *targets;   /* owned */
    struct eng_dfu_element *elements; /* owned */
};

/*
 * Parse and check `len` bytes named `name` (for messages). A suffix is
 * recognised by "UFD" and bLength 16 at its place; when present its CRC
 * must match. A payload starting with "DfuSe" must be a consistent DfuSe
 * container (version 1, sizes adding up, elements inside the file, no
 * overlap between elements of one target) and carry a suffix.
 * Returns 0 and fills *out (free it with eng_dfu_file_free), or ST_EINVAL
 * (ST_ENOMEM) with a message in err (nothing to free). Pure; any thread.
 */
int eng_dfu_file_parse(const uint8_t *buf, size_t len, const char *name, struct eng_dfu_file *out,
                       char *err, size_t errlen);
void eng_dfu_file_free(struct eng_dfu_file *f);

/*
 * May `f` go to device vid:pid? The suffix ids must match unless 0xFFFF
 * (on either side: a device id of 0xFFFF means "not known yet");
 * a file without a suffix only when `allow_raw` (the recipe's
 * allow-raw-dfu). 0, or ST_EINVAL with "fw.dfu: made for 0483:df11,
 * device is 1234:5678" in err.
 */
int eng_dfu_file_check_device(const struct eng_dfu_file *f, const char *name, uint16_t vid,
                              uint16_t pid, bool allow_raw, char *err, size_t errlen);

/* Both of the above for `station check` (no device at hand): parse, then
 * check against the ids the configuration expects (ENG_DFU_ID_ANY when it
 * names none). 0, or ST_EINVAL/ST_ENOMEM with a message in err. */
int eng_dfu_file_check(const uint8_t *buf, size_t len, const char *name, uint16_t vid, uint16_t pid,
                       bool allow_raw, char *err, size_t errlen);

/* The suffix dwCRC of `len` bytes: CRC-32 (0xEDB88320) without the final
 * inversion, i.e. ~crc32() in zlib terms (DFU 1.1 Appendix B). */
uint32_t eng_dfu_crc(const void *buf, size_t len);

/* Build the 16-byte suffix for `file` (the bytes it follows). */
void eng_dfu_suffix_make(uint8_t out[ENG_DFU_SUFFIX_LEN], const void *file, size_t len,
                         uint16_t vid, uint16_t pid, uint16_t bcd_device, uint16_t bcd_dfu);

/* ---- DfuSe memory layout (from an alternate setting's name) ---- */

#define ENG_DFUSE_MAX_REGIONS 4
#define ENG_DFUSE_MAX_GROUPS 8

/* Sector types: the letter a..g minus 'a' plus one (AN3156). */
#define ENG_DFUSE_READABLE 1
#define ENG_DFUSE_ERASABLE 2
#define ENG_DFUSE_WRITEABLE 4

struct eng_dfuse_group {
    uint32_t count, size; /* `count` sectors of `size` bytes */
    uint8_t type;         /* ENG_DFUSE_* bits */
};

struct eng_dfuse_region {
    uint32_t address;
    uint64_t size; /* sum of the groups */
    unsigned n_groups;
    struct eng_dfuse_group groups[ENG_DFUSE_MAX_GROUPS];
};

struct eng_dfuse_layout {
    char name[64]; /* "Internal Flash" */
    unsigned n_regions;
    struct eng_dfuse_region regions[ENG_DFUSE_MAX_REGIONS];
};

/* Parse "@NAME/0xADDR/NN*SSSu[t],.../0xADDR/..." (u: ' ', K or M; t: a..g).
 * 0, or ST_EINVAL when the string is not a DfuSe layout. */
int eng_dfuse_layout_parse(const char *alt_name, struct eng_dfuse_layout *out);

/* The sector holding `address`: true and its start, size and type bits. */
bool eng_dfuse_layout_find(const struct eng_dfuse_layout *l, uint32_t address,
                           uint32_t *sector_start, uint32_t *sector_size, uint8_t *type);

#endif
