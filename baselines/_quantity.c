/* The C twin of baselines.quantity.QuantityBaseline: the same state as plain doubles, the
 * same arithmetic in the same order, so every float it gives is the reference's bit for bit
 * (tests/test_quantity_twin.py; replay stays byte-identical whichever one runs).
 *
 * The period finder stays the Python baselines.period.PeriodFinder (its looks are rare and
 * long): the twin holds it and calls its learn and fold as the reference does, except for
 * learn's common steps (see finder_add), which it does on the finder's slots. Python's
 * float semantics are kept where C's differ: % as float_rem, x ** 2 as pow, max and min as
 * their first-wins comparisons, and the errors Python raises (division by zero, a domain
 * error, an index out of range) raised here too rather than giving inf or reading past the
 * profile. Built with -ffp-contract=off: a fused multiply-add would round differently. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#include "../detector/core/_slots.h"

#define CLIP 3.0
#define SPREAD_CLIP 10.0
#define FLOOR_REL 1e-3
#define PERSIST 3
#define SEASON_RATE 0.02
#define SEASON_SHARE 0.5
#define FOUND_SHARE 0.9
#define SNAP 0.05
#define TAIL_CLIP 36.0
#define TAIL_WARMUP 10
#define NU_MIN 3.0
#define EXCESS_SLACK 0.5

typedef struct {
    PyObject_HEAD
    double a, b;                  /* fast and slow learning rates */
    double lf, ls, vf, vs, vn, w, prev, res;
    double period, conf, origin, t0, t1, fit0, fit1, m2, m4;
    long long adopt, streak, run, bins, tn, n;
    double *season;               /* per-bin offsets from the slow level */
    Py_ssize_t nseason;
    PyObject *finder;             /* a baselines.period.PeriodFinder, or None */
} Quantity;

static PyObject *s_learn = NULL, *s_fold = NULL;   /* interned method names */

/* -- Python's float semantics -------------------------------------------------------------- */
static int py_div(double x, double y, double *out) {   /* x / y, ZeroDivisionError at 0 */
    if (y == 0.0) {
        PyErr_SetString(PyExc_ZeroDivisionError, "float division by zero");
        return -1;
    }
    *out = x / y;
    return 0;
}

static int py_mod(double vx, double wx, double *out) {   /* CPython's float_rem */
    if (wx == 0.0) {
        PyErr_SetString(PyExc_ZeroDivisionError, "float modulo");
        return -1;
    }
    double mod = fmod(vx, wx);
    if (mod) {
        if ((wx < 0) != (mod < 0))
            mod += wx;
    } else {
        mod = copysign(0.0, wx);
    }
    *out = mod;
    return 0;
}

static int py_sqrt(double x, double *out) {   /* math.sqrt: a domain error below zero */
    if (x < 0.0) {
        PyErr_SetString(PyExc_ValueError, "math domain error");
        return -1;
    }
    *out = sqrt(x);
    return 0;
}

/* The profile bin of time t: int(((t - origin) % period) / period * bins), and its index
 * checked against the profile's length as Python's array indexing checks it. */
static int bin_of(const Quantity *q, double t, Py_ssize_t *out) {
    double r, f;
    if (py_mod(t - q->origin, q->period, &r) < 0 || py_div(r, q->period, &f) < 0)
        return -1;
    f = f * (double)q->bins;
    if (isnan(f)) {
        PyErr_SetString(PyExc_ValueError, "cannot convert float NaN to integer");
        return -1;
    }
    if (!isfinite(f)) {
        PyErr_SetString(PyExc_OverflowError, "cannot convert float infinity to integer");
        return -1;
    }
    double i = trunc(f);
    if (i < -(double)q->nseason || i >= (double)q->nseason) {
        PyErr_SetString(PyExc_IndexError, "array index out of range");
        return -1;
    }
    Py_ssize_t k = (Py_ssize_t)i;
    *out = k < 0 ? k + q->nseason : k;
    return 0;
}

static int seasonal(const Quantity *q) {
    return q->t1 - q->t0 >= q->period
           && q->fit1 <= (q->period == q->conf ? SEASON_SHARE : FOUND_SHARE) * q->fit0;
}

static double calibrate(double z, double nu) {   /* quantity._calibrate */
    if (isinf(nu) && nu > 0)
        return z;
    if (z == 0.0)
        return z;
    double t2 = z * z * nu / (nu - 2.0);
    return copysign((8.0 * nu + 1.0) / (8.0 * nu + 3.0) * sqrt(nu * log1p(t2 / nu)), z);
}

