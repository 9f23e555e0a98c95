/*
 * _copytext: rows of Python values rendered in C for the SQL sinks: PostgreSQL COPY text
 * (copytext.rows_text's fast path) and binary (copytext.rows_binary), and MariaDB/MySQL
 * VALUES tuples (rows_sql, at the end; the MySQL sink's fast path).
 *
 *     text = rows_text(codes, rows, tails)   # str, or None: render these rows in Python
 *
 * codes is a tuple of small ints, one per column, naming what the column's values must be
 * (see CODE_* below, kept in step with copytext._NATIVE_CODES); rows a sequence of iterables
 * of values in column order (a row's dict values); tails a sequence of str ending each line
 * after a tab (empty: none).  A value of another type than its column's code expects (or a
 * float that is not finite, a datetime with another zone, an array element with a character
 * that needs quoting) makes the whole call return None, and Python renders the rows as
 * before: this only ever gives what copytext's own column-wise paths give for such values.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <math.h>
#include <string.h>

enum {
    CODE_INT = 1,         /* int: str(int) */
    CODE_TEXT = 2,        /* str: COPY escapes for backslash, newline, carriage return, tab */
    CODE_DECIMAL = 3,     /* decimal.Decimal: str() */
    CODE_FLOAT = 4,       /* finite float: repr() */
    CODE_TIMESTAMPTZ = 5, /* datetime in UTC: isoformat() of the naive instant + '+00:00' */
    CODE_TIMESTAMP = 6,   /* naive datetime: isoformat() */
    CODE_DATE = 7,        /* date: isoformat() */
    CODE_BYTES = 8,       /* bytes: \\x and lowercase hex */
    CODE_BOOL = 9,        /* bool: t or f */
    CODE_TEXT_ARRAY = 10, /* list of str without \ " newline tab CR: {"a","b"} */
    CODE_INT_ARRAY = 11,  /* list of int: {"1","2"} */
};

static PyObject *decimal_type;

typedef struct {
    char *data;
    Py_ssize_t size;
    Py_ssize_t capacity;
    /* rows_sql only: the finished statements' texts, and the size that finishes one. */
    PyObject *chunks;
    Py_ssize_t limit;
} Buffer;

