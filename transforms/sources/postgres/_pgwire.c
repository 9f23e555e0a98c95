/*
 * _pgwire: the pgoutput TupleData fast paths of pgtypes.wire_row_decoder and
 * pgtypes.wire_row_renderer, in C.
 *
 * decode_tuple(names, modes, parsers, buf, offset) reads the TupleData that starts at
 * buf[offset] (a 2-byte column count, then per column a kind byte: 't' text with a 4-byte
 * big-endian length, or 'n' null) and returns (row, end offset), or None whenever the tuple is
 * anything else.  It must give exactly what the Python decoder that pgtypes generates gives,
 * value for value and type for type; that decoder stays the reference and the fallback when
 * this module was not built.  The per-relation plan (names, modes, parsers) comes first so that
 * functools.partial can bind it once:
 *
 *     decode = functools.partial(decode_tuple, names, modes, parsers)
 *     row, end = decode(frame, 6) or (None, None)
 *
 * render_tuple(keys, modes, buf, offset) reads the same TupleData straight to the bytes of its
 * JSON object, (json, end offset): exactly what debezium_row_json gives for decode_tuple's row,
 * for the few column types whose JSON form is plain to write (the MODE_* comments below).  It
 * declines (None) whenever decode_tuple would, and whenever a value is not in the one text form
 * it is sure of; the caller then decodes and encodes in Python, which is the reference.  It
 * calls no Python code: its only error is a MemoryError, which it raises.
 *
 * render_doc(keys, modes, buf, offset, parts, values) writes a whole document around that JSON:
 * parts[0], the row, parts[1], values[0], parts[2], ... values[-1], parts[-1], each value an int
 * (in decimal) or bytes (as they are).  It declines as render_tuple does, and also when anything
 * follows the tuple in buf.  ChangeAssembler.render_into fills a change's Debezium document with
 * it: one call where a Python %-format of nine values cost twice the row's rendering.
 *
 * The buffer comes off the network, so nothing about it is trusted: every read is checked
 * against its length first, and every write into the JSON against the room reserved for it.
 * None means "take the general path", which gives the same row or the precise error.  As in
 * the Python decoder, an Exception raised in decode_tuple while converting a value becomes
 * None; a BaseException that is not an Exception (KeyboardInterrupt) propagates.  Bad
 * *arguments* (a plan of the wrong shape) are programming errors and raise.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

/* Mode bytes, one per column; pgtypes.py builds them (keep the two in step). */
#define MODE_TEXT 's'        /* UTF-8 -> str; rendered as a JSON string */
#define MODE_INT 'i'         /* int(bytes); rendered as the number */
#define MODE_BOOL 'b'        /* 't' / 'f' -> True / False; rendered as true / false */
#define MODE_TIMESTAMPTZ 'z' /* 'YYYY-MM-DD HH:MM:SS[.ffffff]+00' natively, else the parser;
                              * rendered (UTC only) as "YYYY-MM-DDTHH:MM:SS[.ffffff]Z" */
#define MODE_CALL 'c'        /* parsers[i](str); decode_tuple only */
#define MODE_DECIMAL 'd'     /* render_tuple only: numeric as the JSON string of Decimal's str */

/* Up to 18 digits always fit in a signed 64-bit integer (10**18 - 1 < 2**63). */
#define INT_FAST_DIGITS 18
/* Integer text up to this size is copied on the stack for PyLong_FromString; longer on the heap. */
#define INT_STACK_COPY 64

/*
 * Conversions return a new reference, or NULL.  NULL with an exception set is an error (the
 * caller decides whether it declines or propagates); NULL without one is a plain decline.
 */

static PyObject *
decode_text(const char *data, Py_ssize_t size)
{
    /* Strict UTF-8, as bytes.decode(): invalid input raises UnicodeDecodeError. */
    return PyUnicode_DecodeUTF8(data, size, NULL);
}