static int tail_dof(const Quantity *q, double *out) {
    if ((double)q->tn * q->b < 0.5 || q->m2 <= 0) {
        *out = INFINITY;
        return 0;
    }
    double r;
    if (py_div(q->m4, q->m2 * q->m2, &r) < 0)
        return -1;
    double excess = r - 3.0 - EXCESS_SLACK;
    if (excess > 0) {
        double x = 4.0 + 6.0 / excess;
        *out = x > NU_MIN ? x : NU_MIN;
    } else {
        *out = INFINITY;
    }
    return 0;
}

/* The squared standard errors of a mean of n values, fast and slow (score_one's). */
static void errors(const Quantity *q, double n, double *ef, double *es) {
    double fl = FLOOR_REL * fabs(q->lf), h = q->res / 2;
    fl = h > fl ? h : fl;
    double base = q->w / n + (fl > 0 ? fl * fl : 1e-12);
    *ef = base + (q->vn > q->vf ? q->vn : q->vf);
    *es = base + (q->vn > q->vs ? q->vn : q->vs);
}

/* The finder's common steps without a call: before a period is found, a value is added to
 * the open block's sums, after pushing the blocks that ended (each the last block mean) when
 * no push makes the ring as long as a look or a halving needs (PeriodFinder.learn's loop
 * without its _look and halving; those, and the first value and a found period's tracking,
 * stay learn's). Its slots are found once per finder type; anything unexpected (a subclass,
 * a type without those slots, a value of another type, finder_steps not called) leaves the
 * value to PeriodFinder.learn. */
static PyTypeObject *fast_type = NULL;   /* the finder type the offsets are of */
static PyTypeObject *slow_type = NULL;   /* a finder type without them */
static Py_ssize_t off_t0, off_period, off_step, off_block, off_ring, off_acc, off_last;
static Py_ssize_t ring_size = -1, check_at[8];   /* period.SIZE and period.CHECK_AT */
static int n_check = 0;
static PyObject *s_append = NULL;

static int finder_slots(PyTypeObject *tp) {   /* 1: fast_type is tp, 0: not, -1: error */
    if (tp == fast_type)
        return 1;
    if (tp == slow_type || ring_size < 0)
        return 0;
    Py_ssize_t o[7];
    const char *names[] = {"_t0", "period", "_step", "_block", "_ring", "_acc", "_last"};
    for (int j = 0; j < 7; j++) {
        o[j] = slot_offset_s(tp, names[j]);
        if (o[j] < 0) {
            if (PyErr_ExceptionMatches(PyExc_MemoryError))
                return -1;
            PyErr_Clear();
            slow_type = tp;   /* (borrowed: compared, never used) */
            return 0;
        }
    }
    Py_INCREF(tp);
    Py_XSETREF(fast_type, tp);
    off_t0 = o[0], off_period = o[1], off_step = o[2], off_block = o[3], off_ring = o[4];
    off_acc = o[5], off_last = o[6];
    return 1;
}

/* Whether a ring of len blocks grows to upto without reaching a look's or a halving's length. */
static int pushes_plain(Py_ssize_t len, double upto) {
    if (len >= ring_size && upto > (double)len)
        return 0;
    for (int j = 0; j < n_check; j++)
        if ((double)check_at[j] > (double)len && (double)check_at[j] <= upto)
            return 0;
    return 1;
}

