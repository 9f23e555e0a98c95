/*
 * _pgwire: the pgoutput TupleData fast path of pgtypes.wire_row_decoder, in C.
 *
 * One function, decode_tuple(names, modes, parsers, buf, offset), reads the TupleData that
 * starts at buf[offset] (a 2-byte column count, then per column a kind byte: 't' text with a
 * 4-byte big-endian length, or 'n' null) and returns (row, end offset), or None whenever the
 * tuple is anything else.  It must give exactly what the Python decoder that pgtypes
 * generates gives, value for value and type for type; that decoder stays the reference and
 * the fallback when this module was not built.  The per-relation plan (names, modes, parsers)
 * comes first so that functools.partial can bind it once:
 *
 *     decode = functools.partial(decode_tuple, names, modes, parsers)
 *     row, end = decode(frame, 6) or (None, None)
 *
 * The buffer comes off the network, so nothing about it is trusted: every read is checked
 * against its length first.  None means "take the general path", which gives the same row or
 * the precise error.  As in the Python decoder, an Exception raised while converting a value
 * becomes None; a BaseException that is not an Exception (KeyboardInterrupt) propagates.
 * Bad *arguments* (a plan of the wrong shape) are programming errors and raise.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

/* Mode bytes, one per column; pgtypes.py builds them (keep the two in step). */
#define MODE_TEXT 's'        /* UTF-8 -> str */
#define MODE_INT 'i'         /* int(bytes) */
#define MODE_BOOL 'b'        /* 't' / 'f' -> True / False */
#define MODE_TIMESTAMPTZ 'z' /* 'YYYY-MM-DD HH:MM:SS[.ffffff]+00' natively, else the parser */
#define MODE_CALL 'c'        /* parsers[i](str) */

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
    if (!PyBytes_Check(buf)) {
        PyErr_Format(PyExc_TypeError, "decode_tuple: buf must be bytes, not %.100s",
                     Py_TYPE(buf)->tp_name);
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(offset_arg);
    if (offset == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return NULL; /* not an int at all */
        }
        PyErr_Clear(); /* an int too large to be an offset: out of range */
        Py_RETURN_NONE;
    }

    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(buf);
    const Py_ssize_t size = PyBytes_GET_SIZE(buf);

    /*
     * A negative offset is out of range here.  (The Python decoder would index from the end
     * instead; no caller passes one.)
     */
    if (offset < 0 || size - offset < 2) {
        Py_RETURN_NONE;
    }
    Py_ssize_t pos = offset;
    if (((Py_ssize_t)data[pos] << 8 | data[pos + 1]) != columns) {
        Py_RETURN_NONE;
    }
    pos += 2;

    PyObject *row = PyDict_New(), *end, *result;
    if (row == NULL) {
        goto error;
    }
    for (Py_ssize_t i = 0; i < columns; i++) {
        PyObject *value;
        if (pos >= size) {
            goto decline;
        }
        unsigned char kind = data[pos];
        if (kind == 'n') {
            value = Py_NewRef(Py_None);
            pos += 1;
        }
        else if (kind == 't') {
            if (size - pos < 5) {
                goto decline;
            }
            uint32_t length = read_u32(data + pos + 1);
            pos += 5;
            /* Compared unsigned and wide: a 4 GB length cannot wrap round. */
            if ((uint64_t)length > (uint64_t)(size - pos)) {
                goto decline;
            }
            const char *text = (const char *)data + pos;
            Py_ssize_t text_size = (Py_ssize_t)length;
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
            pos += text_size;
        }
        else {
            /* 'u' (unchanged TOAST), 'b' (binary) or garbage: the general path's job. */
            goto decline;
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

static PyMethodDef pgwire_methods[] = {
    {"decode_tuple", (PyCFunction)(void (*)(void))decode_tuple, METH_FASTCALL,
     "decode_tuple(names, modes, parsers, buf, offset) -> (row, end offset) | None\n\n"
     "The pgoutput TupleData at buf[offset] as a dict of the columns' values, or None when\n"
     "it holds anything but text and null values that all convert."},
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
    .m_doc = "The pgoutput TupleData fast path of pgtypes.wire_row_decoder.",
    .m_size = 0,
    .m_methods = pgwire_methods,
    .m_slots = pgwire_slots,
};

PyMODINIT_FUNC
PyInit__pgwire(void)
{
    return PyModuleDef_Init(&pgwire_module);
}