static PyObject *
decode_int(const char *data, Py_ssize_t size)
{
    const char *p = data;
    const char *end = data + size;
    int negative = 0;

    /* Fast path: optional sign, then 1 to 18 ASCII digits and nothing else. */
    if (p < end && (*p == '+' || *p == '-')) {
        negative = (*p == '-');
        p++;
    }
    Py_ssize_t digits = end - p;
    if (digits >= 1 && digits <= INT_FAST_DIGITS) {
        long long value = 0;
        for (; p < end; p++) {
            if (*p < '0' || *p > '9') {
                break;
            }
            value = value * 10 + (*p - '0');
        }
        if (p == end) {
            return PyLong_FromLongLong(negative ? -value : value);
        }
    }

    /*
     * Anything else: what int(bytes) does, i.e. PyLong_FromString on a NUL-terminated copy
     * that must be consumed whole.  So ' 5', '1_000' and 19+ digits give the same int as the
     * Python decoder, and an embedded NUL, junk or more than sys.get_int_max_str_digits()
     * digits the same ValueError.  The copy is exactly the field, never more.
     */
    char stack_copy[INT_STACK_COPY];
    char *copy = stack_copy;
    if (size >= INT_STACK_COPY) {
        copy = PyMem_Malloc((size_t)size + 1);
        if (copy == NULL) {
            return PyErr_NoMemory();
        }
    }
    memcpy(copy, data, (size_t)size);
    copy[size] = '\0';

    char *parsed_end = NULL;
    PyObject *result = PyLong_FromString(copy, &parsed_end, 10);
    if (result != NULL && parsed_end != copy + size) {
        /* Stopped early at an embedded NUL: int() rejects that, and so do we. */
        Py_DECREF(result);
        result = NULL;
        PyErr_SetString(PyExc_ValueError, "invalid literal for int() with base 10");
    }
    if (copy != stack_copy) {
        PyMem_Free(copy);
    }
    return result;
}

static PyObject *
decode_bool(const char *data, Py_ssize_t size)
{
    /* Python decodes then calls _parse_bool: only 't' and 'f' are values. */
    if (size == 1 && data[0] == 't') {
        Py_RETURN_TRUE;
    }
    if (size == 1 && data[0] == 'f') {
        Py_RETURN_FALSE;
    }
    return NULL;
}

static PyObject *
call_parser(PyObject *parser, const char *data, Py_ssize_t size)
{
    PyObject *text = decode_text(data, size);
    if (text == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_CallOneArg(parser, text);
    Py_DECREF(text);
    return value;
}

/* Two ASCII digits at p as a number, or -1. */
static int
two_digits(const char *p)
{
    if (p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9') {
        return -1;
    }
    return (p[0] - '0') * 10 + (p[1] - '0');
}

static int
days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (month == 2 && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)) {
        return 29;
    }
    return days[month - 1];
}

/* The fields of a timestamp, as datetime takes them. */
typedef struct {
    int year, month, day, hour, minute, second, microsecond;
} timestamp_fields;

/*
 * Whether data is the shape timestamptz_out prints with TimeZone UTC, a valid instant, and if
 * so its fields: 'YYYY-MM-DD HH:MM:SS', an optional '.' and 1 to 6 fraction digits (trailing
 * zeros dropped), then '+00'.  Anything else (another offset, 'infinity', BC, a five-digit
 * year, an impossible date) is left to the Python parser, so those cases are the reference's
 * by construction.
 */
static int
parse_utc_timestamp(const char *p, Py_ssize_t size, timestamp_fields *out)
{
    /* 22 = 19 for the date and time + 3 for '+00'; 29 adds '.' and 6 digits; 23 would be a
     * '.' with no digits. */
    if (size < 22 || size > 29 || size == 23) {
        return 0;
    }
    if (p[4] != '-' || p[7] != '-' || p[10] != ' ' || p[13] != ':' || p[16] != ':') {
        return 0;
    }
    if (p[size - 3] != '+' || p[size - 2] != '0' || p[size - 1] != '0') {
        return 0;
    }
    int century = two_digits(p), year_in_century = two_digits(p + 2);
    if (century < 0 || year_in_century < 0) {
        return 0;
    }
    out->year = century * 100 + year_in_century;
    out->month = two_digits(p + 5);
    out->day = two_digits(p + 8);
    out->hour = two_digits(p + 11);
    out->minute = two_digits(p + 14);
    out->second = two_digits(p + 17);
    /* The ranges datetime takes (a -1 from two_digits fails them too); fromisoformat rejects
     * the rest (year 0, 24:00, a leap second) and so does the Python parser. */
    if (out->year < 1 || out->month < 1 || out->month > 12 || out->day < 1
            || out->day > days_in_month(out->year, out->month)
            || out->hour < 0 || out->hour > 23 || out->minute < 0 || out->minute > 59
            || out->second < 0 || out->second > 59) {
        return 0;
    }
    out->microsecond = 0;
    Py_ssize_t fraction_end = size - 3; /* the '+' */
    if (fraction_end > 19) {
        if (p[19] != '.') {
            return 0;
        }
        /* 'SS.5' is half a second: the digits are padded on the right to six. */
        int scale = 100000;
        for (Py_ssize_t i = 20; i < fraction_end; i++) {
            if (p[i] < '0' || p[i] > '9') {
                return 0;
            }
            out->microsecond += (p[i] - '0') * scale;
            scale /= 10;
        }
    }
    return 1;
}

static PyObject *
decode_timestamptz(PyObject *parser, const char *data, Py_ssize_t size)
{
    timestamp_fields t;
    if (!parse_utc_timestamp(data, size, &t)) {
        return call_parser(parser, data, size);
    }
    /* tzinfo is the datetime.timezone.utc singleton, as fromisoformat gives for '+00:00'. */
    return PyDateTimeAPI->DateTime_FromDateAndTime(
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond,
        PyDateTime_TimeZone_UTC, PyDateTimeAPI->DateTimeType);
}