/* 1: the value was learned; 0: PeriodFinder.learn must take it; -1: error. */
static int finder_add(PyObject *f, double x, double t) {
    int fast = finder_slots(Py_TYPE(f));
    if (fast <= 0)
        return fast;
    PyObject *t0o = SLOT(f, off_t0), *po = SLOT(f, off_period), *so = SLOT(f, off_step);
    PyObject *bo = SLOT(f, off_block), *ring = SLOT(f, off_ring), *acc = SLOT(f, off_acc);
    PyObject *lo = SLOT(f, off_last);
    if (t0o == NULL || po == NULL || so == NULL || bo == NULL || ring == NULL || acc == NULL
        || lo == NULL || !PyFloat_CheckExact(t0o) || !PyFloat_CheckExact(po)
        || !PyFloat_CheckExact(so) || !PyLong_CheckExact(bo) || !PyFloat_CheckExact(lo)
        || !PyList_CheckExact(acc) || PyList_GET_SIZE(acc) != 2)
        return 0;
    double t0 = PyFloat_AS_DOUBLE(t0o);
    if (t0 < 0 || PyFloat_AS_DOUBLE(po) != 0.0)
        return 0;   /* the first value, or a period found: learn's other paths */
    PyObject *a0 = PyList_GET_ITEM(acc, 0), *a1 = PyList_GET_ITEM(acc, 1);
    if (!PyFloat_CheckExact(a0) || !PyFloat_CheckExact(a1))
        return 0;
    long long block = PyLong_AsLongLong(bo);
    if (block == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    double w = PyFloat_AS_DOUBLE(so) * (double)block;
    if (w == 0.0)
        return 0;
    double i = (t - t0) / w + 1e-9;
    Py_ssize_t len = PyObject_Length(ring);
    if (len < 0)
        return -1;
    if (!isfinite(i))
        return 0;
    i = trunc(i);
    if (!pushes_plain(len, i))
        return 0;
    double s0 = PyFloat_AS_DOUBLE(a0), s1 = PyFloat_AS_DOUBLE(a1);
    if ((double)len < i) {   /* blocks ended: push them, the first with this block's mean */
        double last = PyFloat_AS_DOUBLE(lo);
        if (s1) {
            last = s0 / s1;
            PyObject *v = PyFloat_FromDouble(last);
            if (v == NULL)
                return -1;
            Py_SETREF(SLOT(f, off_last), v);
        }
        s0 = s1 = 0.0;
        PyObject *lv = PyFloat_FromDouble(last);
        if (lv == NULL)
            return -1;
        for (double k = (double)len; k < i; k += 1.0) {
            PyObject *args[] = {ring, lv};
            PyObject *r = PyObject_VectorcallMethod(s_append, args, 2, NULL);
            if (r == NULL) {
                Py_DECREF(lv);
                return -1;
            }
            Py_DECREF(r);
        }
        Py_DECREF(lv);
    }
    PyObject *s = PyFloat_FromDouble(s0 + x);
    PyObject *c = PyFloat_FromDouble(s1 + 1.0);
    if (s == NULL || c == NULL) {
        Py_XDECREF(s);
        Py_XDECREF(c);
        return -1;
    }
    PyList_SET_ITEM(acc, 0, s);
    PyList_SET_ITEM(acc, 1, c);
    Py_DECREF(a0);
    Py_DECREF(a1);
    return 1;
}

/* finder_steps(SIZE, CHECK_AT): baselines.period's ring size and look lengths, which the
 * common steps above must stop short of (until called, every value goes to learn). */
static PyObject *finder_steps(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "finder_steps takes 2 arguments");
    Py_ssize_t size = PyLong_AsSsize_t(args[0]);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    PyObject *seq = PySequence_Fast(args[1], "finder_steps: CHECK_AT is a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > 8) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "finder_steps: at most 8 look lengths");
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        check_at[j] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(seq, j));
        if (check_at[j] == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    n_check = (int)n;
    ring_size = size;
    Py_RETURN_NONE;
}

/* QuantityBaseline._found: use the period the finder found (or refined). */
static int found(Quantity *q, double p, double origin, double t) {
    if (fabs(p - q->conf) <= SNAP * q->conf) {
        p = q->conf;
        origin = 0.0;
    }
    double old = q->period;
    if (p == old)
        return 0;
    if (old == q->conf && q->finder != Py_None) {
        PyObject *bins = PyLong_FromLongLong(q->bins);
        PyObject *pp = PyFloat_FromDouble(p), *po = PyFloat_FromDouble(origin);
        PyObject *fold = NULL;
        if (bins != NULL && pp != NULL && po != NULL) {
            PyObject *args[] = {q->finder, bins, pp, po};
            fold = PyObject_VectorcallMethod(s_fold, args, 4,
                                             NULL);
        }
        Py_XDECREF(bins);
        Py_XDECREF(pp);
        Py_XDECREF(po);
        if (fold == NULL)
            return -1;
        if (fold == Py_None) {
            Py_DECREF(fold);
            return 0;
        }
        PyObject *prof, *before_o, *after_o;
        if (!PyArg_ParseTuple(fold, "OOO", &prof, &before_o, &after_o)) {
            Py_DECREF(fold);
            return -1;
        }
        PyObject *seq = PySequence_Fast(prof, "the fold's profile is a sequence");
        if (seq == NULL) {
            Py_DECREF(fold);
            return -1;
        }
        Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
        double *s = PyMem_Malloc(sizeof(double) * (k ? k : 1));
        double before = PyFloat_AsDouble(before_o), after = PyFloat_AsDouble(after_o);
        int bad = s == NULL || PyErr_Occurred() != NULL;
        for (Py_ssize_t j = 0; !bad && j < k; j++) {
            s[j] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, j));
            bad = s[j] == -1.0 && PyErr_Occurred() != NULL;
        }
        Py_DECREF(seq);
        Py_DECREF(fold);
        if (bad) {
            if (s == NULL)
                PyErr_NoMemory();
            PyMem_Free(s);
            return -1;
        }
        if (before > 0) {
            double r;
            if (py_div(after, before, &r) < 0) {
                PyMem_Free(s);
                return -1;
            }
            q->fit1 = q->fit0 * (r < 1.0 ? r : 1.0);
        } else {
            q->fit1 = q->fit0;
        }
        PyMem_Free(q->season);
        q->season = s;
        q->nseason = k;
        q->origin = origin;
        q->t0 = origin < q->t0 ? origin : q->t0;
    } else {
        double r, phase;
        if (py_mod(t - q->origin, old, &r) < 0 || py_div(r, old, &phase) < 0)
            return -1;
        q->origin = t - phase * p;
    }
    q->period = p;
    return 0;
}

