/* The compiled per-unit path of a block (optional: backbeat.data.compiled; the pure-Python
 * path of runtime/driver.py and runtime/outputs.py is the reference and the fallback).
 *
 * - Slots: a base of Input, InputGroup, SynchronizationListener and Output whose per-step
 *   attributes (BEAT's names) are C slots: read by user code through member descriptors (as fast
 *   as a dict attribute), stored here by pointer instead of a generic attribute store.
 * - drive(): runtime.driver._drive_single's loop over a source's chunks (same stores, same order).
 * - PlainWrite: runtime.outputs.Output._direct_write's `write_plain' closure (same checks; anything
 *   else goes to Output.write, as there); since wave 16 a one-field format's getattr and the rows'
 *   append done in it.
 * - fill(): data.batch._scatter's setting of one field on each of a window's value objects.
 * - unreachable(), make(): data.recycling's checks of a spare window in one pass, and new value
 *   objects made by their type's constructor (wave 15).
 * - pack(): a writer's ends and float64 rows as the bytes of their numpy columns (wave 15).
 * - dict_subscript(): dict's own C subscript as the mapping slot of a dict subclass that does not
 *   override __getitem__ (InputList, OutputList: `inputs["in"]' at every unit; wave 16).
 * - fields(): a view index's namedtuples made columns, pack() their ints or floats (wave 16: the
 *   indexing job's work before its probe starts).
 * - tuples(), Windowed, take(): a database provider's view entries made, indexed, and its get's
 *   scalar values taken (data.entries.Entries, data.snapshot.ViewScalars; wave 16).
 * Every rule is that of the Python code: this file only saves the interpreter's work per unit.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#ifndef UNITPATH_SOURCE  /* setup.py defines it: the sha256 of this file (data/compiled.py compares) */
#define UNITPATH_SOURCE ""
#endif

enum { S_DATA, S_DATA_INDEX, S_DATA_INDEX_END, S_NEXT, S_SAME, S_NB_READ, S_FIRST, S_LAST, S_START,
       S_LAST_WRITTEN, S_NB_WRITTEN, NSLOTS };

typedef struct { PyObject_HEAD PyObject *s[NSLOTS]; } Slots;

#define MEMBER(name, k) {name, T_OBJECT_EX, offsetof(Slots, s) + (k) * sizeof(PyObject *), 0, NULL}
static PyMemberDef slots_members[] = {
    MEMBER("data", S_DATA), MEMBER("data_index", S_DATA_INDEX), MEMBER("data_index_end", S_DATA_INDEX_END),
    MEMBER("next_data_index", S_NEXT), MEMBER("data_same_as_previous", S_SAME),
    MEMBER("nb_data_blocks_read", S_NB_READ), MEMBER("first_data_index", S_FIRST),
    MEMBER("last_data_index", S_LAST), MEMBER("data_index_start", S_START),
    MEMBER("last_written_data_index", S_LAST_WRITTEN), MEMBER("nb_data_blocks_written", S_NB_WRITTEN),
    {NULL}
};

static int slots_traverse(Slots *self, visitproc visit, void *arg) {
    for (int k = 0; k < NSLOTS; k++) Py_VISIT(self->s[k]);
    return 0;
}
static int slots_clear(Slots *self) {
    for (int k = 0; k < NSLOTS; k++) Py_CLEAR(self->s[k]);
    return 0;
}
static void slots_dealloc(Slots *self) {
    PyObject_GC_UnTrack(self);
    slots_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject SlotsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "backbeat.data._unitpath.Slots",
    .tp_doc = "Per-step attributes of BEAT's inputs, groups, listeners and outputs as C slots.",
    .tp_basicsize = sizeof(Slots),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)slots_traverse,
    .tp_clear = (inquiry)slots_clear,
    .tp_dealloc = (destructor)slots_dealloc,
    .tp_members = slots_members,
};

/* store v (a new reference taken) into slot k of o; the old value is released last (its
 * finaliser, if any, sees a consistent object) */
static inline void set_slot(PyObject *o, int k, PyObject *v) {
    PyObject *old = ((Slots *)o)->s[k];
    Py_INCREF(v);
    ((Slots *)o)->s[k] = v;
    Py_XDECREF(old);
}

/* zip(values, starts, ends, strict=True) at round k, the lists as they are now: 1 when every list
 * ended together (the chunk is done), -1 with zip's own ValueError when one ended first, 0 while all go on */
static int zip_end(PyObject *values, PyObject *starts, PyObject *ends, Py_ssize_t k) {
    int more1 = k < PySequence_Fast_GET_SIZE(values), more2 = k < PySequence_Fast_GET_SIZE(starts);
    int more3 = k < PySequence_Fast_GET_SIZE(ends);
    if (more1 && more2 && more3) return 0;
    if (!more1 && !more2 && !more3) return 1;
    if (!more1)
        PyErr_Format(PyExc_ValueError, more2 ? "zip() argument 2 is longer than argument 1"
                                             : "zip() argument 3 is longer than arguments 1-2");
    else
        PyErr_Format(PyExc_ValueError, !more2 ? "zip() argument 2 is shorter than argument 1"
                                              : "zip() argument 3 is shorter than arguments 1-2");
    return -1;
}

