/* Stage 1's per-event counting in C: the same result as Counting._add_py in
 * detector/core/counting.py, which is the reference and the fallback (the two are compared by
 * tests/test_tally.py).
 *
 * Why C: on a backlog of 100-event messages, the counting loop was 42 % of a worker's time,
 * and in Python it costs ~2 us an event whatever the loop looks like: it is one attribute
 * read, dict lookup or boxed-int update after another. Here an event's fields are read at
 * their slot offsets in the msgspec struct, counter increments are summed per partial and
 * added once per call, and the evidence (bottom-k trace ids, top-k values) is kept here too.
 *
 * What is counted is not written here: configure() is handed the counters declared in
 * detector/core/signals.py as a table of rules (counting.c_table), which add_many reads for
 * every event. A new counter needs C only if it needs a new kind of rule (R_* below).
 *
 * Making a partial and counting safety labels are handed back to the Aggregator's own
 * methods, and an event of an unexpected shape (built by hand rather than decoded) makes
 * add_many stop before touching anything, so that the Python path counts that event.
 */
#include "_slots.h"
#include <float.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

/* The structural fields of TraceEvent, in this order (see the configure() call in counting.py). */
enum { F_TS, F_TRACE_ID, F_OPERATION, N_FIELDS };

/* The rules (counting.c_table): its codes. R_COUNT: +1 if any ``when`` test holds (or none is
 * given); R_SUM: + an int field, at most ``cap``; R_LOG1P: n, sum and sum of squares of
 * fixed-point log1p; the groups, placed by the layout (add_many's ctx): R_LABELS, safety
 * labels handed to Python; R_COST, a model call's tokens at its price; R_SCORES, evaluators. */
enum { R_COUNT, R_SUM, R_LOG1P, R_LABELS, R_COST, R_SCORES };
enum { T_IS, T_SET, T_EQ };    /* a ``when`` test: the field is the object, set, or equal to it */
enum { E_NONE, E_IDS, E_SAMPLED, E_TOP, E_LOWEST };   /* the trace ids kept as evidence */
#define MAX_RULES 32
#define MAX_WHEN 4
#define MAX_RULE_FIELDS 3
#define MAX_FIXED 64           /* fixed counters; the cost's three follow them in an Acc */
#define MAX_GATES 16
#define MAX_CHECKS 32
#define MAX_QTY 8
#define MAX_TOOL 8             /* counters kept per tool name */

typedef struct {
    int kind, gate, evidence, nwhen, nfields, ints_only;
    int qi[2];                           /* its quantities' places in expected_shape's q */
    Py_ssize_t at;                       /* the first counter; -1 for a group */
    Py_ssize_t off[MAX_RULE_FIELDS];     /* the fields read */
    long long cap;
    PyObject *key;                       /* ``at`` as a Python int: sample and top keys */
    struct { Py_ssize_t off; int test; PyObject *obj; } when[MAX_WHEN];
} Rule;

#define MAX_OPS 16
static struct {
    PyTypeObject *event_type;
    PyTypeObject *partial_type;
    Py_ssize_t off_counts, off_samples, off_top;
    PyObject *heappush, *heapreplace;    /* heapq's, in C */
    PyObject *unset;
    Py_ssize_t off[N_FIELDS];
    Rule rule[MAX_RULES];
    int nrules;
    /* The rules of each gate (operation class), those of any operation among them: the
     * counts of one flag (or none) apart, in a plain loop (most rules are those). */
    struct Flag {
        Py_ssize_t off;        /* the field tested (every event: the operation, always set) */
        PyObject *obj;         /* counted if the field is (not, with ``isnt``) this object */
        int isnt;
        Py_ssize_t at;
        int evidence;
        PyObject *key;
    } flag[MAX_GATES][MAX_RULES];
    int n_flag[MAX_GATES];
    unsigned char by_gate[MAX_GATES][MAX_RULES];
    int n_by_gate[MAX_GATES];
    /* What expected_shape checks, each field once: slots set, str (or unset), a count (or
     * unset), a quantity (q), a list (or unset), a dict of floats (or None). */
    Py_ssize_t must[MAX_CHECKS], strs[MAX_CHECKS], sums[MAX_CHECKS], lists[MAX_CHECKS],
        dicts[MAX_CHECKS];
    int nmust, nstrs, nsums, nlists, ndicts, nqty;
    struct { Py_ssize_t off; int ints_only; } qty[MAX_QTY];
    Py_ssize_t n_fixed;                  /* counters before the groups' */
    PyObject *keep;                      /* the rules' tuple: owns their objects */
    PyObject *opcodes;                   /* operation -> its gate */
    /* The same as arrays (n_ops -1: only the dict): an event's operation is a freshly
     * decoded str, compared with these few by content rather than hashed for the dict. */
    PyObject *op_key[MAX_OPS];
    long op_gate[MAX_OPS];
    int n_ops;
    Py_ssize_t top_k;
    double eval_max, eval_scale;
    /* Per tool name (configure_values): the counters in tool_at, of each event whose
     * tool_name is set, also added to partial.values[tool_key][its name], a list. */
    Py_ssize_t off_values, off_tool;
    PyObject *tool_key, *other, *fresh;   /* fresh(): a new name's zeroed array('q') */
    Py_ssize_t tool_at[MAX_TOOL], n_tool, max_values;
    int ready;
} S;

/* ``off`` into the set arr[0:*n]; -1 with an exception if it is full. */
static int
add_check(Py_ssize_t *arr, int *n, Py_ssize_t off)
{
    for (int i = 0; i < *n; i++)
        if (arr[i] == off)
            return 0;
    if (*n >= MAX_CHECKS) {
        PyErr_SetString(PyExc_ValueError, "configure: too many fields");
        return -1;
    }
    arr[(*n)++] = off;
    return 0;
}

/* The place of quantity field ``off`` in expected_shape's q; -1 with an exception. */
static int
add_qty(Py_ssize_t off, int ints_only)
{
    for (int i = 0; i < S.nqty; i++)
        if (S.qty[i].off == off && S.qty[i].ints_only == ints_only)
            return i;
    if (S.nqty >= MAX_QTY) {
        PyErr_SetString(PyExc_ValueError, "configure: too many quantities");
        return -1;
    }
    S.qty[S.nqty].off = off;
    S.qty[S.nqty].ints_only = ints_only;
    return S.nqty++;
}

/* What expected_shape checks for rule r, and its place in the gates' lists. */
static int
plan(Rule *r, int i)
{
    for (int j = 0; j < r->nfields; j++)
        if (add_check(S.must, &S.nmust, r->off[j]) < 0)
            return -1;
    for (int j = 0; j < r->nwhen; j++)
        if (add_check(S.must, &S.nmust, r->when[j].off) < 0
                || (r->when[j].test == T_EQ && add_check(S.strs, &S.nstrs, r->when[j].off) < 0))
            return -1;
    int err = 0;
    switch (r->kind) {
    case R_SUM: err = add_check(S.sums, &S.nsums, r->off[0]); break;
    case R_LABELS: err = add_check(S.lists, &S.nlists, r->off[0]); break;
    case R_SCORES: err = add_check(S.dicts, &S.ndicts, r->off[0]); break;
    case R_COST:
        err = add_check(S.strs, &S.nstrs, r->off[2]);   /* the model */
        /* fall through: its tokens */
    case R_LOG1P:
        for (int j = 0; j < (r->kind == R_COST ? 2 : 1) && !err; j++)
            err = (r->qi[j] = add_qty(r->off[j], r->ints_only)) < 0;
        break;
    }
    if (err)
        return -1;
    if (r->gate < 0 || r->gate >= MAX_GATES) {
        PyErr_SetString(PyExc_ValueError, "configure: a gate past MAX_GATES");
        return -1;
    }
    int flag = r->kind == R_COUNT && (r->nwhen == 0 || (r->nwhen == 1 && r->when[0].test != T_EQ));
    for (int g = 0; g < MAX_GATES; g++) {
        if (r->gate != 0 && r->gate != g)
            continue;
        if (flag)
            S.flag[g][S.n_flag[g]++] = (struct Flag){
                r->nwhen ? r->when[0].off : S.off[F_OPERATION],
                r->nwhen && r->when[0].test == T_IS ? r->when[0].obj : S.unset,
                !r->nwhen || r->when[0].test == T_SET, r->at, r->evidence, r->key};
        else
            S.by_gate[g][S.n_by_gate[g]++] = (unsigned char)i;
    }
    return 0;
}

