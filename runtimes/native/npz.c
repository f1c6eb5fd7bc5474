/* .npz reading as edgetx.bundle.npz does: a zip (stored or deflated members, zip64 sizes) of .npy 1.0/2.0 arrays;
 * every header is checked against the data before anything is allocated, and no pickle (object arrays) is read. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "internal.h"

#define FIX "rebuild the bundle (or re-copy it if it was damaged in transit)"

static uint32_t le16(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t le32(const unsigned char *p) { return le16(p) | le16(p + 2) << 16; }
static uint64_t le64(const unsigned char *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

void et_array_free(et_array *a) {
    free(a->data);
    a->data = NULL;
}

void et_npz_free(et_npz *npz) {
    for (size_t i = 0; i < npz->count; i++) et_array_free(&npz->arrays[i]);
    free(npz->arrays);
    npz->arrays = NULL;
    npz->count = 0;
}

const et_array *et_npz_get(const et_npz *npz, const char *name) {
    for (size_t i = 0; i < npz->count; i++)
        if (strcmp(npz->arrays[i].name, name) == 0) return &npz->arrays[i];
    return NULL;
}

double et_value(const et_array *a, size_t i) {
    switch (a->dtype) {
    case ET_F32: return ((const float *)a->data)[i];
    case ET_F64: return ((const double *)a->data)[i];
    case ET_I64: return (double)((const int64_t *)a->data)[i];
    case ET_I32: return ((const int32_t *)a->data)[i];
    case ET_BOOL:
    case ET_U8: return ((const unsigned char *)a->data)[i];
    default: return 0.0;
    }
}

/* The value of 'key': in a .npy header dict, or NULL. */
static const char *header_field(const char *header, const char *key) {
    const char *p = strstr(header, key);
    if (!p) return NULL;
    p += strlen(key);
    while (*p == ' ' || *p == ':') p++;
    return p;
}

/* Parse the header dict of one .npy member into `a` (dtype, shape); returns 0 or fills err. */
static int parse_header(const char *path, const char *member, const char *header, et_array *a, et_error *err) {
    const char *descr = header_field(header, "'descr'");
    const char *fortran = header_field(header, "'fortran_order'");
    const char *shape = header_field(header, "'shape'");
    if (!descr || !fortran || !shape || (*descr != '\'' && *descr != '"') || *shape != '(')
        return et_fail(err, ET_REFUSED, "%s: member '%s' has no readable .npy header (descr, fortran_order, shape); %s",
                       path, member, FIX);
    char quote = *descr++;
    char code[16] = {0};
    size_t n = 0;
    while (descr[n] && descr[n] != quote && n < sizeof code - 1) code[n] = descr[n], n++;
    if (descr[n] != quote)
        return et_fail(err, ET_REFUSED, "%s: member '%s' has an unreadable dtype in its header; %s", path, member, FIX);
    if (strchr(code, 'O'))
        return et_fail(err, ET_REFUSED, "%s: member '%s' holds Python objects (pickle); edgetx never loads pickle",
                       path, member);
    if (strncmp(fortran, "False", 5) != 0)
        return et_fail(err, ET_UNSUPPORTED, "%s: member '%s' is stored in Fortran order, which the native verifier does "
                       "not read (edgetx writes C order)", path, member);
    char order = code[0], kind = code[1];
    int size = atoi(code + 2);
    if ((order != '<' && order != '|' && order != '=') || size <= 0 || size > 16)
        return et_fail(err, ET_UNSUPPORTED, "%s: member '%s' has dtype '%s', which the native verifier does not read "
                       "(little-endian numbers only)", path, member, code);
    a->itemsize = (size_t)size;
    a->dtype = kind == 'f' && size == 4 ? ET_F32 : kind == 'f' && size == 8 ? ET_F64
             : kind == 'i' && size == 8 ? ET_I64 : kind == 'i' && size == 4 ? ET_I32
             : kind == 'b' && size == 1 ? ET_BOOL : kind == 'u' && size == 1 ? ET_U8 : ET_OTHER;
    const char *p = shape + 1;
    a->ndim = 0;
    a->count = 1;
    for (;;) {
        while (*p == ' ' || *p == ',') p++;
        if (*p == ')') break;
        if (!isdigit((unsigned char)*p) || a->ndim == ET_MAX_DIMS)
            return et_fail(err, ET_REFUSED, "%s: member '%s' has an unreadable shape in its header; %s", path, member, FIX);
        errno = 0;
        char *end;
        unsigned long long dim = strtoull(p, &end, 10);
        if (errno || dim > (unsigned long long)INT64_MAX)
            return et_fail(err, ET_REFUSED, "%s: member '%s' declares a dimension too large; %s", path, member, FIX);
        a->shape[a->ndim++] = (int64_t)dim;
        if (dim && a->count > SIZE_MAX / dim)
            return et_fail(err, ET_REFUSED, "%s: member '%s' declares more elements than memory holds; %s", path,
                           member, FIX);
        a->count *= (size_t)dim;
        p = end;
    }
    if (a->count > SIZE_MAX / a->itemsize)
        return et_fail(err, ET_REFUSED, "%s: member '%s' declares more bytes than memory holds; %s", path, member, FIX);
    return 0;
}

