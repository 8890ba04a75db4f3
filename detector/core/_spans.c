/* The otlp_proto decoder's per-span mapping in C: for each span of a ScopeSpans, the same dict
 * as OtlpDecoder._map_span (detector/core/otlp.py, the reference and the fallback; the two are
 * compared by tests/test_otlp.py) or, when that span needs more than the common case, the span
 * itself, which the Python side then maps.
 *
 * Why C: upb has already parsed the message, and the mapping that follows was most of the
 * decoder's cost: a dozen attribute reads, cache lookups and dict writes per span, each a
 * bytecode step in Python. Nothing here decodes protobuf: the spans are upb's message objects,
 * read through their Python attributes, and each attribute is the serialised KeyValue bytes
 * the view hands over (otlp_wire.proto_view), only ever used as a key of the decoder's cache,
 * which Python fills (``fill``) on a miss. So no attribute value is read here, content or not.
 *
 * Handed back to Python (the span appended as it is): a field named by two attributes or by
 * the span and its resource (the mapping's ranks decide), a span without gen_ai.operation.name
 * that has gen_ai.system (its operation comes from the span name), and any span with events
 * (evaluation results). A span that is not a GenAI operation is None, as in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *s_attributes, *s_events, *s_trace_id, *s_span_id, *s_start, *s_end, *s_status,
    *s_code, *s_hex, *k_operation, *k_legacy, *k_from_reasons, *k_refusal, *k_error_type,
    *k_ts, *k_trace_id, *k_span_id, *k_latency, *v_other, *zeros_trace, *zeros_span,
    *billion, *million;

/* id bytes -> their hex string, or NULL (no error) when empty or all zeros (W3C: no id). */
static int
hex_id(PyObject *span, PyObject *attr, PyObject *zeros, PyObject *out, PyObject *key)
{
    PyObject *b = PyObject_GetAttr(span, attr);
    if (b == NULL)
        return -1;
    int rc = 0;
    if (PyObject_IsTrue(b)) {
        PyObject *h = PyObject_CallMethodNoArgs(b, s_hex);
        if (h == NULL)
            rc = -1;
        else {
            int same = PyUnicode_Compare(h, zeros);
            if (same == -1 && PyErr_Occurred())
                rc = -1;
            else if (same != 0)
                rc = PyDict_SetItem(out, key, h);
            Py_DECREF(h);
        }
    }
    Py_DECREF(b);
    return rc;
}

/* One span: 1 and its dict in *out, 0 if Python must map it, -1 on error. */
static int
map_one(PyObject *span, PyObject *cache, PyObject *fill, PyObject *base, PyObject **out)
{
    *out = NULL;
    PyObject *attrs = PyObject_GetAttr(span, s_attributes);
    if (attrs == NULL)
        return -1;
    PyObject *seq = PySequence_Fast(attrs, "attributes");
    Py_DECREF(attrs);
    if (seq == NULL)
        return -1;
    PyObject *best = PyDict_New();
    if (best == NULL) {
        Py_DECREF(seq);
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), pairs = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *hit = PyDict_GetItemWithError(cache, items[i]);
        if (hit != NULL)
            Py_INCREF(hit);
        else if (PyErr_Occurred() || (hit = PyObject_CallOneArg(fill, items[i])) == NULL)
            goto error;
        if (!PyTuple_Check(hit)) {
            PyErr_SetString(PyExc_TypeError, "a cached attribute is not a tuple");
            Py_DECREF(hit);
            goto error;
        }
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(hit); j++) {
            PyObject *pair = PyTuple_GET_ITEM(hit, j);
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
                PyErr_SetString(PyExc_TypeError, "a cached pair is not (field, value)");
                Py_DECREF(hit);
                goto error;
            }
            if (PyDict_SetItem(best, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)) < 0) {
                Py_DECREF(hit);
                goto error;
            }
            pairs++;
        }
        Py_DECREF(hit);
    }
    Py_CLEAR(seq);
    if (PyDict_GET_SIZE(best) != pairs)
        goto defer;   /* a field named twice: ranked in Python */
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(base, &pos, &key, &value)) {
        int in = PyDict_Contains(best, key);
        if (in < 0)
            goto error;
        if (in)
            goto defer;   /* on the span and its resource: ranked in Python */
    }
    if (PyDict_Update(best, base) < 0)
        goto error;
    int has = PyDict_Contains(best, k_operation);
    if (has < 0)
        goto error;
    if (has) {   /* gen_ai.system beside it: read for nothing else */
        if (PyDict_Contains(best, k_legacy) > 0 && PyDict_DelItem(best, k_legacy) < 0)
            goto error;
        if (PyErr_Occurred())
            goto error;
    }
    else {
        has = PyDict_Contains(best, k_legacy);
        if (has < 0)
            goto error;
        if (has)
            goto defer;   /* an older instrumentation's span: the operation from its name */
        Py_DECREF(best);
        Py_INCREF(Py_None);
        *out = Py_None;   /* not a GenAI operation */
        return 1;
    }
    PyObject *events = PyObject_GetAttr(span, s_events);
    if (events == NULL)
        goto error;
    Py_ssize_t n_events = PyObject_Length(events);
    Py_DECREF(events);
    if (n_events < 0)
        goto error;
    if (n_events > 0)
        goto defer;   /* evaluation results: read in Python */

    PyObject *end = PyObject_GetAttr(span, s_end);
    if (end == NULL)
        goto error;
    PyObject *start = PyObject_GetAttr(span, s_start);
    if (start == NULL) {
        Py_DECREF(end);
        goto error;
    }
    int rc = 0, end_set = PyObject_IsTrue(end), start_set = PyObject_IsTrue(start);
    if (end_set < 0 || start_set < 0)
        rc = -1;
    if (rc == 0 && end_set) {   /* int / int: correctly rounded, as in Python */
        PyObject *ts = PyNumber_TrueDivide(end, billion);
        rc = ts == NULL ? -1 : PyDict_SetItem(best, k_ts, ts);
        Py_XDECREF(ts);
    }
    if (rc == 0)
        rc = hex_id(span, s_trace_id, zeros_trace, best, k_trace_id);
    if (rc == 0)
        rc = hex_id(span, s_span_id, zeros_span, best, k_span_id);
    if (rc == 0 && start_set) {
        int ge = PyObject_RichCompareBool(end, start, Py_GE);
        if (ge < 0)
            rc = -1;
        else if (ge) {
            PyObject *d = PyNumber_Subtract(end, start);
            PyObject *ms = d == NULL ? NULL : PyNumber_TrueDivide(d, million);
            rc = ms == NULL ? -1 : PyDict_SetItem(best, k_latency, ms);
            Py_XDECREF(d);
            Py_XDECREF(ms);
        }
    }
    Py_DECREF(end);
    Py_DECREF(start);
    if (rc < 0)
        goto error;
    PyObject *refused = PyDict_GetItemWithError(best, k_from_reasons);
    if (refused != NULL) {   /* a refusal attribute overrides the finish reasons */
        Py_INCREF(refused);
        rc = PyDict_DelItem(best, k_from_reasons);
        if (rc == 0) {
            has = PyDict_Contains(best, k_refusal);
            rc = has < 0 ? -1 : has ? 0 : PyDict_SetItem(best, k_refusal, refused);
        }
        Py_DECREF(refused);
        if (rc < 0)
            goto error;
    }
    else if (PyErr_Occurred())
        goto error;
    PyObject *status = PyObject_GetAttr(span, s_status);
    if (status == NULL)
        goto error;
    PyObject *code = PyObject_GetAttr(status, s_code);   /* 0 when the span has no status */
    Py_DECREF(status);
    if (code == NULL)
        goto error;
    long c = PyLong_AsLong(code);
    Py_DECREF(code);
    if (c == -1 && PyErr_Occurred())
        goto error;
    if (c == 2) {   /* STATUS_CODE_ERROR: the conventions' value when the class is unknown */
        has = PyDict_Contains(best, k_error_type);
        if (has < 0 || (!has && PyDict_SetItem(best, k_error_type, v_other) < 0))
            goto error;
    }
    *out = best;
    return 1;

