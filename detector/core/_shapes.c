/* Which messages of a batch may join a run decoded as one JSON array: the C twin of
 * detector.core.events._shapes_py (the same answer; tests/test_events_runs.py holds them alike).
 *
 * A message joins only if it is one whole bracketed value: it starts with { or [, and its
 * bracket depth, counted outside strings, first returns to 0 at its last byte. Then the join's
 * commas are the array's only top-level commas, so a joined parse that succeeds parses each
 * message exactly as it alone would; without this, a string left open in one message and
 * closed in another would shift events between messages.
 *
 * A string's quotes are found 64 bytes at a time (SSE2 compares into bit masks, the inside of
 * strings as the prefix XOR of the quotes); a block holding a backslash, and every block on a
 * machine without SSE2, goes byte by byte. Brackets outside strings are then few. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

typedef struct {
    int in_str;          /* inside a string after the bytes so far */
    int escaped;         /* the next byte is escaped (a backslash ended the bytes so far) */
    Py_ssize_t depth;
} scan_t;

/* Bytes [from, to) of message p of n bytes, byte by byte; 0 if the depth returned to 0
 * before the last byte (the message is not one whole value), else 1. */
static int scan_bytes(const unsigned char *p, Py_ssize_t from, Py_ssize_t to, Py_ssize_t n,
                      scan_t *s) {
    for (Py_ssize_t i = from; i < to; i++) {
        unsigned char c = p[i];
        if (s->in_str) {
            if (s->escaped)
                s->escaped = 0;
            else if (c == '\\')
                s->escaped = 1;
            else if (c == '"')
                s->in_str = 0;
        } else if (c == '"') {
            s->in_str = 1;
        } else if (c == '{' || c == '[') {
            s->depth++;
        } else if ((c == '}' || c == ']') && --s->depth == 0 && i != n - 1) {
            return 0;
        }
    }
    return 1;
}

#ifdef __SSE2__
static inline uint64_t mask16(__m128i v, __m128i c) {
    return (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, c));
}

static inline uint64_t prefix_xor(uint64_t x) {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    return x;
}

/* The 64 bytes at b, which are bytes [at, at + 64) of message p of n bytes (a copy padded
 * with zeros at its end); as scan_bytes. */
static int scan_block(const unsigned char *b, const unsigned char *p, Py_ssize_t at,
                      Py_ssize_t n, scan_t *s) {
    const __m128i quote = _mm_set1_epi8('"'), slash = _mm_set1_epi8('\\'),
                  lower = _mm_set1_epi8(0x20), open = _mm_set1_epi8('{'),
                  close = _mm_set1_epi8('}');
    uint64_t q = 0, bs = 0, op = 0, cl = 0;
    for (int k = 0; k < 4; k++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(b + 16 * k));
        /* { and [ differ by 0x20 alone, as } and ] do; no other byte ORs to either. */
        __m128i w = _mm_or_si128(v, lower);
        q |= mask16(v, quote) << (16 * k);
        bs |= mask16(v, slash) << (16 * k);
        op |= mask16(w, open) << (16 * k);
        cl |= mask16(w, close) << (16 * k);
    }
    if (bs || s->escaped) {
        Py_ssize_t to = at + 64 < n ? at + 64 : n;
        return scan_bytes(p, at, to, n, s);
    }
    uint64_t inside = prefix_xor(q) ^ (s->in_str ? ~(uint64_t)0 : 0);
    s->in_str = (int)(inside >> 63);
    uint64_t brackets = (op | cl) & ~inside;
    while (brackets) {
        int k = __builtin_ctzll(brackets);
        brackets &= brackets - 1;
        if (op >> k & 1)
            s->depth++;
        else if (--s->depth == 0 && at + k != n - 1)
            return 0;
    }
    return 1;
}
#endif

/* Whether message p of n bytes (n > 0, p[0] is { or [) is one whole bracketed value. */
static int whole(const unsigned char *p, Py_ssize_t n) {
    scan_t s = {0, 0, 0};
#ifdef __SSE2__
    Py_ssize_t at = 0;
    for (; at + 64 <= n; at += 64)
        if (!scan_block(p + at, p, at, n, &s))
            return 0;
    if (at < n) {
        unsigned char tail[64] = {0};   /* zeros are none of the bytes that count */
        memcpy(tail, p + at, (size_t)(n - at));
        if (!scan_block(tail, p, at, n, &s))
            return 0;
    }
#else
    if (!scan_bytes(p, 0, n, n, &s))
        return 0;
#endif
    return s.depth == 0;
}

static PyObject *shapes(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    (void)mod;
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "shapes(messages, max_bytes)");
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[1]);
    if (max_bytes == -1 && PyErr_Occurred())
        return NULL;
    PyObject *messages = PySequence_Fast(args[0], "shapes: messages must be a sequence");
    if (messages == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(messages);
    PyObject *heads = PyBytes_FromStringAndSize(NULL, count);
    PyObject *odd = PyList_New(0);
    if (heads == NULL || odd == NULL)
        goto fail;
    char *h = PyBytes_AS_STRING(heads);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *m = PySequence_Fast_GET_ITEM(messages, i);
        Py_buffer view = {0};
        const unsigned char *p;
        Py_ssize_t n;
        if (PyBytes_CheckExact(m)) {   /* the usual case, without a buffer to release */
            p = (const unsigned char *)PyBytes_AS_STRING(m);
            n = PyBytes_GET_SIZE(m);
        } else {
            if (PyObject_GetBuffer(m, &view, PyBUF_SIMPLE) < 0)
                goto fail;
            p = view.buf;
            n = view.len;
        }
        int fits = 0 < n && n <= max_bytes;
        h[i] = fits ? (char)p[0] : 0;
        int ok = fits && (p[0] == '{' || p[0] == '[') && whole(p, n);
        if (view.obj != NULL)
            PyBuffer_Release(&view);
        if (!ok) {
            PyObject *k = PyLong_FromSsize_t(i);
            if (k == NULL || PyList_Append(odd, k) < 0) {
                Py_XDECREF(k);
                goto fail;
            }
            Py_DECREF(k);
        }
    }
    Py_DECREF(messages);
    return Py_BuildValue("(NN)", odd, heads);
fail:
    Py_DECREF(messages);
    Py_XDECREF(heads);
    Py_XDECREF(odd);
    return NULL;
}

static PyMethodDef methods[] = {
    {"shapes", (PyCFunction)(void (*)(void))shapes, METH_FASTCALL,
     "shapes(messages, max_bytes) -> (indexes of the messages that may not join a run, "
     "first bytes); see events._shapes_py."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "detector.core._shapes",
    "Which messages may join a run (the C twin of detector.core.events._shapes_py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__shapes(void) { return PyModule_Create(&module); }