/* -- the Python type ----------------------------------------------------------------------- */
static int Quantity_init(Quantity *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"fast", "slow", "adopt_windows", "bins", "period", "finder", NULL};
    double fast, slow, period = 86400.0;
    long long adopt = 120, bins = 24;
    PyObject *finder = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "dd|LLdO", names, &fast, &slow, &adopt, &bins,
                                     &period, &finder))
        return -1;
    if (bins < 0) {
        PyErr_SetString(PyExc_ValueError, "bins must be >= 0");
        return -1;
    }
    double *s = PyMem_Calloc(bins ? (size_t)bins : 1, sizeof(double));
    if (s == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyMem_Free(self->season);
    self->season = s;
    self->nseason = (Py_ssize_t)bins;
    self->a = fast;
    self->b = slow;
    self->adopt = adopt;
    self->lf = self->ls = self->vf = self->vs = self->vn = self->w = 0.0;
    self->prev = self->res = 0.0;
    self->streak = self->run = 0;
    self->bins = bins;
    self->period = self->conf = period;
    self->origin = 0.0;
    self->t0 = self->t1 = -1.0;
    self->fit0 = self->fit1 = 0.0;
    self->m2 = self->m4 = 0.0;
    self->tn = self->n = 0;
    Py_INCREF(finder);
    Py_XSETREF(self->finder, finder);
    return 0;
}

