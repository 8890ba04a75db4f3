/* The otlp_proto decoder's per-span mapping in C: for each span of a parsed TracesData, the
 * TraceEvent that OtlpDecoder._map_span (detector/core/otlp.py, the reference and the
 * fallback) and msgspec's checks give (compared by tests/test_otlp.py) or, when that span
 * needs more than the common case, the span and its ResourceSpans, which Python then maps.
 *
 * Why C: upb has already parsed the message, and the mapping that follows was most of the
 * decoder's cost: a dozen attribute reads, cache lookups and dict writes per span, then
 * msgspec's checks of each dict. Nothing here decodes protobuf: the spans are upb's message
 * objects, read through their Python attributes, and each attribute is the serialised
 * KeyValue bytes the view hands over (otlp_wire.proto_view), only ever used as a key of the
 * decoder's ``checked`` cache, which Python fills (``fill``) on a miss with the attribute's
 * (slot offset, rank, value) triples, each value checked once there as msgspec checks the
 * field. So no attribute value is read here, content or not, and the event is written at its
 * slots (only those configure() handed out).
 *
 * A field named by two attributes, or by the span and its resource, takes the best-ranked
 * one, as the Python side ranks them. Handed back to Python: a value its field refuses, a
 * span without gen_ai.operation.name that has gen_ai.system (its operation comes from the
 * span name), one with events (evaluation results), without an end time, with an id of
 * another length (rejections are named in Python) or more than MAX_ATTRS attributes. A span
 * that is not a GenAI operation is None.
 */
#include "_slots.h"

static PyObject *s_attributes, *s_events, *s_trace_id, *s_span_id, *s_start, *s_end, *s_status,
    *s_code, *s_has_field, *s_resource_spans, *s_scope_spans, *s_spans, *s_copy, *v_other, *billion, *million;
static PyObject *template;   /* TraceEvent(ts=0.0, operation="-"): copied for each span */
static Py_ssize_t o_operation, o_refusal, o_error_type, o_ts, o_trace_id, o_span_id, o_latency;

#define FROM_REASONS (-1)   /* otlp.py's _FROM_REASONS: refusal unless an attribute says */
#define LEGACY (-2)         /* otlp.py's _LEGACY_FIELD: gen_ai.system */
#define MAX_SLOTS 64    /* TraceEvent's fields, at most */
#define MAX_ATTRS 64    /* a span with more goes to Python */

/* The slots the checked entries may name: offsets first_slot + i * sizeof(PyObject *) with
 * known[i] set, i < n_slots (configure() sets them). */
static Py_ssize_t first_slot, n_slots;
static char known[MAX_SLOTS];

/* Put a new reference to v in obj's slot at off (a list is copied: events share no list). */
static int
set_slot(PyObject *obj, Py_ssize_t off, PyObject *v)
{
    PyObject *nv = PyList_CheckExact(v) ? PyList_GetSlice(v, 0, PyList_GET_SIZE(v))
                                        : Py_NewRef(v);
    if (nv == NULL)
        return -1;
    PyObject *old = SLOT(obj, off);
    SLOT(obj, off) = nv;
    Py_XDECREF(old);
    return 0;
}

/* The span's id of n bytes as hex in the slot: 0 done (or no id: empty or all zeros, as W3C
 * says), 1 if Python must map the span (another length: rejected there), -1 on error. */
