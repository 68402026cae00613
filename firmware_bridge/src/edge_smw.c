/*
 * libedge_smw.so: the public C ABI. Checks every argument (so firmware bugs come back as
 * ESMW_ERR_ARGUMENT before anything reaches Python), keeps the per-thread error text, and
 * loads the Python engine on the first esmw_open(). It has no libpython dependency itself.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "edge_smw.h"
#include "engine.h"

#define ERR_LEN 2048
#define MAX_SIDE 32768
#define MAX_STRIDE (1 << 20)

static __thread char tls_error[ERR_LEN];

static pthread_mutex_t engine_lock = PTHREAD_MUTEX_INITIALIZER;
static const esmw_engine *engine;

static int32_t fail(int32_t code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int32_t fail(int32_t code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_error, sizeof tls_error, fmt, ap);
    va_end(ap);
    return code;
}

static void clear_error(void) { tls_error[0] = '\0'; }

EDGE_SMW_API int32_t esmw_abi_version(void) { return EDGE_SMW_ABI_VERSION; }

EDGE_SMW_API const char *esmw_last_error(void) { return tls_error; }

EDGE_SMW_API const char *esmw_status_name(int32_t status) {
    switch (status) {
    case ESMW_OK: return "ESMW_OK";
    case ESMW_ERR_ARGUMENT: return "ESMW_ERR_ARGUMENT";
    case ESMW_ERR_NO_PYTHON: return "ESMW_ERR_NO_PYTHON";
    case ESMW_ERR_PACKAGE: return "ESMW_ERR_PACKAGE";
    case ESMW_ERR_MODEL: return "ESMW_ERR_MODEL";
    case ESMW_ERR_BACKEND: return "ESMW_ERR_BACKEND";
    case ESMW_ERR_ABI: return "ESMW_ERR_ABI";
    case ESMW_ERR_INTERNAL: return "ESMW_ERR_INTERNAL";
    default: return "ESMW_UNKNOWN_STATUS";
    }
}

EDGE_SMW_API void esmw_options_init(esmw_options *options) {
    if (!options) return;
    memset(options, 0, sizeof *options);
    options->struct_size = (uint32_t)sizeof *options;
    options->detect_faces = 1;
}

/* -- engine loading ------------------------------------------------------------------------ */

/* The engine sits next to this library unless $EDGE_SMW_ENGINE names it. */
static int32_t engine_path(char *out, size_t len) {
    const char *env = getenv("EDGE_SMW_ENGINE");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return ESMW_OK;
    }
    Dl_info info;
    if (!dladdr((void *)&esmw_open, &info) || !info.dli_fname)
        return fail(ESMW_ERR_NO_PYTHON, "cannot locate libedge_smw.so itself to find %s; set "
                    "EDGE_SMW_ENGINE to its path", ESMW_ENGINE_FILE);
    const char *slash = strrchr(info.dli_fname, '/');
    if (!slash) {
        snprintf(out, len, "%s", ESMW_ENGINE_FILE);
    } else {
        int dir = (int)(slash - info.dli_fname);
        snprintf(out, len, "%.*s/%s", dir, info.dli_fname, ESMW_ENGINE_FILE);
    }
    return ESMW_OK;
}

static int32_t load_engine(void) {
    pthread_mutex_lock(&engine_lock);
    if (engine) {
        pthread_mutex_unlock(&engine_lock);
        return ESMW_OK;
    }
    char path[PATH_MAX];
    int32_t rc = engine_path(path, sizeof path);
    if (rc != ESMW_OK) {
        pthread_mutex_unlock(&engine_lock);
        return rc;
    }
    /* RTLD_GLOBAL: libpython's symbols must be visible to the extension modules Python loads
     * later (numpy, cv2, onnxruntime are built without linking libpython). */
    void *lib = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    if (!lib) {
        const char *why = dlerror();
        pthread_mutex_unlock(&engine_lock);
        return fail(ESMW_ERR_NO_PYTHON, "cannot load the Python engine %s: %s. Install the "
                    "Python (libpython) the bridge was built with, or rebuild it with `make -C "
                    "firmware_bridge PYTHON=/path/to/python` for this device's Python",
                    path, why ? why : "unknown reason");
    }
    esmw_engine_entry_fn entry = (esmw_engine_entry_fn)dlsym(lib, ESMW_ENGINE_SYMBOL);
    const esmw_engine *found = entry ? entry() : NULL;
    if (!found || found->version != ESMW_ENGINE_VERSION) {
        pthread_mutex_unlock(&engine_lock);
        return fail(ESMW_ERR_ABI, "%s is not an edge-smw engine of version %d; rebuild "
                    "firmware_bridge so both libraries come from one build", path,
                    ESMW_ENGINE_VERSION);
    }
    engine = found; /* the library stays loaded for the life of the process */
    pthread_mutex_unlock(&engine_lock);
    return ESMW_OK;
}

/* -- open / close -------------------------------------------------------------------------- */

/* The cores this process may run on (its affinity mask), at least 1. */
static int usable_cores(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)online : 1;
}