/* The rules from counting.c_table(): (rule, gate, at, fields, when, evidence, cap, ints_only). */
static int
read_rules(PyObject *type, PyObject *rules, PyObject *keys)
{
    Py_ssize_t n = PyTuple_GET_SIZE(rules);
    if (n > MAX_RULES) {
        PyErr_SetString(PyExc_ValueError, "configure: too many rules");
        return -1;
    }
    S.n_fixed = 0;
    S.nmust = S.nstrs = S.nsums = S.nlists = S.ndicts = S.nqty = 0;
    memset(S.n_by_gate, 0, sizeof S.n_by_gate);
    memset(S.n_flag, 0, sizeof S.n_flag);
    for (int f = 0; f < N_FIELDS; f++)
        if (add_check(S.must, &S.nmust, S.off[f]) < 0)
            return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Rule *r = &S.rule[i];
        PyObject *fields, *when;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(rules, i), "iinO!O!iLp", &r->kind, &r->gate,
                              &r->at, &PyTuple_Type, &fields, &PyTuple_Type, &when,
                              &r->evidence, &r->cap, &r->ints_only))
            return -1;
        r->nfields = (int)PyTuple_GET_SIZE(fields);
        r->nwhen = (int)PyTuple_GET_SIZE(when);
        Py_ssize_t width = r->kind == R_LOG1P ? 3 : 1;
        int group = r->kind >= R_LABELS;
        if (r->kind < R_COUNT || r->kind > R_SCORES || r->nfields > MAX_RULE_FIELDS
                || r->nwhen > MAX_WHEN || group != (r->at < 0) || r->at + width > MAX_FIXED
                || r->nfields < (r->kind == R_COST ? 3 : r->kind == R_COUNT ? 0 : 1)) {
            PyErr_Format(PyExc_ValueError, "configure: rule %zd is not one this code counts", i);
            return -1;
        }
        for (int j = 0; j < r->nfields; j++)
            if ((r->off[j] = slot_offset((PyTypeObject *)type, PyTuple_GET_ITEM(fields, j))) < 0)
                return -1;
        for (int j = 0; j < r->nwhen; j++) {
            PyObject *w = PyTuple_GET_ITEM(when, j), *name;
            if (!PyArg_ParseTuple(w, "OiO", &name, &r->when[j].test, &r->when[j].obj))
                return -1;
            if ((r->when[j].off = slot_offset((PyTypeObject *)type, name)) < 0)
                return -1;
            if (r->when[j].test == T_EQ && !PyUnicode_Check(r->when[j].obj)) {
                PyErr_SetString(PyExc_TypeError, "configure: an equality test is on a str");
                return -1;
            }
        }
        if (!group && r->at + width > S.n_fixed)
            S.n_fixed = r->at + width;
        r->key = PyLong_FromSsize_t(r->at);   /* owned by ``keys``, kept in S.keep */
        if (r->key == NULL || PyList_Append(keys, r->key) < 0) {
            Py_XDECREF(r->key);
            return -1;
        }
        Py_DECREF(r->key);
        if (plan(r, (int)i) < 0)
            return -1;
    }
    S.nrules = (int)n;
    return 0;
}

/* Key fields met lately, by content: an event's (cohort, version) fields as the tuple of an
 * earlier event with the same values. Its strings' hashes are cached and they are the very
 * objects in the open partials' keys, so the lookup neither hashes freshly decoded strings
 * nor compares them character by character. Direct-mapped and bounded (a miss builds the
 * tuple as before and takes the slot): it changes what is looked up by, never the result. */
#define KEY_CACHE 4096
/* Beside the fields, the last window's whole key (w, fields) and its hash: the open partial
 * is stored under that very object (Aggregator._partial_for keeps the key it is passed), so
 * the dict lookup neither hashes the tuple again nor compares it beyond identity. */
static struct {
    uint64_t h;
    PyObject *fields, *key;
    long long w;
    Py_hash_t khash;
} key_cache[KEY_CACHE];

static inline uint64_t
mix64(uint64_t h, uint64_t v)
{
    h = (h ^ v) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}

/* A cheap hash of a key field's content (a str's code units; anything else by identity). */
static inline uint64_t
field_hash(uint64_t h, PyObject *v)
{
    if (!PyUnicode_CheckExact(v))
        return mix64(h, (uint64_t)(uintptr_t)v);
    int kind = PyUnicode_KIND(v);
    size_t n = (size_t)PyUnicode_GET_LENGTH(v) * (size_t)kind;
    const unsigned char *d = PyUnicode_DATA(v);
    h = mix64(h, ((uint64_t)n << 3) | (uint64_t)kind);
    for (; n >= 8; n -= 8, d += 8) {
        uint64_t x;
        memcpy(&x, d, 8);
        h = mix64(h, x);
    }
    if (n) {
        uint64_t x = 0;
        memcpy(&x, d, n);
        h = mix64(h, x);
    }
    return h;
}

static void
key_cache_clear(void)
{
    for (int i = 0; i < KEY_CACHE; i++) {
        Py_CLEAR(key_cache[i].fields);
        Py_CLEAR(key_cache[i].key);
    }
}

/* configure(event_type, partial_type, unset, (ts, trace_id, operation), rules, opcodes,
 *           top_k, eval_max, eval_scale) */
static PyObject *
configure(PyObject *self, PyObject *args)
{
    PyObject *type, *ptype, *unset, *names, *rules, *opcodes;
    Py_ssize_t top_k;
    double eval_max, eval_scale;
    if (!PyArg_ParseTuple(args, "O!O!OO!O!O!ndd", &PyType_Type, &type, &PyType_Type, &ptype,
                          &unset, &PyTuple_Type, &names, &PyTuple_Type, &rules,
                          &PyDict_Type, &opcodes, &top_k, &eval_max, &eval_scale))
        return NULL;
    S.ready = 0;
    key_cache_clear();   /* (an earlier configuration's unset sentinel may be in it) */
    Py_INCREF(unset);
    Py_XSETREF(S.unset, unset);   /* before the rules, which test against it */
    if ((S.off_counts = slot_offset_s((PyTypeObject *)ptype, "counts")) < 0
            || (S.off_samples = slot_offset_s((PyTypeObject *)ptype, "samples")) < 0
            || (S.off_top = slot_offset_s((PyTypeObject *)ptype, "top")) < 0)
        return NULL;
    PyObject *heapq = PyImport_ImportModule("_heapq");
    if (heapq == NULL)
        return NULL;
    Py_XSETREF(S.heappush, PyObject_GetAttrString(heapq, "heappush"));
    Py_XSETREF(S.heapreplace, PyObject_GetAttrString(heapq, "heapreplace"));
    Py_DECREF(heapq);
    if (S.heappush == NULL || S.heapreplace == NULL)
        return NULL;
    if (PyTuple_GET_SIZE(names) != N_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "configure: wrong number of fields");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < N_FIELDS; i++) {
        Py_ssize_t off = slot_offset((PyTypeObject *)type, PyTuple_GET_ITEM(names, i));
        if (off < 0)
            return NULL;
        S.off[i] = off;
    }
    PyObject *keys = PyList_New(0);
    if (keys == NULL)
        return NULL;
    if (read_rules(type, rules, keys) < 0) {
        Py_DECREF(keys);
        return NULL;
    }
    Py_XSETREF(S.keep, PyTuple_Pack(2, rules, keys));
    Py_DECREF(keys);
    if (S.keep == NULL)
        return NULL;
    Py_INCREF(type);
    Py_XSETREF(S.event_type, (PyTypeObject *)type);
    Py_INCREF(ptype);
    Py_XSETREF(S.partial_type, (PyTypeObject *)ptype);
    Py_INCREF(opcodes);
    Py_XSETREF(S.opcodes, opcodes);
    S.n_ops = 0;
    {
        Py_ssize_t pos = 0;
        PyObject *key, *val;
        while (S.n_ops >= 0 && PyDict_Next(opcodes, &pos, &key, &val)) {
            long g = PyLong_Check(val) ? PyLong_AsLong(val) : -1;
            if (g == -1 && PyErr_Occurred())
                PyErr_Clear();
            if (S.n_ops == MAX_OPS || !PyUnicode_CheckExact(key) || !PyLong_Check(val)) {
                S.n_ops = -1;   /* not what the arrays can stand for: the dict alone */
                break;
            }
            S.op_key[S.n_ops] = key;   /* owned by S.opcodes */
            S.op_gate[S.n_ops++] = g < 0 || g >= MAX_GATES ? 0 : g;
        }
    }
    S.top_k = top_k;
    S.eval_max = eval_max;
    S.eval_scale = eval_scale;
    S.ready = 1;
    Py_RETURN_NONE;
}

/* offsets(names) -> tuple of the slot offsets of these TraceEvent fields (cohort keys). */
static PyObject *
offsets(PyObject *self, PyObject *names)
{
    if (!S.ready) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    if (!PyTuple_Check(names)) {
        PyErr_SetString(PyExc_TypeError, "offsets: a tuple of field names");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    PyObject *out = PyTuple_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t off = slot_offset(S.event_type, PyTuple_GET_ITEM(names, i));
        PyObject *o = off < 0 ? NULL : PyLong_FromSsize_t(off);
        if (o == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, o);
    }
    return out;
}

