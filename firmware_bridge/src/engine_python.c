/*
 * libedge_smw_python.so: embeds CPython and drives edge_smw.bridge.FrameScorer.
 *
 * - Python is started once per process (or the host's running interpreter is used), with no
 *   signal handlers of its own, and the GIL is released right after, so any firmware thread
 *   can call in: each call takes the GIL with PyGILState_Ensure and gives it back.
 * - The frame is wrapped with PyMemoryView_FromMemory (no copy) and the results array the
 *   caller owns is wrapped writable, so Python writes esmw_face structs in place. Both views
 *   are released before returning, so Python can never touch the memory afterwards.
 * - Every Python exception becomes a status code plus text; nothing here aborts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "edge_smw.h"
#include "engine.h"

#ifndef EDGE_SMW_DEFAULT_PYTHON
#define EDGE_SMW_DEFAULT_PYTHON ""
#endif

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static int init_state;            /* 0 not tried, 1 ready, -1 failed for good */
static char init_error[1024];
static char init_python[4096];    /* the executable Python was started with ("" = default) */
static PyObject *bridge_module;   /* edge_smw.bridge, imported once */

static void set_err(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

static const char *choose(const char *option, const char *env_name, const char *fallback) {
    if (option && *option) return option;
    const char *env = getenv(env_name);
    if (env && *env) return env;
    return fallback;
}

/* Make libpython's symbols global even when the host dlopen'ed us with RTLD_LOCAL, so that
 * extension modules (numpy, cv2, onnxruntime) resolve them. */
static void promote_libpython(void) {
    Dl_info info;
    if (dladdr((void *)&Py_IsInitialized, &info) && info.dli_fname)
        dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
}

/* Start the interpreter. Called with init_lock held; returns ESMW_OK or a status. */
static int32_t start_python(const char *python, char *err, size_t errlen) {
    promote_libpython();
    if (Py_IsInitialized()) {
        /* The host already runs Python (firmware in Python calling us through ctypes). */
        snprintf(init_python, sizeof init_python, "(host interpreter)");
        return ESMW_OK;
    }
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0; /* SIGINT & co. belong to the firmware */
    config.parse_argv = 0;
    PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, "edge-smw-bridge");
    if (!PyStatus_Exception(status) && python && *python) {
        if (access(python, X_OK) != 0) {
            PyConfig_Clear(&config);
            set_err(err, errlen, "Python executable %s (options.python / EDGE_SMW_PYTHON) does "
                    "not exist or is not executable", python);
            return ESMW_ERR_NO_PYTHON;
        }
        /* A venv's bin/python: getpath finds its pyvenv.cfg and adds its site-packages. */
        status = PyConfig_SetBytesString(&config, &config.executable, python);
    }
    if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        set_err(err, errlen, "cannot start Python %s: %s%s%s (check PYTHONHOME / the Python "
                "install the bridge was built for)", python && *python ? python : "",
                status.func ? status.func : "", status.func ? ": " : "",
                status.err_msg ? status.err_msg : "unknown error");
        return ESMW_ERR_NO_PYTHON;
    }
    snprintf(init_python, sizeof init_python, "%s", python ? python : "");
    PyEval_SaveThread(); /* release the GIL: every call takes it with PyGILState_Ensure */
    return ESMW_OK;
}

/* Prepend ':'-separated folders to sys.path. GIL held. */
static int add_python_path(const char *paths) {
    if (!paths || !*paths) return 0;
    PyObject *sys_path = PySys_GetObject("path"); /* borrowed */
    if (!sys_path || !PyList_Check(sys_path)) return -1;
    char *copy = strdup(paths);
    if (!copy) return -1;
    int index = 0;
    for (char *save = NULL, *part = strtok_r(copy, ":", &save); part;
         part = strtok_r(NULL, ":", &save)) {
        PyObject *item = PyUnicode_DecodeFSDefault(part);
        if (!item || PyList_Insert(sys_path, index++, item) < 0) {
            Py_XDECREF(item);
            free(copy);
            return -1;
        }
        Py_DECREF(item);
    }
    free(copy);
    return 0;
}

/* The current exception -> status code + text (via edge_smw.bridge.error_category when
 * the module is there). Clears the exception. GIL held. */