static int
hex_id(PyObject *span, PyObject *attr, Py_ssize_t n, PyObject *ev, Py_ssize_t off)
{
    static const char digits[] = "0123456789abcdef";
    PyObject *b = PyObject_GetAttr(span, attr);
    if (b == NULL)
        return -1;
    int rc = 0;
    if (!PyBytes_Check(b))
        rc = 1;
    else if (PyBytes_GET_SIZE(b) == n) {
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(b);
        Py_ssize_t i = 0;
        while (i < n && p[i] == 0)
            i++;
        if (i < n) {   /* bytes.hex(), without the method call */
            PyObject *h = PyUnicode_New(2 * n, 127);
            if (h == NULL)
                rc = -1;
            else {
                Py_UCS1 *out = PyUnicode_1BYTE_DATA(h);
                for (i = 0; i < n; i++) {
                    out[2 * i] = digits[p[i] >> 4];
                    out[2 * i + 1] = digits[p[i] & 15];
                }
                rc = set_slot(ev, off, h);
                Py_DECREF(h);
            }
        }
    }
    else if (PyBytes_GET_SIZE(b) != 0)
        rc = 1;
    Py_DECREF(b);
    return rc;
}

/* A span's fields so far: for each slot that has one, its best rank and value (borrowed
 * from the checked entries, which map_one holds), found by the slot's index. */
typedef struct {
    signed char at[MAX_SLOTS + 1];   /* slot index -> place in the arrays below, or -1 */
    Py_ssize_t offs[MAX_SLOTS + 1];
    long ranks[MAX_SLOTS + 1];
    PyObject *vals[MAX_SLOTS + 1];
    int n, legacy;
} Fields;

/* The index of a slot offset that configure() handed out (FROM_REASONS: the last), or -1. */
static inline Py_ssize_t
slot_index(Py_ssize_t off)
{
    if (off == FROM_REASONS)
        return n_slots;
    if (off < first_slot || (off - first_slot) % sizeof(PyObject *) != 0)
        return -1;
    Py_ssize_t i = (off - first_slot) / (Py_ssize_t)sizeof(PyObject *);
    return i < n_slots && known[i] ? i : -1;
}

static inline int
has_field(const Fields *f, Py_ssize_t off)
{
    Py_ssize_t i = slot_index(off);
    return i >= 0 && f->at[i] >= 0;
}

/* Add an entry's (offset, rank, value) triples, the best rank of a field winning (the later
 * on a tie, as otlp.py's _resolve); 0 if Python must map the span (a value that fails its
 * check), -1 on error. */
static int
add_pairs(PyObject *entry, Fields *f)
{
    if (!PyTuple_Check(entry))
        return 0;   /* False: a value its field's type refuses (Python names the reason) */
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(entry); j++) {
        PyObject *t = PyTuple_GET_ITEM(entry, j);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
            PyErr_SetString(PyExc_TypeError, "a checked entry is not (offset, rank, value)");
            return -1;
        }
        Py_ssize_t off = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 0));
        long rank = PyLong_AsLong(PyTuple_GET_ITEM(t, 1));
        if ((off == -1 || rank == -1) && PyErr_Occurred())
            return -1;
        if (off == LEGACY) {
            f->legacy = 1;
            continue;
        }
        Py_ssize_t i = slot_index(off);   /* never write where configure() did not say */
        if (i < 0) {
            PyErr_Format(PyExc_ValueError, "a checked entry names offset %zd", off);
            return -1;
        }
        int k = f->at[i];
        if (k < 0) {
            k = f->at[i] = (signed char)f->n++;
            f->offs[k] = off;
        }
        else if (rank > f->ranks[k])
            continue;
        f->ranks[k] = rank;
        f->vals[k] = PyTuple_GET_ITEM(t, 2);
    }
    return 1;
}

