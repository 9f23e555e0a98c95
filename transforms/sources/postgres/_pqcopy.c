/*
 * _pqcopy: the replication stream's frame loop, in C (ReplicationStream.read_batch).
 *
 * Reading a replication stream through psycopg costs one Python call per CopyData message
 * (PQgetCopyData, a memoryview, the XLogData header unpacked, a named tuple built).  A stream of
 * small transactions is three messages per change (Begin, the change, Commit), and those calls
 * alone cost as much as the walsender spends producing them.  This module takes every complete
 * message libpq already holds in one call:
 *
 *     libpq = bind('/path/of/the/libpq/psycopg/loaded.so')  # once per process
 *     frames, state, wal_end, send_time, keepalive, payload = read_frames(libpq, ptr, 4096)
 *
 * bind() finds PQgetCopyData and PQfreemem in the libpq that is ALREADY loaded at that path
 * (RTLD_NOLOAD: it never loads a second copy; the PGconn must belong to that very library, which
 * the caller checks with PQbackendPID and PQsocket, also returned by bind as a check function).
 *
 * read_frames() calls PQgetCopyData(conn, &buf, async=1) until libpq holds no complete message
 * (it never reads the socket itself: the caller waits on the socket and calls PQconsumeInput, as
 * psycopg's own loop does), or until max_frames XLogData messages were taken.  It returns:
 *
 *   frames     list of (data_start, payload bytes) of the XLogData ('w') messages, in order,
 *              except that a pgoutput Begin or Commit comes decoded, as (-1, (final_lsn,
 *              commit_ts, xid)) or (-2, (flags, commit_lsn, end_lsn, commit_ts)): the fields of
 *              pgoutput.Begin and pgoutput.Commit, times in microseconds since the Unix epoch
 *              (a small transaction is three messages, and these two then cost no Python);
 *   state      0 libpq holds no complete message, 1 max_frames taken, -1 the COPY ended
 *              (PQgetCopyData returned -1: the caller fetches the result), -2 libpq reported an
 *              error (the caller reads PQerrorMessage through psycopg), or the byte of a message
 *              type it does not know (a protocol error the caller reports);
 *   wal_end    the largest walEnd of the XLogData messages taken, 0 if none;
 *   send_time  the server's send time of the last message taken (microseconds since
 *              2000-01-01), 0 if none;
 *   keepalive  0 none taken, 1 a keepalive was taken, 2 one of them asked for a reply;
 *   payload    the bytes of pgoutput messages taken (the XLogData payloads).
 *
 * Frames taken before a failure state are returned with it; nothing libpq handed over is lost.
 * The messages come off the network: a message too short for its header is state '!' (33).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdint.h>

#define CAPSULE_NAME "changebeam._pqcopy.libpq"
#define XLOG_HEADER 25     /* 'w', dataStart, walEnd, sendTime */
#define KEEPALIVE_SIZE 18  /* 'k', walEnd, sendTime, replyRequested */
#define STATE_SHORT '!'
#define BEGIN_SIZE 21   /* 'B', final_lsn, commit time, xid */
#define COMMIT_SIZE 26  /* 'C', flags, commit_lsn, end_lsn, commit time */
#define FRAME_BEGIN -1  /* in place of data_start: a decoded Begin (keep in step with read.py) */
#define FRAME_COMMIT -2
#define PG_EPOCH_US 946684800000000LL  /* 2000-01-01 in microseconds since the Unix epoch */

typedef int (*get_copy_data_fn)(void *conn, char **buffer, int async);
typedef void (*freemem_fn)(void *ptr);
typedef int (*int_of_conn_fn)(const void *conn);

typedef struct {
    get_copy_data_fn get_copy_data;
    freemem_fn freemem;
    int_of_conn_fn backend_pid;
    int_of_conn_fn socket;
} Libpq;

static uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t
be64(const unsigned char *p)
{
    return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) |
           ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
           ((uint64_t)p[6] << 8) | (uint64_t)p[7];
}