static void Quantity_dealloc(Quantity *self) {
    PyMem_Free(self->season);
    Py_XDECREF(self->finder);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int as_double(PyObject *o, double *out) {
    *out = PyFloat_AsDouble(o);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* score_one(n, s, q, t=None) */
static PyObject *Quantity_score_one(Quantity *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 3 || nargs > 4) {
        PyErr_Format(PyExc_TypeError, "score_one takes 3 or 4 arguments (%zd given)", nargs);
        return NULL;
    }
    double n, s, q_;
    if (as_double(args[0], &n) < 0 || as_double(args[1], &s) < 0 || as_double(args[2], &q_) < 0)
        return NULL;
    double t = 0.0;
    int has_t = nargs == 4 && args[3] != Py_None;
    if (has_t && as_double(args[3], &t) < 0)
        return NULL;
    if (n <= 0 || !self->n)
        return Py_BuildValue("(dd)", 0.0, 0.0);
    double m = s / n;
    if (has_t && seasonal(self)) {
        Py_ssize_t i;
        if (bin_of(self, t, &i) < 0)
            return NULL;
        m -= self->season[i];
    }
    double ef, es, sf, ss, zf, zs;
    errors(self, n, &ef, &es);
    if (py_sqrt(ef, &sf) < 0 || py_div(m - self->lf, sf, &zf) < 0
        || py_sqrt(es, &ss) < 0 || py_div(m - self->ls, ss, &zs) < 0)
        return NULL;
    if (!((double)self->tn * self->b < 0.5 || self->m2 <= 0)) {
        double nu;
        if (tail_dof(self, &nu) < 0)
            return NULL;
        if (!(isinf(nu) && nu > 0)) {
            zf = calibrate(zf, nu);
            zs = calibrate(zs, nu);
        }
    }
    return Py_BuildValue("(dd)", zf, zs);
}

/* learn_one(n, s, q, anomalous=False, t=None) */
static PyObject *Quantity_learn_one(Quantity *self, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames) {
    PyObject *given[5] = {NULL, NULL, NULL, Py_False, Py_None};
    if (nargs < 3 || nargs > 5) {
        PyErr_Format(PyExc_TypeError, "learn_one takes 3 to 5 arguments (%zd given)", nargs);
        return NULL;
    }
    for (Py_ssize_t j = 0; j < nargs; j++)
        given[j] = args[j];
    Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t j = 0; j < nk; j++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, j);
        int at = -1;
        if (PyUnicode_CompareWithASCIIString(key, "anomalous") == 0)
            at = 3;
        else if (PyUnicode_CompareWithASCIIString(key, "t") == 0)
            at = 4;
        if (at < 0 || at < nargs) {
            PyErr_Format(PyExc_TypeError, "learn_one got an unexpected or repeated argument %R",
                         key);
            return NULL;
        }
        given[at] = args[nargs + j];
    }
    double n, s, q_, t = 0.0;
    if (as_double(given[0], &n) < 0 || as_double(given[1], &s) < 0
        || as_double(given[2], &q_) < 0)
        return NULL;
    int anomalous = PyObject_IsTrue(given[3]);
    if (anomalous < 0)
        return NULL;
    PyObject *to = given[4];
    int has_t = to != Py_None;
    if (has_t && as_double(to, &t) < 0)
        return NULL;
    if (n <= 0)
        Py_RETURN_NONE;
    Quantity *q = self;
    double m = s / n;
    double var = q_ / n - m * m;
    var = var > 0.0 ? var : 0.0;
    long long k = q->n + 1;
    if (has_t) {
        int added = 0;
        if (q->finder != Py_None && PyFloat_CheckExact(to)
            && (added = finder_add(q->finder, m, t)) < 0)
            return NULL;
        if (q->finder != Py_None && !added) {
            PyObject *mo = PyFloat_FromDouble(m);
            if (mo == NULL)
                return NULL;
            PyObject *fargs[] = {q->finder, mo, to};
            PyObject *got = PyObject_VectorcallMethod(
                s_learn, fargs, 3, NULL);
            Py_DECREF(mo);
            if (got == NULL)
                return NULL;
            if (got != Py_None) {
                double p, origin;
                if (!PyArg_ParseTuple(got, "dd", &p, &origin) || found(q, p, origin, t) < 0) {
                    Py_DECREF(got);
                    return NULL;
                }
            }
            Py_DECREF(got);
        }
        if (q->t0 < 0)
            q->t0 = t;
        q->t1 = t;
        Py_ssize_t i;
        if (bin_of(q, t, &i) < 0)
            return NULL;
        double *season = q->season;
        if (q->n) {
            double r = m - q->ls;
            double inv = 1.0 / (double)q->n;
            double b = inv > q->b ? inv : q->b;
            q->fit0 += b * (r * r - q->fit0);
            q->fit1 += b * (pow(r - season[i], 2.0) - q->fit1);
            if (!anomalous)
                season[i] += SEASON_RATE * (r - season[i]);
        }
        if (seasonal(q))
            m -= season[i];
    }
    if (q->n == 0) {
        q->lf = q->ls = q->prev = m;
        q->w = var;
        q->n = 1;
        Py_RETURN_NONE;
    }
    double step = fabs(m - q->prev);
    if (step > 0 && (q->res == 0 || step < q->res))
        q->res = step;
    q->prev = m;
    double ef, es;
    errors(q, n, &ef, &es);
    double rf = m - q->lf, rs = m - q->ls;
    double df = rf * rf;
    if (k > TAIL_WARMUP && !anomalous) {
        double u;
        if (py_div(df, ef, &u) < 0)
            return NULL;
        u = TAIL_CLIP < u ? TAIL_CLIP : u;
        q->tn += 1;
        double r = 1.0 / (double)q->tn;
        r = r > q->b ? r : q->b;
        q->m2 += r * (u - q->m2);
        q->m4 += r * (u * u - q->m4);
    }
    if (!anomalous) {
        q->run = 0;
    } else {
        long long side = rf > 0 ? 1 : -1;
        q->run = q->run * side > 0 ? q->run + side : side;
        double lim = SPREAD_CLIP * SPREAD_CLIP * ef;
        df = lim < df ? lim : df;
        double sf, ss;
        if (py_sqrt(ef, &sf) < 0 || py_sqrt(es, &ss) < 0)
            return NULL;
        double cf = CLIP * sf, cs = CLIP * ss;
        if (llabs(q->run) < PERSIST) {
            double lo = rf < cf ? rf : cf;
            rf = lo > -cf ? lo : -cf;
        }
        double lo = rs < cs ? rs : cs;
        rs = lo > -cs ? lo : -cs;
        if (q->w > 0) {
            double cap = CLIP * CLIP * q->w;
            var = cap < var ? cap : var;
        }
    }
    double noise = q->w / n;
    double inv = 1.0 / (double)k;
    double a = inv > q->a ? inv : q->a;
    double b = inv > q->b ? inv : q->b;
    double e = df - noise;
    e = e > 0.0 ? e : 0.0;
    q->vf += a * (e - q->vf);
    q->vn += b * (e - q->vn);
    double s2 = rs * rs, lim = CLIP * CLIP * ef;
    e = (lim < s2 ? lim : s2) - noise;
    q->vs += b * ((e > 0.0 ? e : 0.0) - q->vs);
    q->lf += a * rf;
    q->ls += b * rs;
    q->w += a * (var - q->w);
    q->n = k;
    double vf = q->vf, vn = q->vn;
    double base = ef - (vn > vf ? vn : vf);
    if (pow(q->lf - q->ls, 2.0) > CLIP * CLIP * (base + (vn < vf ? vn : vf))) {
        q->streak += 1;
        if (q->streak >= q->adopt) {
            double vs = q->vf > q->vs ? q->vf : q->vs;
            q->ls = q->lf;
            q->vs = vs;
            q->streak = 0;
        }
    } else if (q->streak) {
        q->streak -= 1;
    }
    Py_RETURN_NONE;
}

