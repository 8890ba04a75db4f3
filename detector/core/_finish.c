/* A decoded batch's late checks in C: detector.core.events._finish_all_py's twin (the same
 * events afterwards, the same answer; tests/test_events.py holds them alike).
 *
 * RFC 3339 stamps become epoch seconds as datetime.timestamp() makes them: the whole
 * microseconds since the epoch, divided by a million with one rounding (what Python's int
 * true division does when both fit a double exactly; further out, timestamp() itself is
 * called). Ids must be hex digits only; the override's free text is dropped; evaluation
 * scores with a name to clean go to the Python that cleans them. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>

#include "_slots.h"

static PyTypeObject *EVENT = NULL;
static PyObject *UNSET = NULL, *EVAL_KEYS = NULL;
static Py_ssize_t OFF_TS, OFF_TID, OFF_SID, OFF_REASON, OFF_EVALS;

static PyObject *configure(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyType_Check(args[0]) || !PyCallable_Check(args[2]))
        return PyErr_Format(PyExc_TypeError, "configure(TraceEvent, UNSET, eval_keys)");
    PyTypeObject *t = (PyTypeObject *)args[0];
    if ((OFF_TS = slot_offset_s(t, "ts")) < 0 || (OFF_TID = slot_offset_s(t, "trace_id")) < 0
        || (OFF_SID = slot_offset_s(t, "span_id")) < 0
        || (OFF_REASON = slot_offset_s(t, "override_reason")) < 0
        || (OFF_EVALS = slot_offset_s(t, "eval_scores")) < 0)
        return NULL;
    Py_INCREF(t);
    Py_XSETREF(EVENT, t);
    Py_INCREF(args[1]);
    Py_XSETREF(UNSET, args[1]);
    Py_INCREF(args[2]);
    Py_XSETREF(EVAL_KEYS, args[2]);
    Py_RETURN_NONE;
}

/* Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static long long days_from_civil(long long y, long long m, long long d) {
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    long long yoe = y - era * 400;
    long long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

#define EXACT (1LL << 53)

/* A new float: the datetime's timestamp(). */
static PyObject *timestamp(PyObject *dt) {
    PyObject *tz = PyDateTime_DATE_GET_TZINFO(dt);
    long long off_us = 0;
    if (tz != PyDateTime_TimeZone_UTC) {
        if (tz == Py_None)   /* naive: local time, not this twin's to work out */
            return PyObject_CallMethod(dt, "timestamp", NULL);
        PyObject *off = PyObject_CallMethod(tz, "utcoffset", "O", dt);
        if (off == NULL)
            return NULL;
        if (!PyDelta_Check(off)) {
            Py_DECREF(off);
            return PyObject_CallMethod(dt, "timestamp", NULL);
        }
        off_us = ((long long)PyDateTime_DELTA_GET_DAYS(off) * 86400
                  + PyDateTime_DELTA_GET_SECONDS(off)) * 1000000LL
                 + PyDateTime_DELTA_GET_MICROSECONDS(off);
        Py_DECREF(off);
    }
    long long days = days_from_civil(PyDateTime_GET_YEAR(dt), PyDateTime_GET_MONTH(dt),
                                      PyDateTime_GET_DAY(dt));
    long long secs = PyDateTime_DATE_GET_HOUR(dt) * 3600LL + PyDateTime_DATE_GET_MINUTE(dt) * 60LL
                     + PyDateTime_DATE_GET_SECOND(dt);
    /* (No overflow: years 1-9999 are within +-2^58 microseconds.) */
    long long us = (days * 86400LL + secs) * 1000000LL + PyDateTime_DATE_GET_MICROSECOND(dt)
                   - off_us;
    if (us <= -EXACT || us >= EXACT)
        return PyObject_CallMethod(dt, "timestamp", NULL);
    return PyFloat_FromDouble((double)us / 1e6);
}

