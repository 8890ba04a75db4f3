/* The C twin of baselines.rate.RateBaseline: the same state as plain doubles, the same
 * arithmetic in the same order, so every float it gives is the reference's bit for bit
 * (tests/test_rate_twin.py; replay stays byte-identical whichever one runs).
 *
 * The reference holds river's Mean (until the hand-over) and EWMean (after it) inside
 * WarmEWMean; here each of the four sums is a Wem. river's EWMean update is
 * alpha * x + (1 - alpha) * mean, and it starts at its first value (WarmEWMean always hands
 * over with a value, so a Wem in the EWMean phase has started). Built with
 * -ffp-contract=off: a fused multiply-add would round differently from Python's floats. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#define PRIOR_K 0.5
#define PRIOR_N 1.0
#define DRIFT_MIN_EXPECTED 10.0
#define CLIP 3.0

typedef struct {
    double ff;    /* fading factor */
    double n;     /* Mean's count (the Mean phase only) */
    double mean;  /* Mean's or EWMean's value */
    int ew;       /* 0: Mean phase, 1: EWMean phase */
} Wem;

typedef struct {
    PyObject_HEAD
    Wem fk, fn, sk, sn;          /* fast numerator, denominator; slow numerator, denominator */
    double d_rate, d_cap, m1, m2; /* Dispersion */
    double pf, ps, sd;
    long long n, frozen, adopt;
} Rate;

/* -- the reference's helpers, one by one --------------------------------------------------- */
static double poisson_score(double k, double mu) {   /* baselines.poisson.poisson_score */
    if (mu <= 0.0)
        mu = 1e-9;
    int high = k >= mu;
    if (high) {
        if (!(k > 0))
            return 0.0;
    } else {
        k += 1.0;
    }
    double z = 3.0 * sqrt(k) * (1.0 - 1.0 / (9.0 * k) - pow(mu / k, 1.0 / 3.0));
    if (high)
        return z > 0.0 ? z : 0.0;
    return z < 0.0 ? z : 0.0;
}

static double wem_update(Wem *w, double x) {    /* WarmEWMean.update: returns total() */
    if (w->ew) {
        w->mean = w->ff * x + (1.0 - w->ff) * w->mean;
        return w->mean * (1.0 / w->ff);
    }
    double n = w->n + 1.0;
    w->n = n;
    w->mean += (1.0 / n) * (x - w->mean);
    if (n * w->ff >= 1.0) {
        w->ew = 1;   /* EWMean(ff).update(mean): it starts at that value */
        w->n = 0.0;
        return w->mean * (1.0 / w->ff);
    }
    return w->mean * n;
}

static double wem_total(const Wem *w) {
    return w->ew ? w->mean * (1.0 / w->ff) : w->mean * w->n;
}

static void wem_reset_to(Wem *w, double x) {
    w->ew = 1;
    w->n = 0.0;
    w->mean = x;
}

static double disp_get(const Rate *r) {
    double v = r->m2 - r->m1 * r->m1;
    v = v > 1.0 ? v : 1.0;
    return v < r->d_cap ? v : r->d_cap;
}

static double disp_update_get(Rate *r, double z) {
    z = z < -CLIP ? -CLIP : z > CLIP ? CLIP : z;
    double a = r->d_rate;
    r->m1 = r->m1 + a * (z - r->m1);
    r->m2 = r->m2 + a * (z * z - r->m2);
    return disp_get(r);
}

static void refresh(Rate *r) {
    r->pf = (wem_total(&r->fk) + PRIOR_K) / (wem_total(&r->fn) + PRIOR_N);
    r->ps = (wem_total(&r->sk) + PRIOR_K) / (wem_total(&r->sn) + PRIOR_N);
    r->sd = sqrt(disp_get(r));
}

static double drift_score(const Rate *r, double k, double n) {
    double a = r->fk.ff;
    double d = 1.0 - a;
    double c = 1.0 + d;
    double mu = (d * r->fn.mean / a + n) * r->ps * c;
    if (mu < DRIFT_MIN_EXPECTED)
        return 0.0;
    double big_k = d * r->fk.mean / a + k;
    return poisson_score(big_k * c, mu) / r->sd;
}

static void learn_one(Rate *r, double k, double n, int slow, int anomalous) {
    if (n <= 0)
        return;
    if (anomalous) {
        double mu = n * r->pf;
        double sd = sqrt(disp_get(r) * (1.0 > mu ? 1.0 : mu));
        if (k > mu) {
            double hi = mu + 2.0 * sd;
            k = hi < k ? hi : k;
        } else {
            double lo = mu - 2.0 * sd;
            k = lo > k ? lo : k;
        }
    }
    double v = r->n ? disp_update_get(r, poisson_score(k, n * r->pf)) : disp_get(r);
    double tk = wem_update(&r->fk, k);
    double tn = wem_update(&r->fn, n);
    int slow_moved = slow && !anomalous;
    double sk = 0.0, sn = 0.0;
    if (slow_moved) {
        sk = wem_update(&r->sk, k);
        sn = wem_update(&r->sn, n);
    }
    if (!anomalous)
        r->frozen = slow ? 0 : r->frozen + 1;
    if (r->frozen >= r->adopt) {
        wem_reset_to(&r->sk, r->fk.mean);
        wem_reset_to(&r->sn, r->fn.mean);
        r->frozen = 0;
        slow_moved = 1;
        sk = wem_total(&r->sk);
        sn = wem_total(&r->sn);
    }
    r->n += 1;
    r->pf = (tk + PRIOR_K) / (tn + PRIOR_N);
    if (slow_moved)
        r->ps = (sk + PRIOR_K) / (sn + PRIOR_N);
    r->sd = sqrt(v);
}