/* Big-endian unsigned 32-bit integer at p (the caller checked that 4 bytes are there). */
static uint32_t
read_u32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8)
        | (uint32_t)p[3];
}

/*
 * Where the values of the TupleData at buf[offset] start: 1 with *pos set, 0 to decline (an
 * offset out of range, a count that is not `columns`), -1 with an exception set (buf not bytes,
 * offset not an int).  `function` names the caller in the TypeError.
 */
static int
tuple_start(const char *function, PyObject *buf, PyObject *offset_arg, Py_ssize_t columns,
            Py_ssize_t *pos)
{
    if (!PyBytes_Check(buf)) {
        PyErr_Format(PyExc_TypeError, "%s: buf must be bytes, not %.100s", function,
                     Py_TYPE(buf)->tp_name);
        return -1;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(offset_arg);
    if (offset == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return -1; /* not an int at all */
        }
        PyErr_Clear(); /* an int too large to be an offset: out of range */
        return 0;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(buf);
    const Py_ssize_t size = PyBytes_GET_SIZE(buf);
    /*
     * A negative offset is out of range here.  (The Python decoder would index from the end
     * instead; no caller passes one.)
     */
    if (offset < 0 || size - offset < 2) {
        return 0;
    }
    if (((Py_ssize_t)data[offset] << 8 | data[offset + 1]) != columns) {
        return 0;
    }
    *pos = offset + 2;
    return 1;
}

/*
 * The value of a TupleData at data[*pos]: 'n' for a null, 't' for a text value (*length bytes
 * at *text), or 0 to decline: 'u' (unchanged TOAST), 'b' (binary), garbage, or a value that
 * runs past the end.  *pos moves past the value.
 */
static int
next_value(const unsigned char *data, Py_ssize_t size, Py_ssize_t *pos, const char **text,
           Py_ssize_t *length)
{
    Py_ssize_t at = *pos;
    if (at >= size) {
        return 0;
    }
    if (data[at] == 'n') {
        *pos = at + 1;
        return 'n';
    }
    if (data[at] != 't' || size - at < 5) {
        return 0;
    }
    uint32_t value_length = read_u32(data + at + 1);
    at += 5;
    /* Compared unsigned and wide: a 4 GB length cannot wrap round. */
    if ((uint64_t)value_length > (uint64_t)(size - at)) {
        return 0;
    }
    *text = (const char *)data + at;
    *length = (Py_ssize_t)value_length;
    *pos = at + *length;
    return 't';
}

static PyObject *
decode_tuple(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError,
                     "decode_tuple expected 5 arguments (names, modes, parsers, buf, offset),"
                     " got %zd", nargs);
        return NULL;
    }
    PyObject *names = args[0], *modes = args[1], *parsers = args[2];
    PyObject *buf = args[3], *offset_arg = args[4];

    /* The plan is checked on every call: it costs a few compares per column, and a wrong one
     * would read out of bounds below. */
    if (!PyTuple_Check(names) || !PyBytes_Check(modes) || !PyTuple_Check(parsers)) {
        PyErr_SetString(PyExc_TypeError,
                        "decode_tuple: names and parsers must be tuples, modes bytes");
        return NULL;
    }
    Py_ssize_t columns = PyTuple_GET_SIZE(names);
    if (PyBytes_GET_SIZE(modes) != columns || PyTuple_GET_SIZE(parsers) != columns) {
        PyErr_Format(PyExc_ValueError,
                     "decode_tuple: %zd names but %zd modes and %zd parsers", columns,
                     PyBytes_GET_SIZE(modes), PyTuple_GET_SIZE(parsers));
        return NULL;
    }
    const char *mode_bytes = PyBytes_AS_STRING(modes);
    for (Py_ssize_t i = 0; i < columns; i++) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(names, i))) {
            PyErr_Format(PyExc_TypeError, "decode_tuple: the name of column %zd is not a str", i);
            return NULL;
        }
        char mode = mode_bytes[i];
        if (mode != MODE_TEXT && mode != MODE_INT && mode != MODE_BOOL
                && mode != MODE_TIMESTAMPTZ && mode != MODE_CALL) {
            PyErr_Format(PyExc_ValueError, "decode_tuple: unknown mode byte %d for column %zd",
                         (int)(unsigned char)mode, i);
            return NULL;
        }
        if ((mode == MODE_TIMESTAMPTZ || mode == MODE_CALL)
                && !PyCallable_Check(PyTuple_GET_ITEM(parsers, i))) {
            PyErr_Format(PyExc_TypeError, "decode_tuple: the parser of column %zd is not callable",
                         i);
            return NULL;
        }
    }
    Py_ssize_t pos;
    int start = tuple_start("decode_tuple", buf, offset_arg, columns, &pos);
    if (start <= 0) {
        return start < 0 ? NULL : Py_NewRef(Py_None);
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(buf);
    const Py_ssize_t size = PyBytes_GET_SIZE(buf);

    PyObject *row = PyDict_New(), *end, *result;
    if (row == NULL) {
        goto error;
    }
    for (Py_ssize_t i = 0; i < columns; i++) {
        PyObject *value;
        const char *text = NULL;
        Py_ssize_t text_size = 0;
        int kind = next_value(data, size, &pos, &text, &text_size);
        if (kind == 'n') {
            value = Py_NewRef(Py_None);
        }
        else if (kind == 't') {
            PyObject *parser = PyTuple_GET_ITEM(parsers, i);
            switch (mode_bytes[i]) {
            case MODE_TEXT:
                value = decode_text(text, text_size);
                break;
            case MODE_INT:
                value = decode_int(text, text_size);
                break;
            case MODE_BOOL:
                value = decode_bool(text, text_size);
                break;
            case MODE_TIMESTAMPTZ:
                value = decode_timestamptz(parser, text, text_size);
                break;
            case MODE_CALL:
                value = call_parser(parser, text, text_size);
                break;
            default: /* unreachable: the modes were checked above */
                PyErr_SetString(PyExc_SystemError, "decode_tuple: unchecked mode");
                goto raise;
            }
            if (value == NULL) {
                goto error;
            }
        }
        else {
            goto decline; /* the general path's job */
        }
        int failed = PyDict_SetItem(row, PyTuple_GET_ITEM(names, i), value);
        Py_DECREF(value);
        if (failed) {
            goto error;
        }
    }

    end = PyLong_FromSsize_t(pos);
    if (end == NULL) {
        goto error;
    }
    result = PyTuple_New(2);
    if (result == NULL) {
        Py_DECREF(end);
        goto error;
    }
    PyTuple_SET_ITEM(result, 0, row); /* steals both references */
    PyTuple_SET_ITEM(result, 1, end);
    return result;

error:
    /* The Python decoder's "except Exception: return None"; anything broader propagates. */
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            goto raise;
        }
        PyErr_Clear();
    }
