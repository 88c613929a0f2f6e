/* The OTLP span encoder of comps/core/otlp.py: a finished span (an SDK ``ReadableSpan`` or the kit's
 * ``LeanSpan``, read by the same attribute names) as the protobuf bytes the OpenTelemetry SDK's encoder writes
 * (opentelemetry-proto's trace.proto and common.proto), straight into one buffer.
 *
 * Why C: encoding in Python, even with the encoded fields cached, was the largest part of what tracing added to
 * the gateway (~280 k instructions a request of ~610 k, 5 spans and ~60 attributes); this writes the same bytes in
 * ~15 k (benchmarks/bench_gateway.py --tracing --instructions). Checked field for field against the SDK's encoder (tests/unit/test_otlp_encoder.py, by hand
 * and by hypothesis).
 *
 * Values as the SDK's ``_encode_value`` takes them: None (an empty AnyValue), bool, str, int (int64; beyond it,
 * its decimal digits as a string, where the SDK fails), float, bytes, a sequence (array), a mapping (kvlist; keys
 * by str()), anything else an empty AnyValue. A str that UTF-8 cannot encode (one with a lone surrogate) has a '?' in
 * its place, where the SDK fails. Nesting beyond MAX_DEPTH is cut to empty values.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 32
#define FLAGS_HAS_IS_REMOTE 0x100u /* SpanFlags: the span says whether its parent is remote... */
#define FLAGS_IS_REMOTE 0x200u     /* ...and it is */

/* Attribute names, interned once. */
static PyObject *s_context, *s_parent, *s_name, *s_kind, *s_start_time, *s_end_time, *s_attributes,
    *s_dropped_attributes, *s_events, *s_dropped_events, *s_links, *s_dropped_links, *s_status, *s_timestamp,
    *s_description, *s_status_code, *s_value, *s_to_header;
static PyObject *Sequence, *Mapping, *sixty_four;

/* Enum members by identity (an enum's ``.value`` is a Python call): SpanKind and StatusCode. */
#define MAX_MEMBERS 8
typedef struct {
    PyObject *member[MAX_MEMBERS];
    long value[MAX_MEMBERS];
    int n;
} Members;
static Members kinds, codes;

/* -- the buffer ------------------------------------------------------------------------------------------ */

typedef struct {
    char *p;
    Py_ssize_t n, cap;
} Buf;