static int
reserve(Buffer *b, Py_ssize_t more)
{
    if (b->size + more <= b->capacity)
        return 0;
    Py_ssize_t capacity = b->capacity ? b->capacity : 65536;
    while (capacity < b->size + more)
        capacity *= 2;
    char *data = PyMem_Realloc(b->data, capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->capacity = capacity;
    return 0;
}

static int
put(Buffer *b, const char *text, Py_ssize_t size)
{
    if (reserve(b, size) < 0)
        return -1;
    memcpy(b->data + b->size, text, size);
    b->size += size;
    return 0;
}

/* Per byte, the text that stands for it in an escaped string (NULL: the byte itself). */
typedef const char *const Escapes[256];

static Escapes copy_escapes = {['\\'] = "\\\\", ['\n'] = "\\n", ['\r'] = "\\r", ['\t'] = "\\t"};

/* `size` bytes of `text` with `escapes` applied, none longer than `widest`. */
static int
put_escaped(Buffer *b, const char *text, Py_ssize_t size, Escapes escapes, Py_ssize_t widest)
{
    if (reserve(b, widest * size) < 0)
        return -1;
    char *out = b->data + b->size;
    for (Py_ssize_t i = 0; i < size; i++) {
        const char *escape = escapes[(unsigned char)text[i]];
        if (escape == NULL)
            *out++ = text[i];
        else
            while (*escape)
                *out++ = *escape++;
    }
    b->size = out - b->data;
    return 0;
}

/* A str's UTF-8, escaped for COPY text when `escape`; -1 on error. */
static int
put_text(Buffer *b, PyObject *value, int escape)
{
    Py_ssize_t size;
    const char *text = PyUnicode_AsUTF8AndSize(value, &size);
    if (text == NULL)
        return -1;
    return escape ? put_escaped(b, text, size, copy_escapes, 2) : put(b, text, size);
}

/* str(obj) or repr(obj), as put; -1 on error. */
static int
put_str_of(Buffer *b, PyObject *value, int use_repr)
{
    PyObject *text = use_repr ? PyObject_Repr(value) : PyObject_Str(value);
    if (text == NULL)
        return -1;
    int failed = put_text(b, text, 0);
    Py_DECREF(text);
    return failed;
}

/* `value` (>= 0) as exactly `width` digits, zero-padded, at `out` (snprintf costs ~10x). */
static void
digits_at(char *out, unsigned long value, int width)
{
    while (width--) {
        out[width] = (char)('0' + value % 10);
        value /= 10;
    }
}

static int
put_int(Buffer *b, PyObject *value)
{
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow)
        return put_str_of(b, value, 0);
    if (n == -1 && PyErr_Occurred())
        return -1;
    char digits[24], *end = digits + sizeof digits, *out = end;
    unsigned long long magnitude = n < 0 ? 0ULL - (unsigned long long)n : (unsigned long long)n;
    do {
        *--out = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    if (n < 0)
        *--out = '-';
    return put(b, out, end - out);
}

/* 'YYYY-MM-DD' (a datetime's years are 1 to 9999). */
static int
put_date(Buffer *b, int year, int month, int day)
{
    if (reserve(b, 10) < 0)
        return -1;
    char *out = b->data + b->size;
    digits_at(out, (unsigned long)year, 4);
    out[4] = '-';
    digits_at(out + 5, (unsigned long)month, 2);
    out[7] = '-';
    digits_at(out + 8, (unsigned long)day, 2);
    b->size += 10;
    return 0;
}

/* `sep` 'HH:MM:SS' and '.ffffff' when there are microseconds, as datetime.isoformat(sep). */
static int
put_clock(Buffer *b, PyObject *value, char sep)
{
    if (reserve(b, 16) < 0)
        return -1;
    char *out = b->data + b->size;
    int us = PyDateTime_DATE_GET_MICROSECOND(value);
    out[0] = sep;
    digits_at(out + 1, (unsigned long)PyDateTime_DATE_GET_HOUR(value), 2);
    out[3] = ':';
    digits_at(out + 4, (unsigned long)PyDateTime_DATE_GET_MINUTE(value), 2);
    out[6] = ':';
    digits_at(out + 7, (unsigned long)PyDateTime_DATE_GET_SECOND(value), 2);
    if (us) {
        out[9] = '.';
        digits_at(out + 10, (unsigned long)us, 6);
    }
    b->size += us ? 16 : 9;
    return 0;
}

static int
put_bytes(Buffer *b, PyObject *value)
{
    static const char hex[] = "0123456789abcdef";
    Py_ssize_t size = PyBytes_GET_SIZE(value);
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(value);
    if (reserve(b, 3 + 2 * size) < 0)
        return -1;
    char *out = b->data + b->size;
    *out++ = '\\';
    *out++ = '\\';
    *out++ = 'x';
    for (Py_ssize_t i = 0; i < size; i++) {
        *out++ = hex[data[i] >> 4];
        *out++ = hex[data[i] & 15];
    }
    b->size = out - b->data;
    return 0;
}

/* 1 rendered, 0 not this fast path's (the caller gives up), -1 error. */
static int
put_array(Buffer *b, PyObject *value, int of_text)
{
    Py_ssize_t n = PyList_GET_SIZE(value);
    if (n == 0)
        return put(b, "{}", 2) < 0 ? -1 : 1;
    if (put(b, "{", 1) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(value, i);
        if (put(b, i ? ",\"" : "\"", i ? 2 : 1) < 0)
            return -1;
        if (of_text) {
            if (!PyUnicode_CheckExact(item))
                return 0;
            Py_ssize_t size;
            const char *text = PyUnicode_AsUTF8AndSize(item, &size);
            if (text == NULL)
                return -1;
            for (Py_ssize_t j = 0; j < size; j++) {
                char c = text[j];
                if (c == '\\' || c == '"' || c == '\n' || c == '\t' || c == '\r')
                    return 0;
            }
            if (put(b, text, size) < 0)
                return -1;
        }
        else {
            if (!PyLong_CheckExact(item))
                return 0;
            if (put_int(b, item) < 0)
                return -1;
        }
        if (put(b, "\"", 1) < 0)
            return -1;
    }
    return put(b, "}", 1) < 0 ? -1 : 1;
}

/* A datetime (exactly) in UTC (`utc`) or naive: what both formats take for timestamptz and
 * timestamp columns. */
static int
datetime_of(PyObject *value, int utc)
{
    if (!PyDateTime_CheckExact(value))
        return 0;
    PyObject *zone = PyDateTime_DATE_GET_TZINFO(value);
    return utc ? zone == PyDateTime_TimeZone_UTC : zone == Py_None;
}

/* One value of a column of `code`: 1 rendered, 0 not this fast path's, -1 error. */
static int
put_value(Buffer *b, long code, PyObject *value)
{
    if (value == Py_None)
        return put(b, "\\N", 2) < 0 ? -1 : 1;
    switch (code) {
    case CODE_INT:
        if (!PyLong_CheckExact(value))
            return 0;
        return put_int(b, value) < 0 ? -1 : 1;
    case CODE_TEXT:
        if (!PyUnicode_CheckExact(value))
            return 0;
        return put_text(b, value, 1) < 0 ? -1 : 1;
    case CODE_DECIMAL:
        if ((PyObject *)Py_TYPE(value) != decimal_type)
            return 0;
        return put_str_of(b, value, 0) < 0 ? -1 : 1;
    case CODE_FLOAT:
        if (!PyFloat_CheckExact(value) || !isfinite(PyFloat_AS_DOUBLE(value)))
            return 0;
        return put_str_of(b, value, 1) < 0 ? -1 : 1;
    case CODE_TIMESTAMPTZ:
    case CODE_TIMESTAMP: {
        if (!datetime_of(value, code == CODE_TIMESTAMPTZ))
            return 0;
        if (put_date(b, PyDateTime_GET_YEAR(value), PyDateTime_GET_MONTH(value),
                     PyDateTime_GET_DAY(value)) < 0 || put_clock(b, value, 'T') < 0)
            return -1;
        if (code == CODE_TIMESTAMPTZ && put(b, "+00:00", 6) < 0)
            return -1;
        return 1;
    }
    case CODE_DATE:
        if (!PyDate_CheckExact(value))
            return 0;
        return put_date(b, PyDateTime_GET_YEAR(value), PyDateTime_GET_MONTH(value),
                        PyDateTime_GET_DAY(value)) < 0 ? -1 : 1;
    case CODE_BYTES:
        if (!PyBytes_CheckExact(value))
            return 0;
        return put_bytes(b, value) < 0 ? -1 : 1;
    case CODE_BOOL:
        if (!PyBool_Check(value))
            return 0;
        return put(b, value == Py_True ? "t" : "f", 1) < 0 ? -1 : 1;
    case CODE_TEXT_ARRAY:
    case CODE_INT_ARRAY:
        if (!PyList_CheckExact(value))
            return 0;
        return put_array(b, value, code == CODE_TEXT_ARRAY);
    default:
        return 0;
    }
}

/* -- COPY binary ----------------------------------------------------------------------
 *
 *     data = rows_binary(codes, rows, tails)   # bytes of the tuples, or None: COPY text then
 *
 * The tuples of PostgreSQL's binary COPY format, without the header and trailer (the caller
 * sends those once per COPY).  A column's code names the staging column's own type (the
 * server parses binary input only for exactly its type: see copytext._BINARY_CODES, by type
 * OID), and each value must have the one Python type that code encodes; anything else (an int
 * outside int4, a float for real, a datetime in another zone, a str holding NUL, a Decimal
 * NaN or with an exponent beyond 1000, a nested list) makes the call return None, and the
 * rows go as text.  Each tail is one more text column (the row's position).
 */
enum {
    BIN_BOOL = 1,
    BIN_BYTEA = 2,
    BIN_INT2 = 3,
    BIN_INT4 = 4,
    BIN_INT8 = 5,
    BIN_TEXT = 6,          /* text, varchar, bpchar, json: the UTF-8 */
    BIN_JSONB = 7,         /* version 1, then the text */
    BIN_FLOAT8 = 8,
    BIN_NUMERIC = 9,       /* decimal.Decimal, finite */
    BIN_DATE = 10,         /* days since 2000-01-01 */
    BIN_TIMESTAMP = 11,    /* naive datetime: µs since 2000-01-01 00:00 */
    BIN_TIMESTAMPTZ = 12,  /* datetime in UTC: the same */
    BIN_UUID = 13,         /* str, 8-4-4-4-12 hex digits */
    BIN_TEXT_ARRAY = 14,   /* flat list of str, elements of type text */
    BIN_VARCHAR_ARRAY = 15,
    BIN_INT2_ARRAY = 16,
    BIN_INT4_ARRAY = 17,
    BIN_INT8_ARRAY = 18,
};

#define OID_INT2 21
#define OID_INT4 23
#define OID_INT8 20
#define OID_TEXT 25
#define OID_VARCHAR 1043
#define NUMERIC_LIMIT 1000  /* digits and exponent a Decimal may have here */

static void
store16(char *out, unsigned int v)
{
    out[0] = (char)(v >> 8);
    out[1] = (char)v;
}

static void
store32(char *out, unsigned long v)
{
    out[0] = (char)(v >> 24);
    out[1] = (char)(v >> 16);
    out[2] = (char)(v >> 8);
    out[3] = (char)v;
}

static void
store64(char *out, unsigned long long v)
{
    store32(out, (unsigned long)(v >> 32));
    store32(out + 4, (unsigned long)(v & 0xffffffffULL));
}

static int
put32(Buffer *b, unsigned long v)
{
    if (reserve(b, 4) < 0)
        return -1;
    store32(b->data + b->size, v);
    b->size += 4;
    return 0;
}

/* A field of `size` bytes: its length word, then the bytes. */
static int
put_field(Buffer *b, const char *data, Py_ssize_t size)
{
    if (size > 0x7fffffff) {
        PyErr_SetString(PyExc_OverflowError, "a COPY field is limited to 2 GiB");
        return -1;
    }
    if (put32(b, (unsigned long)size) < 0)
        return -1;
    return put(b, data, size);
}

/* A str's UTF-8 with no NUL (the server refuses one; text COPY says so in its own words):
 * 1 and the text, 0 not this path's, -1 error. */
static int
utf8_of(PyObject *value, const char **text, Py_ssize_t *size)
{
    if (!PyUnicode_CheckExact(value))
        return 0;
    *text = PyUnicode_AsUTF8AndSize(value, size);
    if (*text == NULL)
        return -1;
    return memchr(*text, 0, *size) == NULL;
}

/* An int of `bytes` (2, 4, 8) that fits: 1 and the value, 0 not this path's, -1 error. */
static int
int_of(PyObject *value, int bytes, long long *n)
{
    if (!PyLong_CheckExact(value))
        return 0;
    int overflow;
    *n = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow)
        return 0;
    if (*n == -1 && PyErr_Occurred())
        return -1;
    if (bytes == 2)
        return *n >= -32768 && *n <= 32767;
    if (bytes == 4)
        return *n >= -2147483648LL && *n <= 2147483647LL;
    return 1;
}