/* drive(x, group, listener, chunks, process, args, first, read, live, source, pacer) -> (steps, result) */
static PyObject *drive(PyObject *mod, PyObject *const *a, Py_ssize_t na) {
    if (na != 11) {
        PyErr_SetString(PyExc_TypeError, "drive() takes 11 arguments");
        return NULL;
    }
    PyObject *x = a[0], *group = a[1], *listener = a[2], *chunks = a[3], *process = a[4], *args = a[5];
    PyObject *source = a[9], *pacer = a[10];
    if (!PyObject_TypeCheck(x, &SlotsType) || !PyObject_TypeCheck(group, &SlotsType)
        || (listener != Py_None && !PyObject_TypeCheck(listener, &SlotsType)) || !PyTuple_Check(args)) {
        PyErr_SetString(PyExc_TypeError, "drive(): an input, group or listener without slots");
        return NULL;
    }
    Py_ssize_t first = PyLong_AsSsize_t(a[6]);
    if (first == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t read = PyLong_AsSsize_t(a[7]);
    if (read == -1 && PyErr_Occurred()) return NULL;
    int live = PyObject_IsTrue(a[8]);
    if (live < 0) return NULL;
    Py_ssize_t due = -1;
    if (pacer != Py_None) {
        PyObject *d = PyObject_GetAttrString(pacer, "due");
        if (!d) return NULL;
        due = PyLong_AsSsize_t(d);
        Py_DECREF(d);
        if (due == -1 && PyErr_Occurred()) return NULL;
    }
    Py_ssize_t i = first, nargs = PyTuple_GET_SIZE(args);
    PyObject *const *argv = &PyTuple_GET_ITEM(args, 0);
    PyObject *result = Py_NewRef(Py_True), *it = PyObject_GetIter(chunks), *chunk = NULL;
    PyObject *values = NULL, *starts = NULL, *ends = NULL;
    if (!it) goto fail;
    while ((chunk = PyIter_Next(it))) {
        PyObject *triple = PySequence_Fast(chunk, "a chunk must be (values, starts, ends)");
        Py_DECREF(chunk);
        if (!triple) goto fail;
        if (PySequence_Fast_GET_SIZE(triple) != 3) {
            Py_DECREF(triple);
            PyErr_SetString(PyExc_ValueError, "a chunk must be (values, starts, ends)");
            goto fail;
        }
        values = PySequence_Fast(PySequence_Fast_GET_ITEM(triple, 0), "values must be a sequence");
        starts = values ? PySequence_Fast(PySequence_Fast_GET_ITEM(triple, 1), "starts must be a sequence") : NULL;
        ends = starts ? PySequence_Fast(PySequence_Fast_GET_ITEM(triple, 2), "ends must be a sequence") : NULL;
        Py_DECREF(triple);
        if (!ends) goto fail;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(values);
        if (live) {  /* the input's count: one past the chunk while more follow */
            PyObject *more = PyObject_GetAttrString(source, "more");
            int m = more ? PyObject_IsTrue(more) : -1;
            Py_XDECREF(more);
            PyObject *count = m < 0 ? NULL : PyLong_FromSsize_t(i + n + m);
            if (!count) goto fail;
            int rc = PyObject_SetAttrString(x, "_n", count);
            Py_DECREF(count);
            if (rc < 0) goto fail;
        }
        for (Py_ssize_t k = 0;; k++) {
            /* the lists' lengths are read again each round (process, or a finaliser run by a store,
             * may change them): zip's own end and errors, never an item past the end */
            int end_of_chunk = zip_end(values, starts, ends, k);
            if (end_of_chunk < 0) goto fail;
            if (end_of_chunk) break;
            PyObject *value = Py_NewRef(PySequence_Fast_GET_ITEM(values, k));
            PyObject *start = Py_NewRef(PySequence_Fast_GET_ITEM(starts, k));
            PyObject *end = Py_NewRef(PySequence_Fast_GET_ITEM(ends, k));
            i++;
            PyObject *next = PyLong_FromSsize_t(i);
            PyObject *nread = next ? PyLong_FromSsize_t(read + i) : NULL;
            if (!nread) {
                Py_XDECREF(next);
                Py_DECREF(value);
                Py_DECREF(start);
                Py_DECREF(end);
                goto fail;
            }
            set_slot(x, S_DATA, value);
            set_slot(x, S_DATA_INDEX, start);
            set_slot(x, S_DATA_INDEX_END, end);
            set_slot(x, S_NEXT, next);
            set_slot(x, S_SAME, Py_False);
            set_slot(x, S_NB_READ, nread);
            Py_DECREF(next);
            Py_DECREF(nread);
            set_slot(group, S_DATA_INDEX, start);
            set_slot(group, S_FIRST, start);
            set_slot(group, S_DATA_INDEX_END, end);
            set_slot(group, S_LAST, end);
            if (listener != Py_None) {
                set_slot(listener, S_START, start);
                set_slot(listener, S_DATA_INDEX_END, end);
            }
            Py_DECREF(value);
            Py_DECREF(start);
            Py_DECREF(end);
            PyObject *r = PyObject_Vectorcall(process, argv, nargs, NULL);
            if (!r) goto fail;
            Py_SETREF(result, r);
            int truth = PyObject_IsTrue(r);
            if (truth < 0) goto fail;
            if (!truth) goto done;
            if (due > 0 && i - first >= due) {
                PyObject *t = PyObject_CallMethod(pacer, "tick", "n", i - first);
                if (!t) goto fail;
                Py_DECREF(t);
                PyObject *d = PyObject_GetAttrString(pacer, "due");
                if (!d) goto fail;
                due = PyLong_AsSsize_t(d);
                Py_DECREF(d);
                if (due == -1 && PyErr_Occurred()) goto fail;
            }
        }
        Py_CLEAR(values);
        Py_CLEAR(starts);
        Py_CLEAR(ends);
    }
    if (PyErr_Occurred()) goto fail;
done:
    Py_XDECREF(values);
    Py_XDECREF(starts);
    Py_XDECREF(ends);
    Py_DECREF(it);
    return Py_BuildValue("(nN)", i - first, result);
fail:
    Py_XDECREF(values);
    Py_XDECREF(starts);
    Py_XDECREF(ends);
    Py_XDECREF(it);
    Py_DECREF(result);
    return NULL;
}

/* fill(objects, key, values): object.__setattr__(obj, key, value) for each pair, as
 * data.batch._scatter's map over them (to the shorter list's end) */
static PyObject *fill(PyObject *mod, PyObject *const *a, Py_ssize_t na) {
    if (na != 3 || !PyList_CheckExact(a[0]) || !PyUnicode_CheckExact(a[1]) || !PyList_CheckExact(a[2])) {
        PyErr_SetString(PyExc_TypeError, "fill(objects: list, key: str, values: list)");
        return NULL;
    }
    PyObject *objs = a[0], *key = a[1], *values = a[2];
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(objs) && k < PyList_GET_SIZE(values); k++) {
        PyObject *obj = Py_NewRef(PyList_GET_ITEM(objs, k)), *value = Py_NewRef(PyList_GET_ITEM(values, k));
        int rc = -1;
        if (PyType_Check(obj))  /* (object.__setattr__ refuses a type's attributes: a type's cache) */
            PyErr_SetString(PyExc_TypeError, "fill(): can't apply this __setattr__ to type object");
        else
            rc = PyObject_GenericSetAttr(obj, key, value);  /* (object.__setattr__: the format's checked
                                                               __setattr__ bypassed, as in Python) */
        Py_DECREF(obj);
        Py_DECREF(value);
        if (rc < 0) return NULL;
    }
    Py_RETURN_NONE;
}