static int grow(Buf *b, Py_ssize_t extra) {
    if (b->n + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap * 2;
    if (cap < b->n + extra)
        cap = b->n + extra + 256;
    char *p = PyMem_Realloc(b->p, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int put(Buf *b, const void *s, Py_ssize_t len) {
    if (grow(b, len) < 0)
        return -1;
    memcpy(b->p + b->n, s, len);
    b->n += len;
    return 0;
}

static inline int byte(Buf *b, unsigned char c) {
    if (grow(b, 1) < 0)
        return -1;
    b->p[b->n++] = (char)c;
    return 0;
}

static int write_varint(unsigned char *out, uint64_t v) {
    int i = 0;
    while (v >= 0x80) {
        out[i++] = (unsigned char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    out[i++] = (unsigned char)v;
    return i;
}

static inline int varint(Buf *b, uint64_t v) {
    unsigned char tmp[10];
    return put(b, tmp, write_varint(tmp, v));
}

static inline int fixed(Buf *b, uint64_t v, int size) { /* little-endian fixed32 / fixed64 */
    unsigned char tmp[8];
    for (int i = 0; i < size; i++)
        tmp[i] = (unsigned char)(v >> (8 * i));
    return put(b, tmp, size);
}

/* A length-delimited field: the tag and one byte kept for the length; `close` writes the length once the body
 * is written (moving the body when its length takes more than one byte). Returns where the body starts. */
static Py_ssize_t open_field(Buf *b, unsigned char tag) {
    if (byte(b, tag) < 0 || byte(b, 0) < 0)
        return -1;
    return b->n;
}

static int close_field(Buf *b, Py_ssize_t start) {
    uint64_t len = (uint64_t)(b->n - start);
    if (len < 0x80) {
        b->p[start - 1] = (char)len;
        return 0;
    }
    unsigned char tmp[10];
    int k = write_varint(tmp, len);
    if (grow(b, k - 1) < 0)
        return -1;
    memmove(b->p + start + k - 1, b->p + start, (size_t)len);
    memcpy(b->p + start - 1, tmp, k);
    b->n += k - 1;
    return 0;
}

/* The buffer's bytes (none when rc < 0), the buffer freed. */
static PyObject *finish(Buf *b, int rc) {
    PyObject *out = rc < 0 ? NULL : PyBytes_FromStringAndSize(b->p, b->n);
    PyMem_Free(b->p);
    return out;
}

static int bytes_field(Buf *b, unsigned char tag, const char *s, Py_ssize_t len) {
    if (byte(b, tag) < 0 || varint(b, (uint64_t)len) < 0)
        return -1;
    return put(b, s, len);
}

/* A string field of ``s`` (str() of it when it is not a str). */
static int str_field(Buf *b, unsigned char tag, PyObject *s) {
    PyObject *own = NULL;
    if (!PyUnicode_Check(s)) {
        s = own = PyObject_Str(s);
        if (s == NULL)
            return -1;
    }
    Py_ssize_t len;
    const char *u = PyUnicode_AsUTF8AndSize(s, &len);
    int rc;
    if (u != NULL) {
        rc = bytes_field(b, tag, u, len);
    } else if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) { /* a lone surrogate */
        PyErr_Clear();
        PyObject *replaced = PyUnicode_AsEncodedString(s, "utf-8", "replace");
        rc = replaced == NULL ? -1 : bytes_field(b, tag, PyBytes_AS_STRING(replaced), PyBytes_GET_SIZE(replaced));
        Py_XDECREF(replaced);
    } else {
        rc = -1;
    }
    Py_XDECREF(own);
    return rc;
}

static long member_value(Members *m, PyObject *member) {
    for (int i = 0; i < m->n; i++)
        if (m->member[i] == member)
            return m->value[i];
    PyObject *v = PyObject_GetAttr(member, s_value); /* an int, or another enum's member */
    if (v == NULL)
        return -1;
    long value = PyLong_AsLong(v);
    Py_DECREF(v);
    return value;
}

/* An unsigned integer as a varint field, none when it is 0 (a count). */
static int count_field(Buf *b, unsigned char tag, PyObject *n) {
    if (n == NULL)
        return -1;
    uint64_t v = n == Py_None ? 0 : PyLong_AsUnsignedLongLongMask(n);
    Py_DECREF(n);
    if (v == (uint64_t)-1 && PyErr_Occurred())
        return -1;
    if (v == 0)
        return 0;
    if (byte(b, tag) < 0)
        return -1;
    return varint(b, v);
}

/* An id (a Python int) as ``size`` big-endian bytes. */
static int id_field(Buf *b, unsigned char tag, PyObject *id, int size) {
    unsigned char out[16];
    uint64_t low = PyLong_AsUnsignedLongLongMask(id);
    if (low == (uint64_t)-1 && PyErr_Occurred())
        return -1;
    uint64_t high = 0;
    if (size == 16) {
        PyObject *shifted = PyNumber_Rshift(id, sixty_four);
        if (shifted == NULL)
            return -1;
        high = PyLong_AsUnsignedLongLongMask(shifted);
        Py_DECREF(shifted);
        if (high == (uint64_t)-1 && PyErr_Occurred())
            return -1;
        for (int i = 0; i < 8; i++)
            out[i] = (unsigned char)(high >> (8 * (7 - i)));
    }
    for (int i = 0; i < 8; i++)
        out[size - 8 + i] = (unsigned char)(low >> (8 * (7 - i)));
    return bytes_field(b, tag, (const char *)out, size);
}

/* A SpanContext is a tuple: (trace id, span id, is remote, flags, state). */
static PyObject *context_item(PyObject *ctx, Py_ssize_t i) {
    if (!PyTuple_Check(ctx) || PyTuple_GET_SIZE(ctx) < 5) {
        PyErr_Format(PyExc_TypeError, "a SpanContext was expected, not %.100s", Py_TYPE(ctx)->tp_name);
        return NULL;
    }
    return PyTuple_GET_ITEM(ctx, i);
}

/* -- values and attributes --------------------------------------------------------------------------------- */

static int attributes(Buf *b, unsigned char tag, PyObject *mapping, int depth);

/* An AnyValue message's body. */
static int value(Buf *b, PyObject *v, int depth) {
    if (v == Py_None)
        return 0;
    if (PyUnicode_Check(v))
        return str_field(b, 0x0a, v);
    if (PyBool_Check(v))
        return byte(b, 0x10) < 0 ? -1 : byte(b, v == Py_True);
    if (PyLong_Check(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred())
            return -1;
        if (overflow)
            return str_field(b, 0x0a, v);
        return byte(b, 0x18) < 0 ? -1 : varint(b, (uint64_t)x);
    }
    if (PyFloat_Check(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        uint64_t u;
        memcpy(&u, &d, 8);
        return byte(b, 0x21) < 0 ? -1 : fixed(b, u, 8);
    }
    if (PyBytes_Check(v))
        return bytes_field(b, 0x3a, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
    if (depth >= MAX_DEPTH)
        return 0;
    int is_sequence = PyTuple_Check(v) || PyList_Check(v);
    if (!is_sequence && !PyDict_Check(v)) {
        is_sequence = PyObject_IsInstance(v, Sequence);
        if (is_sequence < 0)
            return -1;
    }
    if (is_sequence) {
        PyObject *items = PySequence_Fast(v, "a sequence");
        if (items == NULL)
            return -1;
        Py_ssize_t array = open_field(b, 0x2a);
        int rc = array < 0 ? -1 : 0;
        for (Py_ssize_t i = 0; rc == 0 && i < PySequence_Fast_GET_SIZE(items); i++) {
            Py_ssize_t item = open_field(b, 0x0a);
            rc = item < 0 || value(b, PySequence_Fast_GET_ITEM(items, i), depth + 1) < 0 ? -1 : close_field(b, item);
        }
        Py_DECREF(items);
        return rc < 0 ? -1 : close_field(b, array);
    }
    int is_mapping = PyDict_Check(v) || PyObject_IsInstance(v, Mapping);
    if (is_mapping <= 0)
        return is_mapping; /* -1: an error; 0: a value of no OTLP type, written as an empty one */
    Py_ssize_t kvlist = open_field(b, 0x32);
    if (kvlist < 0 || attributes(b, 0x0a, v, depth + 1) < 0)
        return -1;
    return close_field(b, kvlist);
}

static int key_value(Buf *b, unsigned char tag, PyObject *key, PyObject *v, int depth) {
    Py_ssize_t kv = open_field(b, tag);
    if (kv < 0 || str_field(b, 0x0a, key) < 0)
        return -1;
    Py_ssize_t any = open_field(b, 0x12);
    if (any < 0 || value(b, v, depth) < 0 || close_field(b, any) < 0)
        return -1;
    return close_field(b, kv);
}

/* Repeated KeyValue fields under ``tag``, of a dict or any mapping (None: none). */
static int attributes(Buf *b, unsigned char tag, PyObject *mapping, int depth) {
    if (mapping == Py_None)
        return 0;
    if (PyDict_Check(mapping)) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(mapping, &pos, &k, &v)) {
            Py_INCREF(k); /* held while encoding, in case str() of a key or a value changes the dict */
            Py_INCREF(v);
            int rc = key_value(b, tag, k, v, depth);
            Py_DECREF(k);
            Py_DECREF(v);
            if (rc < 0)
                return -1;
        }
        return 0;
    }
    PyObject *items = PyMapping_Items(mapping);
    if (items == NULL)
        return -1;
    int rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "a mapping's items must be pairs");
            rc = -1;
        } else {
            rc = key_value(b, tag, PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1), depth);
        }
    }
    Py_DECREF(items);
    return rc;
}