static int
put_int_field(Buffer *b, long long n, int bytes)
{
    char out[8];
    if (bytes == 2)
        store16(out, (unsigned int)(n & 0xffff));
    else if (bytes == 4)
        store32(out, (unsigned long)(n & 0xffffffffLL));
    else
        store64(out, (unsigned long long)n);
    return put_field(b, out, bytes);
}

/* Days from 2000-01-01 to a proleptic Gregorian date. */
static long long
days_since_2000(int year, int month, int day)
{
    /* Howard Hinnant's days_from_civil, shifted to PostgreSQL's epoch (day 10957 of 1970). */
    long long y = month <= 2 ? year - 1 : year;
    long long era = (y >= 0 ? y : y - 399) / 400;
    long long yoe = y - era * 400;
    long long doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    long long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468 - 10957;
}

/* A finite Decimal in PostgreSQL's numeric binary form: 1, 0 not this path's, -1 error. */
static int
put_numeric(Buffer *b, PyObject *value)
{
    PyObject *str = PyObject_Str(value);
    if (str == NULL)
        return -1;
    Py_ssize_t size;
    const char *text = PyUnicode_AsUTF8AndSize(str, &size);
    if (text == NULL) {
        Py_DECREF(str);
        return -1;
    }
    char digits[NUMERIC_LIMIT + 1];
    int ndigits = 0, fraction = 0, negative = 0, seen_point = 0, result = 0;
    long exponent = 0;
    Py_ssize_t i = 0;
    if (i < size && text[i] == '-') {
        negative = 1;
        i++;
    }
    for (; i < size; i++) {
        char c = text[i];
        if (c >= '0' && c <= '9') {
            if (ndigits == 0 && c == '0') {  /* leading zeros carry nothing */
                fraction += seen_point;
                continue;
            }
            if (ndigits == NUMERIC_LIMIT)
                goto out;
            digits[ndigits++] = (char)(c - '0');
            fraction += seen_point;
        }
        else if (c == '.' && !seen_point)
            seen_point = 1;
        else if (c == 'E' || c == 'e') {
            char *end;
            exponent = strtol(text + i + 1, &end, 10);
            if (end != text + size || end == text + i + 1 || exponent > NUMERIC_LIMIT
                || exponent < -NUMERIC_LIMIT)
                goto out;
            break;
        }
        else
            goto out;  /* NaN, Infinity: as text */
    }
    long scale_exp = exponent - fraction;  /* value = digits * 10^scale_exp */
    if (scale_exp < -NUMERIC_LIMIT || scale_exp > NUMERIC_LIMIT)
        goto out;
    int dscale = scale_exp < 0 ? (int)-scale_exp : 0;
    /* Base-10000 groups: digit k (0 first) stands for 10^p, p = scale_exp + ndigits-1-k. */
    unsigned int groups[NUMERIC_LIMIT / 4 + 3];
    int weight = 0, ngroups = 0;
    if (ndigits) {
        long top = scale_exp + ndigits - 1;
        long first = top >= 0 ? top / 4 : -((-top + 3) / 4);
        long last = scale_exp >= 0 ? scale_exp / 4 : -((-scale_exp + 3) / 4);
        weight = (int)first;
        ngroups = (int)(first - last + 1);
        memset(groups, 0, sizeof(unsigned int) * ngroups);
        static const unsigned int tens[4] = {1, 10, 100, 1000};
        for (int k = 0; k < ndigits; k++) {
            long p = top - k;
            long g = p >= 0 ? p / 4 : -((-p + 3) / 4);
            groups[first - g] += digits[k] * tens[p - 4 * g];
        }
        while (ngroups && groups[ngroups - 1] == 0)
            ngroups--;
    }
    if (put32(b, (unsigned long)(8 + 2 * ngroups)) < 0 || reserve(b, 8 + 2 * ngroups) < 0) {
        result = -1;
        goto out;
    }
    char *o = b->data + b->size;
    store16(o, (unsigned int)ngroups);
    store16(o + 2, (unsigned int)(weight & 0xffff));
    store16(o + 4, negative && ngroups ? 0x4000 : 0);
    store16(o + 6, (unsigned int)dscale);
    for (int g = 0; g < ngroups; g++)
        store16(o + 8 + 2 * g, groups[g]);
    b->size += 8 + 2 * ngroups;
    result = 1;
out:
    Py_DECREF(str);
    return result;
}

