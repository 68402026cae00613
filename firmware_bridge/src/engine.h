/*
 * Internal interface between libedge_smw.so (the public ABI, no Python dependency) and
 * libedge_smw_python.so (the engine, linked to libpython). The public library loads the
 * engine with dlopen() so that a device without libpython gets ESMW_ERR_NO_PYTHON instead of
 * a loader failure before main(). Not part of the public ABI.
 */
#ifndef EDGE_SMW_ENGINE_H
#define EDGE_SMW_ENGINE_H

#include "edge_smw.h"

#define ESMW_ENGINE_VERSION 1
#define ESMW_ENGINE_SYMBOL "esmw_engine_entry"
#define ESMW_ENGINE_FILE "libedge_smw_python.so"

/* A validated frame: one or two planes, each with its stride and exact byte extent. */
typedef struct esmw_frame {
    const uint8_t *planes[2];
    int32_t strides[2];
    size_t extents[2]; /* bytes from the plane's start to the end of its last row's pixels */
    int32_t num_planes;
    int32_t width, height;
    const char *format; /* "bgr24", "rgb24", "gray8", "yuyv", "nv12" */
} esmw_frame;

struct esmw_handle {
    void *session;      /* the Python edge_smw.bridge.FrameScorer (a PyObject *) */
    int32_t num_levels;
    char **level_names; /* malloc'd by the engine, freed by the engine's close */
    char *backend;
};

typedef struct esmw_engine {
    int32_t version;
    /* Start Python if needed and open a FrameScorer; fills handle's fields. */
    int32_t (*open)(const esmw_options *options, esmw_handle *handle, char *err, size_t errlen);
    int32_t (*score)(esmw_handle *handle, const esmw_frame *frame, esmw_face *results,
                     int32_t capacity, int32_t *count, char *err, size_t errlen);
    void (*close)(esmw_handle *handle);
} esmw_engine;

typedef const esmw_engine *(*esmw_engine_entry_fn)(void);

#endif /* EDGE_SMW_ENGINE_H */