static void
capsule_free(PyObject *capsule)
{
    PyMem_Free(PyCapsule_GetPointer(capsule, CAPSULE_NAME));
}

static PyObject *
bind(PyObject *module, PyObject *path)
{
    (void)module;
    if (!PyUnicode_Check(path)) {
        PyErr_SetString(PyExc_TypeError, "bind(path): path must be a str");
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8(path);
    if (name == NULL)
        return NULL;
    /* Never dlclose()d: the library stays loaded as long as psycopg uses it anyway. */
    void *handle = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
    if (handle == NULL) {
        const char *why = dlerror();
        PyErr_Format(PyExc_OSError, "%s is not loaded in this process: %s", name,
                     why ? why : "dlopen failed");
        return NULL;
    }
    Libpq *lib = PyMem_Calloc(1, sizeof(Libpq));
    if (lib == NULL)
        return PyErr_NoMemory();
    lib->get_copy_data = (get_copy_data_fn)dlsym(handle, "PQgetCopyData");
    lib->freemem = (freemem_fn)dlsym(handle, "PQfreemem");
    lib->backend_pid = (int_of_conn_fn)dlsym(handle, "PQbackendPID");
    lib->socket = (int_of_conn_fn)dlsym(handle, "PQsocket");
    if (!lib->get_copy_data || !lib->freemem || !lib->backend_pid || !lib->socket) {
        PyMem_Free(lib);
        PyErr_Format(PyExc_OSError, "%s lacks a libpq function", name);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(lib, CAPSULE_NAME, capsule_free);
    if (capsule == NULL)
        PyMem_Free(lib);
    return capsule;
}

static int
conn_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *usage,
          Libpq **lib, void **conn)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", usage, want);
        return -1;
    }
    *lib = PyCapsule_GetPointer(args[0], CAPSULE_NAME);
    if (*lib == NULL)
        return -1;
    *conn = PyLong_AsVoidPtr(args[1]);
    if (*conn == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "pgconn_ptr is NULL");
        return -1;
    }
    return 0;
}

static PyObject *
identify(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Libpq *lib;
    void *conn;
    if (conn_args(args, nargs, 2, "identify(libpq, pgconn_ptr)", &lib, &conn) < 0)
        return NULL;
    return Py_BuildValue("(ii)", lib->backend_pid(conn), lib->socket(conn));
}

/* (data_start, payload bytes); NULL with an exception on failure. */
static PyObject *
raw_frame(uint64_t data_start, const char *payload, Py_ssize_t size)
{
    PyObject *start = PyLong_FromUnsignedLongLong(data_start);
    PyObject *bytes = start == NULL ? NULL : PyBytes_FromStringAndSize(payload, size);
    PyObject *frame = bytes == NULL ? NULL : PyTuple_Pack(2, start, bytes);
    Py_XDECREF(start);
    Py_XDECREF(bytes);
    return frame;
}

/*
 * A pgoutput Begin or Commit of exactly its size, decoded: (BEGIN, (final_lsn, commit_ts, xid))
 * or (COMMIT, (flags, commit_lsn, end_lsn, commit_ts)), the fields of pgoutput.Begin and
 * pgoutput.Commit in their order, times in microseconds since the Unix epoch.  NULL without an
 * exception for any other message (it goes to Python as bytes, where the decoder has the last
 * word, errors included); NULL with one when out of memory.
 */
static PyObject *
decoded(const unsigned char *m, Py_ssize_t size)
{
    PyObject *fields;
    long kind;
    if (size == BEGIN_SIZE && m[0] == 'B') {
        kind = FRAME_BEGIN;
        fields = Py_BuildValue("(KLk)", (unsigned long long)be64(m + 1),
                               (long long)((int64_t)be64(m + 9) + PG_EPOCH_US),
                               (unsigned long)be32(m + 17));
    }
    else if (size == COMMIT_SIZE && m[0] == 'C') {
        kind = FRAME_COMMIT;
        fields = Py_BuildValue("(iKKL)", (int)m[1], (unsigned long long)be64(m + 2),
                               (unsigned long long)be64(m + 10),
                               (long long)((int64_t)be64(m + 18) + PG_EPOCH_US));
    }
    else
        return NULL;
    return fields == NULL ? NULL : Py_BuildValue("(lN)", kind, fields);
}