static int
hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int
put_uuid(Buffer *b, PyObject *value)
{
    const char *text;
    Py_ssize_t size;
    int ok = utf8_of(value, &text, &size);
    if (ok <= 0)
        return ok;
    if (size != 36)
        return 0;
    char out[16];
    int n = 0;
    for (Py_ssize_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (text[i] != '-')
                return 0;
            continue;
        }
        int high = hex_value(text[i]), low = hex_value(text[i + 1]);
        if (high < 0 || low < 0)
            return 0;
        out[n++] = (char)(high << 4 | low);
        i++;
    }
    return put_field(b, out, 16) < 0 ? -1 : 1;
}

/* A flat list as a one-dimensional array of `element` (an OID): 1, 0, -1 as above. */
static int
put_binary_array(Buffer *b, PyObject *value, unsigned long element)
{
    Py_ssize_t n = PyList_GET_SIZE(value);
    int bytes = element == OID_INT2 ? 2 : element == OID_INT4 ? 4 : element == OID_INT8 ? 8 : 0;
    Py_ssize_t start = b->size;
    if (put32(b, 0) < 0)  /* the length, filled in below */
        return -1;
    Py_ssize_t flags_at = b->size + 4;
    if (put32(b, n ? 1 : 0) < 0 || put32(b, 0) < 0 || put32(b, element) < 0)
        return -1;
    if (n && (put32(b, (unsigned long)n) < 0 || put32(b, 1) < 0))
        return -1;
    int has_null = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(value, i);
        if (item == Py_None) {
            has_null = 1;
            if (put32(b, 0xffffffffUL) < 0)
                return -1;
            continue;
        }
        int ok;
        if (bytes) {
            long long v;
            ok = int_of(item, bytes, &v);
            if (ok > 0 && put_int_field(b, v, bytes) < 0)
                return -1;
        }
        else {
            const char *text;
            Py_ssize_t size;
            ok = utf8_of(item, &text, &size);
            if (ok > 0 && put_field(b, text, size) < 0)
                return -1;
        }
        if (ok <= 0)
            return ok;
    }
    store32(b->data + flags_at, (unsigned long)has_null);
    store32(b->data + start, (unsigned long)(b->size - start - 4));
    return 1;
}

/* One non-NULL value of a column of `code`: 1 written, 0 not this path's, -1 error. */
static int
put_binary(Buffer *b, long code, PyObject *value)
{
    const char *text;
    Py_ssize_t size;
    long long n;
    int ok;
    switch (code) {
    case BIN_BOOL:
        if (!PyBool_Check(value))
            return 0;
        return put_field(b, value == Py_True ? "\1" : "\0", 1) < 0 ? -1 : 1;
    case BIN_BYTEA:
        if (!PyBytes_CheckExact(value))
            return 0;
        return put_field(b, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value)) < 0 ? -1 : 1;
    case BIN_INT2:
    case BIN_INT4:
    case BIN_INT8: {
        int bytes = code == BIN_INT2 ? 2 : code == BIN_INT4 ? 4 : 8;
        ok = int_of(value, bytes, &n);
        if (ok <= 0)
            return ok;
        return put_int_field(b, n, bytes) < 0 ? -1 : 1;
    }
    case BIN_TEXT:
        ok = utf8_of(value, &text, &size);
        if (ok <= 0)
            return ok;
        return put_field(b, text, size) < 0 ? -1 : 1;
    case BIN_JSONB:
        ok = utf8_of(value, &text, &size);
        if (ok <= 0)
            return ok;
        if (put32(b, (unsigned long)(size + 1)) < 0 || put(b, "\1", 1) < 0
            || put(b, text, size) < 0)
            return -1;
        return 1;
    case BIN_FLOAT8: {
        if (!PyFloat_CheckExact(value))
            return 0;
        double d = PyFloat_AS_DOUBLE(value);
        unsigned long long bits;
        memcpy(&bits, &d, 8);
        char out[8];
        store64(out, bits);
        return put_field(b, out, 8) < 0 ? -1 : 1;
    }
    case BIN_NUMERIC:
        if ((PyObject *)Py_TYPE(value) != decimal_type)
            return 0;
        return put_numeric(b, value);
    case BIN_DATE: {
        if (!PyDate_CheckExact(value))
            return 0;
        long long days = days_since_2000(PyDateTime_GET_YEAR(value), PyDateTime_GET_MONTH(value),
                                         PyDateTime_GET_DAY(value));
        return put_int_field(b, days, 4) < 0 ? -1 : 1;
    }
    case BIN_TIMESTAMP:
    case BIN_TIMESTAMPTZ: {
        if (!datetime_of(value, code == BIN_TIMESTAMPTZ))
            return 0;
        long long days = days_since_2000(PyDateTime_GET_YEAR(value), PyDateTime_GET_MONTH(value),
                                         PyDateTime_GET_DAY(value));
        long long seconds = ((days * 24 + PyDateTime_DATE_GET_HOUR(value)) * 60
                             + PyDateTime_DATE_GET_MINUTE(value)) * 60
                            + PyDateTime_DATE_GET_SECOND(value);
        return put_int_field(b, seconds * 1000000 + PyDateTime_DATE_GET_MICROSECOND(value),
                             8) < 0 ? -1 : 1;
    }
    case BIN_UUID:
        return put_uuid(b, value);
    case BIN_TEXT_ARRAY:
    case BIN_VARCHAR_ARRAY:
    case BIN_INT2_ARRAY:
    case BIN_INT4_ARRAY:
    case BIN_INT8_ARRAY: {
        static const unsigned long elements[] = {OID_TEXT, OID_VARCHAR, OID_INT2, OID_INT4,
                                                 OID_INT8};
        if (!PyList_CheckExact(value))
            return 0;
        return put_binary_array(b, value, elements[code - BIN_TEXT_ARRAY]);
    }
    default:
        return 0;
    }
}