decline:
    Py_XDECREF(row);
    Py_RETURN_NONE;

raise:
    Py_XDECREF(row);
    return NULL;
}

/* ------------------------------------------------------------------------------------------
 * render_tuple: the TupleData straight to JSON bytes
 */

/* Rows up to this size are written on the stack, then copied once into their bytes object. */
#define RENDER_STACK_BYTES 1024
/* "YYYY-MM-DDTHH:MM:SSZ" in quotes, and with ".ffffff". */
#define TIMESTAMPTZ_JSON 22
#define TIMESTAMPTZ_JSON_FRACTION 29
/* A text of up to this many bytes has a JSON string (6 bytes per byte at worst, 2 quotes) whose
 * size fits in a Py_ssize_t; only a 32-bit build can see a longer one, and declines it. */
#define JSON_STRING_MAX_INPUT ((PY_SSIZE_T_MAX - 2) / 6)

/* The JSON being written: `data` is `stack` until it outgrows it, then on the heap. */
typedef struct {
    char *data;
    Py_ssize_t size;
    Py_ssize_t capacity;
    char stack[RENDER_STACK_BYTES];
} json_writer;

/* Make room for `extra` more bytes: 0, or -1 with MemoryError set. */
static int
writer_reserve(json_writer *w, Py_ssize_t extra)
{
    if (extra <= w->capacity - w->size) {
        return 0;
    }
    if (extra > PY_SSIZE_T_MAX - w->size) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t needed = w->size + extra;
    Py_ssize_t capacity = w->capacity > PY_SSIZE_T_MAX / 2 ? PY_SSIZE_T_MAX : w->capacity * 2;
    if (capacity < needed) {
        capacity = needed;
    }
    char *data;
    if (w->data == w->stack) {
        data = PyMem_Malloc((size_t)capacity);
        if (data != NULL) {
            memcpy(data, w->stack, (size_t)w->size);
        }
    }
    else {
        data = PyMem_Realloc(w->data, (size_t)capacity); /* on failure w->data stays valid */
    }
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->data = data;
    w->capacity = capacity;
    return 0;
}

static void
writer_free(json_writer *w)
{
    if (w->data != w->stack) {
        PyMem_Free(w->data);
    }
}

/*
 * How orjson writes an ASCII byte inside a string: 0 as it is, 'u' as \u00XX (lowercase hex),
 * else '\' and the letter returned.  Non-ASCII bytes of valid UTF-8 are written as they are,
 * U+2028 and U+2029 included, and so are DEL and '/'.
 */