/* 1 if every character of the id is a hex digit, 0 if not, -1 if it is not a str. */
static int is_hex(PyObject *s) {
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "finish_all: an id is not a str");
        return -1;
    }
    if (!PyUnicode_IS_ASCII(s))
        return 0;
    const unsigned char *c = PyUnicode_1BYTE_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char x = c[i];
        if (!((x >= '0' && x <= '9') || ((x | 0x20) >= 'a' && (x | 0x20) <= 'f')))
            return 0;
    }
    return 1;
}

/* 1 if the evaluator name is already as eval_key makes it (events._CLEAN: runs of [a-z0-9]
 * joined by single underscores), 0 if not or not a str. */
static int clean_name(PyObject *s) {
    if (!PyUnicode_Check(s) || !PyUnicode_IS_ASCII(s))
        return 0;
    const unsigned char *c = PyUnicode_1BYTE_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (n == 0 || c[0] == '_' || c[n - 1] == '_')
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char x = c[i];
        if (x == '_') {
            if (c[i + 1] == '_')   /* (i < n - 1: the last is not '_') */
                return 0;
        } else if (!((x >= 'a' && x <= 'z') || (x >= '0' && x <= '9'))) {
            return 0;
        }
    }
    return 1;
}

static int all_clean(PyObject *scores) {
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(scores, &pos, &k, &v))
        if (!clean_name(k))
            return 0;
    return 1;
}

static void replace(PyObject *ev, Py_ssize_t off, PyObject *v) {   /* steals v */
    PyObject *old = SLOT(ev, off);
    SLOT(ev, off) = v;
    Py_XDECREF(old);
}

static PyObject *finish_all(PyObject *mod, PyObject *evs) {
    if (EVENT == NULL)
        return PyErr_Format(PyExc_RuntimeError, "finish_all: configure() was not called");
    if (!PyList_Check(evs))
        return PyErr_Format(PyExc_TypeError, "finish_all: expected a list of events");
    int all_hex = 1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(evs); i++) {
        PyObject *ev = PyList_GET_ITEM(evs, i);
        if (Py_TYPE(ev) != EVENT)
            return PyErr_Format(PyExc_TypeError, "finish_all: not a TraceEvent");
        PyObject *ts = SLOT(ev, OFF_TS);
        if (ts != NULL && PyDateTime_Check(ts)) {
            PyObject *f = timestamp(ts);
            if (f == NULL)
                return NULL;
            replace(ev, OFF_TS, f);
        }
        PyObject *reason = SLOT(ev, OFF_REASON);
        if (reason != NULL && reason != UNSET) {   /* free text: validated, never kept */
            Py_INCREF(UNSET);
            replace(ev, OFF_REASON, UNSET);
        }
        PyObject *evals = SLOT(ev, OFF_EVALS);
        /* (Names already clean, the usual case, are what eval_keys would keep as they are.) */
        if (evals != NULL && PyDict_Check(evals) && PyDict_GET_SIZE(evals)
            && !all_clean(evals)) {
            PyObject *clean = PyObject_CallOneArg(EVAL_KEYS, evals);
            if (clean == NULL)
                return NULL;
            replace(ev, OFF_EVALS, clean);
        }
        PyObject *ids[2] = {SLOT(ev, OFF_TID), SLOT(ev, OFF_SID)};
        for (int j = 0; j < 2; j++) {
            if (ids[j] == NULL || ids[j] == UNSET || !all_hex)
                continue;
            int h = is_hex(ids[j]);
            if (h < 0)
                return NULL;
            all_hex = h;
        }
    }
    return PyBool_FromLong(all_hex);
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(TraceEvent, UNSET, eval_keys): the event type and what finish_all needs."},
    {"finish_all", (PyCFunction)finish_all, METH_O,
     "finish_all(events) -> whether every id is hex; see events._finish_all_py."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "detector.core._finish",
    "A decoded batch's late checks (the C twin of detector.core.events._finish_all_py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__finish(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return NULL;
    return PyModule_Create(&module);
}