/* -- the rows ---------------------------------------------------------------------------
 *
 * Both formats walk the rows alike: `codes` a non-empty tuple of ints (one per column), `rows`
 * a sequence of iterables of values in column order (a row's dict values), `tails` a sequence
 * of str, one more column of each row (empty: none).  A row of another length, a value its
 * column's code does not take (0 from `value`), a tail that is not plain str: None, and the
 * caller renders the rows another way.
 */
typedef struct {
    const char *usage;
    Py_ssize_t nargs;  /* 3, or 4: a fourth, the size at which a chunk of rows ends */
    /* One value (None included) of column `column`: 1 written, 0 not this path's, -1 error. */
    int (*value)(Buffer *b, long code, PyObject *value, Py_ssize_t column);
    int (*row_start)(Buffer *b, Py_ssize_t nfields);  /* 0, or -1 error */
    int (*tail)(Buffer *b, PyObject *tail);  /* as value */
    int (*row_end)(Buffer *b);  /* 0, or -1 error */
    PyObject *(*result)(Buffer *b);
} Format;

#define MAX_COLUMNS 1600  /* PostgreSQL's own limit */

static PyObject *
render_rows(const Format *format, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != format->nargs) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", format->usage, format->nargs);
        return NULL;
    }
    Buffer b = {NULL, 0, 0, NULL, 0};
    if (nargs == 4) {
        b.limit = PyLong_AsSsize_t(args[3]);
        if (b.limit == -1 && PyErr_Occurred())
            return NULL;
        if (b.limit <= 0) {
            PyErr_SetString(PyExc_ValueError, "limit must be positive");
            return NULL;
        }
    }
    PyObject *codes = args[0];
    if (!PyTuple_Check(codes) || PyTuple_GET_SIZE(codes) == 0) {
        PyErr_SetString(PyExc_TypeError, "codes must be a non-empty tuple of ints");
        return NULL;
    }
    Py_ssize_t ncols = PyTuple_GET_SIZE(codes);
    long code_of[MAX_COLUMNS];
    if (ncols > MAX_COLUMNS)
        Py_RETURN_NONE;
    for (Py_ssize_t c = 0; c < ncols; c++) {
        code_of[c] = PyLong_AsLong(PyTuple_GET_ITEM(codes, c));
        if (code_of[c] == -1 && PyErr_Occurred())
            return NULL;
    }
    PyObject *rows = PySequence_Fast(args[1], "rows must be a sequence");
    if (rows == NULL)
        return NULL;
    PyObject *tails = PySequence_Fast(args[2], "tails must be a sequence");
    if (tails == NULL) {
        Py_DECREF(rows);
        return NULL;
    }
    Py_ssize_t nrows = PySequence_Fast_GET_SIZE(rows);
    Py_ssize_t ntails = PySequence_Fast_GET_SIZE(tails);
    PyObject *result = NULL;
    if (ntails && ntails != nrows)
        goto fallback;  /* Python's zip(strict=True) says what is wrong */
    for (Py_ssize_t r = 0; r < nrows; r++) {
        if (format->row_start(&b, ncols + (ntails ? 1 : 0)) < 0)
            goto done;
        PyObject *it = PyObject_GetIter(PySequence_Fast_GET_ITEM(rows, r));
        if (it == NULL)
            goto done;
        for (Py_ssize_t c = 0; c <= ncols; c++) {
            PyObject *value = PyIter_Next(it);
            if (c == ncols) {  /* one more: a row longer than the columns */
                Py_DECREF(it);
                if (value != NULL) {
                    Py_DECREF(value);
                    goto fallback;
                }
                if (PyErr_Occurred())
                    goto done;
                break;
            }
            if (value == NULL) {
                Py_DECREF(it);
                if (PyErr_Occurred())
                    goto done;
                goto fallback;  /* a row shorter than the columns */
            }
            int written = format->value(&b, code_of[c], value, c);
            Py_DECREF(value);
            if (written < 0 && PyErr_ExceptionMatches(PyExc_UnicodeError)) {
                PyErr_Clear();  /* a lone surrogate: Python's path has the say on it */
                written = 0;
            }
            if (written <= 0) {
                Py_DECREF(it);
                if (written < 0)
                    goto done;
                goto fallback;
            }
        }
        if (ntails) {
            int written = format->tail(&b, PySequence_Fast_GET_ITEM(tails, r));
            if (written < 0 && PyErr_ExceptionMatches(PyExc_UnicodeError)) {
                PyErr_Clear();
                written = 0;
            }
            if (written < 0)
                goto done;
            if (written == 0)
                goto fallback;
        }
        if (format->row_end(&b) < 0)
            goto done;
        if ((r & 255) == 255) {
            /* Let a writer thread that waits for the GIL (its socket answered) run. */
            Py_BEGIN_ALLOW_THREADS
            Py_END_ALLOW_THREADS
        }
    }
    result = format->result(&b);
    goto done;