static char
json_escape(unsigned char c)
{
    if (c >= 0x20) {
        return c == '"' || c == '\\' ? (char)c : 0;
    }
    switch (c) {
    case '\b':
        return 'b';
    case '\t':
        return 't';
    case '\n':
        return 'n';
    case '\f':
        return 'f';
    case '\r':
        return 'r';
    default:
        return 'u';
    }
}

/*
 * The size of the JSON string of the text p[0:size] without its quotes, or -1 when the text is
 * not UTF-8 as bytes.decode() takes it.  That is the well-formed UTF-8 of the Unicode
 * standard's table 3-7, which CPython's strict decoder implements: no overlong forms, no
 * encoded surrogates (ED A0..BF), nothing past U+10FFFF, no truncated sequence.
 */
static Py_ssize_t
json_string_size(const unsigned char *p, Py_ssize_t size)
{
    Py_ssize_t out = size;
    Py_ssize_t i = 0;
    while (i < size) {
        unsigned char c = p[i];
        if (c < 0x80) {
            char escape = json_escape(c);
            if (escape) {
                out += escape == 'u' ? 5 : 1;
            }
            i++;
            continue;
        }
        Py_ssize_t length;
        unsigned char low = 0x80, high = 0xBF; /* the range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            length = 2;
        }
        else if (c == 0xE0) {
            length = 3;
            low = 0xA0;
        }
        else if (c == 0xED) {
            length = 3;
            high = 0x9F;
        }
        else if (c >= 0xE1 && c <= 0xEF) {
            length = 3;
        }
        else if (c == 0xF0) {
            length = 4;
            low = 0x90;
        }
        else if (c >= 0xF1 && c <= 0xF3) {
            length = 4;
        }
        else if (c == 0xF4) {
            length = 4;
            high = 0x8F;
        }
        else {
            return -1; /* a continuation byte, C0, C1 or F5..FF */
        }
        if (size - i < length || p[i + 1] < low || p[i + 1] > high) {
            return -1;
        }
        for (Py_ssize_t k = 2; k < length; k++) {
            if (p[i + k] < 0x80 || p[i + k] > 0xBF) {
                return -1;
            }
        }
        i += length;
    }
    return out;
}

/* Writes the JSON string of p[0:size], whose size without quotes json_string_size gave. */
static char *
write_json_string(char *out, const unsigned char *p, Py_ssize_t size, Py_ssize_t escaped)
{
    static const char hex[] = "0123456789abcdef";
    *out++ = '"';
    if (escaped == size) {
        memcpy(out, p, (size_t)size);
        out += size;
    }
    else {
        for (Py_ssize_t i = 0; i < size; i++) {
            unsigned char c = p[i];
            char escape = c < 0x80 ? json_escape(c) : 0;
            if (!escape) {
                *out++ = (char)c;
                continue;
            }
            *out++ = '\\';
            *out++ = escape;
            if (escape == 'u') {
                *out++ = '0';
                *out++ = '0';
                *out++ = hex[c >> 4];
                *out++ = hex[c & 0xF];
            }
        }
    }
    *out++ = '"';
    return out;
}

/*
 * Whether orjson prints int(text) back as text: an optional '-', then '0' alone or digits
 * without a leading zero, and not '-0'; inside 64 bits, as every bigint is (orjson refuses an
 * int past 64 bits).  18 digits always are; 19 (snowflake-style ids) up to the bigint range.
 */
static int
plain_integer(const char *p, Py_ssize_t size)
{
    Py_ssize_t i = size > 0 && p[0] == '-';
    const Py_ssize_t first = i;
    Py_ssize_t digits = size - i;
    if (digits < 1 || digits > INT_FAST_DIGITS + 1 || (p[i] == '0' && (digits > 1 || i > 0))) {
        return 0;
    }
    for (; i < size; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return 0;
        }
    }
    if (digits == INT_FAST_DIGITS + 1) {
        /* Same length, digits only: comparing the text compares the numbers. */
        const char *bound = first ? "9223372036854775808" : "9223372036854775807";
        return memcmp(p + first, bound, (size_t)digits) <= 0;
    }
    return 1;
}

/*
 * Whether str(Decimal(text)) is text itself: an optional '-', an integer part without a
 * leading zero (but '0' itself), an optional '.' and one fraction digit or more, and Decimal
 * would not switch to exponent notation.  It does when the adjusted exponent is below -6:
 * '0.0000001' is '1E-7', '0.0000000' is '0E-7'.  ('-0' and '-0.0' stay as they are.)
 */