/* make(cls, n, keys, columns) -> list: n objects made as cls.__new__(cls) (the type's tp_new with no
 * arguments: what that call does), field keys[j] of object i set to columns[j][i] as
 * object.__setattr__ does (data.batch._scatter: the format's checked __setattr__ bypassed).  The
 * objects are held in a C array until all are made, then handed out in a new list: no Python code
 * ever sees a list with empty places.  Every column must hold n values (checked again after each
 * call that may run Python code: a type's __new__, a finaliser). */
static PyObject *EMPTY;

static PyObject *make(PyObject *mod, PyObject *const *a, Py_ssize_t na) {
    if (na != 4 || !PyType_Check(a[0]) || !PyTuple_CheckExact(a[2]) || !PyTuple_CheckExact(a[3])
        || PyTuple_GET_SIZE(a[2]) != PyTuple_GET_SIZE(a[3])) {
        PyErr_SetString(PyExc_TypeError, "make(cls: type, n: int, keys: tuple, columns: tuple)");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)a[0];
    PyObject *keys = a[2], *columns = a[3];
    Py_ssize_t n = PyLong_AsSsize_t(a[1]), nkeys = PyTuple_GET_SIZE(keys);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0 || !cls->tp_new) {
        PyErr_SetString(PyExc_TypeError, "make(): a count >= 0 and a type that makes instances");
        return NULL;
    }
    for (Py_ssize_t j = 0; j < nkeys; j++)
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(keys, j)) || !PyList_CheckExact(PyTuple_GET_ITEM(columns, j))) {
            PyErr_SetString(PyExc_TypeError, "make(): keys must be str and columns lists");
            return NULL;
        }
    PyObject **made = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    if (!made) return PyErr_NoMemory();
    Py_ssize_t k = 0;
    PyObject *out = NULL;
    Py_INCREF(cls);
    for (; k < n; k++) {
        PyObject *obj = cls->tp_new(cls, EMPTY, NULL);
        if (!obj) goto done;
        made[k] = obj;
        if (nkeys && (PyType_Check(obj) || !PyObject_TypeCheck(obj, cls))) {  /* (object.__setattr__'s refusal) */
            PyErr_SetString(PyExc_TypeError, "make(): the type's constructor made no instance of it");
            goto done;
        }
        for (Py_ssize_t j = 0; j < nkeys; j++) {
            PyObject *col = PyTuple_GET_ITEM(columns, j);  /* (the tuple holds it) */
            if (k >= PyList_GET_SIZE(col)) {
                PyErr_SetString(PyExc_ValueError, "make(): a column shorter than the count");
                goto done;
            }
            PyObject *value = Py_NewRef(PyList_GET_ITEM(col, k));
            int rc = PyObject_GenericSetAttr(obj, PyTuple_GET_ITEM(keys, j), value);
            Py_DECREF(value);
            if (rc < 0) goto done;
        }
    }
    out = PyList_New(n);
    if (out)
        for (Py_ssize_t i = 0; i < n; i++) {  /* (no allocation, no Python code from here) */
            PyList_SET_ITEM(out, i, made[i]);
            made[i] = NULL;
        }
done:
    for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(made[i]);
    PyMem_Free(made);
    Py_DECREF(cls);
    return out;
}


/* unreachable(pool, cls, fields) -> bool: data.recycling.unreachable's checks in one pass, for an
 * interpreter whose counts it calibrated (the caller checks that): every object of pool exactly a
 * cls that only the list refers to (its count 1), no weak reference to it, and its attribute
 * dictionary (made by reading it, as obj.__dict__ does) referred to by the object alone and
 * holding exactly the keys of the tuple `fields' (exact str), nothing else.  The collector is kept
 * off for the pass: making a dictionary may collect, and a finaliser run then could take a
 * reference to an object already checked; nothing else here runs Python code (the keys compared
 * as exact str, in C).  None when this cannot tell (weak references this build cannot see): the
 * caller then runs the Python checks. */
static int only_fields(PyObject *dict, PyObject *fields) {
    Py_ssize_t nf = PyTuple_GET_SIZE(fields), pos = 0;
    PyObject *key, *value;
    if (PyDict_GET_SIZE(dict) != nf) return 0;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) return 0;
        int found = 0;
        for (Py_ssize_t j = 0; j < nf && !found; j++)
            found = PyUnicode_Compare(key, PyTuple_GET_ITEM(fields, j)) == 0;  /* (exact str: no Python code) */
        if (!found) return 0;
    }
    return 1;
}