/* -- the Python type ----------------------------------------------------------------------- */
static int args_doubles(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                        const char *name, double *out) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", name, want, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < want; i++) {
        out[i] = PyFloat_AsDouble(args[i]);
        if (out[i] == -1.0 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

static int Rate_init(Rate *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"fast", "slow", "max_dispersion", "adopt_after", NULL};
    double fast, slow, cap = 25.0;
    long long adopt = 90;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "dd|dL", names, &fast, &slow, &cap, &adopt))
        return -1;
    Wem f = {fast, 0.0, 0.0, 0}, s = {slow, 0.0, 0.0, 0};
    self->fk = self->fn = f;
    self->sk = self->sn = s;
    self->d_rate = fast;
    self->d_cap = cap;
    self->m1 = 0.0;
    self->m2 = 1.0;
    self->n = self->frozen = 0;
    self->adopt = adopt;
    refresh(self);
    return 0;
}

static PyObject *Rate_expected(Rate *self, PyObject *const *args, Py_ssize_t nargs) {
    int slow = 0;
    if (nargs > 1)
        return PyErr_Format(PyExc_TypeError, "expected takes at most 1 argument");
    if (nargs == 1 && (slow = PyObject_IsTrue(args[0])) < 0)
        return NULL;
    return PyFloat_FromDouble(slow ? self->ps : self->pf);
}

static PyObject *Rate_score_one(Rate *self, PyObject *const *args, Py_ssize_t nargs) {
    double a[2];
    if (args_doubles(args, nargs, 2, "score_one", a) < 0)
        return NULL;
    double d = self->sd;
    PyObject *t = PyTuple_New(2);
    if (t == NULL)
        return NULL;
    PyObject *zf = PyFloat_FromDouble(poisson_score(a[0], a[1] * self->pf) / d);
    PyObject *zs = PyFloat_FromDouble(poisson_score(a[0], a[1] * self->ps) / d);
    if (zf == NULL || zs == NULL) {
        Py_XDECREF(zf);
        Py_XDECREF(zs);
        Py_DECREF(t);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, zf);
    PyTuple_SET_ITEM(t, 1, zs);
    return t;
}

static PyObject *Rate_drift_score(Rate *self, PyObject *const *args, Py_ssize_t nargs) {
    double a[2];
    if (args_doubles(args, nargs, 2, "drift_score", a) < 0)
        return NULL;
    return PyFloat_FromDouble(drift_score(self, a[0], a[1]));
}

/* -- a rate window's decision (scoring.decide_rate_py's twin) --------------------------------
 * decide(k, n, t, prev, window, drift, direction, min_count) -> (z, slow, hit, zf): the
 * window's scores, the multi-window candidates (prev: the cohort's recent totals of this
 * signal, or None), the two-horizon one (drift true: the cohort's own baseline with flags),
 * and the direction's pick as max/min over (score, slow, count) tuples picks it. */
typedef struct {
    double z, kk;
    int slow;
} Cand;

static int cand_gt(const Cand *a, const Cand *b) {   /* tuple a > tuple b */
    if (!(a->z == b->z))
        return a->z > b->z;
    if (a->slow != b->slow)
        return a->slow > b->slow;
    return a->kk > b->kk;
}

static int cand_lt(const Cand *a, const Cand *b) {   /* tuple a < tuple b */
    if (!(a->z == b->z))
        return a->z < b->z;
    if (a->slow != b->slow)
        return a->slow < b->slow;
    return a->kk < b->kk;
}