/* configure_values(field_key, counters, max_values, other, fresh): the per-tool-name counting
 * (after configure): the TraceEvent field "tool_name", the key of Partial.values it fills,
 * the fixed counters it keeps (each event's increments of them), and at most max_values
 * names per partial, later ones under ``other``, each an array('q') that fresh() makes.
 * counters == () turns it off. */
static PyObject *
configure_values(PyObject *self, PyObject *args)
{
    PyObject *key, *counters, *other;
    Py_ssize_t max_values;
    PyObject *fresh;
    if (!PyArg_ParseTuple(args, "OO!nUO", &key, &PyTuple_Type, &counters, &max_values, &other,
                          &fresh))
        return NULL;
    if (!S.ready) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(counters);
    if (n > MAX_TOOL || max_values < 1) {
        PyErr_SetString(PyExc_ValueError, "configure_values: too many counters");
        return NULL;
    }
    Py_ssize_t at[MAX_TOOL];
    for (Py_ssize_t j = 0; j < n; j++) {
        at[j] = PyLong_AsSsize_t(PyTuple_GET_ITEM(counters, j));
        if (at[j] == -1 && PyErr_Occurred())
            return NULL;
        if (at[j] < 0 || at[j] >= S.n_fixed) {   /* only the fixed ones are summed in d */
            PyErr_SetString(PyExc_ValueError, "configure_values: not a fixed counter");
            return NULL;
        }
    }
    Py_ssize_t off_values = slot_offset_s(S.partial_type, "values");
    Py_ssize_t off_tool = slot_offset_s(S.event_type, "tool_name");
    if (off_values < 0 || off_tool < 0)
        return NULL;
    Py_INCREF(key);
    Py_XSETREF(S.tool_key, key);
    Py_INCREF(other);
    Py_XSETREF(S.other, other);
    Py_INCREF(fresh);
    Py_XSETREF(S.fresh, fresh);
    S.off_values = off_values;
    S.off_tool = off_tool;
    S.max_values = max_values;
    memcpy(S.tool_at, at, sizeof at);
    S.n_tool = n;
    Py_RETURN_NONE;
}

/* Python's float floor division (Objects/floatobject.c, _float_div_mod), so that a window
 * index is the same as ``int(ts // size)`` to the last bit. */
static double
floor_div(double vx, double wx)
{
    double mod = fmod(vx, wx);
    double div = (vx - mod) / wx;
    if (mod) {
        if ((wx < 0) != (mod < 0))
            div -= 1.0;
    }
    if (div) {
        double fl = floor(div);
        if (div - fl > 0.5)
            fl += 1.0;
        return fl;
    }
    return copysign(0.0, vx / wx);
}

/* ``int(log1p(v) * 1024 + 0.5)`` for a value from as_quantity: see partials.SCALE. */
static long long
fixed_log1p(double d)
{
    return (long long)(log1p(d) * 1024.0 + 0.5);
}

/* A non-negative int or float field as a double; -1 if it is not one (the event goes to the
 * Python path). Ints past the float range are DBL_MAX, as in the Python path. */
static double
as_quantity(PyObject *v, int ints_only)
{
    if (PyLong_CheckExact(v)) {
        if (_PyLong_Sign(v) < 0)
            return -1.0;
        double d = PyLong_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();   /* OverflowError: past the float range */
            return DBL_MAX;
        }
        return d;
    }
    if (!ints_only && PyFloat_CheckExact(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        return (d >= 0.0 && d <= DBL_MAX) ? d : -1.0;
    }
    return -1.0;
}

/* counts[i] += d, exactly as Python would (a counter past 2**63 becomes a big int). */
static int
add(PyObject *counts, Py_ssize_t i, long long d)
{
    PyObject *old = PyList_GET_ITEM(counts, i);
    int overflow = 0;
    long long v = PyLong_CheckExact(old) ? PyLong_AsLongLongAndOverflow(old, &overflow) : 0;
    PyObject *nv;
    long long sum;
    if (PyLong_CheckExact(old) && !overflow && !(v == -1 && PyErr_Occurred())
            && !__builtin_add_overflow(v, d, &sum)) {
        nv = PyLong_FromLongLong(sum);
    } else {
        PyErr_Clear();
        PyObject *od = PyLong_FromLongLong(d);
        if (od == NULL)
            return -1;
        nv = PyNumber_Add(old, od);
        Py_DECREF(od);
    }
    if (nv == NULL)
        return -1;
    PyList_SET_ITEM(counts, i, nv);
    Py_DECREF(old);
    return 0;
}

/* Counter increments are summed here per partial and added to its counts list once per
 * call, not once per event: a Python int update allocates, a C one does not. A small
 * open-addressing table keyed by the partial's address; it is flushed when it fills up, after
 * FLUSH_EVENTS events (so no sum can overflow) and before add_many returns. */
#define ACC_SLOTS 256          /* a power of two */
#define ACC_MAX_USED 192
#define FLUSH_EVENTS 65536

typedef struct {
    PyObject *p;               /* a strong reference while in use; NULL if free */
    PyObject *counts;          /* a strong reference */
    long long *d;              /* the fixed counters, then the cost's n, sum, sum of squares */
} Acc;

typedef struct {
    Acc *slots;
    long long *sums;           /* ACC_SLOTS rows of S.n_fixed + 3: each slot's d */
    int used;
    Py_ssize_t cost_at;        /* the index of the cost's first counter */
} Table;

static int
table_flush(Table *t)
{
    int err = 0;
    for (int i = 0; i < ACC_SLOTS && t->used; i++) {
        Acc *a = &t->slots[i];
        if (a->p == NULL)
            continue;
        for (Py_ssize_t c = 0; c < S.n_fixed + 3; c++)
            if (a->d[c] && !err && add(a->counts, c < S.n_fixed ? c
                                       : t->cost_at + (c - S.n_fixed), a->d[c]) < 0)
                err = -1;
        Py_CLEAR(a->p);
        Py_CLEAR(a->counts);
        memset(a->d, 0, (size_t)(S.n_fixed + 3) * sizeof *a->d);
        t->used--;
    }
    return err;
}

/* The sums of partial ``p`` (whose counts list is ``counts``); NULL on error. */
static long long *
table_get(Table *t, PyObject *p, PyObject *counts)
{
    uint64_t h = (uint64_t)((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull;
    for (;;) {
        size_t i = (size_t)(h >> 56);   /* the top 8 bits: ACC_SLOTS = 256 */
        for (int probe = 0; probe < ACC_SLOTS; probe++, i = (i + 1) & (ACC_SLOTS - 1)) {
            Acc *a = &t->slots[i];
            if (a->p == p)
                return a->d;
            if (a->p == NULL) {
                if (t->used >= ACC_MAX_USED)
                    break;
                Py_INCREF(p);
                Py_INCREF(counts);
                a->p = p;
                a->counts = counts;
                t->used++;
                return a->d;
            }
        }
        if (table_flush(t) < 0)
            return NULL;
    }
}

static int
is_str_or_unset(PyObject *v)
{
    return v == S.unset || PyUnicode_CheckExact(v);
}

/* Whether two exact str are equal (unicode_eq in CPython). */
static inline int
str_eq(PyObject *a, PyObject *b)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    return a == b || (n == PyUnicode_GET_LENGTH(b) && PyUnicode_KIND(a) == PyUnicode_KIND(b)
                      && memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b),
                                (size_t)n * PyUnicode_KIND(a)) == 0);
}

/* Whether any ``when`` test of rule r holds for event ev (expected_shape checked the types). */
static inline int
holds(PyObject *ev, const Rule *r)
{
    for (int j = 0; j < r->nwhen; j++) {
        PyObject *v = SLOT(ev, r->when[j].off);
        if (r->when[j].test == T_IS ? v == r->when[j].obj
                : v != S.unset && (r->when[j].test == T_SET || str_eq(v, r->when[j].obj)))
            return 1;
    }
    return 0;
}

/* Whether the C path can count this event exactly as the Python path would; if so, the
 * values of its quantities in q (-1 where unset; a rule's are at its qi). */