/* rebase(n, s, q) */
static PyObject *Quantity_rebase(Quantity *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "rebase takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    double n, s, q_;
    if (as_double(args[0], &n) < 0 || as_double(args[1], &s) < 0 || as_double(args[2], &q_) < 0)
        return NULL;
    if (n <= 0)
        Py_RETURN_NONE;
    double m = s / n;
    self->lf = self->ls = self->prev = m;
    double v = q_ / n - m * m;
    self->w = v > 0.0 ? v : 0.0;
    self->vs = self->vf > self->vs ? self->vf : self->vs;
    self->streak = self->run = 0;
    Py_RETURN_NONE;
}

static PyObject *Quantity_expected(Quantity *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "expected takes at most 1 argument (%zd given)", nargs);
        return NULL;
    }
    int slow = nargs ? PyObject_IsTrue(args[0]) : 0;
    if (slow < 0)
        return NULL;
    return PyFloat_FromDouble(slow ? self->ls : self->lf);
}

static PyObject *Quantity_tail_dof(Quantity *self, PyObject *unused) {
    double nu;
    if (tail_dof(self, &nu) < 0)
        return NULL;
    return PyFloat_FromDouble(nu);
}

static PyObject *Quantity_seasonal(Quantity *self, PyObject *unused) {
    return PyBool_FromLong(seasonal(self));
}

static PyObject *Quantity_period(Quantity *self, PyObject *unused) {
    return PyFloat_FromDouble(self->period);
}

/* The state as numbers, for baselines.quantity's conversions to and from the reference:
 * (a, b, adopt, lf, ls, vf, vs, vn, w, prev, res, streak, run, bins, period, conf, origin,
 *  t0, t1, fit0, fit1, m2, m4, tn, n, the profile as a tuple, the finder). */
#define NSTATE 27
static PyObject *Quantity_state(Quantity *self, PyObject *unused) {
    PyObject *season = PyTuple_New(self->nseason);
    if (season == NULL)
        return NULL;
    for (Py_ssize_t j = 0; j < self->nseason; j++) {
        PyObject *v = PyFloat_FromDouble(self->season[j]);
        if (v == NULL) {
            Py_DECREF(season);
            return NULL;
        }
        PyTuple_SET_ITEM(season, j, v);
    }
    return Py_BuildValue(
        "(ddLddddddddLLLdddddddddLLNO)", self->a, self->b, self->adopt, self->lf, self->ls,
        self->vf, self->vs, self->vn, self->w, self->prev, self->res, self->streak, self->run,
        self->bins, self->period, self->conf, self->origin, self->t0, self->t1, self->fit0,
        self->fit1, self->m2, self->m4, self->tn, self->n, season, self->finder);
}