static int32_t exception_status(const char *what, char *err, size_t errlen) {
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    int32_t code = ESMW_ERR_INTERNAL;
    char category[32] = "internal";
    const char *text = NULL;
    PyObject *described = NULL, *str = NULL;
    if (bridge_module && value) {
        described = PyObject_CallMethod(bridge_module, "error_category", "O", value);
        const char *cat = NULL;
        if (described && PyArg_ParseTuple(described, "ss", &cat, &text)) {
            snprintf(category, sizeof category, "%s", cat);
        } else {
            PyErr_Clear();
            text = NULL;
        }
    }
    if (!text && value) {
        str = PyObject_Str(value);
        text = str ? PyUnicode_AsUTF8(str) : NULL;
        if (!text) PyErr_Clear();
        if (type && PyErr_GivenExceptionMatches(type, PyExc_ImportError))
            snprintf(category, sizeof category, "package");
    }
    if (!strcmp(category, "model")) code = ESMW_ERR_MODEL;
    else if (!strcmp(category, "backend")) code = ESMW_ERR_BACKEND;
    else if (!strcmp(category, "argument")) code = ESMW_ERR_ARGUMENT;
    else if (!strcmp(category, "package")) code = ESMW_ERR_PACKAGE;
    else if (!strcmp(category, "abi")) code = ESMW_ERR_ABI;
    set_err(err, errlen, "%s: %s", what, text ? text : "unknown Python error");
    Py_XDECREF(described);
    Py_XDECREF(str);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return code;
}

/* Import edge_smw.bridge once. GIL held. */
static int32_t import_bridge(const char *python_path, char *err, size_t errlen) {
    if (bridge_module) return ESMW_OK;
    if (add_python_path(python_path) < 0) return exception_status("EDGE_SMW_PYTHONPATH", err, errlen);
    bridge_module = PyImport_ImportModule("edge_smw.bridge");
    if (bridge_module) return ESMW_OK;
    char what[sizeof init_python + 512];
    const char *exe = init_python[0] ? init_python : "(default)";
    snprintf(what, sizeof what, "cannot import edge_smw.bridge with Python %s %s (install "
             "edge-smw into that Python, or point options.python / EDGE_SMW_PYTHON at the "
             "venv's bin/python, or EDGE_SMW_PYTHONPATH at its site-packages)",
             PY_VERSION, exe);
    /* Whatever broke the import (edge_smw absent, or a dependency of it such as numpy or cv2
     * missing or broken in that Python) means the package is not usable there; the text
     * carries Python's own message. */
    exception_status(what, err, errlen);
    return ESMW_ERR_PACKAGE;
}

static int32_t engine_open(const esmw_options *options, esmw_handle *handle, char *err,
                           size_t errlen) {
    const char *python = choose(options->python, "EDGE_SMW_PYTHON", EDGE_SMW_DEFAULT_PYTHON);
    if (python && *python && access(python, X_OK) != 0 && !options->python &&
        !getenv("EDGE_SMW_PYTHON"))
        python = ""; /* the build machine's Python is not on this device: use the default */
    pthread_mutex_lock(&init_lock);
    if (init_state == 0) {
        int32_t rc = start_python(python, init_error, sizeof init_error);
        init_state = rc == ESMW_OK ? 1 : -1;
        if (rc != ESMW_OK) {
            pthread_mutex_unlock(&init_lock);
            set_err(err, errlen, "%s", init_error);
            return rc;
        }
    } else if (init_state < 0) {
        pthread_mutex_unlock(&init_lock);
        set_err(err, errlen, "%s (Python cannot be restarted in this process)", init_error);
        return ESMW_ERR_NO_PYTHON;
    }
    pthread_mutex_unlock(&init_lock);

    PyGILState_STATE gil = PyGILState_Ensure();
    int32_t rc = import_bridge(choose(options->python_path, "EDGE_SMW_PYTHONPATH", ""), err,
                               errlen);
    PyObject *session = NULL;
    if (rc == ESMW_OK) {
        PyObject *cls = PyObject_GetAttrString(bridge_module, "FrameScorer");
        PyObject *args = Py_BuildValue("(s)", options->model_path);
        PyObject *kwargs = Py_BuildValue(
            "{s:s,s:i,s:O,s:i,s:i,s:(nnnni)}", "backend",
            options->backend && *options->backend ? options->backend : "auto", "threads",
            options->threads, "detect_faces", options->detect_faces ? Py_True : Py_False,
            "max_faces", options->max_faces, "device", options->device, "face_layout",
            (Py_ssize_t)sizeof(esmw_face), (Py_ssize_t)offsetof(esmw_face, level),
            (Py_ssize_t)offsetof(esmw_face, expected_score),
            (Py_ssize_t)offsetof(esmw_face, probabilities), (int)EDGE_SMW_MAX_LEVELS);
        if (cls && args && kwargs) session = PyObject_Call(cls, args, kwargs);
        Py_XDECREF(cls);
        Py_XDECREF(args);
        Py_XDECREF(kwargs);
        if (!session) {
            char what[1200];
            snprintf(what, sizeof what, "esmw_open(%s)", options->model_path);
            rc = exception_status(what, err, errlen);
        }
    }
    if (session) {
        PyObject *levels = PyObject_GetAttrString(session, "levels");
        PyObject *backend = PyObject_GetAttrString(session, "backend");
        PyObject *seq = levels ? PySequence_Fast(levels, "levels") : NULL;
        Py_ssize_t n = seq ? PySequence_Fast_GET_SIZE(seq) : -1;
        const char *backend_text = backend ? PyUnicode_AsUTF8(backend) : NULL;
        if (n > 0 && backend_text) {
            handle->level_names = calloc((size_t)n, sizeof(char *));
            handle->backend = strdup(backend_text);
            handle->num_levels = (int32_t)n;
            for (Py_ssize_t i = 0; handle->level_names && i < n; i++) {
                const char *name = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
                handle->level_names[i] = strdup(name ? name : "");
            }
        }
        if (!handle->level_names || !handle->backend) {
            if (PyErr_Occurred()) rc = exception_status("esmw_open: reading levels", err, errlen);
            else {
                rc = ESMW_ERR_INTERNAL;
                set_err(err, errlen, "esmw_open: could not read the model's levels");
            }
        }
        Py_XDECREF(seq);
        Py_XDECREF(levels);
        Py_XDECREF(backend);
    }
    if (rc == ESMW_OK) {
        handle->session = session;
    } else if (session) {
        PyObject *r = PyObject_CallMethod(session, "close", NULL);
        Py_XDECREF(r);
        PyErr_Clear();
        Py_DECREF(session);
    }
    PyGILState_Release(gil);
    if (rc != ESMW_OK) {
        if (handle->level_names)
            for (int32_t i = 0; i < handle->num_levels; i++) free(handle->level_names[i]);
        free(handle->level_names);
        free(handle->backend);
        memset(handle, 0, sizeof *handle);
    }
    return rc;
}