static int
expected_shape(PyObject *ev, double *q)
{
    if (Py_TYPE(ev) != S.event_type)
        return 0;
    for (int j = 0; j < S.nmust; j++)
        if (SLOT(ev, S.must[j]) == NULL)
            return 0;
    PyObject *ts = SLOT(ev, S.off[F_TS]);
    if (!PyFloat_CheckExact(ts) || !isfinite(PyFloat_AS_DOUBLE(ts)))
        return 0;
    if (!PyUnicode_CheckExact(SLOT(ev, S.off[F_OPERATION]))
            || !is_str_or_unset(SLOT(ev, S.off[F_TRACE_ID])))
        return 0;
    for (int j = 0; j < S.nstrs; j++)
        if (!is_str_or_unset(SLOT(ev, S.strs[j])))
            return 0;
    for (int j = 0; j < S.nsums; j++) {
        PyObject *v = SLOT(ev, S.sums[j]);
        if (v != S.unset && (!PyLong_CheckExact(v) || _PyLong_Sign(v) < 0))
            return 0;
    }
    for (int j = 0; j < S.nqty; j++) {   /* a count or a non-negative float */
        PyObject *v = SLOT(ev, S.qty[j].off);
        q[j] = -1.0;
        if (v != S.unset && (q[j] = as_quantity(v, S.qty[j].ints_only)) < 0)
            return 0;
    }
    for (int j = 0; j < S.nlists; j++) {
        PyObject *v = SLOT(ev, S.lists[j]);
        if (v != S.unset && !PyList_CheckExact(v))
            return 0;
    }
    for (int j = 0; j < S.ndicts; j++) {
        PyObject *v = SLOT(ev, S.dicts[j]);
        if (v != Py_None) {   /* as decoded: a dict of floats, none of them NaN */
            if (!PyDict_CheckExact(v))
                return 0;
            Py_ssize_t pos = 0;
            PyObject *key, *val;
            while (PyDict_Next(v, &pos, &key, &val))
                if (!PyFloat_CheckExact(val) || isnan(PyFloat_AS_DOUBLE(val)))
                    return 0;
        }
    }
    return 1;
}

/* A slot of partial p (counts, samples, top) when it is a Partial, else the attribute by
 * name. A new reference. */
static PyObject *
partial_field(PyObject *p, Py_ssize_t off, const char *name)
{
    if (Py_TYPE(p) == S.partial_type) {
        PyObject *v = SLOT(p, off);
        if (v != NULL) {
            Py_INCREF(v);
            return v;
        }
    }
    return PyObject_GetAttrString(p, name);
}

/* heapq.heappush(h, item) for a list, without the call: append, then heapq's _siftdown
 * from the end (the same "<" comparisons, so the same list). */
static int
heap_push(PyObject *h, PyObject *item)
{
    if (PyList_Append(h, item) < 0)
        return -1;
    Py_ssize_t pos = PyList_GET_SIZE(h) - 1;
    while (pos > 0) {
        Py_ssize_t up = (pos - 1) >> 1;
        PyObject *parent = PyList_GET_ITEM(h, up);
        Py_INCREF(parent);
        int lt = PyObject_RichCompareBool(item, parent, Py_LT);
        Py_DECREF(parent);
        if (lt < 0)
            return -1;
        if (PyList_GET_SIZE(h) <= pos)
            return PyErr_SetString(PyExc_RuntimeError, "list changed size during iteration"),
                   -1;
        if (!lt)
            break;
        PyObject **a = ((PyListObject *)h)->ob_item;
        PyObject *t = a[up];
        a[up] = a[pos];
        a[pos] = t;
        pos = up;
    }
    return 0;
}

/* Keep (x, tid) among the top_k largest of the quantity whose counter is ``key`` (a Python
 * int; a min-heap per counter in p.top): Counting._top. Most values are below the smallest of
 * a full heap and cost only a dict lookup. */
static int
top_insert(PyObject *p, PyObject *key, long long x, PyObject *tid)
{
    PyObject *tops = partial_field(p, S.off_top, "top");
    if (tops == NULL)
        return -1;
    int err = 0;
    PyObject *item = NULL, *r = NULL;
    PyObject *h = PyDict_GetItemWithError(tops, key);
    if (h == NULL && PyErr_Occurred())
        goto done;
    if (h != NULL && PyList_CheckExact(h) && PyList_GET_SIZE(h) >= S.top_k) {
        PyObject *h0 = PyList_GET_ITEM(h, 0);
        if (PyTuple_CheckExact(h0) && PyTuple_GET_SIZE(h0) == 2) {
            long long least = PyLong_AsLongLong(PyTuple_GET_ITEM(h0, 0));
            if (least == -1 && PyErr_Occurred())
                PyErr_Clear();   /* not an int64: the comparison below decides */
            else if (x < least)
                goto done;
        }
    }
    if ((item = PyTuple_New(2)) == NULL)
        goto done;
    {
        PyObject *xo = PyLong_FromLongLong(x);
        if (xo == NULL)
            goto done;
        PyTuple_SET_ITEM(item, 0, xo);
        Py_INCREF(tid);
        PyTuple_SET_ITEM(item, 1, tid);
    }
    if (h == NULL) {
        PyObject *lst = PyList_New(1);
        if (lst == NULL)
            goto done;
        Py_INCREF(item);
        PyList_SET_ITEM(lst, 0, item);
        err = PyDict_SetItem(tops, key, lst);
        Py_DECREF(lst);
        goto done;
    }
    if (PyList_GET_SIZE(h) < S.top_k) {
        if (PyList_CheckExact(h))
            err = heap_push(h, item);
        else
            r = PyObject_CallFunctionObjArgs(S.heappush, h, item, NULL);
    } else {
        /* x >= h[0][0] and (x, tid) > h[0]: ties broken by id, so the result is order-free */
        int gt = PyObject_RichCompareBool(item, PyList_GET_ITEM(h, 0), Py_GT);
        if (gt < 0)
            goto done;
        if (gt)
            r = PyObject_CallFunctionObjArgs(S.heapreplace, h, item, NULL);
        else
            r = Py_NewRef(Py_None);
    }
    if (r == NULL && err == 0 && PyErr_Occurred())
        err = -1;
done:
    if (PyErr_Occurred())
        err = -1;
    Py_XDECREF(r);
    Py_XDECREF(item);
    Py_DECREF(tops);
    return err;
}

/* partials.bottom: ``tid`` into the sorted list ``lst`` of the k smallest ids, once. */
static int
bottom_insert(PyObject *lst, PyObject *tid, Py_ssize_t k)
{
    Py_ssize_t n = PyList_GET_SIZE(lst);
    if (n >= k) {
        int lt = PyObject_RichCompareBool(tid, PyList_GET_ITEM(lst, n - 1), Py_LT);
        if (lt <= 0)
            return lt;   /* not among the k smallest (or an error) */
    }
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {   /* bisect.insort's position: after any equal id */
        Py_ssize_t mid = (lo + hi) / 2;
        int lt = PyObject_RichCompareBool(tid, PyList_GET_ITEM(lst, mid), Py_LT);
        if (lt < 0)
            return -1;
        if (lt)
            hi = mid;
        else
            lo = mid + 1;
    }
    if (lo > 0) {   /* sorted, so an equal id is just before */
        int eq = PyObject_RichCompareBool(PyList_GET_ITEM(lst, lo - 1), tid, Py_EQ);
        if (eq != 0)
            return eq < 0 ? -1 : 0;
    }
    if (PyList_Insert(lst, lo, tid) < 0)
        return -1;
    if (n >= k)
        return PyList_SetSlice(lst, n, n + 1, NULL);   /* drop the largest */
    return 0;
}

/* ``bottom(p.samples.setdefault(key, []), tid, k)``: Counting._sample. */
static int
sample_insert(PyObject *p, PyObject *key, PyObject *tid, Py_ssize_t k)
{
    PyObject *samples = partial_field(p, S.off_samples, "samples");
    if (samples == NULL)
        return -1;
    int err = -1;
    PyObject *lst = PyDict_GetItemWithError(samples, key);
    if (lst != NULL) {
        err = PyList_CheckExact(lst) ? bottom_insert(lst, tid, k) : -1;
        if (err < 0 && !PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "a partial's samples are not lists");
    } else if (!PyErr_Occurred() && (lst = PyList_New(0)) != NULL) {
        if (k > 0 && PyList_Append(lst, tid) < 0)
            err = -1;
        else
            err = PyDict_SetItem(samples, key, lst);
        Py_DECREF(lst);
    }
    Py_DECREF(samples);
    return err;
}

/* Add one event's increments of the tool counters (``delta``) to p.values[tool_key][name]
 * (Counting._tool in Python): an array('q') per name, at most max_values names, then
 * ``other``. */