static PyObject *Rate_decide(Rate *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8)
        return PyErr_Format(PyExc_TypeError, "decide takes 8 arguments (%zd given)", nargs);
    double k, n, t, min_count;
    if ((k = PyFloat_AsDouble(args[0])) == -1.0 && PyErr_Occurred())
        return NULL;
    if ((n = PyFloat_AsDouble(args[1])) == -1.0 && PyErr_Occurred())
        return NULL;
    if ((t = PyFloat_AsDouble(args[2])) == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *prev = args[3];
    long long window = PyLong_AsLongLong(args[4]);
    if (window == -1 && PyErr_Occurred())
        return NULL;
    int drift = PyObject_IsTrue(args[5]);
    if (drift < 0)
        return NULL;
    if (!PyUnicode_Check(args[6]))
        return PyErr_Format(PyExc_TypeError, "decide: the direction is not a str");
    int dir = PyUnicode_CompareWithASCIIString(args[6], "up") == 0 ? 0
              : PyUnicode_CompareWithASCIIString(args[6], "down") == 0 ? 1 : 2;
    if ((min_count = PyFloat_AsDouble(args[7])) == -1.0 && PyErr_Occurred())
        return NULL;
    double sd = self->sd;
    double zf = poisson_score(k, n * self->pf) / sd, zs = poisson_score(k, n * self->ps) / sd;
    Cand c[5] = {{zf, k, 0}, {zs, k, 1}};
    int nc = 2;
    double half = t / 2;
    int up_lean = (zs > zf ? zs : zf) >= half;
    int down_lean = (zs < zf ? zs : zf) <= -half;
    if ((up_lean || down_lean) && prev != Py_None) {
        if (!PyList_Check(prev))
            return PyErr_Format(PyExc_TypeError, "decide: the recent totals are not a list");
        Py_ssize_t np = PyList_GET_SIZE(prev);
        long long last = -1;
        if (np) {
            PyObject *e = PyList_GET_ITEM(prev, np - 1);
            if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) < 3)
                return PyErr_Format(PyExc_TypeError, "decide: a recent entry is not a tuple");
            last = PyLong_AsLongLong(PyTuple_GET_ITEM(e, 0));
            if (last == -1 && PyErr_Occurred())
                return NULL;
        }
        if (np && last == window - 1) {
            double x = k, y = n;
            for (Py_ssize_t i = 0; i < np; i++) {
                PyObject *e = PyList_GET_ITEM(prev, i);
                if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) < 3)
                    return PyErr_Format(PyExc_TypeError, "decide: a recent entry is not a tuple");
                long long w = PyLong_AsLongLong(PyTuple_GET_ITEM(e, 0));
                if (w == -1 && PyErr_Occurred())
                    return NULL;
                if (w >= window - 2) {
                    double px = PyFloat_AsDouble(PyTuple_GET_ITEM(e, 1));
                    double py = PyFloat_AsDouble(PyTuple_GET_ITEM(e, 2));
                    if (PyErr_Occurred())
                        return NULL;
                    x = x + px;
                    y = y + py;
                }
            }
            double af = poisson_score(x, y * self->pf) / sd;
            double as = poisson_score(x, y * self->ps) / sd;
            if ((af > 0 && up_lean) || (af < 0 && down_lean))
                c[nc++] = (Cand){af, x, 0};
            if ((as > 0 && up_lean) || (as < 0 && down_lean))
                c[nc++] = (Cand){as, x, 1};
        }
    }
    if (drift) {
        double lean = fabs(zs) > fabs(zf) ? zs : zf;
        if (fabs(lean) >= t / 2) {
            double zd = drift_score(self, k, n);
            if (zd * lean > 0)
                c[nc++] = (Cand){zd, k, 1};
        }
    }
    int best = 0;
    for (int i = 1; i < nc; i++) {
        if (dir == 0 ? cand_gt(&c[i], &c[best])
            : dir == 1 ? cand_lt(&c[i], &c[best]) : fabs(c[i].z) > fabs(c[best].z))
            best = i;
    }
    double z = c[best].z, kk = c[best].kk;
    int hit = dir == 0 ? (z >= t && kk >= min_count)
              : dir == 1 ? z <= -t : ((z >= t && kk >= min_count) || z <= -t);
    return Py_BuildValue("(dNNd)", z, PyBool_FromLong(c[best].slow), PyBool_FromLong(hit), zf);
}

static double reference(const Rate *r, int up) {
    double k = wem_total(&r->fk), units = wem_total(&r->fn), ps = r->ps;
    if (up) {
        double v = k > 4.0 ? (k - 2.0 * sqrt(k)) / units : 0.0;
        return v > ps ? v : ps;
    }
    if (!(units > 0))
        return ps;
    double v = (k + 2.0 * sqrt(k) + 1.0) / units;
    return v < ps ? v : ps;
}

static PyObject *Rate_reference(Rate *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"up", NULL};
    int up = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p", names, &up))
        return NULL;
    return PyFloat_FromDouble(reference(self, up));
}

/* The count CUSUM's upward designs (baselines.sequential: ln rho, rho - 1, RISE_MIN and its
 * shared ZEROS), handed over once by designs(). */
static double LOG_UP[4], RHO_M1[4], RISE_MIN;
/* The fall it is tuned for (baselines.sequential.RHO_DOWN) and its log. */
#define RHO_DOWN 0.25
static double LOG_DOWN;
/* statistics' normal quantile function (what NormalDist().inv_cdf calls) and the names of a
 * Cusum's statistics, fetched once. */
static PyObject *INV_CDF = NULL, *S_UP = NULL, *S_DOWN = NULL, *S_UPS = NULL;

static PyObject *ZEROS = NULL;

static PyObject *designs(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyTuple_Check(args[0]) || !PyTuple_Check(args[1])
        || PyTuple_GET_SIZE(args[0]) != 4 || PyTuple_GET_SIZE(args[1]) != 4)
        return PyErr_Format(PyExc_TypeError, "designs(log_up, rho_up_m1, rise_min, zeros)");
    for (int i = 0; i < 4; i++) {
        LOG_UP[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(args[0], i));
        RHO_M1[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(args[1], i));
    }
    RISE_MIN = PyFloat_AsDouble(args[2]);
    if (PyErr_Occurred())
        return NULL;
    LOG_DOWN = log(RHO_DOWN);
    PyObject *stats = PyImport_ImportModule("statistics");
    if (stats == NULL)
        return NULL;
    Py_XSETREF(INV_CDF, PyObject_GetAttrString(stats, "_normal_dist_inv_cdf"));
    Py_DECREF(stats);
    if (INV_CDF == NULL || (S_UP == NULL && (S_UP = PyUnicode_InternFromString("up")) == NULL)
            || (S_DOWN == NULL && (S_DOWN = PyUnicode_InternFromString("down")) == NULL)
            || (S_UPS == NULL && (S_UPS = PyUnicode_InternFromString("_ups")) == NULL))
        return NULL;
    Py_INCREF(args[3]);
    Py_XSETREF(ZEROS, args[3]);
    Py_RETURN_NONE;
}

/* peek_up(cus, k, n, cap): cus.peek_up(k, n * reference(), dispersion(), cap), as
 * RateBaseline.peek_up (Cusum.peek_up unrolled the same way). */