static PyObject *
read_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Libpq *lib;
    void *conn;
    if (conn_args(args, nargs, 3, "read_frames(libpq, pgconn_ptr, max_frames)", &lib,
                  &conn) < 0)
        return NULL;
    Py_ssize_t max_frames = PyLong_AsSsize_t(args[2]);
    if (max_frames == -1 && PyErr_Occurred())
        return NULL;
    if (max_frames < 1) {
        PyErr_SetString(PyExc_ValueError, "max_frames must be at least 1");
        return NULL;
    }
    PyObject *frames = PyList_New(0);
    if (frames == NULL)
        return NULL;
    int state = 0;
    uint64_t wal_end = 0;
    int64_t send_time = 0;
    int keepalive = 0;
    unsigned long long payload_bytes = 0;
    for (;;) {
        if (PyList_GET_SIZE(frames) >= max_frames) {
            state = 1;
            break;
        }
        char *buffer = NULL;
        int size = lib->get_copy_data(conn, &buffer, 1);
        if (size <= 0) {
            state = size;  /* 0: none complete; -1: COPY done; -2: error */
            break;
        }
        const unsigned char *data = (const unsigned char *)buffer;
        if (data[0] == 'w' && size >= XLOG_HEADER) {
            uint64_t end = be64(data + 9);
            if (end > wal_end)
                wal_end = end;
            send_time = (int64_t)be64(data + 17);
            payload_bytes += (unsigned long long)(size - XLOG_HEADER);
            PyObject *frame = decoded(data + XLOG_HEADER, size - XLOG_HEADER);
            if (frame == NULL && PyErr_Occurred()) {
                lib->freemem(buffer);
                goto error;
            }
            if (frame == NULL)
                frame = raw_frame(be64(data + 1), buffer + XLOG_HEADER, size - XLOG_HEADER);
            lib->freemem(buffer);
            if (frame == NULL)
                goto error;
            int failed = PyList_Append(frames, frame);
            Py_DECREF(frame);
            if (failed)
                goto error;
        }
        else if (data[0] == 'k' && size >= KEEPALIVE_SIZE) {
            send_time = (int64_t)be64(data + 9);
            if (data[17])
                keepalive = 2;
            else if (keepalive == 0)
                keepalive = 1;
            lib->freemem(buffer);
        }
        else {
            state = (data[0] == 'w' || data[0] == 'k') ? STATE_SHORT : data[0];
            lib->freemem(buffer);
            break;
        }
    }
    return Py_BuildValue("(NiKLiK)", frames, state, (unsigned long long)wal_end,
                         (long long)send_time, keepalive, payload_bytes);

error:
    Py_DECREF(frames);
    return NULL;
}

static PyMethodDef pqcopy_methods[] = {
    {"bind", (PyCFunction)bind, METH_O,
     "bind(path) -> libpq\n\nThe libpq functions of the library already loaded at path."},
    {"identify", (PyCFunction)(void (*)(void))identify, METH_FASTCALL,
     "identify(libpq, pgconn_ptr) -> (backend pid, socket)\n\n"
     "What that libpq says of the connection: a check that it owns it."},
    {"read_frames", (PyCFunction)(void (*)(void))read_frames, METH_FASTCALL,
     "read_frames(libpq, pgconn_ptr, max_frames) -> (frames, state, wal_end, send_time,"
     " keepalive, payload)\n\nEvery complete replication message libpq holds (see the module's"
     " comment)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef pqcopy_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "transforms.sources.postgres._pqcopy",
    .m_doc = "The replication stream's frame loop over libpq's PQgetCopyData.",
    .m_size = 0,
    .m_methods = pqcopy_methods,
};

PyMODINIT_FUNC
PyInit__pqcopy(void)
{
    return PyModule_Create(&pqcopy_module);
}