static PyObject *Quantity_set_state(Quantity *self, PyObject *arg) {
    double a, b, lf, ls, vf, vs, vn, w, prev, res, period, conf, origin, t0, t1, fit0, fit1,
        m2, m4;
    long long adopt, streak, run, bins, tn, n;
    PyObject *prof, *finder;
    if (!PyTuple_Check(arg) || PyTuple_GET_SIZE(arg) != NSTATE) {
        PyErr_SetString(PyExc_ValueError, "set_state takes a tuple of 27 values");
        return NULL;
    }
    if (!PyArg_ParseTuple(arg, "ddLddddddddLLLdddddddddLLOO", &a, &b, &adopt, &lf, &ls, &vf,
                          &vs, &vn, &w, &prev, &res, &streak, &run, &bins, &period, &conf,
                          &origin, &t0, &t1, &fit0, &fit1, &m2, &m4, &tn, &n, &prof, &finder))
        return NULL;
    PyObject *seq = PySequence_Fast(prof, "set_state: the profile is a sequence of numbers");
    if (seq == NULL)
        return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    double *s = PyMem_Malloc(sizeof(double) * (k ? k : 1));
    if (s == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        if (as_double(PySequence_Fast_GET_ITEM(seq, j), &s[j]) < 0) {
            Py_DECREF(seq);
            PyMem_Free(s);
            return NULL;
        }
    }
    Py_DECREF(seq);
    PyMem_Free(self->season);
    self->season = s;
    self->nseason = k;
    self->a = a, self->b = b, self->adopt = adopt, self->lf = lf, self->ls = ls;
    self->vf = vf, self->vs = vs, self->vn = vn, self->w = w, self->prev = prev;
    self->res = res, self->streak = streak, self->run = run, self->bins = bins;
    self->period = period, self->conf = conf, self->origin = origin, self->t0 = t0;
    self->t1 = t1, self->fit0 = fit0, self->fit1 = fit1, self->m2 = m2, self->m4 = m4;
    self->tn = tn, self->n = n;
    Py_INCREF(finder);
    Py_XSETREF(self->finder, finder);
    Py_RETURN_NONE;
}

/* from_state(values): a new Quantity with state()'s values; __reduce__ goes through it, so
 * copy.deepcopy and pickle give the same state (and a copy of the finder). */
static PyObject *Quantity_from_state(PyObject *cls, PyObject *arg) {
    PyObject *r = ((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 0);
    if (r == NULL)
        return NULL;
    PyObject *ok = Quantity_set_state((Quantity *)r, arg);
    if (ok == NULL) {
        Py_DECREF(r);
        return NULL;
    }
    Py_DECREF(ok);
    return r;
}

static PyObject *Quantity_reduce(Quantity *self, PyObject *unused) {
    PyObject *st = Quantity_state(self, NULL);
    if (st == NULL)
        return NULL;
    PyObject *fn = PyObject_GetAttrString((PyObject *)Py_TYPE(self), "from_state");
    if (fn == NULL) {
        Py_DECREF(st);
        return NULL;
    }
    return Py_BuildValue("(N(N))", fn, st);
}

static PyObject *Quantity_get_n(Quantity *self, void *unused) {
    return PyLong_FromLongLong(self->n);
}

static PyMethodDef Quantity_methods[] = {
    {"score_one", (PyCFunction)(void (*)(void))Quantity_score_one, METH_FASTCALL,
     "Scores (fast, slow) of a window of n values summing to s (squares to q), at t."},
    {"learn_one", (PyCFunction)(void (*)(void))Quantity_learn_one,
     METH_FASTCALL | METH_KEYWORDS, "Learn a window (anomalous: with bounded influence)."},
    {"rebase", (PyCFunction)(void (*)(void))Quantity_rebase, METH_FASTCALL,
     "Adopt a new normal in both horizons."},
    {"expected", (PyCFunction)(void (*)(void))Quantity_expected, METH_FASTCALL,
     "The fast level (the slow one with a true argument)."},
    {"tail_dof", (PyCFunction)Quantity_tail_dof, METH_NOARGS,
     "Degrees of freedom of the tails the normal windows showed (inf: normal or unknown)."},
    {"seasonal", (PyCFunction)Quantity_seasonal, METH_NOARGS,
     "Whether the time-of-day cycle is in use."},
    {"period", (PyCFunction)Quantity_period, METH_NOARGS, "The cycle's period in use (s)."},
    {"state", (PyCFunction)Quantity_state, METH_NOARGS, "The state as 27 values."},
    {"set_state", (PyCFunction)Quantity_set_state, METH_O,
     "Set the state from state()'s values."},
    {"from_state", (PyCFunction)Quantity_from_state, METH_O | METH_CLASS,
     "A new Quantity with state()'s values."},
    {"__reduce__", (PyCFunction)Quantity_reduce, METH_NOARGS, "Pickled and copied by its state."},
    {NULL},
};

static PyGetSetDef Quantity_getset[] = {
    {"n", (getter)Quantity_get_n, NULL, "Windows learned.", NULL},
    {NULL},
};

static PyTypeObject QuantityType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "baselines._quantity.Quantity",
    .tp_basicsize = sizeof(Quantity),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The C twin of baselines.quantity.QuantityBaseline (same floats, bit for bit).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Quantity_init,
    .tp_dealloc = (destructor)Quantity_dealloc,
    .tp_methods = Quantity_methods,
    .tp_getset = Quantity_getset,
};