/* One member's bytes (stored or deflated) -> an array, checked against its declared sizes. */
static int read_member(const char *path, const char *member, const unsigned char *packed, uint64_t packed_size,
                       int method, uint64_t size, uint32_t crc, et_array *a, et_error *err) {
    if (size > 1000 * (packed_size > 1 ? packed_size : 1) + (1 << 20))
        return et_fail(err, ET_REFUSED, "%s: member '%s' would expand %llu bytes to %llu (a zip bomb?); %s", path, member,
                       (unsigned long long)packed_size, (unsigned long long)size, FIX);
    unsigned char *raw = malloc(size ? size : 1);
    if (!raw) return et_fail(err, ET_RUNTIME, "%s: out of memory reading member '%s'", path, member);
    if (method == 0) {
        if (packed_size != size) {
            free(raw);
            return et_fail(err, ET_REFUSED, "%s: stored member '%s' has %llu bytes but declares %llu; %s", path, member,
                           (unsigned long long)packed_size, (unsigned long long)size, FIX);
        }
        memcpy(raw, packed, size);
    } else {
        z_stream z = {0};
        int ok = packed_size <= UINT_MAX && size <= UINT_MAX && inflateInit2(&z, -MAX_WBITS) == Z_OK;
        z.next_in = (unsigned char *)packed, z.avail_in = (uInt)packed_size;
        z.next_out = raw, z.avail_out = (uInt)size;
        int rc = ok ? inflate(&z, Z_FINISH) : Z_STREAM_ERROR;
        if (ok) inflateEnd(&z);
        if (rc != Z_STREAM_END || z.total_out != size) {
            free(raw);
            return et_fail(err, ET_REFUSED, "%s: member '%s' does not inflate to its declared %llu bytes; %s", path,
                           member, (unsigned long long)size, FIX);
        }
    }
    if (crc32(0L, raw, (uInt)size) != crc) {
        free(raw);
        return et_fail(err, ET_REFUSED, "%s: member '%s' fails its CRC-32 check; %s", path, member, FIX);
    }
    int rc = 0;
    if (size < 10 || memcmp(raw, "\x93NUMPY", 6) != 0) {
        rc = et_fail(err, ET_REFUSED, "%s: member '%s' is not a .npy array; %s", path, member, FIX);
    } else if (!((raw[6] == 1 || raw[6] == 2) && raw[7] == 0)) {
        rc = et_fail(err, ET_REFUSED, "%s: member '%s' is .npy format (%d, %d); edgetx reads versions 1.0 and 2.0", path,
                     member, raw[6], raw[7]);
    } else {
        size_t start = raw[6] == 1 ? 10 : 12;
        uint64_t header_len = raw[6] == 1 ? le16(raw + 8) : (size >= 12 ? le32(raw + 8) : UINT64_MAX);
        if (header_len > size - start) {
            rc = et_fail(err, ET_REFUSED, "%s: member '%s' has a header longer than the member; %s", path, member, FIX);
        } else {
            char *header = malloc(header_len + 1);
            if (!header) {
                free(raw);
                return et_fail(err, ET_RUNTIME, "%s: out of memory", path);
            }
            memcpy(header, raw + start, header_len);
            header[header_len] = 0;
            rc = parse_header(path, member, header, a, err);
            free(header);
            uint64_t offset = start + header_len;
            if (!rc && (a->count * a->itemsize) != size - offset) {
                rc = et_fail(err, ET_REFUSED, "%s: member '%s' declares %zu elements of %zu bytes (%llu bytes with its "
                             "header) but holds %llu; %s", path, member, a->count, a->itemsize,
                             (unsigned long long)(a->count * a->itemsize + offset), (unsigned long long)size, FIX);
            }
            if (!rc) {
                a->data = malloc(a->count * a->itemsize != 0 ? a->count * a->itemsize : 1);
                if (!a->data) rc = et_fail(err, ET_RUNTIME, "%s: out of memory", path);
                else memcpy(a->data, raw + offset, a->count * a->itemsize);
            }
        }
    }
    free(raw);
    return rc;
}