static int
tool_add(PyObject *p, PyObject *name, const long long *delta)
{
    PyObject *values = partial_field(p, S.off_values, "values");
    if (values == NULL)
        return -1;
    int err = -1;
    PyObject *by, *lst;
    if (!PyDict_Check(values)) {
        PyErr_SetString(PyExc_TypeError, "a partial's values is not a dict");
        goto done;
    }
    if ((by = PyDict_GetItemWithError(values, S.tool_key)) == NULL) {
        if (PyErr_Occurred() || (by = PyDict_New()) == NULL)
            goto done;
        int e = PyDict_SetItem(values, S.tool_key, by);
        Py_DECREF(by);   /* the dict holds it */
        if (e < 0)
            goto done;
    }
    if (!PyDict_Check(by)) {
        PyErr_SetString(PyExc_TypeError, "a partial's tool values is not a dict");
        goto done;
    }
    if ((lst = PyDict_GetItemWithError(by, name)) == NULL) {
        if (PyErr_Occurred())
            goto done;
        if (PyDict_GET_SIZE(by) >= S.max_values) {
            name = S.other;
            if ((lst = PyDict_GetItemWithError(by, name)) == NULL && PyErr_Occurred())
                goto done;
        }
        if (lst == NULL) {
            if ((lst = PyObject_CallNoArgs(S.fresh)) == NULL)
                goto done;
            int e = PyDict_SetItem(by, name, lst);
            Py_DECREF(lst);
            if (e < 0)
                goto done;
        }
    }
    /* An array of int64: added to in place, no int object made per event. */
    Py_buffer view;
    if (PyObject_GetBuffer(lst, &view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0)
        goto done;
    if (view.itemsize != 8 || view.format == NULL || strcmp(view.format, "q") != 0
            || view.len != 8 * S.n_tool) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "a tool's counters is not an array('q') of them");
        goto done;
    }
    long long *a = (long long *)view.buf;
    for (Py_ssize_t j = 0; j < S.n_tool; j++)
        a[j] += delta[j];
    PyBuffer_Release(&view);
    err = 0;
done:
    Py_DECREF(values);
    return err;
}

/* The event's open partial, keyed (w, (cohort fields..., version fields...)) as in
 * Counting._add_py; made by ``partial_for`` when there is none. A new reference. */
static PyObject *
partial_of(PyObject *ev, PyObject *w_obj, long long w, const Py_ssize_t *koff, Py_ssize_t nkey,
           PyObject *open_, PyObject *partial_for)
{
    uint64_t h = (uint64_t)nkey;
    for (Py_ssize_t j = 0; j < nkey; j++) {
        PyObject *v = SLOT(ev, koff[j]);
        if (v == NULL) {
            PyErr_SetString(PyExc_AttributeError, "a cohort field is not set");
            return NULL;
        }
        h = field_hash(h, v);
    }
    size_t slot = h & (KEY_CACHE - 1);
    PyObject *fields = key_cache[slot].fields;
    int hit = fields != NULL && key_cache[slot].h == h && PyTuple_GET_SIZE(fields) == nkey;
    for (Py_ssize_t j = 0; hit && j < nkey; j++) {
        PyObject *a = SLOT(ev, koff[j]), *b = PyTuple_GET_ITEM(fields, j);
        hit = a == b || (PyUnicode_CheckExact(a) && PyUnicode_CheckExact(b) && str_eq(a, b));
    }
    if (!hit) {
        if ((fields = PyTuple_New(nkey)) == NULL)
            return NULL;
        for (Py_ssize_t j = 0; j < nkey; j++) {
            PyObject *v = SLOT(ev, koff[j]);
            Py_INCREF(v);
            PyTuple_SET_ITEM(fields, j, v);
        }
        Py_XSETREF(key_cache[slot].fields, fields);
        Py_CLEAR(key_cache[slot].key);
        key_cache[slot].h = h;
    }
    if (key_cache[slot].key == NULL || key_cache[slot].w != w) {
        PyObject *key = PyTuple_Pack(2, w_obj, fields);
        if (key == NULL)
            return NULL;
        Py_hash_t kh = PyObject_Hash(key);
        if (kh == -1) {
            Py_DECREF(key);
            return NULL;
        }
        Py_XSETREF(key_cache[slot].key, key);
        key_cache[slot].w = w;
        key_cache[slot].khash = kh;
    }
    /* A new reference to the key: partial_for may run Python that reconfigures the cache. */
    PyObject *key = key_cache[slot].key;
    Py_INCREF(key);
#if PY_VERSION_HEX < 0x030D0000
    PyObject *p = _PyDict_GetItem_KnownHash(open_, key, key_cache[slot].khash);
#else
    PyObject *p = PyDict_GetItemWithError(open_, key);
#endif
    if (p != NULL)
        Py_INCREF(p);
    else if (!PyErr_Occurred())
        p = PyObject_CallOneArg(partial_for, key);
    Py_DECREF(key);
    return p;
}

static int
call(PyObject *f, PyObject *a, PyObject *b, PyObject *c, PyObject *d)
{
    PyObject *r = PyObject_CallFunctionObjArgs(f, a, b, c, d, NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* A model call's cost from its tokens (q[0], q[1]; -1 where unset) at the price of its model
 * (field ``model_off``), as Counting._cost; -1 if it has none (no tokens, or no price).
 * ``prices`` maps a model to (input, output) floats; ``dflt`` is that of models not listed,
 * or None. */
static double
cost_of(PyObject *ev, const double q[2], Py_ssize_t model_off, PyObject *prices, PyObject *dflt)
{
    if (q[0] < 0 && q[1] < 0)
        return -1.0;
    PyObject *m = SLOT(ev, model_off), *price = dflt;
    if (m != S.unset) {
        PyObject *pr = PyDict_GetItemWithError(prices, m);
        if (pr != NULL)
            price = pr;
        else if (PyErr_Occurred())
            return -2.0;
    }
    if (!PyTuple_CheckExact(price) || PyTuple_GET_SIZE(price) != 2)
        return -1.0;   /* None: not priced */
    double pi = PyFloat_AsDouble(PyTuple_GET_ITEM(price, 0));
    double po = PyFloat_AsDouble(PyTuple_GET_ITEM(price, 1));
    if (PyErr_Occurred())
        return -2.0;
    if (pi == 0.0 && po == 0.0)
        return -1.0;   /* not priced: unknown, not free */
    /* Each product rounded on its own, as Python does (no fused multiply-add). */
    volatile double pa = q[0] >= 0 ? q[0] * pi : 0.0;
    volatile double pb = q[1] >= 0 ? q[1] * po : 0.0;
    double v = pa + pb;
    return v < DBL_MAX ? v : DBL_MAX;
}

/* The configured evaluators' scores of one event into partial p: Counting._evals. ``evals``
 * is a tuple of (name, index of its first counter). */
static int
count_evals(PyObject *p, PyObject *scores, PyObject *evals, PyObject *tid, int has_tid)
{
    PyObject *counts = partial_field(p, S.off_counts, "counts");
    if (counts == NULL)
        return -1;
    int err = 0;
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(evals) && !err; j++) {
        PyObject *e = PyTuple_GET_ITEM(evals, j);
        PyObject *name = PyTuple_GET_ITEM(e, 0), *iobj = PyTuple_GET_ITEM(e, 1);
        PyObject *v = PyDict_GetItemWithError(scores, name);
        if (v == NULL) {
            err = PyErr_Occurred() ? -1 : 0;
            continue;   /* not scored by this evaluator */
        }
        Py_ssize_t i = PyLong_AsSsize_t(iobj);
        if (i < 0 || !PyList_CheckExact(counts) || PyList_GET_SIZE(counts) < i + 3) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "a partial's counts miss an evaluator's");
            err = -1;
            break;
        }
        double d = PyFloat_AS_DOUBLE(v);   /* expected_shape checked: a float, not NaN */
        d = d > S.eval_max ? S.eval_max : d < -S.eval_max ? -S.eval_max : d;
        long long x = (long long)floor(d * S.eval_scale + 0.5);
        if (add(counts, i, 1) < 0 || add(counts, i + 1, x) < 0 || add(counts, i + 2, x * x) < 0
                || (has_tid && top_insert(p, iobj, -x, tid) < 0))   /* the lowest scores */
            err = -1;
    }
    Py_DECREF(counts);
    return err;
}

/* add_many(evs, start, ctx, closed_before, max_ts) -> (stop, max_ts, late)
 *
 * ctx = (open, partial_for, safety, size, key_offsets, k, prices, default_price, cost_at,
 * evals): Aggregator._open, the Aggregator methods that make a partial and count safety
 * labels, and the layout's prices and counters (see Counting._c_context). Counts evs[start:]
 * until the end or an event of an unexpected shape, whose index is returned as ``stop``. */