/* An attribute of ``obj``'s (a new reference), handed to ``f`` with the buffer and tag, then released. */
#define WITH_ATTR(obj, name, var, stmt)                                                                            \
    do {                                                                                                           \
        PyObject *var = PyObject_GetAttr(obj, name);                                                               \
        if (var == NULL)                                                                                           \
            goto error;                                                                                            \
        int rc_ = (stmt);                                                                                          \
        Py_DECREF(var);                                                                                            \
        if (rc_ < 0)                                                                                               \
            goto error;                                                                                            \
    } while (0)

static int time_field(Buf *b, unsigned char tag, PyObject *t) {
    uint64_t ns = t == Py_None ? 0 : PyLong_AsUnsignedLongLongMask(t);
    if (ns == (uint64_t)-1 && PyErr_Occurred())
        return -1;
    return byte(b, tag) < 0 ? -1 : fixed(b, ns, 8);
}

static int remote_flags(PyObject *ctx) {
    PyObject *remote = context_item(ctx, 2);
    if (remote == NULL)
        return -1;
    int is_remote = PyObject_IsTrue(remote);
    return is_remote < 0 ? -1 : (int)(FLAGS_HAS_IS_REMOTE | (is_remote ? FLAGS_IS_REMOTE : 0));
}

static int span_event(Buf *b, PyObject *e) {
    Py_ssize_t start = open_field(b, 0x5a);
    if (start < 0)
        return -1;
    WITH_ATTR(e, s_timestamp, t, time_field(b, 0x09, t));
    WITH_ATTR(e, s_name, name, str_field(b, 0x12, name));
    WITH_ATTR(e, s_attributes, attrs, attributes(b, 0x1a, attrs, 0));
    if (count_field(b, 0x20, PyObject_GetAttr(e, s_dropped_attributes)) < 0)
        return -1;
    return close_field(b, start);
error:
    return -1;
}