fallback:
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(b.data);
    Py_XDECREF(b.chunks);
    Py_DECREF(rows);
    Py_DECREF(tails);
    return result;
}

static int
text_value(Buffer *b, long code, PyObject *value, Py_ssize_t column)
{
    if (column && put(b, "\t", 1) < 0)
        return -1;
    return put_value(b, code, value);
}

static int
text_row_start(Buffer *b, Py_ssize_t nfields)
{
    (void)b;
    (void)nfields;
    return 0;
}

static int
text_tail(Buffer *b, PyObject *tail)
{
    if (!PyUnicode_Check(tail))
        return 0;
    if (put(b, "\t", 1) < 0 || put_text(b, tail, 0) < 0)
        return -1;
    return 1;
}

static int
text_row_end(Buffer *b)
{
    return put(b, "\n", 1);
}

static PyObject *
text_result(Buffer *b)
{
    return PyUnicode_DecodeUTF8(b->data ? b->data : "", b->size, "strict");
}

static const Format text_format = {"rows_text(codes, rows, tails)", 3, text_value,
                                   text_row_start, text_tail, text_row_end, text_result};

static PyObject *
rows_text(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return render_rows(&text_format, args, nargs);
}

static int
binary_value(Buffer *b, long code, PyObject *value, Py_ssize_t column)
{
    (void)column;
    if (value == Py_None)
        return put32(b, 0xffffffffUL) < 0 ? -1 : 1;
    return put_binary(b, code, value);
}

static int
binary_row_start(Buffer *b, Py_ssize_t nfields)
{
    if (reserve(b, 2) < 0)
        return -1;
    store16(b->data + b->size, (unsigned int)nfields);
    b->size += 2;
    return 0;
}

static int
binary_tail(Buffer *b, PyObject *tail)
{
    return put_binary(b, BIN_TEXT, tail);  /* the position: a text column */
}

static int
binary_row_end(Buffer *b)
{
    (void)b;
    return 0;
}

static PyObject *
binary_result(Buffer *b)
{
    return PyBytes_FromStringAndSize(b->data ? b->data : "", b->size);
}

static const Format binary_format = {"rows_binary(codes, rows, tails)", 3, binary_value,
                                     binary_row_start, binary_tail, binary_row_end,
                                     binary_result};

static PyObject *
rows_binary(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return render_rows(&binary_format, args, nargs);
}

/* -- MariaDB/MySQL VALUES tuples ------------------------------------------------------------
 *
 *     chunks = rows_sql(codes, rows, tails, limit)   # [str], or None: Python renders them
 *
 * Each row as `(v1, v2, …, tail)`, SQL literals for a session whose sql_mode keeps backslash
 * escapes; the rows joined by ", " into chunks, a new one begun once a chunk holds `limit`
 * bytes (one statement each).  A column's code (LIT_*, kept in step with mysql._LITERAL_CODES)
 * names the one Python type its values may have; any other value (a float that is not
 * finite, a Decimal with more digits after the point than its column keeps, an aware time, a
 * list holding a float or a list) makes the call return None, and mysql.py's column-wise
 * paths render the rows, raising what they raise.  A tail is appended as is: the caller's
 * own literals (the row's position).
 */
enum {
    LIT_INT = 1,           /* int: its digits */
    LIT_TEXT = 2,          /* str: quoted, backslash, quote and NUL escaped */
    LIT_DECIMAL = 3,       /* finite decimal.Decimal: format(value, 'f') */
    LIT_FLOAT = 4,         /* finite float: repr(), with 'e0' when it has no exponent */
    LIT_DATETIME = 5,      /* naive datetime: 'YYYY-MM-DD HH:MM:SS[.ffffff]' */
    LIT_DATETIME_UTC = 6,  /* datetime in UTC: the same, without the offset */
    LIT_DATE = 7,          /* date: 'YYYY-MM-DD' */
    LIT_TIME = 8,          /* naive time: 'HH:MM:SS[.ffffff]' */
    LIT_BYTES = 9,         /* bytes: _binary X'hex' */
    LIT_BOOL = 10,         /* bool: 1 or 0 */
    LIT_JSON_ARRAY = 11,   /* flat list of str, int, bool, None: quoted JSON as json.dumps */
    LIT_DECIMAL_SCALE = 1000,  /* + scale: a Decimal with at most that many digits after . */
};

static PyObject *f_format;  /* "f", for Decimal.__format__ */

/* Inside '…', what MariaDB needs escaped (NUL too, as pymysql does). */
static Escapes sql_escapes = {['\\'] = "\\\\", ['\''] = "\\'", [0] = "\\0"};

/* What json.dumps(ensure_ascii=False) escapes in a string. */
static Escapes json_escapes = {
    ['"'] = "\\\"", ['\\'] = "\\\\", ['\n'] = "\\n", ['\r'] = "\\r", ['\t'] = "\\t",
    ['\b'] = "\\b", ['\f'] = "\\f",
    [0x00] = "\\u0000", [0x01] = "\\u0001", [0x02] = "\\u0002", [0x03] = "\\u0003",
    [0x04] = "\\u0004", [0x05] = "\\u0005", [0x06] = "\\u0006", [0x07] = "\\u0007",
    [0x0b] = "\\u000b", [0x0e] = "\\u000e", [0x0f] = "\\u000f", [0x10] = "\\u0010",
    [0x11] = "\\u0011", [0x12] = "\\u0012", [0x13] = "\\u0013", [0x14] = "\\u0014",
    [0x15] = "\\u0015", [0x16] = "\\u0016", [0x17] = "\\u0017", [0x18] = "\\u0018",
    [0x19] = "\\u0019", [0x1a] = "\\u001a", [0x1b] = "\\u001b", [0x1c] = "\\u001c",
    [0x1d] = "\\u001d", [0x1e] = "\\u001e", [0x1f] = "\\u001f",
};