static PyObject *
add_many(PyObject *self, PyObject *args)
{
    PyObject *evs, *ctx;
    Py_ssize_t start;
    long long closed_before;
    double max_ts;
    if (!PyArg_ParseTuple(args, "O!nO!Ld", &PyList_Type, &evs, &start, &PyTuple_Type, &ctx,
                          &closed_before, &max_ts))
        return NULL;
    if (!S.ready) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    PyObject *open_, *partial_for, *safety, *key_offsets, *prices, *dflt, *evals;
    double size;
    Py_ssize_t k, cost_at;
    if (!PyArg_ParseTuple(ctx, "O!OOdO!nO!OnO!", &PyDict_Type, &open_, &partial_for, &safety,
                          &size, &PyTuple_Type, &key_offsets, &k, &PyDict_Type, &prices, &dflt,
                          &cost_at, &PyTuple_Type, &evals))
        return NULL;
    int priced = PyDict_GET_SIZE(prices) > 0 || dflt != Py_None;
    Py_ssize_t nkey = PyTuple_GET_SIZE(key_offsets);
    Py_ssize_t koff[16];
    if (nkey > 16) {
        PyErr_SetString(PyExc_ValueError, "add_many: at most 16 cohort and version fields");
        return NULL;
    }
    for (Py_ssize_t j = 0; j < nkey; j++)
        koff[j] = PyLong_AsSsize_t(PyTuple_GET_ITEM(key_offsets, j));
    if (PyErr_Occurred())
        return NULL;
    PyObject *cost_key = PyLong_FromSsize_t(cost_at);   /* its top-k evidence's key */
    if (cost_key == NULL)
        return NULL;
    /* Sized to the counters there are: a table past malloc's mmap threshold (128 KiB) would
     * cost a system call and fresh pages on every call. */
    Table t = {PyMem_Calloc(ACC_SLOTS, sizeof(Acc)),
               PyMem_Calloc((size_t)ACC_SLOTS * (S.n_fixed + 3), sizeof(long long)), 0, cost_at};
    for (int j = 0; t.slots != NULL && t.sums != NULL && j < ACC_SLOTS; j++)
        t.slots[j].d = t.sums + (size_t)j * (S.n_fixed + 3);
    if (t.slots == NULL || t.sums == NULL) {
        PyMem_Free(t.slots);
        PyMem_Free(t.sums);
        Py_DECREF(cost_key);
        return PyErr_NoMemory();
    }

    Py_ssize_t late = 0, i = start, since_flush = 0;
    long long last_w = 0;
    PyObject *w_obj = NULL, *p = NULL;
    Py_INCREF(evs);
    for (; i < PyList_GET_SIZE(evs); i++) {
        PyObject *ev = PyList_GET_ITEM(evs, i);
        double q[MAX_QTY];
        if (!expected_shape(ev, q))
            break;
        double ts = PyFloat_AS_DOUBLE(SLOT(ev, S.off[F_TS]));
        double fw = floor_div(ts, size);
        if (!(fabs(fw) < 4.0e18))
            break;   /* not an int64 window index: the Python path's big ints */
        long long w = (long long)fw;
        if (w < closed_before) {
            late++;
            continue;
        }
        if (ts > max_ts)
            max_ts = ts;
        if (w_obj == NULL || w != last_w) {
            Py_XDECREF(w_obj);
            if ((w_obj = PyLong_FromLongLong(w)) == NULL)
                goto fail;
            last_w = w;
        }
        if ((p = partial_of(ev, w_obj, w, koff, nkey, open_, partial_for)) == NULL)
            goto fail;
        PyObject *counts = partial_field(p, S.off_counts, "counts");
        if (counts == NULL)
            goto fail;
        if (!PyList_CheckExact(counts) || PyList_GET_SIZE(counts) < S.n_fixed
                || PyList_GET_SIZE(counts) < cost_at + 3) {
            Py_DECREF(counts);
            PyErr_SetString(PyExc_TypeError, "a partial's counts is not a list of counters");
            goto fail;
        }
        if (++since_flush > FLUSH_EVENTS) {
            since_flush = 0;
            if (table_flush(&t) < 0) {
                Py_DECREF(counts);
                goto fail;
            }
        }
        long long *d = table_get(&t, p, counts);
#define ADD(c, v) (d[c] += (v))
        Py_DECREF(counts);
        if (d == NULL)
            goto fail;

        PyObject *tool = S.n_tool ? SLOT(ev, S.off_tool) : NULL;
        long long tool_before[MAX_TOOL];
        if (tool != NULL && (tool == S.unset || !PyUnicode_Check(tool)))
            tool = NULL;
        for (Py_ssize_t j = 0; tool != NULL && j < S.n_tool; j++)
            tool_before[j] = d[S.tool_at[j]];
        PyObject *tid = SLOT(ev, S.off[F_TRACE_ID]);
        int has_tid = tid != S.unset && PyUnicode_GET_LENGTH(tid) > 0;
#define SAMPLE(key) do { \
            if (has_tid && sample_insert(p, key, tid, k) < 0) goto fail; \
        } while (0)
        long gate = 0;   /* not an operation a rule is for, unless found */
        PyObject *op = SLOT(ev, S.off[F_OPERATION]);
        if (S.n_ops >= 0 && PyUnicode_CheckExact(op)) {
            for (int j = 0; j < S.n_ops; j++)
                if (str_eq(op, S.op_key[j])) {
                    gate = S.op_gate[j];
                    break;
                }
        } else {
            PyObject *oc = PyDict_GetItemWithError(S.opcodes, op);
            if (oc != NULL)
                gate = PyLong_AsLong(oc);
            else if (PyErr_Occurred())
                goto fail;
            if (gate < 0 || gate >= MAX_GATES)
                gate = 0;
        }
        const struct Flag *f = S.flag[gate];
        for (int j = S.n_flag[gate]; j > 0; j--, f++) {   /* branch-free but for evidence */
            int hit = (SLOT(ev, f->off) == f->obj) ^ f->isnt;
            ADD(f->at, hit);
            if ((hit & (f->evidence != E_NONE)) && has_tid   /* E_SAMPLED: ids from "0" */
                    && (f->evidence == E_IDS || PyUnicode_READ_CHAR(tid, 0) == '0')
                    && sample_insert(p, f->key, tid, k) < 0)
                goto fail;
        }
        for (int ri = 0; ri < S.n_by_gate[gate]; ri++) {
            const Rule *r = &S.rule[S.by_gate[gate][ri]];
            PyObject *v;
            long long x;
            switch (r->kind) {
            case R_COUNT:
                if (r->nwhen && !holds(ev, r))
                    break;
                ADD(r->at, 1);
                if (r->evidence == E_IDS)
                    SAMPLE(r->key);
                else if (r->evidence == E_SAMPLED && has_tid   /* ids that start with "0" */
                         && PyUnicode_READ_CHAR(tid, 0) == '0' && sample_insert(p, r->key, tid, k) < 0)
                    goto fail;
                break;
            case R_SUM:
                v = SLOT(ev, r->off[0]);
                if (v != S.unset && _PyLong_Sign(v) > 0) {
                    int overflow = 0;
                    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
                    ADD(r->at, overflow || n > r->cap ? r->cap : n);
                    if (r->evidence == E_IDS)
                        SAMPLE(r->key);
                }
                break;
            case R_LOG1P:
                if (q[r->qi[0]] < 0)
                    break;   /* unset */
                x = fixed_log1p(q[r->qi[0]]);
                ADD(r->at, 1);
                ADD(r->at + 1, x);
                ADD(r->at + 2, x * x);
                if (r->evidence == E_TOP && has_tid && top_insert(p, r->key, x, tid) < 0)
                    goto fail;
                break;
            case R_COST: {
                double qc[2] = {q[r->qi[0]], q[r->qi[1]]};
                double cost = priced ? cost_of(ev, qc, r->off[2], prices, dflt) : -1.0;
                if (cost < -1.5)
                    goto fail;
                if (cost < 0)
                    break;
                x = fixed_log1p(cost);
                ADD(S.n_fixed, 1);
                ADD(S.n_fixed + 1, x);
                ADD(S.n_fixed + 2, x * x);
                if (r->evidence == E_TOP && has_tid && top_insert(p, cost_key, x, tid) < 0)
                    goto fail;
                break;
            }
            case R_LABELS:
                v = SLOT(ev, r->off[0]);
                if (v != S.unset && PyList_GET_SIZE(v) > 0
                        && call(safety, p, v, has_tid ? tid : Py_None, NULL) < 0)
                    goto fail;
                break;
            case R_SCORES:
                v = SLOT(ev, r->off[0]);
                if (v != Py_None && PyTuple_GET_SIZE(evals) > 0 && PyDict_GET_SIZE(v) > 0
                        && count_evals(p, v, evals, tid, has_tid) < 0)
                    goto fail;
                break;
            }
        }
        if (tool != NULL) {   /* d is not flushed while one event is counted */
            for (Py_ssize_t j = 0; j < S.n_tool; j++)
                tool_before[j] = d[S.tool_at[j]] - tool_before[j];
            if (tool_add(p, tool, tool_before) < 0)
                goto fail;
        }
#undef SAMPLE
#undef ADD
        Py_CLEAR(p);
    }
    Py_XDECREF(w_obj);
    Py_DECREF(evs);
    Py_DECREF(cost_key);
    int err = table_flush(&t);
    PyMem_Free(t.slots);
    PyMem_Free(t.sums);
    if (err < 0)
        return NULL;
    return Py_BuildValue("ndn", i, max_ts, late);