static int span_link(Buf *b, PyObject *l) {
    Py_ssize_t start = open_field(b, 0x6a);
    if (start < 0)
        return -1;
    PyObject *ctx = PyObject_GetAttr(l, s_context);
    if (ctx == NULL)
        return -1;
    int flags = remote_flags(ctx);
    int rc = flags < 0 || id_field(b, 0x0a, PyTuple_GET_ITEM(ctx, 0), 16) < 0 ||
                     id_field(b, 0x12, PyTuple_GET_ITEM(ctx, 1), 8) < 0
                 ? -1
                 : 0;
    Py_DECREF(ctx);
    if (rc < 0)
        return -1;
    WITH_ATTR(l, s_attributes, attrs, attributes(b, 0x22, attrs, 0));
    if (count_field(b, 0x28, PyObject_GetAttr(l, s_dropped_attributes)) < 0)
        return -1;
    if (byte(b, 0x35) < 0 || fixed(b, (uint64_t)flags, 4) < 0)
        return -1;
    return close_field(b, start);
error:
    return -1;
}

static int each(Buf *b, PyObject *seq, int (*f)(Buf *, PyObject *)) {
    PyObject *items = PySequence_Fast(seq, "events and links must be sequences");
    if (items == NULL)
        return -1;
    int rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PySequence_Fast_GET_SIZE(items); i++)
        rc = f(b, PySequence_Fast_GET_ITEM(items, i));
    Py_DECREF(items);
    return rc;
}

static int status(Buf *b, PyObject *st) {
    Py_ssize_t start = open_field(b, 0x7a);
    if (start < 0)
        return -1;
    WITH_ATTR(st, s_description, d, d == Py_None ? 0 : str_field(b, 0x12, d));
    PyObject *code = PyObject_GetAttr(st, s_status_code);
    if (code == NULL)
        return -1;
    long v = member_value(&codes, code);
    Py_DECREF(code);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v != 0 && (byte(b, 0x18) < 0 || varint(b, (uint64_t)v) < 0))
        return -1;
    return close_field(b, start);
error:
    return -1;
}

static int state_field(Buf *b, PyObject *state) {
    int has_state = PyObject_IsTrue(state);
    if (has_state <= 0)
        return has_state;
    PyObject *header = PyObject_CallMethodNoArgs(state, s_to_header);
    int rc = header == NULL ? -1 : str_field(b, 0x1a, header);
    Py_XDECREF(header);
    return rc;
}