static PyObject *Rate_peek_up(Rate *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4)
        return PyErr_Format(PyExc_TypeError, "peek_up takes 4 arguments");
    if (ZEROS == NULL)
        return PyErr_Format(PyExc_RuntimeError, "baselines._rate.designs() was not called");
    double k = PyFloat_AsDouble(args[1]), n = PyFloat_AsDouble(args[2]);
    double cap = PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *upo = PyObject_GetAttrString(args[0], "up");
    if (upo == NULL)
        return NULL;
    int up = PyObject_IsTrue(upo);
    Py_DECREF(upo);
    if (up < 0)
        return NULL;
    double mu = n * reference(self, 1);
    if (!up && k <= RISE_MIN * mu) {
        Py_INCREF(ZEROS);
        return ZEROS;
    }
    PyObject *ups = PyObject_GetAttrString(args[0], "_ups");
    if (ups == NULL)
        return NULL;
    PyObject *seq = PySequence_Fast(ups, "a Cusum's _ups is not a sequence");
    Py_DECREF(ups);
    if (seq == NULL)
        return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != 4) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "a Cusum's _ups is not 4 numbers");
    }
    double disp = self->sd * self->sd;
    PyObject *out = PyList_New(4);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (int i = 0; i < 4; i++) {
        double s = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (s == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            Py_DECREF(out);
            return NULL;
        }
        double v = (k * LOG_UP[i] - RHO_M1[i] * mu) / disp;
        v = s + (cap < v ? cap : v);
        PyList_SET_ITEM(out, i, PyFloat_FromDouble(v > 0.0 ? v : 0.0));
    }
    Py_DECREF(seq);
    return out;
}


/* baselines.sequential.to_standard; -1 with an exception. */
static int to_standard(double nats, double *out) {
    if (nats <= 0.7) {
        *out = 0.0;
        return 0;
    }
    PyObject *a[3] = {PyFloat_FromDouble(exp(-(700.0 < nats ? 700.0 : nats))),
                      PyFloat_FromDouble(0.0), PyFloat_FromDouble(1.0)};
    PyObject *r = a[0] && a[1] && a[2] ? PyObject_Vectorcall(INV_CDF, a, 3, NULL) : NULL;
    for (int i = 0; i < 3; i++)
        Py_XDECREF(a[i]);
    if (r == NULL)
        return -1;
    double v = PyFloat_AsDouble(r);
    Py_DECREF(r);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    *out = -v;
    return 0;
}

/* A Cusum's statistics (its up, down and four upward ones); -1 with an exception. */
static int cusum_read(PyObject *cus, double *up, double *down, double ups[4]) {
    PyObject *o = PyObject_GetAttr(cus, S_UP);
    if (o == NULL || (*up = PyFloat_AsDouble(o), Py_DECREF(o), *up == -1.0 && PyErr_Occurred()))
        return -1;
    if ((o = PyObject_GetAttr(cus, S_DOWN)) == NULL
            || (*down = PyFloat_AsDouble(o), Py_DECREF(o), *down == -1.0 && PyErr_Occurred()))
        return -1;
    if ((o = PyObject_GetAttr(cus, S_UPS)) == NULL)
        return -1;
    PyObject *seq = PySequence_Fast(o, "a Cusum's _ups is not a sequence");
    Py_DECREF(o);
    if (seq == NULL)
        return -1;
    if (PySequence_Fast_GET_SIZE(seq) != 4) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "a Cusum's _ups is not 4 numbers");
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        ups[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (ups[i] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

/* sequential(cus, k, n, h, d): RateBaseline.sequential, the same floats in the same order
 * (Cusum.peek_up and peek_down as the reference unrolls them; statistics' own quantile). */
static PyObject *Rate_sequential(Rate *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5)
        return PyErr_Format(PyExc_TypeError, "sequential takes 5 arguments");
    if (ZEROS == NULL || INV_CDF == NULL)
        return PyErr_Format(PyExc_RuntimeError, "baselines._rate.designs() was not called");
    double k = PyFloat_AsDouble(args[1]), n = PyFloat_AsDouble(args[2]);
    double h = PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred())
        return NULL;
    int dir;   /* 0: both, 1: up, 2: down */
    if (!PyUnicode_Check(args[4]))
        return PyErr_Format(PyExc_TypeError, "a direction is a str, not %R", args[4]);
    if (PyUnicode_CompareWithASCIIString(args[4], "up") == 0)
        dir = 1;
    else if (PyUnicode_CompareWithASCIIString(args[4], "down") == 0)
        dir = 2;
    else
        dir = 0;
    int idle = args[0] == Py_None;
    double c_up = 0.0, c_down = 0.0, c_ups[4] = {0.0, 0.0, 0.0, 0.0};
    if (!idle && cusum_read(args[0], &c_up, &c_down, c_ups) < 0)
        return NULL;
    if (idle && dir == 1 && k <= RISE_MIN * (n * self->ps))
        Py_RETURN_NONE;
    double cap = h / 2;
    double disp = self->sd * self->sd;
    double ups[4] = {0.0, 0.0, 0.0, 0.0};
    int zeros = dir == 2 || (!(c_up != 0.0) && k <= RISE_MIN * (n * self->ps));
    if (!zeros) {   /* RateBaseline.peek_up */
        double mu = n * reference(self, 1);
        if (!(c_up != 0.0) && k <= RISE_MIN * mu)
            zeros = 1;
        for (int i = 0; !zeros && i < 4; i++) {
            double v = (k * LOG_UP[i] - RHO_M1[i] * mu) / disp;
            v = c_ups[i] + (cap < v ? cap : v);
            ups[i] = v > 0.0 ? v : 0.0;
        }
    }
    double down = 0.0;
    if (dir != 1) {   /* Cusum.peek_down */
        double mu = n * reference(self, 0);
        double v = (k * LOG_DOWN - (RHO_DOWN - 1.0) * mu) / disp;
        v = c_down + (cap < v ? cap : v);
        down = v > 0.0 ? v : 0.0;
    }
    double up = ups[0];
    for (int i = 1; i < 4; i++)
        if (ups[i] > up)
            up = ups[i];
    if (idle && up == down && down == 0.0)
        Py_RETURN_NONE;
    int rising = up > c_up && up >= h && dir != 2;
    int falling = down > c_down && down >= h && dir != 1;
    double keep_down = falling ? (cap < down ? cap : down) : down;
    if (dir == 1)
        down = 0.0;
    else if (dir == 2)
        up = 0.0;
    double ev;
    int confirmed;
    if (up >= down) {
        if (to_standard(up, &ev) < 0)
            return NULL;
        confirmed = rising;
    } else {
        if (to_standard(down, &ev) < 0)
            return NULL;
        ev = -ev;
        confirmed = falling;
    }
    PyObject *keep_ups;
    if (zeros) {
        Py_INCREF(ZEROS);
        keep_ups = ZEROS;
    } else {
        if ((keep_ups = PyList_New(4)) == NULL)
            return NULL;
        for (int i = 0; i < 4; i++) {
            double u = rising && cap < ups[i] ? cap : ups[i];
            PyObject *f = PyFloat_FromDouble(u);
            if (f == NULL) {
                Py_DECREF(keep_ups);
                return NULL;
            }
            PyList_SET_ITEM(keep_ups, i, f);
        }
    }
    return Py_BuildValue("(dNNd)", ev, PyBool_FromLong(confirmed), keep_ups, keep_down);
}