fail:
    Py_XDECREF(w_obj);
    Py_XDECREF(p);
    Py_DECREF(evs);
    Py_DECREF(cost_key);
    {
        /* Keep the counts of the events already counted, and the first error. */
        PyObject *et, *ev_, *tb;
        PyErr_Fetch(&et, &ev_, &tb);
        table_flush(&t);
        PyErr_Restore(et, ev_, tb);
    }
    PyMem_Free(t.slots);
    PyMem_Free(t.sums);
    return NULL;
}

static PyObject *
py_fixed_log1p(PyObject *self, PyObject *v)
{
    double d = as_quantity(v, 0);
    if (d < 0) {
        PyErr_SetString(PyExc_ValueError, "a non-negative int or finite float");
        return NULL;
    }
    return PyLong_FromLongLong(fixed_log1p(d));
}

/* scaled_add(buf, offset, counts, g): buf[offset + i] += counts[i] * g for each non-zero
 * int counts[i], ``buf`` a writable array('f') (attribution.Trail's decayed sums; its Python
 * twin is counting.scaled_add): each product and sum in double, as Python computes them. */
static PyObject *
scaled_add(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* METH_FASTCALL: twice per cohort and window (PyArg_ParseTuple costs more than a sum). */
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scaled_add: 4 arguments");
        return NULL;
    }
    PyObject *buf = args[0], *counts = args[2];
    if (!PyList_Check(counts)) {
        PyErr_SetString(PyExc_TypeError, "scaled_add: counts is a list");
        return NULL;
    }
    Py_ssize_t offset = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    double g = PyFloat_AsDouble(args[3]);
    if (g == -1.0 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(counts);
    if (view.itemsize != (Py_ssize_t)sizeof(float) || view.format == NULL
            || strcmp(view.format, "f") != 0 || offset < 0
            || offset + n > view.len / (Py_ssize_t)sizeof(float)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "scaled_add: an array('f') with room for the counts");
        return NULL;
    }
    float *f = (float *)view.buf + offset;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PyList_GET_ITEM(counts, i);
        if (!PyLong_Check(c)) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_TypeError, "scaled_add: counts are ints");
            return NULL;
        }
        double x = PyLong_AsDouble(c);
        if (x == -1.0 && PyErr_Occurred()) {
            PyBuffer_Release(&view);
            return NULL;
        }
        if (x == 0.0)
            continue;
        volatile double p = x * g;   /* rounded on its own (no fused multiply-add) */
        f[i] = (float)((double)f[i] + p);
    }
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* A tool name's counters as C counts them (an array('q') of n_tool, see tool_add): its
 * numbers, or NULL (no error set) if ``o`` is not such an array. */
static long long *
tool_counters(PyObject *o, Py_buffer *view)
{
    if (PyObject_GetBuffer(o, view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        return NULL;
    }
    if (view->itemsize != 8 || view->format == NULL || strcmp(view->format, "q") != 0
            || view->len != 8 * S.n_tool) {
        PyBuffer_Release(view);
        return NULL;
    }
    return (long long *)view->buf;
}

/* tool_sum(into, mine): add the tool names' counters of ``mine`` (name -> array('q'), as
 * stage 1 counts them) into ``into`` (the same, of a coarse cohort), a name new to ``into``
 * as a copy (Aggregator._roll_up; its Python twin is aggregator._tool_sum_py). False, and
 * nothing changed, if a value is not such an array or a sum would pass int64 (the twin then
 * adds, as Python ints). */
static PyObject *
tool_sum(PyObject *self, PyObject *args)
{
    PyObject *into, *mine;
    if (!PyArg_ParseTuple(args, "O!O!", &PyDict_Type, &into, &PyDict_Type, &mine))
        return NULL;
    if (S.fresh == NULL || S.n_tool == 0)
        Py_RETURN_FALSE;
    Py_ssize_t pos = 0;
    PyObject *name, *lst;
    Py_buffer view;
    while (PyDict_Next(mine, &pos, &name, &lst)) {   /* all of the right shape first */
        if (tool_counters(lst, &view) == NULL)
            Py_RETURN_FALSE;
        PyBuffer_Release(&view);
        PyObject *have = PyDict_GetItemWithError(into, name);
        if (have == NULL && PyErr_Occurred())
            return NULL;
        if (have != NULL) {   /* and no sum past int64 (the twin's lists hold any int) */
            Py_buffer mv;
            long long *h = tool_counters(have, &view), *m, x;
            if (h == NULL)
                Py_RETURN_FALSE;
            if ((m = tool_counters(lst, &mv)) == NULL) {
                PyBuffer_Release(&view);
                Py_RETURN_FALSE;
            }
            int over = 0;
            for (Py_ssize_t j = 0; j < S.n_tool; j++)
                over |= __builtin_add_overflow(h[j], m[j], &x);
            PyBuffer_Release(&view);
            PyBuffer_Release(&mv);
            if (over)
                Py_RETURN_FALSE;
        }
    }
    pos = 0;
    while (PyDict_Next(mine, &pos, &name, &lst)) {
        PyObject *have = PyDict_GetItemWithError(into, name);
        if (have == NULL) {
            if (PyErr_Occurred() || (have = PyObject_CallNoArgs(S.fresh)) == NULL)
                return NULL;
            int e = PyDict_SetItem(into, name, have);
            Py_DECREF(have);   /* the dict holds it */
            if (e < 0)
                return NULL;
        }
        Py_buffer hv, mv;
        long long *h = tool_counters(have, &hv);
        if (h == NULL) {
            PyErr_SetString(PyExc_TypeError, "tool_sum: not a tool's counters");
            return NULL;
        }
        long long *m = tool_counters(lst, &mv);
        if (m == NULL) {
            PyBuffer_Release(&hv);
            PyErr_SetString(PyExc_TypeError, "tool_sum: not a tool's counters");
            return NULL;
        }
        for (Py_ssize_t j = 0; j < S.n_tool; j++)
            h[j] += m[j];   /* (checked above) */
        PyBuffer_Release(&hv);
        PyBuffer_Release(&mv);
    }
    Py_RETURN_TRUE;
}

/* tool_values(open_, unknown): the tool field's values as a partial hands them out from its
 * counters per name (partials.tool_values with at = the configured counters, its reference):
 * name -> {counter: n} for the counters not 0, in name order, then ``unknown`` -> {}. None if
 * a value is not an array('q') of them (the Python function then writes them out). */
static PyObject *
tool_values(PyObject *self, PyObject *args)
{
    PyObject *open_, *unknown;
    if (!PyArg_ParseTuple(args, "O!U", &PyDict_Type, &open_, &unknown))
        return NULL;
    if (S.n_tool == 0)
        Py_RETURN_NONE;
    Py_ssize_t pos = 0;
    PyObject *name, *lst;
    Py_buffer view;
    while (PyDict_Next(open_, &pos, &name, &lst)) {
        if (!PyUnicode_Check(name) || tool_counters(lst, &view) == NULL)
            Py_RETURN_NONE;
        PyBuffer_Release(&view);
    }
    PyObject *names = PyDict_Keys(open_), *out = NULL;
    if (names == NULL || PyList_Sort(names) < 0 || (out = PyDict_New()) == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(names); i++) {
        name = PyList_GET_ITEM(names, i);
        lst = PyDict_GetItemWithError(open_, name);
        if (lst == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "tool_values: a name went");
            goto fail;
        }
        long long *a = tool_counters(lst, &view);
        if (a == NULL) {
            PyErr_SetString(PyExc_TypeError, "tool_values: not a tool's counters");
            goto fail;
        }
        PyObject *c = PyDict_New();
        int err = c == NULL;
        for (Py_ssize_t j = 0; !err && j < S.n_tool; j++) {
            if (a[j] == 0)
                continue;
            PyObject *k = PyLong_FromSsize_t(S.tool_at[j]), *x = PyLong_FromLongLong(a[j]);
            err = k == NULL || x == NULL || PyDict_SetItem(c, k, x) < 0;
            Py_XDECREF(k);
            Py_XDECREF(x);
        }
        PyBuffer_Release(&view);
        if (err || PyDict_SetItem(out, name, c) < 0) {
            Py_XDECREF(c);
            goto fail;
        }
        Py_DECREF(c);
    }
    PyObject *empty = PyDict_New();
    if (empty == NULL || PyDict_SetItem(out, unknown, empty) < 0) {
        Py_XDECREF(empty);
        goto fail;
    }
    Py_DECREF(empty);
    Py_DECREF(names);
    return out;
fail:
    Py_XDECREF(names);
    Py_XDECREF(out);
    return NULL;
}