/* ``obj`` encoded by ``encode``, kept while the next span has the same object: most spans share one trace state
 * (the API's empty one) and one status (a lean span's unset one), both immutable, whose fields are Python calls. */
typedef struct {
    PyObject *obj, *field; /* the object (held, so that its id is not another's) and its encoding (bytes) */
} Last;
static Last last_state, last_status;

static int cached(Buf *b, PyObject *obj, Last *last, int (*encode)(Buf *, PyObject *)) {
    PyObject *field = last->field;
    if (obj == last->obj) {
        Py_INCREF(field);
    } else {
        Buf t = {PyMem_Malloc(64), 0, 64};
        if (t.p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        field = finish(&t, encode(&t, obj));
        if (field == NULL)
            return -1;
        PyObject *old_obj = last->obj, *old_field = last->field;
        Py_INCREF(obj);
        Py_INCREF(field);
        last->obj = obj;
        last->field = field;
        Py_XDECREF(old_obj);
        Py_XDECREF(old_field);
    }
    int rc = put(b, PyBytes_AS_STRING(field), PyBytes_GET_SIZE(field));
    Py_DECREF(field);
    return rc;
}

/* A Span message's body. */
static int span_body(Buf *b, PyObject *span) {
    PyObject *ctx = PyObject_GetAttr(span, s_context), *parent = NULL;
    int rc = -1;
    if (ctx == NULL || context_item(ctx, 0) == NULL)
        goto done;
    if (id_field(b, 0x0a, PyTuple_GET_ITEM(ctx, 0), 16) < 0 || id_field(b, 0x12, PyTuple_GET_ITEM(ctx, 1), 8) < 0)
        goto done;
    PyObject *state = PyTuple_GET_ITEM(ctx, 4);
    if (state != Py_None && cached(b, state, &last_state, state_field) < 0)
        goto done;
    parent = PyObject_GetAttr(span, s_parent);
    if (parent == NULL)
        goto done;
    int flags = FLAGS_HAS_IS_REMOTE;
    if (parent != Py_None) {
        if ((flags = remote_flags(parent)) < 0 || id_field(b, 0x22, PyTuple_GET_ITEM(parent, 1), 8) < 0)
            goto done;
    }
    WITH_ATTR(span, s_name, name, str_field(b, 0x2a, name));
    PyObject *kind = PyObject_GetAttr(span, s_kind);
    if (kind == NULL)
        goto done;
    long k = member_value(&kinds, kind); /* the SDK's kinds start at 0, OTLP's at 1 */
    Py_DECREF(kind);
    if ((k == -1 && PyErr_Occurred()) || byte(b, 0x30) < 0 || varint(b, (uint64_t)(k + 1)) < 0)
        goto done;
    WITH_ATTR(span, s_start_time, t, time_field(b, 0x39, t));
    WITH_ATTR(span, s_end_time, t, time_field(b, 0x41, t));
    WITH_ATTR(span, s_attributes, attrs, attributes(b, 0x4a, attrs, 0));
    if (count_field(b, 0x50, PyObject_GetAttr(span, s_dropped_attributes)) < 0)
        goto done;
    WITH_ATTR(span, s_events, events, each(b, events, span_event));
    if (count_field(b, 0x60, PyObject_GetAttr(span, s_dropped_events)) < 0)
        goto done;
    WITH_ATTR(span, s_links, links, each(b, links, span_link));
    if (count_field(b, 0x70, PyObject_GetAttr(span, s_dropped_links)) < 0)
        goto done;
    WITH_ATTR(span, s_status, st, st == Py_None ? 0 : cached(b, st, &last_status, status));
    if (byte(b, 0x85) < 0 || byte(b, 0x01) < 0 || fixed(b, (uint64_t)flags, 4) < 0)
        goto done;
    rc = 0;
    goto done;
error:
    rc = -1;
done:
    Py_XDECREF(ctx);
    Py_XDECREF(parent);
    return rc;
}

/* -- the module -------------------------------------------------------------------------------------------- */

static PyObject *py_span(PyObject *self, PyObject *span) {
    Buf b = {PyMem_Malloc(1024), 0, 1024};
    if (b.p == NULL)
        return PyErr_NoMemory();
    Py_ssize_t start = open_field(&b, 0x12); /* ScopeSpans.spans */
    int rc = start < 0 || span_body(&b, span) < 0 ? -1 : close_field(&b, start);
    return finish(&b, rc);
}

static PyObject *py_attributes(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyLong_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "attributes(tag: int, attributes: Mapping | None)");
        return NULL;
    }
    long tag = PyLong_AsLong(args[0]);
    if (tag < 0 || tag > 0x7f) {
        PyErr_SetString(PyExc_ValueError, "a tag of one byte was expected");
        return NULL;
    }
    Buf b = {PyMem_Malloc(256), 0, 256};
    if (b.p == NULL)
        return PyErr_NoMemory();
    return finish(&b, attributes(&b, (unsigned char)tag, args[1], 0));
}