static PyObject *Rate_dispersion(Rate *self, PyObject *unused) {
    return PyFloat_FromDouble(self->sd * self->sd);
}

static PyObject *Rate_rebase(Rate *self, PyObject *const *args, Py_ssize_t nargs) {
    double a[2];
    if (args_doubles(args, nargs, 2, "rebase", a) < 0)
        return NULL;
    wem_reset_to(&self->fk, a[0]);
    wem_reset_to(&self->fn, a[1]);
    wem_reset_to(&self->sk, a[0]);
    wem_reset_to(&self->sn, a[1]);
    refresh(self);
    Py_RETURN_NONE;
}

static PyObject *Rate_learn_one(Rate *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"k", "n", "slow", "anomalous", NULL};
    double k, n;
    int slow = 1, anomalous = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "dd|pp", names, &k, &n, &slow, &anomalous))
        return NULL;
    learn_one(self, k, n, slow, anomalous);
    Py_RETURN_NONE;
}

/* learn_window(k, n, drift_check, warmup, freeze): RateBaseline.learn_window. */
static PyObject *Rate_learn_window(Rate *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5)
        return PyErr_Format(PyExc_TypeError, "learn_window takes 5 arguments");
    double k = PyFloat_AsDouble(args[0]);
    double n = PyFloat_AsDouble(args[1]);
    int check = PyObject_IsTrue(args[2]);
    long long warmup = PyLong_AsLongLong(args[3]);
    double freeze = PyFloat_AsDouble(args[4]);
    if (PyErr_Occurred() || check < 0)
        return NULL;
    int drifting = check && self->n >= warmup && fabs(drift_score(self, k, n)) >= freeze;
    learn_one(self, k, n, !drifting, 0);
    Py_RETURN_NONE;
}

/* The state as numbers, for baselines.rate's conversions to and from the reference:
 * (4 x (ff, n, mean, ew), d_rate, d_cap, m1, m2, pf, ps, sd, n, frozen, adopt). */
static PyObject *Rate_state(Rate *self, PyObject *unused) {
    const Wem *w[4] = {&self->fk, &self->fn, &self->sk, &self->sn};
    PyObject *t = PyTuple_New(16 + 10);
    if (t == NULL)
        return NULL;
    Py_ssize_t i = 0;
    for (int j = 0; j < 4; j++) {
        PyTuple_SET_ITEM(t, i++, PyFloat_FromDouble(w[j]->ff));
        PyTuple_SET_ITEM(t, i++, PyFloat_FromDouble(w[j]->n));
        PyTuple_SET_ITEM(t, i++, PyFloat_FromDouble(w[j]->mean));
        PyTuple_SET_ITEM(t, i++, PyBool_FromLong(w[j]->ew));
    }
    double d[] = {self->d_rate, self->d_cap, self->m1, self->m2, self->pf, self->ps, self->sd};
    for (int j = 0; j < 7; j++)
        PyTuple_SET_ITEM(t, i++, PyFloat_FromDouble(d[j]));
    PyTuple_SET_ITEM(t, i++, PyLong_FromLongLong(self->n));
    PyTuple_SET_ITEM(t, i++, PyLong_FromLongLong(self->frozen));
    PyTuple_SET_ITEM(t, i++, PyLong_FromLongLong(self->adopt));
    for (Py_ssize_t j = 0; j < i; j++)
        if (PyTuple_GET_ITEM(t, j) == NULL) {
            Py_DECREF(t);
            return NULL;
        }
    return t;
}