static PyObject *unreachable(PyObject *mod, PyObject *const *a, Py_ssize_t na) {
    if (na != 3 || !PyList_CheckExact(a[0]) || !PyType_Check(a[1]) || !PyTuple_CheckExact(a[2])) {
        PyErr_SetString(PyExc_TypeError, "unreachable(pool: list, cls: type, fields: tuple)");
        return NULL;
    }
    PyObject *pool = a[0], *fields = a[2];
    PyTypeObject *cls = (PyTypeObject *)a[1];
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(fields); j++)
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(fields, j))) Py_RETURN_NONE;
    Py_ssize_t weak = cls->tp_weaklistoffset;
    if (weak < 0) Py_RETURN_NONE;  /* (a managed weak-reference list: not read here) */
    if (!PyList_GET_SIZE(pool)) Py_RETURN_FALSE;
    int was = PyGC_Disable();
    PyObject *answer = Py_True;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(pool); k++) {  /* (the size read again: see below) */
        PyObject *obj = PyList_GET_ITEM(pool, k);
        if (Py_TYPE(obj) != cls || Py_REFCNT(obj) != 1
            || (weak > 0 && *(PyObject **)((char *)obj + weak) != NULL)) {
            answer = Py_False;
            break;
        }
        Py_INCREF(obj);  /* (held while its dictionary is made) */
        PyObject *dict = PyObject_GenericGetDict(obj, NULL);
        int alone = dict && PyDict_CheckExact(dict) && Py_REFCNT(dict) == 2 && only_fields(dict, fields);
        Py_XDECREF(dict);
        Py_DECREF(obj);
        if (!dict) {
            answer = NULL;
            break;
        }
        if (!alone) {
            answer = Py_False;
            break;
        }
    }
    if (was) PyGC_Enable();
    return answer ? Py_NewRef(answer) : NULL;
}


/* pack(items, code, exact) -> bytearray | None: a list's numbers as native int64 ('q': every item
 * exactly an int that fits) or float64 ('d': every item exactly a float or of type `exact', a float
 * subclass such as numpy.float64, read as the float it is), for numpy.frombuffer; None for anything
 * else (the caller then converts the list as before, with its errors). */