/* Wrap memory for Python without copying; NULL pointer -> None. GIL held. */
static PyObject *wrap(const void *ptr, size_t len, int flags) {
    if (!ptr) Py_RETURN_NONE;
    return PyMemoryView_FromMemory((char *)ptr, (Py_ssize_t)len, flags);
}

/* memoryview.release(): after this no Python object can reach the caller's memory. */
static void release_view(PyObject *view) {
    if (view && PyMemoryView_Check(view)) {
        PyObject *r = PyObject_CallMethod(view, "release", NULL);
        if (!r) PyErr_Clear();
        Py_XDECREF(r);
    }
    Py_XDECREF(view);
}

static int32_t engine_score(esmw_handle *handle, const esmw_frame *frame, esmw_face *results,
                            int32_t capacity, int32_t *count, char *err, size_t errlen) {
    PyGILState_STATE gil = PyGILState_Ensure();
    int32_t rc = ESMW_OK;
    PyObject *plane0 = wrap(frame->planes[0], frame->extents[0], PyBUF_READ);
    PyObject *plane1 = frame->num_planes > 1 ? wrap(frame->planes[1], frame->extents[1],
                                                     PyBUF_READ) : (Py_INCREF(Py_None), Py_None);
    PyObject *out = capacity > 0 ? wrap(results, (size_t)capacity * sizeof(esmw_face),
                                        PyBUF_WRITE) : (Py_INCREF(Py_None), Py_None);
    PyObject *found = NULL;
    if (plane0 && plane1 && out)
        found = PyObject_CallMethod((PyObject *)handle->session, "score_into", "OsiiOiOi", out,
                                    frame->format, frame->width, frame->height, plane0,
                                    frame->strides[0], plane1,
                                    frame->num_planes > 1 ? frame->strides[1] : 0);
    if (found) {
        long n = PyLong_AsLong(found);
        if (n < 0 && PyErr_Occurred()) rc = exception_status("esmw_score", err, errlen);
        else *count = (int32_t)n;
    } else {
        rc = exception_status("esmw_score", err, errlen);
    }
    Py_XDECREF(found);
    release_view(plane0);
    release_view(plane1);
    release_view(out);
    PyGILState_Release(gil);
    return rc;
}

static void engine_close(esmw_handle *handle) {
    if (handle->session) {
        PyGILState_STATE gil = PyGILState_Ensure();
        PyObject *r = PyObject_CallMethod((PyObject *)handle->session, "close", NULL);
        if (!r) PyErr_Clear();
        Py_XDECREF(r);
        Py_DECREF((PyObject *)handle->session);
        PyGILState_Release(gil);
        handle->session = NULL;
    }
    if (handle->level_names)
        for (int32_t i = 0; i < handle->num_levels; i++) free(handle->level_names[i]);
    free(handle->level_names);
    free(handle->backend);
    handle->level_names = NULL;
    handle->backend = NULL;
    handle->num_levels = 0;
}

static const esmw_engine python_engine = {
    ESMW_ENGINE_VERSION, engine_open, engine_score, engine_close,
};

__attribute__((visibility("default"))) const esmw_engine *esmw_engine_entry(void) {
    return &python_engine;
}