/* Trail.add's test of a value: the first name equal to ``v`` (as list.index finds it) if
 * its meta row is of field ``f`` and it has no counters of its own (not in ``vecs``); -1 if
 * not (Trail._count then counts it), -2 on an error. */
static Py_ssize_t
trail_row(PyObject *names, const float *m, Py_ssize_t n_meta, PyObject *vecs, PyObject *v,
          Py_ssize_t f)
{
    Py_ssize_t r = -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(names); i++) {
        int eq = PyObject_RichCompareBool(PyList_GET_ITEM(names, i), v, Py_EQ);
        if (eq < 0)
            return -2;
        if (eq) {
            r = i;
            break;
        }
    }
    if (r < 0 || 3 * r + 2 >= n_meta || (double)m[3 * r] != (double)f)
        return -1;
    if (vecs == Py_None)
        return r;
    PyObject *rk = PyLong_FromSsize_t(r);
    if (rk == NULL)
        return -2;
    int has = PyDict_Contains(vecs, rk);
    Py_DECREF(rk);
    return has < 0 ? -2 : has ? -1 : r;
}

/* trail_known(names, meta, vecs, values, counts, g, n_fields, tool_field, unknown, events_at):
 * the common part of attribution.Trail.add, whose Python twin (attribution._known_py) is the
 * reference (tests/test_attribution_twin.py holds them equal). For each value of ``values``
 * (a partial's, field -> value -> counters, the remainder written {}) already in the trail
 * (``names`` at the first equal name, its ``meta`` row of the same field) without counters
 * of its own (not in ``vecs``), its events times ``g`` are added to its row's events in
 * ``meta`` (an array('f')); the others come back, in order, as (field, value, counters or
 * None for the remainder, events, the field's values or None), for Trail._count. None,
 * and nothing changed, where an input is not of the shape a partial has: the Python twin
 * then does it all (and says what is wrong). */
#define TRAIL_MAX 256   /* values per call added in place (a partial has at most 4 x 16) */
static PyObject *
trail_known(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* METH_FASTCALL: once per cohort and window, PyArg_ParseTuple was most of its cost. */
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "trail_known: 10 arguments");
        return NULL;
    }
    PyObject *names = args[0], *meta = args[1], *vecs = args[2], *values = args[3],
             *counts = args[4], *unknown = args[8];
    if (!PyList_Check(names) || !PyDict_Check(values) || !PyList_Check(counts)
            || !PyUnicode_Check(unknown)) {
        PyErr_SetString(PyExc_TypeError, "trail_known: names, values, counts or unknown");
        return NULL;
    }
    double g = PyFloat_AsDouble(args[5]);
    Py_ssize_t n_fields = PyLong_AsSsize_t(args[6]), tool_field = PyLong_AsSsize_t(args[7]),
               events_at = PyLong_AsSsize_t(args[9]);
    if (PyErr_Occurred())
        return NULL;
    if (vecs != Py_None && !PyDict_Check(vecs))
        Py_RETURN_NONE;
    if (events_at < 0 || events_at >= PyList_GET_SIZE(counts))
        Py_RETURN_NONE;
    int overflow = 0;
    long long events = PyLong_AsLongLongAndOverflow(PyList_GET_ITEM(counts, events_at),
                                                    &overflow);
    if (overflow || (events == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(meta, &view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *slow = NULL, *ev_key = NULL;
    if (view.itemsize != (Py_ssize_t)sizeof(float) || view.format == NULL
            || strcmp(view.format, "f") != 0)
        goto shape;
    float *m = (float *)view.buf;
    Py_ssize_t n_meta = view.len / (Py_ssize_t)sizeof(float);
    /* Rows to add to, and how many events: applied only once all is read. */
    Py_ssize_t at[TRAIL_MAX];
    long long add[TRAIL_MAX];
    int n_add = 0;
    if ((slow = PyList_New(0)) == NULL || (ev_key = PyLong_FromSsize_t(events_at)) == NULL)
        goto fail;
    Py_ssize_t pos = 0;
    PyObject *fk, *vals;
    while (PyDict_Next(values, &pos, &fk, &vals)) {
        if (!PyLong_Check(fk) || !PyDict_Check(vals))
            goto shape;
        Py_ssize_t f = PyLong_AsSsize_t(fk);
        if (f == -1 && PyErr_Occurred())
            goto shape;
        if (f >= n_fields)
            continue;
        PyObject *rest = NULL;
        long long rest_events = events;
        Py_ssize_t vpos = 0;
        PyObject *v, *c;
        while (PyDict_Next(vals, &vpos, &v, &c)) {
            if (!PyUnicode_Check(v) || !PyDict_Check(c))
                goto shape;
            if (PyDict_GET_SIZE(c) == 0) {
                rest = v;
                continue;
            }
            long long ev = 0;
            PyObject *e = PyDict_GetItemWithError(c, ev_key);
            if (e != NULL) {
                if (!PyLong_Check(e))
                    goto shape;
                ev = PyLong_AsLongLongAndOverflow(e, &overflow);
                if (overflow || (ev == -1 && PyErr_Occurred()))
                    goto shape;
            }
            else if (PyErr_Occurred())
                goto shape;
            if (__builtin_sub_overflow(rest_events, ev, &rest_events))
                goto shape;
            int is_unknown = f == tool_field ? PyUnicode_Compare(v, unknown) == 0 : 0;
            if (is_unknown)
                continue;
            PyObject *item;
            Py_ssize_t r = trail_row(names, m, n_meta, vecs, v, f);
            if (r == -2)
                goto fail;
            if (r >= 0 && n_add < TRAIL_MAX) {
                at[n_add] = 3 * r + 2;
                add[n_add++] = ev;
                continue;
            }
            if ((item = Py_BuildValue("(nOOLO)", f, v, c, ev, Py_None)) == NULL
                    || PyList_Append(slow, item) < 0) {
                Py_XDECREF(item);
                goto fail;
            }
            Py_DECREF(item);
        }
        if (rest == NULL)
            continue;
        if (f == tool_field && PyUnicode_Compare(rest, unknown) == 0)
            continue;
        Py_ssize_t r = trail_row(names, m, n_meta, vecs, rest, f);
        if (r == -2)
            goto fail;
        if (r >= 0 && n_add < TRAIL_MAX) {
            at[n_add] = 3 * r + 2;
            add[n_add++] = rest_events;
            continue;
        }
        PyObject *item = Py_BuildValue("(nOOLO)", f, rest, Py_None, rest_events, vals);
        if (item == NULL || PyList_Append(slow, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    for (int i = 0; i < n_add; i++) {
        volatile double p = (double)add[i] * g;   /* as Python: float(ev) * g, then the sum */
        m[at[i]] = (float)((double)m[at[i]] + p);
    }
    PyBuffer_Release(&view);
    Py_DECREF(ev_key);
    return slow;
shape:   /* not a partial's shape: the Python twin does it all */
    PyErr_Clear();
    PyBuffer_Release(&view);
    Py_XDECREF(slow);
    Py_XDECREF(ev_key);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&view);
    Py_XDECREF(slow);
    Py_XDECREF(ev_key);
    return NULL;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "Field offsets, counter indexes and constants."},
    {"offsets", offsets, METH_O, "Slot offsets of TraceEvent fields."},
    {"configure_values", configure_values, METH_VARARGS, "The per-tool-name counting."},
    {"add_many", add_many, METH_VARARGS, "Count events from ``start`` (see the file's top)."},
    {"fixed_log1p", py_fixed_log1p, METH_O, "A quantity as fixed-point log1p (for tests)."},
    {"scaled_add", (PyCFunction)(void (*)(void))scaled_add, METH_FASTCALL,
     "Decayed sums: buf[offset + i] += counts[i] * g."},
    {"trail_known", (PyCFunction)(void (*)(void))trail_known, METH_FASTCALL,
     "Trail.add's known values (attribution)."},
    {"tool_sum", tool_sum, METH_VARARGS, "Tool names' counters added into a coarse cohort's."},
    {"tool_values", tool_values, METH_VARARGS, "Tool names' counters as a partial's values."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "detector.core._tally",
    "Stage 1's per-event counting in C; see detector/core/counting.py.", -1, methods,
};

PyMODINIT_FUNC
PyInit__tally(void)
{
    return PyModule_Create(&module);
}