static PyObject *pack(PyObject *mod, PyObject *const *a, Py_ssize_t na) {
    if (na != 3 || !PyList_CheckExact(a[0]) || !PyUnicode_Check(a[1])
        || (a[2] != Py_None && !(PyType_Check(a[2]) && PyType_IsSubtype((PyTypeObject *)a[2], &PyFloat_Type)))) {
        PyErr_SetString(PyExc_TypeError, "pack(items: list, code: 'q' | 'd', exact: a float type | None)");
        return NULL;
    }
    PyObject *items = a[0];
    int doubles = PyUnicode_CompareWithASCIIString(a[1], "d") == 0;
    if (!doubles && PyUnicode_CompareWithASCIIString(a[1], "q") != 0) {
        PyErr_SetString(PyExc_ValueError, "pack(): code 'q' or 'd'");
        return NULL;
    }
    PyTypeObject *exact = a[2] == Py_None ? &PyFloat_Type : (PyTypeObject *)a[2];
    if (exact->tp_flags & Py_TPFLAGS_HEAPTYPE) Py_RETURN_NONE;  /* (a class of Python code may override
                                                                   __float__, which numpy would call) */
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *out = PyByteArray_FromStringAndSize(NULL, n * 8);
    if (!out) return NULL;
    if (PyList_GET_SIZE(items) != n) goto none;  /* (the allocation may have collected: changed) */
    char *buf = PyByteArray_AS_STRING(out);
    for (Py_ssize_t k = 0; k < n; k++) {  /* (no Python code runs in this loop) */
        PyObject *item = PyList_GET_ITEM(items, k);
        if (doubles) {
            if (!PyFloat_CheckExact(item) && Py_TYPE(item) != exact) goto none;
            double d = PyFloat_AS_DOUBLE(item);
            memcpy(buf + 8 * k, &d, 8);
        } else {
            if (!PyLong_CheckExact(item)) goto none;
            int overflow = 0;
            long long q = PyLong_AsLongLongAndOverflow(item, &overflow);
            if (overflow || (q == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                goto none;
            }
            memcpy(buf + 8 * k, &q, 8);
        }
    }
    return out;
none:
    Py_DECREF(out);
    Py_RETURN_NONE;
}

/* dict_subscript(cls) -> bool: a class of Python code deriving from dict whose `__getitem__' is
 * dict's own gets dict's C subscript as its mapping slot, and True; anything else is left as it is
 * (False).  CPython gives such a class a generic slot that looks `__getitem__' up on the type and
 * calls it (dict's `__getitem__' is a method that coexists with the slot, so the slot is not
 * inherited): the same function, dict_subscript, reached through a type lookup and a method call
 * (~50 ns a subscript; `inputs["in"]' is written at every unit).  dict_subscript itself calls a
 * subclass's `__missing__', as the method does.  Assigning `__getitem__' on the class or a subclass
 * later sets its slot again as CPython does. */
static PyObject *GETITEM;

static PyObject *dict_subscript(PyObject *mod, PyObject *cls_obj) {
    if (!PyType_Check(cls_obj)) {
        PyErr_SetString(PyExc_TypeError, "dict_subscript(cls: type)");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)cls_obj;
    if (!(cls->tp_flags & Py_TPFLAGS_HEAPTYPE) || !PyType_IsSubtype(cls, &PyDict_Type) || cls == &PyDict_Type
        || cls->tp_as_mapping != &((PyHeapTypeObject *)cls)->as_mapping)
        Py_RETURN_FALSE;
    PyObject *own = _PyType_Lookup(&PyDict_Type, GETITEM);  /* (borrowed; not tp_dict: NULL for a static
                                                                 builtin type since Python 3.12) */
    PyObject *found = _PyType_Lookup(cls, GETITEM);  /* (borrowed; the MRO's first) */
    if (!own || found != own) Py_RETURN_FALSE;
    cls->tp_as_mapping->mp_subscript = PyDict_Type.tp_as_mapping->mp_subscript;
    Py_RETURN_TRUE;
}

/* whether cls's mapping slot is dict's C subscript (for the tests) */
static PyObject *has_dict_subscript(PyObject *mod, PyObject *cls_obj) {
    if (!PyType_Check(cls_obj)) {
        PyErr_SetString(PyExc_TypeError, "has_dict_subscript(cls: type)");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)cls_obj;
    return PyBool_FromLong(cls->tp_as_mapping
                           && cls->tp_as_mapping->mp_subscript == PyDict_Type.tp_as_mapping->mp_subscript);
}

/* fields(entries, kind, m) -> list | None: for a list whose items are all exactly of class `kind' (a
 * tuple subclass: a view index's namedtuples), m >= 1: the m lists of their items 0 .. m-1 (every item
 * of exactly m items: what [list(map(itemgetter(j), entries)) for j in range(m)] gives); m == 0: []
 * (the type checked only).  None if an item is of another class (or size).  Each column is filled, in a
 * pass that allocates nothing (so runs no Python code), right after its list is allocated, and the
 * entries checked again in each pass: no list with empty places is ever seen by Python code. */
static PyObject *fields(PyObject *mod, PyObject *const *a, Py_ssize_t na) {
    if (na != 3 || !PyList_CheckExact(a[0]) || !PyType_Check(a[1]) || !PyLong_CheckExact(a[2])) {
        PyErr_SetString(PyExc_TypeError, "fields(entries: list, kind: type, m: int)");
        return NULL;
    }
    PyObject *entries = a[0];
    PyTypeObject *kind = (PyTypeObject *)a[1];
    Py_ssize_t m = PyLong_AsSsize_t(a[2]);
    if (m < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "fields(): m >= 0");
        return NULL;
    }
    if (!PyType_IsSubtype(kind, &PyTuple_Type)) Py_RETURN_NONE;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(entries); k++) {
        PyObject *item = PyList_GET_ITEM(entries, k);
        if (Py_TYPE(item) != kind || (m && PyTuple_GET_SIZE(item) != m)) Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (Py_ssize_t j = 0; j < m; j++) {
        Py_ssize_t n = PyList_GET_SIZE(entries);
        PyObject *col = PyList_New(n);  /* (may collect: a finaliser may change the entries, checked below) */
        if (!col) goto fail;
        for (Py_ssize_t k = 0; k < n; k++) {  /* (no Python code runs in this loop) */
            PyObject *item = PyList_GET_SIZE(entries) == n ? PyList_GET_ITEM(entries, k) : NULL;
            if (!item || Py_TYPE(item) != kind || PyTuple_GET_SIZE(item) != m) {
                Py_DECREF(col);  /* (its empty places: list_dealloc skips them) */
                Py_DECREF(out);
                Py_RETURN_NONE;
            }
            PyList_SET_ITEM(col, k, Py_NewRef(PyTuple_GET_ITEM(item, j)));
        }
        int rc = PyList_Append(out, col);
        Py_DECREF(col);
        if (rc < 0) goto fail;
    }
    for (Py_ssize_t j = 0; j < m; j++)  /* (the entries as the last column saw them: every column of n) */
        if (PyList_GET_SIZE(PyList_GET_ITEM(out, j)) != PyList_GET_SIZE(entries)) {
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* PlainWrite(listener, vtype, output, general, append_row, get, ends, threshold, flush, limit[, name, rows]):
 * Output.write's common case for a format of scalars and strings.  With `name' (a str) and `rows' (a
 * list) — given when `get' is attrgetter(name) and `append_row' is rows.append (runtime.outputs checks) —
 * the unit's value is read by getattr(value, name) and appended to rows here: what those two calls do,
 * without calling them (wave 16). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *listener, *vtype, *output, *general, *append_row, *get, *ends, *flush, *name, *rows;
    Py_ssize_t threshold;
    long long limit;
} PlainWrite;

static PyObject *ONE;

static PyObject *plain_general(PlainWrite *self, PyObject *const *a, size_t nargsf, PyObject *kwnames) {
    /* every case but the common one: the Python function of write_plain's own signature that calls
     * Output.write (runtime.outputs), so its checks, errors and a wrong call's TypeError are the same */
    return PyObject_Vectorcall(self->general, a, nargsf, kwnames);
}

static PyObject *plain_call(PlainWrite *self, PyObject *const *a, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t na = PyVectorcall_NARGS(nargsf);
    if (kwnames || na < 1 || na > 2 || (na == 2 && a[1] != Py_None)
        || Py_TYPE(a[0]) != (PyTypeObject *)self->vtype)
        return plain_general(self, a, nargsf, kwnames);
    PyObject *end = ((Slots *)self->listener)->s[S_DATA_INDEX_END];
    PyObject *last = ((Slots *)self->output)->s[S_LAST_WRITTEN];
    if (!end || !last || !PyLong_CheckExact(end) || !PyLong_CheckExact(last))
        return plain_general(self, a, nargsf, kwnames);
    int overflow = 0;
    long long e = PyLong_AsLongLongAndOverflow(end, &overflow);
    long long l = overflow ? 0 : PyLong_AsLongLongAndOverflow(last, &overflow);
    if (overflow || (e == -1 && PyErr_Occurred()) || !(l < e && e <= self->limit)) {
        PyErr_Clear();
        return plain_general(self, a, nargsf, kwnames);
    }
    /* held from here: get and append_row may run other code (a collection, finalisers) that
     * replaces the listener's end; the Python closure holds it in a local the same way */
    Py_INCREF(end);
    PyObject *row, *added;
    if (self->name) {  /* (attrgetter(name) and list.append, done here) */
        row = PyObject_GetAttr(a[0], self->name);
        added = row && PyList_Append(self->rows, row) == 0 ? Py_NewRef(Py_None) : NULL;
    } else {
        row = PyObject_CallOneArg(self->get, a[0]);
        added = row ? PyObject_CallOneArg(self->append_row, row) : NULL;
    }
    Py_XDECREF(row);
    if (!added || PyList_Append(self->ends, end) < 0) {
        Py_XDECREF(added);
        Py_DECREF(end);
        return NULL;
    }
    Py_DECREF(added);
    set_slot(self->output, S_LAST_WRITTEN, end);  /* (as the closure: the index, then the count) */
    Py_DECREF(end);
    PyObject *count = ((Slots *)self->output)->s[S_NB_WRITTEN];
    if (!count) {
        PyErr_SetString(PyExc_AttributeError, "'Output' object has no attribute 'nb_data_blocks_written'");
        return NULL;
    }
    PyObject *count1 = PyNumber_Add(count, ONE);
    if (!count1) return NULL;
    set_slot(self->output, S_NB_WRITTEN, count1);
    Py_DECREF(count1);
    if (PyList_GET_SIZE(self->ends) >= self->threshold) {
        PyObject *t = PyObject_CallNoArgs(self->flush);
        if (!t) return NULL;
        Py_ssize_t threshold = PyLong_AsSsize_t(t);
        Py_DECREF(t);
        if (threshold == -1 && PyErr_Occurred()) return NULL;
        self->threshold = threshold;
    }
    Py_RETURN_NONE;
}

static PyObject *plain_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *o[8], *limit_obj, *name = Py_None, *rows = Py_None;
    Py_ssize_t threshold;
    if (kw && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "PlainWrite() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOOOOO!nOO|OO:PlainWrite", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5],
                          &PyList_Type, &o[6], &threshold, &o[7], &limit_obj, &name, &rows))
        return NULL;
    if ((name == Py_None) != (rows == Py_None)
        || (name != Py_None && (!PyUnicode_CheckExact(name) || !PyList_CheckExact(rows)))) {
        PyErr_SetString(PyExc_TypeError, "PlainWrite(): name (a str) and rows (a list) together, or neither");
        return NULL;
    }
    int overflow = 0;  /* (a limit past 2**63 - 1 is no limit for a long long end) */
    long long limit = PyLong_AsLongLongAndOverflow(limit_obj, &overflow);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    if (overflow) limit = overflow > 0 ? LLONG_MAX : LLONG_MIN;
    if (!PyObject_TypeCheck(o[0], &SlotsType) || !PyObject_TypeCheck(o[2], &SlotsType) || !PyType_Check(o[1])) {
        PyErr_SetString(PyExc_TypeError, "PlainWrite(): a listener and an output with slots, a type");
        return NULL;
    }
    PlainWrite *self = (PlainWrite *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->listener = Py_NewRef(o[0]);
    self->vtype = Py_NewRef(o[1]);
    self->output = Py_NewRef(o[2]);
    self->general = Py_NewRef(o[3]);
    self->append_row = Py_NewRef(o[4]);
    self->get = Py_NewRef(o[5]);
    self->ends = Py_NewRef(o[6]);
    self->flush = Py_NewRef(o[7]);
    self->name = name == Py_None ? NULL : Py_NewRef(name);
    self->rows = rows == Py_None ? NULL : Py_NewRef(rows);
    self->threshold = threshold;
    self->limit = limit;
    self->vectorcall = (vectorcallfunc)plain_call;
    return (PyObject *)self;
}