static int
plain_decimal(const char *p, Py_ssize_t size)
{
    Py_ssize_t i = size > 0 && p[0] == '-';
    const Py_ssize_t integer = i;
    while (i < size && p[i] >= '0' && p[i] <= '9') {
        i++;
    }
    if (i == integer || (p[integer] == '0' && i - integer > 1)) {
        return 0;
    }
    if (i == size) {
        return 1;
    }
    if (p[i] != '.') {
        return 0;
    }
    const Py_ssize_t fraction = ++i;
    while (i < size && p[i] >= '0' && p[i] <= '9') {
        i++;
    }
    if (i != size || i == fraction) {
        return 0;
    }
    if (p[integer] != '0') {
        return 1; /* the adjusted exponent is the integer part's digits - 1 >= 0 */
    }
    /* 0.ddd: the adjusted exponent is -1 - the fraction's leading zeros, or minus the number of
     * fraction digits when all are zeros. */
    Py_ssize_t zeros = 0;
    while (fraction + zeros < size && p[fraction + zeros] == '0') {
        zeros++;
    }
    Py_ssize_t adjusted = fraction + zeros == size ? -(size - fraction) : -1 - zeros;
    return adjusted >= -6;
}

/* Writes the JSON value of a valid UTC timestamp, as orjson does with OPT_UTC_Z. */
static char *
write_timestamptz(char *out, const char *text, const timestamp_fields *t)
{
    *out++ = '"';
    memcpy(out, text, 19); /* 'YYYY-MM-DD HH:MM:SS', every field two or four digits */
    out[10] = 'T';
    out += 19;
    if (t->microsecond) {
        *out++ = '.';
        for (int scale = 100000; scale > 0; scale /= 10) {
            *out++ = (char)('0' + t->microsecond / scale % 10);
        }
    }
    *out++ = 'Z';
    *out++ = '"';
    return out;
}

/* Checks a renderer's plan: keys a tuple of bytes, modes bytes of render modes, one each. */
static int
check_render_plan(const char *function, PyObject *keys, PyObject *modes)
{
    if (!PyTuple_Check(keys) || !PyBytes_Check(modes)) {
        PyErr_Format(PyExc_TypeError, "%s: keys must be a tuple, modes bytes", function);
        return -1;
    }
    Py_ssize_t columns = PyTuple_GET_SIZE(keys);
    if (PyBytes_GET_SIZE(modes) != columns) {
        PyErr_Format(PyExc_ValueError, "%s: %zd keys but %zd modes", function, columns,
                     PyBytes_GET_SIZE(modes));
        return -1;
    }
    const char *mode_bytes = PyBytes_AS_STRING(modes);
    for (Py_ssize_t i = 0; i < columns; i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(keys, i))) {
            PyErr_Format(PyExc_TypeError, "%s: the key of column %zd is not bytes", function, i);
            return -1;
        }
        char mode = mode_bytes[i];
        if (mode != MODE_TEXT && mode != MODE_INT && mode != MODE_BOOL
                && mode != MODE_TIMESTAMPTZ && mode != MODE_DECIMAL) {
            PyErr_Format(PyExc_ValueError, "%s: unknown mode byte %d for column %zd", function,
                         (int)(unsigned char)mode, i);
            return -1;
        }
    }
    return 0;
}

/*
 * Appends the JSON object of the TupleData's values at data[*pos] (the column count already
 * read) to w, and moves *pos past them: 1 done, 0 declined (w holds a partial object), -1 out of
 * memory (raised).
 */
