/* Slot access shared by the C twins (_tally.c, _spans.c, baselines/_quantity.c): where a
 * msgspec Struct (or a __slots__ class) keeps a field, found once through the type's member
 * descriptor, so a hot loop reads and writes the field without an attribute lookup. */
#ifndef DETECTOR_SLOTS_H
#define DETECTOR_SLOTS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* The offset of field ``name``'s slot in instances of ``type``; -1 with an exception if it has
 * no object slot of that name. */
static Py_ssize_t
slot_offset(PyTypeObject *type, PyObject *name)
{
    PyObject *d = PyDict_GetItemWithError(type->tp_dict, name);
    if (d == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_AttributeError, "%s has no field %R", type->tp_name, name);
        return -1;
    }
    if (!Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%s.%U is not a slot", type->tp_name, name);
        return -1;
    }
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (m->type != T_OBJECT_EX && m->type != T_OBJECT) {
        PyErr_Format(PyExc_TypeError, "%s.%U does not hold an object", type->tp_name, name);
        return -1;
    }
    return m->offset;
}

/* slot_offset with the name as a C string. */
static Py_ssize_t
slot_offset_s(PyTypeObject *type, const char *name)
{
    PyObject *n = PyUnicode_FromString(name);
    if (n == NULL)
        return -1;
    Py_ssize_t off = slot_offset(type, n);
    Py_DECREF(n);
    return off;
}

#endif
