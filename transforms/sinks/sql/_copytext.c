/*
 * _copytext: COPY text of rows of Python values, in C (copytext.rows_text's fast path).
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

/* A str's UTF-8, escaped for COPY text when `escape`; -1 on error. */
static int
put_text(Buffer *b, PyObject *value, int escape)
{
    Py_ssize_t size;
    const char *text = PyUnicode_AsUTF8AndSize(value, &size);
    if (text == NULL)
        return -1;
    if (!escape)
        return put(b, text, size);
    if (reserve(b, 2 * size) < 0)
        return -1;
    char *out = b->data + b->size;
    for (Py_ssize_t i = 0; i < size; i++) {
        char c = text[i];
        switch (c) {
        case '\\': *out++ = '\\'; *out++ = '\\'; break;
        case '\n': *out++ = '\\'; *out++ = 'n'; break;
        case '\r': *out++ = '\\'; *out++ = 'r'; break;
        case '\t': *out++ = '\\'; *out++ = 't'; break;
        default: *out++ = c;
        }
    }
    b->size = out - b->data;
    return 0;
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

static int
put_int(Buffer *b, PyObject *value)
{
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow)
        return put_str_of(b, value, 0);
    if (n == -1 && PyErr_Occurred())
        return -1;
    char digits[32];
    int size = snprintf(digits, sizeof digits, "%lld", n);
    return put(b, digits, size);
}

static int
put_date(Buffer *b, int year, int month, int day)
{
    char text[16];
    int size = snprintf(text, sizeof text, "%04d-%02d-%02d", year, month, day);
    return put(b, text, size);
}

/* 'THH:MM:SS' and '.ffffff' when there are microseconds, as datetime.isoformat(). */
static int
put_clock(Buffer *b, PyObject *value)
{
    char text[32];
    int us = PyDateTime_DATE_GET_MICROSECOND(value);
    int size;
    if (us)
        size = snprintf(text, sizeof text, "T%02d:%02d:%02d.%06d",
                        PyDateTime_DATE_GET_HOUR(value), PyDateTime_DATE_GET_MINUTE(value),
                        PyDateTime_DATE_GET_SECOND(value), us);
    else
        size = snprintf(text, sizeof text, "T%02d:%02d:%02d", PyDateTime_DATE_GET_HOUR(value),
                        PyDateTime_DATE_GET_MINUTE(value), PyDateTime_DATE_GET_SECOND(value));
    return put(b, text, size);
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
        if (!PyDateTime_CheckExact(value))
            return 0;
        PyObject *zone = PyDateTime_DATE_GET_TZINFO(value);
        if (code == CODE_TIMESTAMPTZ ? zone != PyDateTime_TimeZone_UTC : zone != Py_None)
            return 0;
        if (put_date(b, PyDateTime_GET_YEAR(value), PyDateTime_GET_MONTH(value),
                     PyDateTime_GET_DAY(value)) < 0 || put_clock(b, value) < 0)
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

static PyObject *
rows_text(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "rows_text(codes, rows, tails) takes 3 arguments");
        return NULL;
    }
    PyObject *codes = args[0];
    if (!PyTuple_Check(codes) || PyTuple_GET_SIZE(codes) == 0) {
        PyErr_SetString(PyExc_TypeError, "codes must be a non-empty tuple of ints");
        return NULL;
    }
    Py_ssize_t ncols = PyTuple_GET_SIZE(codes);
    long code_of[64];
    if (ncols > 64)
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
    Buffer b = {NULL, 0, 0};
    if (ntails && ntails != nrows)
        goto fallback;  /* Python's zip(strict=True) says what is wrong */
    for (Py_ssize_t r = 0; r < nrows; r++) {
        PyObject *it = PyObject_GetIter(PySequence_Fast_GET_ITEM(rows, r));
        if (it == NULL)
            goto done;
        for (Py_ssize_t c = 0; c < ncols; c++) {
            PyObject *value = PyIter_Next(it);
            if (value == NULL) {
                Py_DECREF(it);
                if (PyErr_Occurred())
                    goto done;
                goto fallback;  /* a row shorter than the columns */
            }
            int done = (c && put(&b, "\t", 1) < 0) ? -1 : put_value(&b, code_of[c], value);
            Py_DECREF(value);
            if (done < 0 && PyErr_ExceptionMatches(PyExc_UnicodeError)) {
                PyErr_Clear();  /* a lone surrogate: Python's path has the say on it */
                done = 0;
            }
            if (done <= 0) {
                Py_DECREF(it);
                if (done < 0)
                    goto done;
                goto fallback;
            }
        }
        PyObject *extra = PyIter_Next(it);
        Py_DECREF(it);
        if (extra != NULL) {  /* a row longer than the columns */
            Py_DECREF(extra);
            goto fallback;
        }
        if (PyErr_Occurred())
            goto done;
        if (ntails) {
            PyObject *tail = PySequence_Fast_GET_ITEM(tails, r);
            if (!PyUnicode_Check(tail))
                goto fallback;
            if (put(&b, "\t", 1) < 0)
                goto done;
            if (put_text(&b, tail, 0) < 0) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeError))
                    goto done;
                PyErr_Clear();
                goto fallback;
            }
        }
        if (put(&b, "\n", 1) < 0)
            goto done;
        if ((r & 255) == 255) {
            /* Let a writer thread that waits for the GIL (its socket answered) run. */
            Py_BEGIN_ALLOW_THREADS
            Py_END_ALLOW_THREADS
        }
    }
    result = PyUnicode_DecodeUTF8(b.data ? b.data : "", b.size, "strict");
    goto done;
fallback:
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(b.data);
    Py_DECREF(rows);
    Py_DECREF(tails);
    return result;
}

static PyMethodDef copytext_methods[] = {
    {"rows_text", (PyCFunction)(void (*)(void))rows_text, METH_FASTCALL,
     "rows_text(codes, rows, tails) -> str | None\n\nCOPY text of rows whose values all have "
     "the types their columns' codes expect; None for Python to render them."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef copytext_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "transforms.sinks.sql._copytext",
    .m_doc = "COPY text of rows of Python values (copytext.rows_text's fast path).",
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
    return PyModule_Create(&copytext_module);
}