static int read_entries(const char *path, const unsigned char *buf, size_t len, et_npz *out, et_error *err) {
    size_t eocd = SIZE_MAX;
    for (size_t i = len >= 22 ? len - 22 : 0; len >= 22; i--) {
        if (le32(buf + i) == 0x06054b50) { eocd = i; break; }
        if (i == 0 || len - i > 22 + 65535) break;
    }
    if (eocd == SIZE_MAX)
        return et_fail(err, ET_REFUSED, "%s: not a readable .npz file (no zip directory); %s", path, FIX);
    uint64_t entries = le16(buf + eocd + 10), dir_size = le32(buf + eocd + 12), dir_offset = le32(buf + eocd + 16);
    if (eocd >= 20 && le32(buf + eocd - 20) == 0x07064b50) { /* zip64 end-of-directory locator */
        uint64_t at = le64(buf + eocd - 20 + 8);
        if (len < 56 || at > len - 56 || le32(buf + at) != 0x06064b50)
            return et_fail(err, ET_REFUSED, "%s: not a readable .npz file (bad zip64 directory); %s", path, FIX);
        entries = le64(buf + at + 32), dir_size = le64(buf + at + 40), dir_offset = le64(buf + at + 48);
    }
    if (dir_offset > len || dir_size > len - dir_offset || entries > dir_size / 46 + 1)
        return et_fail(err, ET_REFUSED, "%s: not a readable .npz file (zip directory out of bounds); %s", path, FIX);
    out->arrays = calloc(entries ? entries : 1, sizeof(et_array));
    if (!out->arrays) return et_fail(err, ET_RUNTIME, "%s: out of memory", path);
    const unsigned char *p = buf + dir_offset, *end = buf + dir_offset + dir_size;
    for (uint64_t e = 0; e < entries; e++) {
        if (end - p < 46 || le32(p) != 0x02014b50)
            return et_fail(err, ET_REFUSED, "%s: not a readable .npz file (damaged zip directory); %s", path, FIX);
        int method = (int)le16(p + 10), flags = (int)le16(p + 8);
        uint32_t crc = le32(p + 16);
        uint64_t packed = le32(p + 20), size = le32(p + 24), local = le32(p + 42);
        size_t name_len = le16(p + 28), extra_len = le16(p + 30), comment_len = le16(p + 32);
        if ((size_t)(end - p) < 46 + name_len + extra_len + comment_len)
            return et_fail(err, ET_REFUSED, "%s: not a readable .npz file (damaged zip directory); %s", path, FIX);
        char member[256];
        size_t keep = name_len < sizeof member - 1 ? name_len : sizeof member - 1;
        memcpy(member, p + 46, keep);
        member[keep] = 0;
        for (const unsigned char *x = p + 46 + name_len; x + 4 <= p + 46 + name_len + extra_len;) {
            size_t id = le16(x), n = le16(x + 2);
            const unsigned char *v = x + 4, *stop = x + 4 + n;
            if (stop > p + 46 + name_len + extra_len) break;
            if (id == 1) { /* zip64: the fields that are 0xFFFFFFFF, in this order */
                if (size == 0xFFFFFFFFu && v + 8 <= stop) size = le64(v), v += 8;
                if (packed == 0xFFFFFFFFu && v + 8 <= stop) packed = le64(v), v += 8;
                if (local == 0xFFFFFFFFu && v + 8 <= stop) local = le64(v), v += 8;
            }
            x = stop;
        }
        p += 46 + name_len + extra_len + comment_len;
        if ((method != 0 && method != 8) || (flags & 1))
            return et_fail(err, ET_UNSUPPORTED, "%s: member '%s' uses zip method %d%s, which the native verifier does not "
                           "read (edgetx writes stored or deflated members)", path, member, method,
                           flags & 1 ? " (encrypted)" : "");
        if (local > len || len - local < 30 || le32(buf + local) != 0x04034b50)
            return et_fail(err, ET_REFUSED, "%s: member '%s' has no local header where the directory says; %s", path,
                           member, FIX);
        uint64_t data = local + 30 + le16(buf + local + 26) + le16(buf + local + 28);
        if (data > len || packed > len - data)
            return et_fail(err, ET_REFUSED, "%s: member '%s' runs past the end of the file (truncated?); %s", path,
                           member, FIX);
        et_array *a = &out->arrays[out->count];
        size_t stem = strlen(member) >= 4 && strcmp(member + strlen(member) - 4, ".npy") == 0 ? strlen(member) - 4
                                                                                             : strlen(member);
        snprintf(a->name, sizeof a->name, "%.*s", (int)stem, member);
        if (read_member(path, member, buf + data, packed, method, size, crc, a, err)) return err->code;
        out->count++;
    }
    return 0;
}

int et_npz_read(const char *path, et_npz *out, et_error *err) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return et_fail(err, ET_REFUSED, "%s: cannot read it (%s)", path, strerror(errno));
    unsigned char *buf = NULL;
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0) len = ftell(f);
    if (len >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)len + 1)) != NULL &&
        fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (!buf) return et_fail(err, ET_REFUSED, "%s: cannot read it", path);
    int rc = read_entries(path, buf, (size_t)len, out, err);
    free(buf);
    if (rc) et_npz_free(out);
    return rc;
}