/* lag_sums(x, top): period._lag_sums_py, the period finder's autocorrelation sums: for each
 * lag 1..top, sum(map(mul, x[:k - lag], x[lag:])) added left to right from 0.0, as the
 * builtin sum adds floats (the finder's x are ranks, multiples of 0.5: every sum is exact). */
static PyObject *lag_sums(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_CheckExact(args[0]))
        return PyErr_Format(PyExc_TypeError, "lag_sums(x: list of floats, top: int)");
    Py_ssize_t top = PyLong_AsSsize_t(args[1]);
    if (top == -1 && PyErr_Occurred())
        return NULL;
    PyObject *xs = args[0];
    Py_ssize_t k = PyList_GET_SIZE(xs);
    if (top < 0)
        top = 0;
    double *x = PyMem_Malloc(sizeof(double) * (size_t)(k ? k : 1));
    if (x == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *v = PyList_GET_ITEM(xs, i);
        if (!PyFloat_CheckExact(v)) {
            PyMem_Free(x);
            return PyErr_Format(PyExc_TypeError, "lag_sums: x holds a %s, not a float",
                                Py_TYPE(v)->tp_name);
        }
        x[i] = PyFloat_AS_DOUBLE(v);
    }
    PyObject *out = PyList_New(top);
    for (Py_ssize_t lag = 1; out != NULL && lag <= top; lag++) {
        if (lag >= k) {   /* no pairs: the builtin sum's int 0 */
            PyList_SET_ITEM(out, lag - 1, PyLong_FromLong(0));
            if (PyList_GET_ITEM(out, lag - 1) == NULL)
                Py_CLEAR(out);
            continue;
        }
        double acc = 0.0;
        for (Py_ssize_t i = 0; i < k - lag; i++)
            acc += x[i] * x[i + lag];
        PyObject *f = PyFloat_FromDouble(acc);
        if (f == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, lag - 1, f);
    }
    PyMem_Free(x);
    return out;
}

static PyMethodDef module_methods[] = {
    {"finder_steps", (PyCFunction)(void (*)(void))finder_steps, METH_FASTCALL,
     "Tell the twin baselines.period's SIZE and CHECK_AT (its common steps stop short)."},
    {"lag_sums", (PyCFunction)(void (*)(void))lag_sums, METH_FASTCALL,
     "The period finder's autocorrelation sums (see baselines.period._lag_sums_py)."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "baselines._quantity",
    "The quantity baseline's state as plain doubles (the C twin of baselines.quantity).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__quantity(void) {
    if (PyType_Ready(&QuantityType) < 0)
        return NULL;
    s_learn = PyUnicode_InternFromString("learn");
    s_fold = PyUnicode_InternFromString("fold");
    s_append = PyUnicode_InternFromString("append");
    if (s_learn == NULL || s_fold == NULL || s_append == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&QuantityType);
    if (PyModule_AddObject(m, "Quantity", (PyObject *)&QuantityType) < 0) {
        Py_DECREF(&QuantityType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