/* `text` quoted as a string literal. */
static int
put_quoted(Buffer *b, const char *text, Py_ssize_t size)
{
    if (put(b, "'", 1) < 0 || put_escaped(b, text, size, sql_escapes, 2) < 0)
        return -1;
    return put(b, "'", 1);
}

/* A str as a JSON string, as json.dumps(ensure_ascii=False) writes it. */
static int
put_json_string(Buffer *b, const char *text, Py_ssize_t size)
{
    if (put(b, "\"", 1) < 0 || put_escaped(b, text, size, json_escapes, 6) < 0)
        return -1;
    return put(b, "\"", 1);
}

/* The JSON of a flat list, quoted: 1 written, 0 not this path's, -1 error. */
static int
put_json_array(Buffer *b, PyObject *value)
{
    Py_ssize_t start = b->size;
    if (put(b, "'[", 2) < 0)
        return -1;
    for (Py_ssize_t i = 0, n = PyList_GET_SIZE(value); i < n; i++) {
        PyObject *item = PyList_GET_ITEM(value, i);
        int failed;
        if (i && put(b, ", ", 2) < 0)
            return -1;
        if (item == Py_None)
            failed = put(b, "null", 4);
        else if (PyBool_Check(item))
            failed = item == Py_True ? put(b, "true", 4) : put(b, "false", 5);
        else if (PyLong_CheckExact(item))
            failed = put_int(b, item);
        else if (PyUnicode_CheckExact(item)) {
            Py_ssize_t size;
            const char *text = PyUnicode_AsUTF8AndSize(item, &size);
            failed = text == NULL ? -1 : put_json_string(b, text, size);
        }
        else
            return 0;  /* a float, a nested list, …: json.dumps and mysql.py decide */
        if (failed < 0)
            return -1;
    }
    if (put(b, "]'", 2) < 0)
        return -1;
    /* Quoted for SQL in place: the JSON has no NUL, but has backslashes and maybe quotes. */
    Py_ssize_t extra = 0;
    for (Py_ssize_t i = start + 1; i < b->size - 1; i++)
        extra += b->data[i] == '\\' || b->data[i] == '\'';
    if (extra == 0)
        return 1;
    if (reserve(b, extra) < 0)
        return -1;
    char *in = b->data + b->size - 1, *out = in + extra;
    *out-- = *in--;  /* the closing quote */
    while (out > in) {
        char c = *in--;
        *out-- = c;
        if (c == '\\' || c == '\'')
            *out-- = '\\';
    }
    b->size += extra;
    return 1;
}

/* 'YYYY-MM-DD HH:MM:SS[.ffffff]' of a datetime, quoted. */
static int
put_datetime_literal(Buffer *b, PyObject *value)
{
    if (put(b, "'", 1) < 0
        || put_date(b, PyDateTime_GET_YEAR(value), PyDateTime_GET_MONTH(value),
                    PyDateTime_GET_DAY(value)) < 0
        || put_clock(b, value, ' ') < 0)
        return -1;
    return put(b, "'", 1);
}

static int
put_literal(Buffer *b, long code, PyObject *value)
{
    switch (code) {
    case LIT_INT:
        if (!PyLong_CheckExact(value))
            return 0;
        return put_int(b, value) < 0 ? -1 : 1;
    case LIT_TEXT: {
        if (!PyUnicode_CheckExact(value))
            return 0;
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(value, &size);
        if (text == NULL)
            return -1;
        return put_quoted(b, text, size) < 0 ? -1 : 1;
    }
    case LIT_FLOAT: {
        if (!PyFloat_CheckExact(value) || !isfinite(PyFloat_AS_DOUBLE(value)))
            return 0;
        Py_ssize_t start = b->size;
        if (put_str_of(b, value, 1) < 0)
            return -1;
        if (memchr(b->data + start, 'e', b->size - start) == NULL && put(b, "e0", 2) < 0)
            return -1;
        return 1;
    }
    case LIT_DATETIME:
    case LIT_DATETIME_UTC:
        if (!datetime_of(value, code == LIT_DATETIME_UTC))
            return 0;
        return put_datetime_literal(b, value) < 0 ? -1 : 1;
    case LIT_DATE:
        if (!PyDate_CheckExact(value))
            return 0;
        if (put(b, "'", 1) < 0
            || put_date(b, PyDateTime_GET_YEAR(value), PyDateTime_GET_MONTH(value),
                        PyDateTime_GET_DAY(value)) < 0)
            return -1;
        return put(b, "'", 1) < 0 ? -1 : 1;
    case LIT_TIME: {
        if (!PyTime_CheckExact(value) || PyDateTime_TIME_GET_TZINFO(value) != Py_None)
            return 0;
        char text[17] = "'HH:MM:SS.ffffff";
        int us = PyDateTime_TIME_GET_MICROSECOND(value);
        digits_at(text + 1, (unsigned long)PyDateTime_TIME_GET_HOUR(value), 2);
        digits_at(text + 4, (unsigned long)PyDateTime_TIME_GET_MINUTE(value), 2);
        digits_at(text + 7, (unsigned long)PyDateTime_TIME_GET_SECOND(value), 2);
        digits_at(text + 10, (unsigned long)us, 6);
        if (put(b, text, us ? 16 : 9) < 0)
            return -1;
        return put(b, "'", 1) < 0 ? -1 : 1;
    }
    case LIT_BYTES: {
        static const char hex[] = "0123456789abcdef";
        if (!PyBytes_CheckExact(value))
            return 0;
        Py_ssize_t size = PyBytes_GET_SIZE(value);
        const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(value);
        if (reserve(b, 11 + 2 * size) < 0)
            return -1;
        char *out = b->data + b->size;
        memcpy(out, "_binary X'", 10);
        out += 10;
        for (Py_ssize_t i = 0; i < size; i++) {
            *out++ = hex[data[i] >> 4];
            *out++ = hex[data[i] & 15];
        }
        *out++ = '\'';
        b->size = out - b->data;
        return 1;
    }
    case LIT_BOOL:
        if (!PyBool_Check(value))
            return 0;
        return put(b, value == Py_True ? "1" : "0", 1) < 0 ? -1 : 1;
    case LIT_JSON_ARRAY:
        if (!PyList_CheckExact(value))
            return 0;
        return put_json_array(b, value);
    default:
        break;
    }
    if (code != LIT_DECIMAL && (code < LIT_DECIMAL_SCALE || code > LIT_DECIMAL_SCALE + 1000))
        return 0;
    if ((PyObject *)Py_TYPE(value) != decimal_type)
        return 0;
    /* str() is format(value, 'f') but for exponents it writes with an E: ~4x cheaper. */
    PyObject *text = PyObject_Str(value);
    if (text == NULL)
        return -1;
    Py_ssize_t size;
    const char *digits = PyUnicode_AsUTF8AndSize(text, &size);
    if (digits != NULL && memchr(digits, 'E', size) != NULL) {
        Py_SETREF(text, PyObject_Format(value, f_format));
        if (text == NULL)
            return -1;
        digits = PyUnicode_AsUTF8AndSize(text, &size);
    }
    int written = digits == NULL ? -1 : 1;
    if (written == 1) {
        const char *point = memchr(digits, '.', size);
        if ((code != LIT_DECIMAL && point != NULL
             && size - (point - digits) - 1 > code - LIT_DECIMAL_SCALE)
            || (Py_ssize_t)strspn(digits, "-0123456789.") != size)  /* NaN, ±Infinity */
            written = 0;  /* more digits than the column keeps, or not finite */
        else if (put(b, digits, size) < 0)
            written = -1;
    }
    Py_DECREF(text);
    return written;
}