EDGE_SMW_API int32_t esmw_open(const esmw_options *options, esmw_handle **out) {
    clear_error();
    if (!out) return fail(ESMW_ERR_ARGUMENT, "esmw_open: out (esmw_handle **) is NULL");
    *out = NULL;
    if (!options) return fail(ESMW_ERR_ARGUMENT, "esmw_open: options is NULL; fill one with "
                              "esmw_options_init()");
    if (options->struct_size != sizeof(esmw_options))
        return fail(ESMW_ERR_ABI, "esmw_open: options.struct_size is %u, this library expects "
                    "%zu (ABI %d); call esmw_options_init() and rebuild against this edge_smw.h",
                    options->struct_size, sizeof(esmw_options), EDGE_SMW_ABI_VERSION);
    if (!options->model_path || !*options->model_path)
        return fail(ESMW_ERR_ARGUMENT, "esmw_open: options.model_path is empty; set it to an "
                    "exported .onnx/.engine file or export folder");
    size_t path_len = strnlen(options->model_path, PATH_MAX);
    if (path_len >= PATH_MAX)
        return fail(ESMW_ERR_ARGUMENT, "esmw_open: options.model_path is longer than PATH_MAX "
                    "(%d bytes); use a shorter path", PATH_MAX);
    if (options->threads < 0 || options->max_faces < 0 || options->device < 0)
        return fail(ESMW_ERR_ARGUMENT, "esmw_open: threads (%d), max_faces (%d) and device (%d) "
                    "must be >= 0", options->threads, options->max_faces, options->device);
    int cores = usable_cores();
    if (options->threads > 0 && (int64_t)options->threads >
                                    (int64_t)EDGE_SMW_MAX_THREADS_PER_CORE * cores)
        return fail(ESMW_ERR_ARGUMENT, "esmw_open: threads=%d is more than this machine can "
                    "use: %d usable core(s), and at most %d threads per core (%d) are allowed; "
                    "use threads <= %d, or 0 for one per usable core", options->threads, cores,
                    EDGE_SMW_MAX_THREADS_PER_CORE, EDGE_SMW_MAX_THREADS_PER_CORE * cores,
                    EDGE_SMW_MAX_THREADS_PER_CORE * cores);
    if (options->detect_faces != 0 && options->detect_faces != 1)
        return fail(ESMW_ERR_ARGUMENT, "esmw_open: detect_faces must be 0 or 1, got %d",
                    options->detect_faces);
    int32_t rc = load_engine();
    if (rc != ESMW_OK) return rc;
    esmw_handle *handle = calloc(1, sizeof *handle);
    if (!handle) return fail(ESMW_ERR_INTERNAL, "esmw_open: out of memory");
    rc = engine->open(options, handle, tls_error, sizeof tls_error);
    if (rc != ESMW_OK) {
        free(handle);
        return rc;
    }
    *out = handle;
    return ESMW_OK;
}

EDGE_SMW_API void esmw_close(esmw_handle *handle) {
    if (!handle) return;
    if (engine) engine->close(handle);
    free(handle);
}

EDGE_SMW_API int32_t esmw_num_levels(const esmw_handle *handle) {
    return handle ? handle->num_levels : 0;
}

EDGE_SMW_API const char *esmw_level_name(const esmw_handle *handle, int32_t index) {
    if (!handle || index < 0 || index >= handle->num_levels) return NULL;
    return handle->level_names[index];
}

EDGE_SMW_API const char *esmw_backend(const esmw_handle *handle) {
    return handle && handle->backend ? handle->backend : "";
}

/* -- frames -------------------------------------------------------------------------------- */

static const char *format_name(int32_t format) {
    switch (format) {
    case ESMW_PIXEL_BGR24: return "bgr24";
    case ESMW_PIXEL_RGB24: return "rgb24";
    case ESMW_PIXEL_GRAY8: return "gray8";
    case ESMW_PIXEL_YUYV: return "yuyv";
    case ESMW_PIXEL_NV12: return "nv12";
    default: return NULL;
    }
}

static int32_t bytes_per_pixel(int32_t format) {
    switch (format) {
    case ESMW_PIXEL_BGR24:
    case ESMW_PIXEL_RGB24: return 3;
    case ESMW_PIXEL_YUYV: return 2;
    default: return 1; /* GRAY8; NV12's Y and UV rows are both `width` bytes */
    }
}

/* Check a frame's geometry; on success *stride is the effective row pitch. */
static int32_t check_geometry(const char *fn, int32_t width, int32_t height, int32_t *stride,
                              int32_t format) {
    const char *name = format_name(format);
    if (!name)
        return fail(ESMW_ERR_ARGUMENT, "%s: unknown pixel format %d; use one of "
                    "ESMW_PIXEL_BGR24 (1), RGB24 (2), GRAY8 (3), YUYV (4), NV12 (5)", fn, format);
    if (width <= 0 || height <= 0 || width > MAX_SIDE || height > MAX_SIDE)
        return fail(ESMW_ERR_ARGUMENT, "%s: frame size %dx%d is out of range (1..%d)", fn,
                    width, height, MAX_SIDE);
    if ((format == ESMW_PIXEL_YUYV || format == ESMW_PIXEL_NV12) && width % 2)
        return fail(ESMW_ERR_ARGUMENT, "%s: %s needs an even width (2 pixels share chroma), "
                    "got %d", fn, name, width);
    if (format == ESMW_PIXEL_NV12 && height % 2)
        return fail(ESMW_ERR_ARGUMENT, "%s: nv12 needs an even height (2 rows share chroma), "
                    "got %d", fn, height);
    int32_t row = width * bytes_per_pixel(format);
    if (*stride == 0) *stride = row;
    if (*stride < row || *stride > MAX_STRIDE)
        return fail(ESMW_ERR_ARGUMENT, "%s: stride %d is wrong for a %d-pixel-wide %s row "
                    "(needs at least %d bytes, at most %d)", fn, *stride, width, name, row,
                    MAX_STRIDE);
    return ESMW_OK;
}