static PyMethodDef methods[] = {
    {"span", py_span, METH_O, "span(span) -> the ScopeSpans.spans field (tag, length, Span) of a finished span."},
    {"attributes", (PyCFunction)(void (*)(void))py_attributes, METH_FASTCALL,
     "attributes(tag, attributes) -> repeated KeyValue fields of tag (one byte) for a mapping (None: none)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "comps.core._otlp", NULL, -1, methods, NULL, NULL, NULL, NULL};

static int load_members(Members *m, PyObject *enum_class) {
    PyObject *it = PyObject_GetIter(enum_class);
    if (it == NULL)
        return -1;
    PyObject *member;
    while ((member = PyIter_Next(it)) != NULL && m->n < MAX_MEMBERS) {
        PyObject *v = PyObject_GetAttr(member, s_value);
        long value = v == NULL ? -1 : PyLong_AsLong(v);
        Py_XDECREF(v);
        if (value == -1 && PyErr_Occurred()) {
            Py_DECREF(member);
            member = NULL;
            break;
        }
        m->member[m->n] = member; /* kept: enum members live as long as their class */
        m->value[m->n++] = value;
    }
    Py_XDECREF(member);
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

#define INTERN(var, text)                                                                                          \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                                          \
        return NULL;

PyMODINIT_FUNC PyInit__otlp(void) {
    INTERN(s_context, "context");
    INTERN(s_parent, "parent");
    INTERN(s_name, "name");
    INTERN(s_kind, "kind");
    INTERN(s_start_time, "start_time");
    INTERN(s_end_time, "end_time");
    INTERN(s_attributes, "attributes");
    INTERN(s_dropped_attributes, "dropped_attributes");
    INTERN(s_events, "events");
    INTERN(s_dropped_events, "dropped_events");
    INTERN(s_links, "links");
    INTERN(s_dropped_links, "dropped_links");
    INTERN(s_status, "status");
    INTERN(s_timestamp, "timestamp");
    INTERN(s_description, "description");
    INTERN(s_status_code, "status_code");
    INTERN(s_value, "value");
    INTERN(s_to_header, "to_header");
    if ((sixty_four = PyLong_FromLong(64)) == NULL)
        return NULL;
    PyObject *abc = PyImport_ImportModule("collections.abc");
    PyObject *api = abc == NULL ? NULL : PyImport_ImportModule("opentelemetry.trace");
    int failed = api == NULL || (Sequence = PyObject_GetAttrString(abc, "Sequence")) == NULL ||
                 (Mapping = PyObject_GetAttrString(abc, "Mapping")) == NULL;
    if (!failed) {
        PyObject *span_kind = PyObject_GetAttrString(api, "SpanKind");
        PyObject *status_code = PyObject_GetAttrString(api, "StatusCode");
        failed = span_kind == NULL || status_code == NULL || load_members(&kinds, span_kind) < 0 ||
                 load_members(&codes, status_code) < 0;
        Py_XDECREF(span_kind);
        Py_XDECREF(status_code);
    }
    Py_XDECREF(abc);
    Py_XDECREF(api);
    return failed ? NULL : PyModule_Create(&module);
}