/* Ends the chunk being written as a str of `chunks`; -1 on error. */
static int
end_chunk(Buffer *b)
{
    PyObject *text = PyUnicode_DecodeUTF8(b->data, b->size, "strict");
    if (text == NULL)
        return -1;
    int failed = PyList_Append(b->chunks, text);
    Py_DECREF(text);
    b->size = 0;
    return failed;
}

static int
sql_value(Buffer *b, long code, PyObject *value, Py_ssize_t column)
{
    if (column && put(b, ", ", 2) < 0)
        return -1;
    if (value == Py_None)
        return put(b, "NULL", 4) < 0 ? -1 : 1;
    return put_literal(b, code, value);
}

static int
sql_row_start(Buffer *b, Py_ssize_t nfields)
{
    (void)nfields;
    if (b->chunks == NULL && (b->chunks = PyList_New(0)) == NULL)
        return -1;
    if (b->size >= b->limit && end_chunk(b) < 0)
        return -1;
    return put(b, b->size ? ", (" : "(", b->size ? 3 : 1);
}

static int
sql_tail(Buffer *b, PyObject *tail)
{
    if (!PyUnicode_CheckExact(tail))
        return 0;
    if (b->data[b->size - 1] != '(' && put(b, ", ", 2) < 0)
        return -1;
    return put_text(b, tail, 0) < 0 ? -1 : 1;
}

static int
sql_row_end(Buffer *b)
{
    return put(b, ")", 1);
}

static PyObject *
sql_result(Buffer *b)
{
    if (b->chunks == NULL)
        return PyList_New(0);
    if (b->size && end_chunk(b) < 0)
        return NULL;
    PyObject *chunks = b->chunks;
    b->chunks = NULL;
    return chunks;
}

static const Format sql_format = {"rows_sql(codes, rows, tails, limit)", 4, sql_value,
                                  sql_row_start, sql_tail, sql_row_end, sql_result};

static PyObject *
rows_sql(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return render_rows(&sql_format, args, nargs);
}

static PyMethodDef copytext_methods[] = {
    {"rows_text", (PyCFunction)(void (*)(void))rows_text, METH_FASTCALL,
     "rows_text(codes, rows, tails) -> str | None\n\nCOPY text of rows whose values all have "
     "the types their columns' codes expect; None for Python to render them."},
    {"rows_binary", (PyCFunction)(void (*)(void))rows_binary, METH_FASTCALL,
     "rows_binary(codes, rows, tails) -> bytes | None\n\nBinary COPY tuples of rows whose "
     "values all have the types their columns' codes encode; None for COPY text."},
    {"rows_sql", (PyCFunction)(void (*)(void))rows_sql, METH_FASTCALL,
     "rows_sql(codes, rows, tails, limit) -> list[str] | None\n\nMariaDB/MySQL VALUES "
     "tuples of rows whose values all have the types their columns' codes take, joined into "
     "chunks of about limit bytes; None for Python to render them."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef copytext_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "transforms.sinks.sql._copytext",
    .m_doc = "Rows of Python values as COPY text, binary COPY and SQL VALUES tuples (the SQL "
              "sinks' fast paths).",
    .m_size = -1,
    .m_methods = copytext_methods,
};

PyMODINIT_FUNC
PyInit__copytext(void)
{
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return NULL;
    PyObject *decimal = PyImport_ImportModule("decimal");
    if (decimal == NULL)
        return NULL;
    decimal_type = PyObject_GetAttrString(decimal, "Decimal");
    Py_DECREF(decimal);
    if (decimal_type == NULL)
        return NULL;
    f_format = PyUnicode_InternFromString("f");
    if (f_format == NULL)
        return NULL;
    return PyModule_Create(&copytext_module);
}