static int
has_status(PyObject *span)
{
    PyObject *r = PyObject_CallMethodOneArg(span, s_has_field, s_status);
    if (r == NULL)
        return -1;
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

/* One span: 1 and its TraceEvent (or None: not a GenAI operation) in *out, 0 if Python must
 * map it, -1 on error. */
static int
map_one(PyObject *span, PyObject *checked, PyObject *fill, PyObject *base, PyObject **out)
{
    *out = NULL;
    Fields f;
    memset(f.at, -1, sizeof f.at);
    f.n = f.legacy = 0;
    PyObject *hits[MAX_ATTRS], *ev = NULL;
    Py_ssize_t n_hits = 0;
    int rc;
    /* By index: the container's iteration ends in an IndexError, and a list copies. */
    PyObject *attrs = PyObject_GetAttr(span, s_attributes);
    if (attrs == NULL)
        return -1;
    Py_ssize_t n_attrs = PySequence_Size(attrs);
    if (n_attrs < 0 || n_attrs > MAX_ATTRS) {
        Py_DECREF(attrs);
        return n_attrs < 0 ? -1 : 0;
    }
    /* The entries stay referenced here: fill() may clear the cache that holds them. */
    for (; n_hits < n_attrs; n_hits++) {
        PyObject *b = PySequence_GetItem(attrs, n_hits);
        if (b == NULL)
            goto error;
        PyObject *hit = PyDict_GetItemWithError(checked, b);
        if (hit != NULL)
            Py_INCREF(hit);
        else if (!PyErr_Occurred())
            hit = PyObject_CallOneArg(fill, b);
        Py_DECREF(b);
        if (hit == NULL)
            goto error;
        hits[n_hits] = hit;
    }
    Py_CLEAR(attrs);
    /* The resource's first, as _resolve lists them. */
    if ((rc = add_pairs(base, &f)) <= 0)
        goto done;
    for (Py_ssize_t i = 0; i < n_hits; i++) {
        rc = add_pairs(hits[i], &f);
        if (rc <= 0)
            goto done;
    }
    rc = 0;
    if (!has_field(&f, o_operation)) {
        if (f.legacy)
            goto done;   /* an older instrumentation's span: the operation from its name */
        *out = Py_NewRef(Py_None);   /* not a GenAI operation */
        rc = 1;
        goto done;
    }
    PyObject *events = PyObject_GetAttr(span, s_events);
    if (events == NULL)
        goto error;
    Py_ssize_t n_events = PyObject_Length(events);
    Py_DECREF(events);
    if (n_events < 0)
        goto error;
    if (n_events > 0)
        goto done;   /* evaluation results: read in Python */
    PyObject *end = PyObject_GetAttr(span, s_end);
    if (end == NULL)
        goto error;
    PyObject *start = PyObject_GetAttr(span, s_start);
    if (start == NULL) {
        Py_DECREF(end);
        goto error;
    }
    int end_set = PyObject_IsTrue(end), start_set = PyObject_IsTrue(start);
    if (end_set < 0 || start_set < 0 || !end_set) {   /* no end: no ts, rejected in Python */
        Py_DECREF(end);
        Py_DECREF(start);
        if (end_set < 0 || start_set < 0)
            goto error;
        goto done;
    }
    ev = PyObject_CallMethodNoArgs(template, s_copy);
    int bad = ev == NULL;
    if (!bad) {   /* int / int: correctly rounded, as in Python */
        PyObject *ts = PyNumber_TrueDivide(end, billion);
        bad = ts == NULL || set_slot(ev, o_ts, ts) < 0;
        Py_XDECREF(ts);
    }
    if (!bad && start_set) {
        int ge = PyObject_RichCompareBool(end, start, Py_GE);
        if (ge < 0)
            bad = 1;
        else if (ge) {
            PyObject *d = PyNumber_Subtract(end, start);
            PyObject *ms = d == NULL ? NULL : PyNumber_TrueDivide(d, million);
            bad = ms == NULL || set_slot(ev, o_latency, ms) < 0;
            Py_XDECREF(d);
            Py_XDECREF(ms);
        }
    }
    Py_DECREF(end);
    Py_DECREF(start);
    if (bad)
        goto error;
    if ((rc = hex_id(span, s_trace_id, 16, ev, o_trace_id)) != 0
        || (rc = hex_id(span, s_span_id, 8, ev, o_span_id)) != 0) {
        if (rc < 0)
            goto error;
        rc = 0;
        goto done;
    }
    PyObject *from_reasons = NULL;
    for (int k = 0; k < f.n; k++) {
        if (f.offs[k] == FROM_REASONS)
            from_reasons = f.vals[k];
        else if (set_slot(ev, f.offs[k], f.vals[k]) < 0)
            goto error;
    }
    /* A refusal attribute overrides the finish reasons. */
    if (from_reasons != NULL && !has_field(&f, o_refusal)
        && set_slot(ev, o_refusal, from_reasons) < 0)
        goto error;
    /* Most spans have no status: asking is cheaper than reading its empty message. */
    long c = 0;
    int has = has_status(span);
    if (has < 0)
        goto error;
    if (has) {
        PyObject *status = PyObject_GetAttr(span, s_status);
        if (status == NULL)
            goto error;
        PyObject *code = PyObject_GetAttr(status, s_code);
        Py_DECREF(status);
        if (code == NULL)
            goto error;
        c = PyLong_AsLong(code);
        Py_DECREF(code);
        if (c == -1 && PyErr_Occurred())
            goto error;
    }
    /* STATUS_CODE_ERROR: the conventions' value when the class is unknown */
    if (c == 2 && !has_field(&f, o_error_type) && set_slot(ev, o_error_type, v_other) < 0)
        goto error;
    *out = ev;
    ev = NULL;
    rc = 1;
done:
    Py_XDECREF(ev);
    for (Py_ssize_t i = 0; i < n_hits; i++)
        Py_DECREF(hits[i]);
    return rc;
error:
    Py_XDECREF(attrs);
    rc = -1;
    goto done;
}

/* Item i of a upb repeated field: by index, as iterating one ends in an IndexError. */
static PyObject *
item(PyObject *obj, PyObject *field, Py_ssize_t i, Py_ssize_t *n)
{
    PyObject *seq = PyObject_GetAttr(obj, field);
    if (seq == NULL)
        return NULL;
    PyObject *x = NULL;
    if (i == 0 && (*n = PySequence_Size(seq)) < 0)
        goto out;
    if (i < *n)
        x = PySequence_GetItem(seq, i);
    else
        x = Py_NewRef(Py_None);   /* the end */
out:
    Py_DECREF(seq);
    return x;
}

/* The spans of one ScopeSpans, each appended to out: its TraceEvent, None (not a GenAI
 * operation), or (span, resource_spans) for Python to map; -1 on error, else how many were
 * handed back. base False: the resource's values need Python, and so do all its spans. */
static Py_ssize_t
scope(PyObject *spans, PyObject *rs, PyObject *checked, PyObject *fill, PyObject *base,
      PyObject *out)
{
    Py_ssize_t n = PySequence_Size(spans), deferred = 0;
    if (n < 0)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *span = PySequence_GetItem(spans, i), *got = NULL;
        if (span == NULL)
            return -1;
        int rc = base == Py_False ? 0 : map_one(span, checked, fill, base, &got);
        if (rc == 0) {
            deferred++;
            got = PyTuple_Pack(2, span, rs);
            rc = got == NULL ? -1 : 1;
        }
        if (rc == 1) {
            rc = PyList_Append(out, got);
            Py_DECREF(got);
        }
        Py_DECREF(span);
        if (rc < 0)
            return -1;
    }
    return deferred;
}