static int
write_row(json_writer *w, PyObject *keys, const char *mode_bytes, const unsigned char *data,
          Py_ssize_t size, Py_ssize_t *position)
{
    Py_ssize_t columns = PyTuple_GET_SIZE(keys);
    Py_ssize_t pos = *position;
    if (writer_reserve(w, 1) < 0) {
        return -1;
    }
    w->data[w->size++] = '{';
    for (Py_ssize_t i = 0; i < columns; i++) {
        const char *text = NULL;
        Py_ssize_t length = 0;
        int kind = next_value(data, size, &pos, &text, &length);
        if (!kind) {
            return 0;
        }
        /* First the value's exact JSON size (declining what is not certain), then the writes
         * into room reserved for it. */
        char mode = kind == 'n' ? 'n' : mode_bytes[i]; /* 'n' is no mode's letter */
        Py_ssize_t escaped = 0, value_size;
        timestamp_fields t = {0};
        switch (mode) {
        case 'n':
            value_size = 4;
            break;
        case MODE_TEXT:
            if (length > JSON_STRING_MAX_INPUT) {
                return 0;
            }
            escaped = json_string_size((const unsigned char *)text, length);
            if (escaped < 0) {
                return 0;
            }
            value_size = escaped + 2;
            break;
        case MODE_INT:
            if (!plain_integer(text, length)) {
                return 0;
            }
            value_size = length;
            break;
        case MODE_BOOL:
            if (length != 1 || (text[0] != 't' && text[0] != 'f')) {
                return 0;
            }
            value_size = text[0] == 't' ? 4 : 5;
            break;
        case MODE_TIMESTAMPTZ:
            if (!parse_utc_timestamp(text, length, &t)) {
                return 0; /* another offset, infinity, BC, ...: decode_tuple's parser */
            }
            value_size = t.microsecond ? TIMESTAMPTZ_JSON_FRACTION : TIMESTAMPTZ_JSON;
            break;
        case MODE_DECIMAL:
            if (!plain_decimal(text, length)) {
                return 0;
            }
            value_size = length + 2;
            break;
        default: /* unreachable: the modes were checked above */
            PyErr_SetString(PyExc_SystemError, "render: unchecked mode");
            return -1;
        }
        PyObject *key = PyTuple_GET_ITEM(keys, i);
        Py_ssize_t key_size = PyBytes_GET_SIZE(key);
        /* value_size + 1 cannot overflow (see JSON_STRING_MAX_INPUT); the sum is checked. */
        if (key_size > PY_SSIZE_T_MAX - 1 - value_size) {
            PyErr_NoMemory();
            return -1;
        }
        if (writer_reserve(w, 1 + key_size + value_size) < 0) {
            return -1;
        }
        char *out = w->data + w->size;
        if (i > 0) {
            *out++ = ',';
        }
        memcpy(out, PyBytes_AS_STRING(key), (size_t)key_size);
        out += key_size;
        switch (mode) {
        case 'n':
            memcpy(out, "null", 4);
            out += 4;
            break;
        case MODE_TEXT:
            out = write_json_string(out, (const unsigned char *)text, length, escaped);
            break;
        case MODE_INT:
            memcpy(out, text, (size_t)length);
            out += length;
            break;
        case MODE_BOOL:
            memcpy(out, text[0] == 't' ? "true" : "false", (size_t)value_size);
            out += value_size;
            break;
        case MODE_TIMESTAMPTZ:
            out = write_timestamptz(out, text, &t);
            break;
        case MODE_DECIMAL:
            *out++ = '"';
            memcpy(out, text, (size_t)length);
            out += length;
            *out++ = '"';
            break;
        }
        w->size = out - w->data;
    }
    if (writer_reserve(w, 1) < 0) {
        return -1;
    }
    w->data[w->size++] = '}';
    *position = pos;
    return 1;
}

static PyObject *
render_tuple(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError,
                     "render_tuple expected 4 arguments (keys, modes, buf, offset), got %zd",
                     nargs);
        return NULL;
    }
    PyObject *keys = args[0], *modes = args[1], *buf = args[2], *offset_arg = args[3];
    if (check_render_plan("render_tuple", keys, modes) < 0) {
        return NULL;
    }
    Py_ssize_t pos;
    int start = tuple_start("render_tuple", buf, offset_arg, PyTuple_GET_SIZE(keys), &pos);
    if (start <= 0) {
        return start < 0 ? NULL : Py_NewRef(Py_None);
    }
    json_writer w;
    w.data = w.stack;
    w.capacity = RENDER_STACK_BYTES;
    w.size = 0;
    int written = write_row(&w, keys, PyBytes_AS_STRING(modes),
                            (const unsigned char *)PyBytes_AS_STRING(buf), PyBytes_GET_SIZE(buf),
                            &pos);
    if (written <= 0) {
        writer_free(&w);
        return written < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *json = PyBytes_FromStringAndSize(w.data, w.size);
    writer_free(&w);
    if (json == NULL) {
        return NULL;
    }
    PyObject *end = PyLong_FromSsize_t(pos);
    if (end == NULL) {
        Py_DECREF(json);
        return NULL;
    }
    PyObject *result = PyTuple_New(2);
    if (result == NULL) {
        Py_DECREF(json);
        Py_DECREF(end);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, json); /* steals both references */
    PyTuple_SET_ITEM(result, 1, end);
    return result;
}

static int
write_bytes(json_writer *w, const char *bytes, Py_ssize_t size)
{
    if (writer_reserve(w, size) < 0) {
        return -1;
    }
    memcpy(w->data + w->size, bytes, (size_t)size);
    w->size += size;
    return 0;
}