EDGE_SMW_API size_t esmw_frame_bytes(int32_t width, int32_t height, int32_t stride,
                                     int32_t pixel_format) {
    clear_error();
    if (check_geometry("esmw_frame_bytes", width, height, &stride, pixel_format) != ESMW_OK)
        return 0;
    size_t rows = (size_t)height;
    if (pixel_format == ESMW_PIXEL_NV12) rows += (size_t)height / 2;
    return rows * (size_t)stride;
}

static int32_t check_call(const char *fn, esmw_handle *handle, esmw_face *results,
                          int32_t capacity, int32_t *count) {
    if (!handle) return fail(ESMW_ERR_ARGUMENT, "%s: handle is NULL (esmw_open failed?)", fn);
    if (!count) return fail(ESMW_ERR_ARGUMENT, "%s: count (int32_t *) is NULL", fn);
    *count = 0;
    if (capacity < 0) return fail(ESMW_ERR_ARGUMENT, "%s: capacity is negative (%d)", fn, capacity);
    if (capacity > 0 && !results)
        return fail(ESMW_ERR_ARGUMENT, "%s: results is NULL but capacity is %d", fn, capacity);
    if (!engine || !handle->session)
        return fail(ESMW_ERR_ARGUMENT, "%s: handle is not open", fn);
    return ESMW_OK;
}

EDGE_SMW_API int32_t esmw_score(esmw_handle *handle, const uint8_t *data, int32_t width,
                                int32_t height, int32_t stride, int32_t pixel_format,
                                esmw_face *results, int32_t capacity, int32_t *count) {
    static const char fn[] = "esmw_score";
    clear_error();
    int32_t rc = check_call(fn, handle, results, capacity, count);
    if (rc != ESMW_OK) return rc;
    if (!data) return fail(ESMW_ERR_ARGUMENT, "%s: data (the frame buffer) is NULL", fn);
    rc = check_geometry(fn, width, height, &stride, pixel_format);
    if (rc != ESMW_OK) return rc;
    esmw_frame frame = {0};
    frame.width = width;
    frame.height = height;
    frame.format = format_name(pixel_format);
    size_t row = (size_t)width * (size_t)bytes_per_pixel(pixel_format);
    frame.planes[0] = data;
    frame.strides[0] = stride;
    frame.extents[0] = (size_t)stride * (size_t)(height - 1) + row;
    frame.num_planes = 1;
    if (pixel_format == ESMW_PIXEL_NV12) {
        frame.planes[1] = data + (size_t)stride * (size_t)height;
        frame.strides[1] = stride;
        frame.extents[1] = (size_t)stride * (size_t)(height / 2 - 1) + row;
        frame.num_planes = 2;
    }
    return engine->score(handle, &frame, results, capacity, count, tls_error, sizeof tls_error);
}

EDGE_SMW_API int32_t esmw_score_nv12(esmw_handle *handle, const uint8_t *y, int32_t y_stride,
                                     const uint8_t *uv, int32_t uv_stride, int32_t width,
                                     int32_t height, esmw_face *results, int32_t capacity,
                                     int32_t *count) {
    static const char fn[] = "esmw_score_nv12";
    clear_error();
    int32_t rc = check_call(fn, handle, results, capacity, count);
    if (rc != ESMW_OK) return rc;
    if (!y || !uv) return fail(ESMW_ERR_ARGUMENT, "%s: the %s plane pointer is NULL", fn,
                               y ? "UV" : "Y");
    rc = check_geometry(fn, width, height, &y_stride, ESMW_PIXEL_NV12);
    if (rc != ESMW_OK) return rc;
    rc = check_geometry(fn, width, height, &uv_stride, ESMW_PIXEL_NV12);
    if (rc != ESMW_OK) return rc;
    esmw_frame frame = {0};
    frame.width = width;
    frame.height = height;
    frame.format = "nv12";
    frame.planes[0] = y;
    frame.strides[0] = y_stride;
    frame.extents[0] = (size_t)y_stride * (size_t)(height - 1) + (size_t)width;
    frame.planes[1] = uv;
    frame.strides[1] = uv_stride;
    frame.extents[1] = (size_t)uv_stride * (size_t)(height / 2 - 1) + (size_t)width;
    frame.num_planes = 2;
    return engine->score(handle, &frame, results, capacity, count, tls_error, sizeof tls_error);
}