/* map_message(msg, resource, checked, fill, out) -> how many spans were handed back: every
 * span of a parsed TracesData appended to out as scope() says; resource(resource_spans) gives
 * the checked entry of a resource's attributes (or False). See the top of the file. */
static PyObject *
map_message(PyObject *self, PyObject *args)
{
    PyObject *msg, *resource, *checked, *fill, *out;
    if (!PyArg_ParseTuple(args, "OOO!OO!:map_message", &msg, &resource, &PyDict_Type,
                          &checked, &fill, &PyList_Type, &out))
        return NULL;
    if (template == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    Py_ssize_t deferred = 0, n_rs = 0;
    for (Py_ssize_t i = 0;; i++) {
        PyObject *rs = item(msg, s_resource_spans, i, &n_rs);
        if (rs == NULL)
            return NULL;
        if (rs == Py_None) {
            Py_DECREF(rs);
            break;
        }
        PyObject *base = PyObject_CallOneArg(resource, rs);
        Py_ssize_t n_ss = 0, got = 0;
        for (Py_ssize_t j = 0; base != NULL && got >= 0; j++) {
            PyObject *ss = item(rs, s_scope_spans, j, &n_ss);
            if (ss == NULL || ss == Py_None) {
                got = ss == NULL ? -1 : got;
                Py_XDECREF(ss);
                break;
            }
            PyObject *spans = PyObject_GetAttr(ss, s_spans);
            Py_DECREF(ss);
            if (spans == NULL)
                got = -1;
            else {
                got = scope(spans, rs, checked, fill, base, out);
                Py_DECREF(spans);
                deferred += got > 0 ? got : 0;
            }
        }
        Py_DECREF(rs);
        if (base == NULL || got < 0) {
            Py_XDECREF(base);
            return NULL;
        }
        Py_DECREF(base);
    }
    return PyLong_FromSsize_t(deferred);
}

/* configure(template, names) -> {name: slot offset}: the event each span's is a copy of, and
 * the offsets of these fields, which the checked cache's pairs name. */
static PyObject *
configure(PyObject *self, PyObject *args)
{
    PyObject *tpl, *names;
    if (!PyArg_ParseTuple(args, "OO!:configure", &tpl, &PyTuple_Type, &names))
        return NULL;
    if ((o_operation = slot_offset_s(Py_TYPE(tpl), "operation")) < 0
        || (o_refusal = slot_offset_s(Py_TYPE(tpl), "refusal")) < 0
        || (o_error_type = slot_offset_s(Py_TYPE(tpl), "error_type")) < 0
        || (o_ts = slot_offset_s(Py_TYPE(tpl), "ts")) < 0
        || (o_trace_id = slot_offset_s(Py_TYPE(tpl), "trace_id")) < 0
        || (o_span_id = slot_offset_s(Py_TYPE(tpl), "span_id")) < 0
        || (o_latency = slot_offset_s(Py_TYPE(tpl), "latency_ms")) < 0)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(names), offs[MAX_SLOTS], lo = PY_SSIZE_T_MAX;
    if (n > MAX_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "more fields than MAX_SLOTS");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((offs[i] = slot_offset(Py_TYPE(tpl), PyTuple_GET_ITEM(names, i))) < 0)
            return NULL;
        lo = offs[i] < lo ? offs[i] : lo;
    }
    char seen[MAX_SLOTS] = {0};
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t k = (offs[i] - lo) / (Py_ssize_t)sizeof(PyObject *);
        if (k >= MAX_SLOTS) {
            PyErr_SetString(PyExc_ValueError, "the fields' slots span more than MAX_SLOTS");
            return NULL;
        }
        seen[k] = 1;
    }
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PyLong_FromSsize_t(offs[i]);
        if (o == NULL || PyDict_SetItem(out, PyTuple_GET_ITEM(names, i), o) < 0) {
            Py_XDECREF(o);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(o);
    }
    memcpy(known, seen, sizeof known);
    first_slot = n ? lo : 0;
    n_slots = MAX_SLOTS;
    Py_XSETREF(template, Py_NewRef(tpl));
    return out;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "The template event and field offsets."},
    {"map_message", map_message, METH_VARARGS, "Map a TracesData's spans (see the file's top)."},
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
    INTERN(s_has_field, "HasField");
    INTERN(s_resource_spans, "resource_spans");
    INTERN(s_scope_spans, "scope_spans");
    INTERN(s_spans, "spans");
    INTERN(s_copy, "__copy__");
    INTERN(v_other, "_OTHER");
    if ((billion = PyLong_FromLong(1000000000L)) == NULL
        || (million = PyLong_FromLong(1000000L)) == NULL)
        return NULL;
    return PyModule_Create(&module);
}