defer:
    Py_DECREF(best);
    return 0;
error:
    Py_XDECREF(seq);
    Py_DECREF(best);
    return -1;
}

/* map_spans(spans, cache, fill, base, out) -> how many spans were handed back (appended as
 * they are); see the top of the file. */
static PyObject *
map_spans(PyObject *self, PyObject *args)
{
    PyObject *spans, *cache, *fill, *base, *out;
    if (!PyArg_ParseTuple(args, "OO!OO!O!:map_spans", &spans, &PyDict_Type, &cache, &fill,
                          &PyDict_Type, &base, &PyList_Type, &out))
        return NULL;
    PyObject *it = PyObject_GetIter(spans);
    if (it == NULL)
        return NULL;
    Py_ssize_t deferred = 0;
    PyObject *span;
    while ((span = PyIter_Next(it)) != NULL) {
        PyObject *got;
        int rc = map_one(span, cache, fill, base, &got);
        if (rc == 0) {
            deferred++;
            rc = PyList_Append(out, span);
        }
        else if (rc == 1) {
            rc = PyList_Append(out, got);
            Py_DECREF(got);
        }
        Py_DECREF(span);
        if (rc < 0) {
            Py_DECREF(it);
            return NULL;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromSsize_t(deferred);
}

static PyMethodDef methods[] = {
    {"map_spans", map_spans, METH_VARARGS, "Map a ScopeSpans' spans (see the file's top)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "detector.core._spans",
    "The otlp_proto decoder's per-span mapping in C; see detector/core/otlp.py.", -1, methods,
};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC
PyInit__spans(void)
{
    INTERN(s_attributes, "attributes");
    INTERN(s_events, "events");
    INTERN(s_trace_id, "trace_id");
    INTERN(s_span_id, "span_id");
    INTERN(s_start, "start_time_unix_nano");
    INTERN(s_end, "end_time_unix_nano");
    INTERN(s_status, "status");
    INTERN(s_code, "code");
    INTERN(s_hex, "hex");
    /* The field names otlp.py's _OPERATION, _LEGACY_FIELD and _FROM_REASONS map to. */
    INTERN(k_operation, "operation");
    INTERN(k_legacy, "_gen_ai_system");
    INTERN(k_from_reasons, "_refusal_from_finish_reasons");
    INTERN(k_refusal, "refusal");
    INTERN(k_error_type, "error_type");
    INTERN(k_ts, "ts");
    INTERN(k_trace_id, "trace_id");
    INTERN(k_span_id, "span_id");
    INTERN(k_latency, "latency_ms");
    INTERN(v_other, "_OTHER");
    INTERN(zeros_trace, "00000000000000000000000000000000");
    INTERN(zeros_span, "0000000000000000");
    if ((billion = PyLong_FromLong(1000000000L)) == NULL
        || (million = PyLong_FromLong(1000000L)) == NULL)
        return NULL;
    return PyModule_Create(&module);
}