static int plain_traverse(PlainWrite *s, visitproc visit, void *arg) {
    Py_VISIT(s->listener); Py_VISIT(s->vtype); Py_VISIT(s->output); Py_VISIT(s->general);
    Py_VISIT(s->append_row); Py_VISIT(s->get); Py_VISIT(s->ends); Py_VISIT(s->flush); Py_VISIT(s->name);
    Py_VISIT(s->rows);
    return 0;
}
static int plain_clear(PlainWrite *s) {
    Py_CLEAR(s->listener); Py_CLEAR(s->vtype); Py_CLEAR(s->output); Py_CLEAR(s->general);
    Py_CLEAR(s->append_row); Py_CLEAR(s->get); Py_CLEAR(s->ends); Py_CLEAR(s->flush); Py_CLEAR(s->name);
    Py_CLEAR(s->rows);
    return 0;
}
static void plain_dealloc(PlainWrite *s) {
    PyObject_GC_UnTrack(s);
    plain_clear(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyMemberDef plain_members[] = {
    {"field", T_OBJECT, offsetof(PlainWrite, name), READONLY,
     "the one field read and appended here (None: the buffer's get and append are called)"},
    {NULL}
};

static PyTypeObject PlainWriteType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "backbeat.data._unitpath.PlainWrite",
    .tp_doc = "Output.write of one unit of a scalar-and-string format into a cache writer's rows.",
    .tp_basicsize = sizeof(PlainWrite),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(PlainWrite, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = plain_new,
    .tp_members = plain_members,
    .tp_traverse = (traverseproc)plain_traverse,
    .tp_clear = (inquiry)plain_clear,
    .tp_dealloc = (destructor)plain_dealloc,
};

/* A database provider's per-unit work (wave 16): the view's entries and its get's values.
 *
 * tuples(cls, columns) -> list | None: entries made as data.indextable.IndexTable.entries makes
 * them, tuple.__new__(cls, row) for each row of zip(*columns) (the type's allocator, the row's
 * items stored: what tuple.__new__ does for a subclass); None unless cls is a tuple subclass
 * allocated by the generic allocator and the columns are lists of one length (the caller then
 * runs its Python code). */
static PyObject *tuples(PyObject *mod, PyObject *const *a, Py_ssize_t na) {
    if (na != 2 || !PyType_Check(a[0]) || !PyTuple_CheckExact(a[1])) {
        PyErr_SetString(PyExc_TypeError, "tuples(cls: type, columns: tuple)");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)a[0];
    PyObject *columns = a[1];
    Py_ssize_t width = PyTuple_GET_SIZE(columns);
    if (!width || cls == &PyTuple_Type || !PyType_IsSubtype(cls, &PyTuple_Type)
        || cls->tp_alloc != PyType_GenericAlloc || !PyType_IS_GC(cls))
        Py_RETURN_NONE;
#if PY_VERSION_HEX >= 0x030E0000
    Py_RETURN_NONE;  /* (3.14's tuples cache their hash in a field tuple.__new__ sets to -1 after filling
                        them: a layout not checked here, so the Python code makes them) */
#endif
    Py_ssize_t n = -1;
    for (Py_ssize_t j = 0; j < width; j++) {
        PyObject *col = PyTuple_GET_ITEM(columns, j);
        if (!PyList_CheckExact(col) || (n >= 0 && PyList_GET_SIZE(col) != n)) Py_RETURN_NONE;
        n = PyList_GET_SIZE(col);
    }
    PyObject **made = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    if (!made) return PyErr_NoMemory();
    PyObject *out = NULL;
    Py_INCREF(cls);
    Py_INCREF(columns);
    Py_ssize_t k = 0;
    for (; k < n; k++) {
        PyObject *row = cls->tp_alloc(cls, width);  /* (tracked by the collector, as tuple.__new__'s: it may
                                                       collect, and a finaliser run Python code) */
        if (!row) goto done;
        made[k] = row;
        for (Py_ssize_t j = 0; j < width; j++) {
            PyObject *col = PyTuple_GET_ITEM(columns, j);
            if (k >= PyList_GET_SIZE(col)) {  /* (changed by such code: the caller's Python code then runs) */
                for (Py_ssize_t i = 0; i <= k; i++) Py_CLEAR(made[i]);
                Py_INCREF(Py_None);
                out = Py_None;
                goto done;
            }
            PyTuple_SET_ITEM(row, j, Py_NewRef(PyList_GET_ITEM(col, k)));
        }
    }
    out = PyList_New(n);  /* (the entries handed out at once: no Python code sees a list with empty places) */
    if (out)
        for (Py_ssize_t i = 0; i < n; i++) {
            PyList_SET_ITEM(out, i, made[i]);
            made[i] = NULL;
        }
done:
    for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(made[i]);
    PyMem_Free(made);
    Py_DECREF(columns);
    Py_DECREF(cls);
    return out;
}


/* Windowed: the base of data.entries.Entries when built, whose `_window', `_at', `_wn' are
 * its members; indexing by an exact int within the window is answered here (what Entries._item
 * does first), anything else by Entries._item, the Python code. */
typedef struct { PyObject_HEAD PyObject *window; Py_ssize_t at, wn; } Windowed;

static PyMemberDef windowed_members[] = {
    {"_window", T_OBJECT_EX, offsetof(Windowed, window), 0, NULL},
    {"_at", T_PYSSIZET, offsetof(Windowed, at), 0, NULL},
    {"_wn", T_PYSSIZET, offsetof(Windowed, wn), 0, NULL},
    {NULL}
};

static PyObject *ITEM;

static PyObject *windowed_subscript(Windowed *self, PyObject *key) {
    if (PyLong_CheckExact(key) && self->window && PyList_CheckExact(self->window)) {
        Py_ssize_t i = PyLong_AsSsize_t(key);
        if (i == -1 && PyErr_Occurred())
            PyErr_Clear();  /* (beyond any window: the Python code says so) */
        else if (self->at >= 0 && i >= self->at) {
            Py_ssize_t k = i - self->at;
            if (k < self->wn && k < PyList_GET_SIZE(self->window))
                return Py_NewRef(PyList_GET_ITEM(self->window, k));
        }
    }
    return PyObject_CallMethodOneArg((PyObject *)self, ITEM, key);
}

static int windowed_traverse(Windowed *self, visitproc visit, void *arg) {
    Py_VISIT(self->window);
    return 0;
}
static int windowed_clear(Windowed *self) {
    Py_CLEAR(self->window);
    return 0;
}
static void windowed_dealloc(Windowed *self) {
    PyObject_GC_UnTrack(self);
    windowed_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMappingMethods windowed_mapping = {.mp_subscript = (binaryfunc)windowed_subscript};

static PyTypeObject WindowedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "backbeat.data._unitpath.Windowed",
    .tp_doc = "The window of a view's entries (data.entries.Entries) as C members, indexed in C.",
    .tp_basicsize = sizeof(Windowed),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)windowed_traverse,
    .tp_clear = (inquiry)windowed_clear,
    .tp_dealloc = (destructor)windowed_dealloc,
    .tp_members = windowed_members,
    .tp_as_mapping = &windowed_mapping,
};


/* take(get, output, entries, keys, immutable, rows, odd, frozen, mark): data.snapshot.ViewScalars.take's
 * loop, the same calls in the same order: get(output, s) for each s of the list `entries'; a value
 * that is exactly a dict of len(keys) items is picked (value[key] for each key, as itemgetter: a
 * missing key, KeyError, makes it odd; any other error is raised) and, if the type of each picked
 * item is in the frozenset `immutable', appended to `rows' (the item for one key, the tuple for
 * several); any other value is `frozen(value)' put in the dict `odd' at its row and `mark' appended. */
static PyObject *take(PyObject *mod, PyObject *const *a, Py_ssize_t na) {
    if (na != 9 || !PyList_CheckExact(a[2]) || !PyTuple_CheckExact(a[3]) || !PyFrozenSet_CheckExact(a[4])
        || !PyList_CheckExact(a[5]) || !PyDict_CheckExact(a[6]) || PyTuple_GET_SIZE(a[3]) < 1) {
        PyErr_SetString(PyExc_TypeError, "take(get, output, entries: list, keys: tuple, immutable: frozenset, "
                                         "rows: list, odd: dict, frozen, mark)");
        return NULL;
    }
    PyObject *get = a[0], *output = a[1], *entries = a[2], *keys = a[3], *immutable = a[4];
    PyObject *rows = a[5], *odd = a[6], *frozen = a[7], *mark = a[8];
    Py_ssize_t width = PyTuple_GET_SIZE(keys);
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(entries); k++) {  /* (the size read again: get may change it) */
        PyObject *args[2] = {output, PyList_GET_ITEM(entries, k)};
        Py_INCREF(args[1]);
        PyObject *value = PyObject_Vectorcall(get, args, 2, NULL);
        Py_DECREF(args[1]);
        if (!value) return NULL;
        PyObject *row = NULL;
        if (PyDict_CheckExact(value) && PyDict_GET_SIZE(value) == width) {
            PyObject *picked = width == 1 ? NULL : PyTuple_New(width);
            int ok = width == 1 || picked != NULL;
            for (Py_ssize_t j = 0; ok && j < width; j++) {
                PyObject *item = PyDict_GetItemWithError(value, PyTuple_GET_ITEM(keys, j));  /* (borrowed) */
                if (!item) {
                    ok = 0;
                    if (PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_KeyError))
                        PyErr_Clear();  /* (a KeyError from a key's __eq__: missing, as itemgetter's) */
                    if (PyErr_Occurred()) {
                        Py_XDECREF(picked);
                        Py_DECREF(value);
                        return NULL;
                    }
                    break;
                }
                if (width == 1) picked = Py_NewRef(item);
                else PyTuple_SET_ITEM(picked, j, Py_NewRef(item));
            }
            if (!ok && picked == NULL && width != 1) {  /* (PyTuple_New failed) */
                Py_DECREF(value);
                return NULL;
            }
            if (ok) {
                int all = 1;
                for (Py_ssize_t j = 0; all && j < width; j++) {
                    PyObject *item = width == 1 ? picked : PyTuple_GET_ITEM(picked, j);
                    all = PySet_Contains(immutable, (PyObject *)Py_TYPE(item));
                }
                if (all < 0) {
                    Py_DECREF(picked);
                    Py_DECREF(value);
                    return NULL;
                }
                if (all) row = picked;
                else Py_DECREF(picked);
            } else
                Py_XDECREF(picked);
        }
        if (row) {
            Py_DECREF(value);
            int rc = PyList_Append(rows, row);
            Py_DECREF(row);
            if (rc < 0) return NULL;
            continue;
        }
        PyObject *snap = PyObject_CallOneArg(frozen, value);
        Py_DECREF(value);
        if (!snap) return NULL;
        PyObject *at = PyLong_FromSsize_t(PyList_GET_SIZE(rows));
        int rc = at ? PyDict_SetItem(odd, at, snap) : -1;
        Py_XDECREF(at);
        Py_DECREF(snap);
        if (rc < 0 || PyList_Append(rows, mark) < 0) return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"drive", (PyCFunction)(void (*)(void))drive, METH_FASTCALL,
     "drive(x, group, listener, chunks, process, args, first, read, live, source, pacer) -> (steps, result)"},
    {"make", (PyCFunction)(void (*)(void))make, METH_FASTCALL,
     "make(cls, n, keys, columns) -> list of n objects of cls, key j of object i set to columns[j][i]"},
    {"unreachable", (PyCFunction)(void (*)(void))unreachable, METH_FASTCALL,
     "unreachable(pool, cls, fields) -> whether only the list refers to each object (None: cannot tell)"},
    {"pack", (PyCFunction)(void (*)(void))pack, METH_FASTCALL,
     "pack(items, code, exact) -> the items as native int64 ('q') or float64 ('d') bytes, or None"},
    {"dict_subscript", dict_subscript, METH_O,
     "dict_subscript(cls) -> whether cls (a dict subclass not overriding __getitem__) now has dict's C subscript"},
    {"has_dict_subscript", has_dict_subscript, METH_O, "has_dict_subscript(cls) -> whether cls's subscript is dict's"},
    {"fields", (PyCFunction)(void (*)(void))fields, METH_FASTCALL,
     "fields(entries, kind, m) -> the m lists of items 0..m-1 of entries all exactly of class kind, or None"},
    {"fill", (PyCFunction)(void (*)(void))fill, METH_FASTCALL,
     "fill(objects, key, values): object.__setattr__(obj, key, value) for each pair"},
    {"tuples", (PyCFunction)(void (*)(void))tuples, METH_FASTCALL,
     "tuples(cls, columns) -> [tuple.__new__(cls, row) for row in zip(*columns)], or None"},
    {"take", (PyCFunction)(void (*)(void))take, METH_FASTCALL,
     "take(get, output, entries, keys, immutable, rows, odd, frozen, mark): ViewScalars.take's loop"},
    {NULL}
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "backbeat.data._unitpath",
                                    "The compiled per-unit path (see backbeat.data.compiled).", -1, methods};

PyMODINIT_FUNC PyInit__unitpath(void) {
    ONE = PyLong_FromLong(1);
    EMPTY = PyTuple_New(0);
    GETITEM = PyUnicode_InternFromString("__getitem__");
    ITEM = PyUnicode_InternFromString("_item");
    if (!ONE || !EMPTY || !GETITEM || !ITEM || PyType_Ready(&SlotsType) < 0 || PyType_Ready(&PlainWriteType) < 0
        || PyType_Ready(&WindowedType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    if (PyModule_AddStringConstant(m, "SOURCE", UNITPATH_SOURCE) < 0
        || PyModule_AddObjectRef(m, "Slots", (PyObject *)&SlotsType) < 0
        || PyModule_AddObjectRef(m, "PlainWrite", (PyObject *)&PlainWriteType) < 0
        || PyModule_AddObjectRef(m, "Windowed", (PyObject *)&WindowedType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