/* Appends str(value) of an int, or the bytes as they are; -1 with an exception otherwise. */
static int
write_value(json_writer *w, PyObject *value)
{
    if (PyBytes_Check(value)) {
        return write_bytes(w, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    }
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "render_doc: a value is %.100s, not int or bytes",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (number == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow) { /* beyond 64 bits: Python prints it */
        PyObject *text = PyObject_Str(value);
        if (text == NULL) {
            return -1;
        }
        Py_ssize_t length;
        const char *utf8 = PyUnicode_AsUTF8AndSize(text, &length);
        int failed = utf8 == NULL ? -1 : write_bytes(w, utf8, length);
        Py_DECREF(text);
        return failed;
    }
    char digits[24];
    char *end = digits + sizeof digits, *at = end;
    unsigned long long magnitude = number < 0 ? 0ULL - (unsigned long long)number
                                              : (unsigned long long)number;
    do {
        *--at = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    if (number < 0) {
        *--at = '-';
    }
    return write_bytes(w, at, end - at);
}

static PyObject *
render_doc(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "render_doc expected 6 arguments (keys, modes, buf, "
                     "offset, parts, values), got %zd", nargs);
        return NULL;
    }
    PyObject *keys = args[0], *modes = args[1], *buf = args[2], *offset_arg = args[3];
    PyObject *parts = args[4], *values = args[5];
    if (check_render_plan("render_doc", keys, modes) < 0) {
        return NULL;
    }
    if (!PyTuple_Check(parts) || !PyTuple_Check(values)
            || PyTuple_GET_SIZE(parts) != PyTuple_GET_SIZE(values) + 2) {
        PyErr_SetString(PyExc_TypeError, "render_doc: parts and values must be tuples, with "
                        "two parts more than values");
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(parts);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(parts, i))) {
            PyErr_Format(PyExc_TypeError, "render_doc: part %zd is not bytes", i);
            return NULL;
        }
    }
    Py_ssize_t pos;
    int start = tuple_start("render_doc", buf, offset_arg, PyTuple_GET_SIZE(keys), &pos);
    if (start <= 0) {
        return start < 0 ? NULL : Py_NewRef(Py_None);
    }
    const Py_ssize_t size = PyBytes_GET_SIZE(buf);
    json_writer w;
    w.data = w.stack;
    w.capacity = RENDER_STACK_BYTES;
    w.size = 0;
    PyObject *part = PyTuple_GET_ITEM(parts, 0);
    if (write_bytes(&w, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part)) < 0) {
        goto error;
    }
    int written = write_row(&w, keys, PyBytes_AS_STRING(modes),
                            (const unsigned char *)PyBytes_AS_STRING(buf), size, &pos);
    if (written < 0) {
        goto error;
    }
    if (written == 0 || pos != size) { /* declined, or more than the tuple in the frame */
        writer_free(&w);
        Py_RETURN_NONE;
    }
    for (Py_ssize_t i = 1; i < count; i++) {
        part = PyTuple_GET_ITEM(parts, i);
        if (write_bytes(&w, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part)) < 0) {
            goto error;
        }
        if (i < count - 1 && write_value(&w, PyTuple_GET_ITEM(values, i - 1)) < 0) {
            goto error;
        }
    }
    PyObject *doc = PyBytes_FromStringAndSize(w.data, w.size);
    writer_free(&w);
    return doc;

error:
    writer_free(&w);
    return NULL;
}

static PyMethodDef pgwire_methods[] = {
    {"decode_tuple", (PyCFunction)(void (*)(void))decode_tuple, METH_FASTCALL,
     "decode_tuple(names, modes, parsers, buf, offset) -> (row, end offset) | None\n\n"
     "The pgoutput TupleData at buf[offset] as a dict of the columns' values, or None when\n"
     "it holds anything but text and null values that all convert."},
    {"render_doc", (PyCFunction)(void (*)(void))render_doc, METH_FASTCALL,
     "render_doc(keys, modes, buf, offset, parts, values) -> bytes | None\n\n"
     "parts[0], the JSON of the TupleData at buf[offset] (as render_tuple), then each further\n"
     "part with a value after all but the last (an int in decimal, bytes as they are); None\n"
     "when render_tuple would decline or bytes follow the tuple in buf."},
    {"render_tuple", (PyCFunction)(void (*)(void))render_tuple, METH_FASTCALL,
     "render_tuple(keys, modes, buf, offset) -> (json, end offset) | None\n\n"
     "The pgoutput TupleData at buf[offset] as the bytes of its JSON object (each key of\n"
     "keys is a column's JSON name and ':'), or None when a value is not one it renders."},
    {NULL, NULL, 0, NULL},
};

static int
pgwire_exec(PyObject *module)
{
    (void)module;
    PyDateTime_IMPORT;
    return PyDateTimeAPI == NULL ? -1 : 0;
}

static PyModuleDef_Slot pgwire_slots[] = {
    {Py_mod_exec, pgwire_exec},
    {0, NULL},
};

static struct PyModuleDef pgwire_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "transforms.sources.postgres._pgwire",
    .m_doc = "The pgoutput TupleData fast paths of pgtypes.wire_row_decoder and"
             " wire_row_renderer.",
    .m_size = 0,
    .m_methods = pgwire_methods,
    .m_slots = pgwire_slots,
};

PyMODINIT_FUNC
PyInit__pgwire(void)
{
    return PyModuleDef_Init(&pgwire_module);
}
