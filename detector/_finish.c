/* The checks msgspec cannot do cheaply, for a decoded batch of trace events, in one pass:
 * the same result as _finish_all in detector/events.py, which is the reference and the
 * fallback (tests/test_events.py compares the two).
 *
 * Why C: the Python version is five C-level passes over the batch plus a join of every id,
 * 7 % of a worker's time on a backlog of 100-event messages; this is one loop reading each
 * event's slots.
 */
#include "_slots.h"

static struct {
    PyTypeObject *event_type;
    PyObject *unset;
    PyTypeObject *datetime_type;
    Py_ssize_t off_ts, off_trace_id, off_span_id, off_reason;
    int ready;
} S;

/* configure(event_type, unset, datetime_type) */
static PyObject *
configure(PyObject *self, PyObject *args)
{
    PyObject *type, *unset, *dt;
    if (!PyArg_ParseTuple(args, "O!OO!", &PyType_Type, &type, &unset, &PyType_Type, &dt))
        return NULL;
    PyTypeObject *t = (PyTypeObject *)type;
    if ((S.off_ts = slot_offset_s(t, "ts")) < 0
            || (S.off_trace_id = slot_offset_s(t, "trace_id")) < 0
            || (S.off_span_id = slot_offset_s(t, "span_id")) < 0
            || (S.off_reason = slot_offset_s(t, "override_reason")) < 0)
        return NULL;
    Py_INCREF(type);
    Py_XSETREF(S.event_type, t);
    Py_INCREF(unset);
    Py_XSETREF(S.unset, unset);
    Py_INCREF(dt);
    Py_XSETREF(S.datetime_type, (PyTypeObject *)dt);
    S.ready = 1;
    Py_RETURN_NONE;
}

/* 1 if ``v`` is UNSET or a str of hex digits only (what bytes.fromhex takes, given that
 * msgspec checked the length), 0 if not, -1 if it is neither UNSET nor a str. */
static int
hex_or_unset(PyObject *v)
{
    if (v == S.unset)
        return 1;
    if (!PyUnicode_CheckExact(v))
        return -1;
    if (PyUnicode_KIND(v) != PyUnicode_1BYTE_KIND)
        return 0;
    const Py_UCS1 *c = PyUnicode_1BYTE_DATA(v);
    for (Py_ssize_t i = 0, n = PyUnicode_GET_LENGTH(v); i < n; i++) {
        Py_UCS1 x = c[i];
        if (!((x >= '0' && x <= '9') || (x >= 'a' && x <= 'f') || (x >= 'A' && x <= 'F')))
            return 0;
    }
    return 1;
}

/* finish_all(evs) -> (ids_ok, stamped) or None
 *
 * Clears every override_reason (free text: validated, never kept), tells whether every
 * trace_id and span_id is hex, and lists the events whose ts is a datetime (the caller makes
 * them epoch seconds). None if an item is not a TraceEvent or has a field of a type decode()
 * does not make: the caller then runs the Python version. */
static PyObject *
finish_all(PyObject *self, PyObject *evs)
{
    if (!S.ready) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    if (!PyList_CheckExact(evs)) {
        PyErr_SetString(PyExc_TypeError, "finish_all: a list of events");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(evs);
    for (Py_ssize_t i = 0; i < n; i++) {   /* first a look, so that None changes nothing */
        PyObject *ev = PyList_GET_ITEM(evs, i);
        if (Py_TYPE(ev) != S.event_type || SLOT(ev, S.off_ts) == NULL
                || SLOT(ev, S.off_trace_id) == NULL || SLOT(ev, S.off_span_id) == NULL
                || SLOT(ev, S.off_reason) == NULL || hex_or_unset(SLOT(ev, S.off_trace_id)) < 0
                || hex_or_unset(SLOT(ev, S.off_span_id)) < 0)
            Py_RETURN_NONE;
    }
    PyObject *stamped = PyList_New(0);
    if (stamped == NULL)
        return NULL;
    int ok = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *ev = PyList_GET_ITEM(evs, i);
        PyObject *ts = SLOT(ev, S.off_ts);
        if (!PyFloat_CheckExact(ts) && PyObject_TypeCheck(ts, S.datetime_type)
                && PyList_Append(stamped, ev) < 0) {
            Py_DECREF(stamped);
            return NULL;
        }
        PyObject *reason = SLOT(ev, S.off_reason);
        if (reason != S.unset) {
            Py_INCREF(S.unset);
            SLOT(ev, S.off_reason) = S.unset;
            Py_DECREF(reason);
        }
        ok &= hex_or_unset(SLOT(ev, S.off_trace_id)) & hex_or_unset(SLOT(ev, S.off_span_id));
    }
    return Py_BuildValue("(ON)", ok ? Py_True : Py_False, stamped);
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "The event type, UNSET and datetime."},
    {"finish_all", finish_all, METH_O, "Checks and clean-up of a decoded batch."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "detector._finish",
    "The checks msgspec cannot do cheaply, in C; see detector/events.py.", -1, methods,
};

PyMODINIT_FUNC
PyInit__finish(void)
{
    return PyModule_Create(&module);
}