static PyObject *Rate_set_state(Rate *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "set_state takes a sequence of 26 numbers");
    if (seq == NULL)
        return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != 26) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "set_state takes 26 numbers");
    }
    PyObject **it = PySequence_Fast_ITEMS(seq);
    double v[26];
    for (int j = 0; j < 26; j++) {
        v[j] = PyFloat_AsDouble(it[j]);
        if (v[j] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    Wem *w[4] = {&self->fk, &self->fn, &self->sk, &self->sn};
    for (int j = 0; j < 4; j++) {
        w[j]->ff = v[4 * j];
        w[j]->n = v[4 * j + 1];
        w[j]->mean = v[4 * j + 2];
        w[j]->ew = v[4 * j + 3] != 0.0;
    }
    self->d_rate = v[16];
    self->d_cap = v[17];
    self->m1 = v[18];
    self->m2 = v[19];
    self->pf = v[20];
    self->ps = v[21];
    self->sd = v[22];
    self->n = (long long)v[23];
    self->frozen = (long long)v[24];
    self->adopt = (long long)v[25];
    Py_RETURN_NONE;
}

/* from_state(numbers): a new Rate with state()'s numbers; __reduce__ goes through it, so
 * copy.deepcopy and pickle give the same state, not a zeroed one. */
static PyObject *Rate_from_state(PyObject *cls, PyObject *arg) {
    PyObject *r = ((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 0);
    if (r == NULL)
        return NULL;
    PyObject *ok = Rate_set_state((Rate *)r, arg);
    if (ok == NULL) {
        Py_DECREF(r);
        return NULL;
    }
    Py_DECREF(ok);
    return r;
}

static PyObject *Rate_reduce(Rate *self, PyObject *unused) {
    PyObject *st = Rate_state(self, NULL);
    if (st == NULL)
        return NULL;
    PyObject *fn = PyObject_GetAttrString((PyObject *)Py_TYPE(self), "from_state");
    if (fn == NULL) {
        Py_DECREF(st);
        return NULL;
    }
    return Py_BuildValue("(N(N))", fn, st);
}

static PyObject *Rate_get_n(Rate *self, void *unused) {
    return PyLong_FromLongLong(self->n);
}

static PyMethodDef Rate_methods[] = {
    {"expected", (PyCFunction)(void (*)(void))Rate_expected, METH_FASTCALL,
     "expected(slow=False): the fast (or slow) horizon's rate."},
    {"score_one", (PyCFunction)(void (*)(void))Rate_score_one, METH_FASTCALL,
     "score_one(k, n): scores against the fast and the slow horizon."},
    {"drift_score", (PyCFunction)(void (*)(void))Rate_drift_score, METH_FASTCALL,
     "drift_score(k, n): the fast horizon's sums against the slow rate."},
    {"reference", (PyCFunction)(void (*)(void))Rate_reference, METH_VARARGS | METH_KEYWORDS,
     "reference(up=True): the sequential test's reference rate."},
    {"decide", (PyCFunction)(void (*)(void))Rate_decide, METH_FASTCALL,
     "A window's decision: (score, slow horizon, hit, fast score); see scoring.decide_rate_py."},
    {"peek_up", (PyCFunction)(void (*)(void))Rate_peek_up, METH_FASTCALL,
     "peek_up(cus, k, n, cap): the sequential test's upward statistics after this window."},
    {"sequential", (PyCFunction)(void (*)(void))Rate_sequential, METH_FASTCALL,
     "sequential(cus, k, n, h, d): the sequential test's step (see RateBaseline.sequential)."},
    {"dispersion", (PyCFunction)Rate_dispersion, METH_NOARGS, "The learned over-dispersion."},
    {"rebase", (PyCFunction)(void (*)(void))Rate_rebase, METH_FASTCALL,
     "rebase(k, n): adopt a new normal in both horizons."},
    {"learn_one", (PyCFunction)(void (*)(void))Rate_learn_one, METH_VARARGS | METH_KEYWORDS,
     "learn_one(k, n, slow=True, anomalous=False): learn a window."},
    {"learn_window", (PyCFunction)(void (*)(void))Rate_learn_window, METH_FASTCALL,
     "learn_window(k, n, drift_check, warmup, freeze): a normal window, slow horizon frozen "
     "while drifting."},
    {"state", (PyCFunction)Rate_state, METH_NOARGS, "The state as 26 numbers."},
    {"set_state", (PyCFunction)Rate_set_state, METH_O, "Set the state from state()'s numbers."},
    {"from_state", (PyCFunction)Rate_from_state, METH_O | METH_CLASS,
     "A new Rate with state()'s numbers."},
    {"__reduce__", (PyCFunction)Rate_reduce, METH_NOARGS, "Pickled and copied by its state."},
    {NULL},
};

static PyGetSetDef Rate_getset[] = {
    {"n", (getter)Rate_get_n, NULL, "Windows learned.", NULL},
    {NULL},
};

static PyTypeObject RateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "baselines._rate.Rate",
    .tp_basicsize = sizeof(Rate),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The C twin of baselines.rate.RateBaseline (same floats, bit for bit).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Rate_init,
    .tp_methods = Rate_methods,
    .tp_getset = Rate_getset,
};


/* -- the scorer's plain rate windows -------------------------------------------------------
 * learn_plain(rates, decisions, counts, recent, persist, episodes, baselines, w, warmup,
 *             freeze, resolve_after, new): detector.core.scoring.learn_plain_py, the twin of
 * Scorer.learn's steps for the rate signals this window has no decision on (most of them):
 * the last windows' totals kept, persistence and an expired episode dropped, the window
 * learned (RateBaseline.learn_window; ``new(sig)`` makes a missing baseline). */
static int episode_over(PyObject *episodes, PyObject *name, long w, long resolve_after) {
    if (PyDict_GET_SIZE(episodes) == 0)
        return 0;
    PyObject *ep = PyDict_GetItemWithError(episodes, name);
    if (ep == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *last = PySequence_GetItem(ep, 1);
    if (last == NULL)
        return -1;
    double l = PyFloat_AsDouble(last);
    Py_DECREF(last);
    if (l == -1.0 && PyErr_Occurred())
        return -1;
    if ((double)w - l >= (double)resolve_after)
        return PyDict_DelItem(episodes, name);
    return 0;
}

static int dict_discard(PyObject *d, PyObject *key) {
    if (PyDict_GET_SIZE(d) == 0)
        return 0;
    PyObject *v = PyDict_GetItemWithError(d, key);
    if (v == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return PyDict_DelItem(d, key);
}

static int keep_recent(PyObject *recent, PyObject *name, PyObject *wo, long w, PyObject *x,
                       PyObject *n, PyObject *zero) {
    PyObject *entry = PyTuple_Pack(4, wo, x, n, zero);
    if (entry == NULL)
        return -1;
    int rc = -1;
    PyObject *prev = PyDict_GetItemWithError(recent, name);
    if (prev == NULL && PyErr_Occurred())
        goto done;
    if (prev == NULL || !PyList_Check(prev) || PyList_GET_SIZE(prev) == 0) {
        if (prev != NULL && !PyList_Check(prev)) {
            PyErr_SetString(PyExc_TypeError, "recent windows: expected a list");
            goto done;
        }
        PyObject *l = PyList_New(1);
        if (l == NULL)
            goto done;
        Py_INCREF(entry);
        PyList_SET_ITEM(l, 0, entry);
        rc = PyDict_SetItem(recent, name, l);
        Py_DECREF(l);
        goto done;
    }
    Py_ssize_t len = PyList_GET_SIZE(prev);
    PyObject *lw = PySequence_GetItem(PyList_GET_ITEM(prev, len - 1), 0);
    if (lw == NULL)
        goto done;
    long last = PyLong_AsLong(lw);
    Py_DECREF(lw);
    if (last == -1 && PyErr_Occurred())
        goto done;
    if (last == w - 1) {
        if (len > 1 && PyList_SetSlice(prev, 0, 1, NULL) < 0)
            goto done;
        rc = PyList_Append(prev, entry);
    } else {
        PyObject *one = PyList_New(1);
        if (one == NULL)
            goto done;
        Py_INCREF(entry);
        PyList_SET_ITEM(one, 0, entry);
        rc = PyList_SetSlice(prev, 0, len, one);
        Py_DECREF(one);
    }
done:
    Py_DECREF(entry);
    return rc;
}

static PyObject *learn_plain(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 12)
        return PyErr_Format(PyExc_TypeError, "learn_plain takes 12 arguments");
    PyObject *rates = args[0], *decisions = args[1], *counts = args[2], *recent = args[3],
             *persist = args[4], *episodes = args[5], *baselines = args[6], *wo = args[7],
             *new = args[11];
    if (!PyTuple_Check(rates) || !PyList_Check(decisions) || !PyList_Check(counts)
        || !PyDict_Check(recent) || !PyDict_Check(persist) || !PyDict_Check(episodes)
        || !PyDict_Check(baselines))
        return PyErr_Format(PyExc_TypeError, "learn_plain: unexpected argument types");
    long w = PyLong_AsLong(wo);
    long long warmup = PyLong_AsLongLong(args[8]);
    double freeze = PyFloat_AsDouble(args[9]);
    long resolve_after = PyLong_AsLong(args[10]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *zero = PyFloat_FromDouble(0.0);
    if (zero == NULL)
        return NULL;
    Py_ssize_t di = 0, nd = PyList_GET_SIZE(decisions), nc = PyList_GET_SIZE(counts);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(rates); i++) {
        PyObject *sig = PyTuple_GET_ITEM(rates, i);
        if (!PyTuple_Check(sig) || PyTuple_GET_SIZE(sig) < 7) {
            PyErr_SetString(PyExc_TypeError, "learn_plain: a signal is not a Signal");
            goto fail;
        }
        PyObject *name = PyTuple_GET_ITEM(sig, 0);
        /* Decisions come in signal order (rates are a subsequence of the signals): one on
         * this signal is Python's to learn. */
        int decided = 0;
        for (Py_ssize_t j = di; j < nd; j++) {
            PyObject *d = PyList_GET_ITEM(decisions, j);
            if (!PyTuple_Check(d) || PyTuple_GET_SIZE(d) < 1) {
                PyErr_SetString(PyExc_TypeError, "learn_plain: a decision is not a Decision");
                goto fail;
            }
            PyObject *ds = PyTuple_GET_ITEM(d, 0);
            int same = ds == name ? 0 : PyUnicode_Compare(ds, name);
            if (same == -1 && PyErr_Occurred())
                goto fail;
            if (same == 0) {
                di = j + 1;
                decided = 1;
                break;
            }
        }
        if (decided)
            continue;
        Py_ssize_t num = PyLong_AsSsize_t(PyTuple_GET_ITEM(sig, 2));
        Py_ssize_t den = PyLong_AsSsize_t(PyTuple_GET_ITEM(sig, 3));
        if (PyErr_Occurred())
            goto fail;
        if (num < 0 || num >= nc || den < 0 || den >= nc) {
            PyErr_SetString(PyExc_IndexError, "learn_plain: a counter outside the counts");
            goto fail;
        }
        PyObject *x = PyList_GET_ITEM(counts, num), *n = PyList_GET_ITEM(counts, den);
        double xd = PyFloat_AsDouble(x), nd_ = PyFloat_AsDouble(n);
        if (PyErr_Occurred())
            goto fail;
        if (nd_ <= 0) {
            if (dict_discard(recent, name) < 0 || dict_discard(persist, name) < 0
                || episode_over(episodes, name, w, resolve_after) < 0)
                goto fail;
            continue;
        }
        if (keep_recent(recent, name, wo, w, x, n, zero) < 0
            || dict_discard(persist, name) < 0
            || episode_over(episodes, name, w, resolve_after) < 0)
            goto fail;
        PyObject *b = PyDict_GetItemWithError(baselines, name);   /* borrowed */
        if (b == NULL) {
            if (PyErr_Occurred())
                goto fail;
            PyObject *fresh = PyObject_CallOneArg(new, sig);
            if (fresh == NULL)
                goto fail;
            int rc = PyDict_SetItem(baselines, name, fresh);
            Py_DECREF(fresh);
            if (rc < 0)
                goto fail;
            b = fresh;   /* the dict holds it */
        }
        int check = PyObject_IsTrue(PyTuple_GET_ITEM(sig, 6));
        if (check < 0)
            goto fail;
        if (Py_IS_TYPE(b, &RateType)) {
            Rate *r = (Rate *)b;
            int drifting = check && r->n >= warmup && fabs(drift_score(r, xd, nd_)) >= freeze;
            learn_one(r, xd, nd_, !drifting, 0);
        } else {   /* the reference (state loaded without the twin): its own method */
            PyObject *res = PyObject_CallMethod(b, "learn_window", "OOOOO", x, n,
                                                check ? Py_True : Py_False, args[8], args[9]);
            if (res == NULL)
                goto fail;
            Py_DECREF(res);
        }
    }
    Py_DECREF(zero);
    Py_RETURN_NONE;
fail:
    Py_DECREF(zero);
    return NULL;
}

/* Whether counter v is <= 0 (cmp Py_LE) or == 0 (Py_EQ), as Python compares it with 0; -1 with
 * an exception. */
static int cmp_zero(PyObject *v, int cmp) {
    if (PyLong_CheckExact(v)) {
        int s = _PyLong_Sign(v);
        return cmp == Py_LE ? s <= 0 : s == 0;
    }
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL)
        return -1;
    int r = PyObject_RichCompareBool(v, zero, cmp);
    Py_DECREF(zero);
    return r;
}

/* with_data(table, counts, seq): the scorer's signals with something to score in this window,
 * as scoring.with_data_py picks them (its reference; tests/test_rate_twin.py). */
static PyObject *with_data(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyTuple_Check(args[0]) || !PyList_Check(args[1])
            || !PyDict_Check(args[2]))
        return PyErr_Format(PyExc_TypeError, "with_data(table: tuple, counts: list, seq: dict)");
    PyObject *table = args[0], *c = args[1], *seq = args[2];
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(table); i++) {
        PyObject *e = PyTuple_GET_ITEM(table, i);
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 5) {
            PyErr_SetString(PyExc_TypeError, "a with_data entry is (spec, name, n at, k at, up only)");
            goto fail;
        }
        Py_ssize_t an = PyLong_AsSsize_t(PyTuple_GET_ITEM(e, 2));
        Py_ssize_t ak = PyLong_AsSsize_t(PyTuple_GET_ITEM(e, 3));
        int up_only = PyObject_IsTrue(PyTuple_GET_ITEM(e, 4));
        if (PyErr_Occurred() || up_only < 0)
            goto fail;
        if (an >= 0) {
            if (an >= PyList_GET_SIZE(c) || ak < 0 || ak >= PyList_GET_SIZE(c)) {
                PyErr_SetString(PyExc_IndexError, "a with_data entry is past the counts");
                goto fail;
            }
            int skip = cmp_zero(PyList_GET_ITEM(c, an), Py_LE);
            if (skip < 0)
                goto fail;
            if (!skip && up_only) {   /* nothing happened: unless evidence is left to drain */
                if ((skip = cmp_zero(PyList_GET_ITEM(c, ak), Py_EQ)) < 0)
                    goto fail;
                if (skip) {
                    PyObject *cus = PyDict_GetItemWithError(seq, PyTuple_GET_ITEM(e, 1));
                    if (cus == NULL && PyErr_Occurred())
                        goto fail;
                    if (cus != NULL) {
                        PyObject *r = PyObject_CallMethod(cus, "idle", NULL);
                        if (r == NULL)
                            goto fail;
                        skip = PyObject_IsTrue(r);
                        Py_DECREF(r);
                        if (skip < 0)
                            goto fail;
                    }
                }
            }
            if (skip)
                continue;
        }
        if (PyList_Append(out, PyTuple_GET_ITEM(e, 0)) < 0)
            goto fail;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"designs", (PyCFunction)(void (*)(void))designs, METH_FASTCALL,
     "designs(log_up, rho_up_m1, rise_min, zeros): the count CUSUM's upward designs."},
    {"with_data", (PyCFunction)(void (*)(void))with_data, METH_FASTCALL,
     "The scorer's signals with something to score (see scoring.with_data_py)."},
    {"learn_plain", (PyCFunction)(void (*)(void))learn_plain, METH_FASTCALL,
     "The scorer's rate windows without a decision, learned (see scoring.learn_plain_py)."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "baselines._rate",
    "The rate baseline's state as plain doubles (the C twin of baselines.rate).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__rate(void) {
    if (PyType_Ready(&RateType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RateType);
    if (PyModule_AddObject(m, "Rate", (PyObject *)&RateType) < 0) {
        Py_DECREF(&RateType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
