/*
 * edge_smw.h - C ABI for scoring camera frames with an exported edge-smw model.
 *
 * For camera firmware written in C or C++ (V4L2, Argus): hand over a frame buffer as it
 * comes from the camera, get back per-face scores in structs you own. Behind the ABI the
 * library embeds CPython and calls `edge_smw.Runtime`, so scores are exactly the Python
 * runtime's; the frame is wrapped, not copied, and converted to BGR once with OpenCV.
 *
 * Rules of the ABI
 *   - Every function that can fail returns an esmw_status (0 = ESMW_OK, negative = error)
 *     and never aborts the process; esmw_last_error() gives the text for the calling thread.
 *   - Python is found, started and imported inside esmw_open(); a device with no Python, no
 *     edge-smw package or no model file gets an error code, not a crash.
 *   - Thread-safe: one handle may be shared by several firmware threads calling esmw_score()
 *     at once (the Python GIL is taken and released inside each call). esmw_close() must not
 *     race with esmw_score() on the same handle.
 *   - One Python interpreter per process, started by the first successful esmw_open() and
 *     kept until the process exits (Python cannot be safely restarted). If the host process
 *     already runs Python (same version the library was built for), that one is used.
 *   - Structs that may grow carry their own size (struct_size) so old callers keep working.
 *
 * Typical use
 *
 *     esmw_options opt;
 *     esmw_options_init(&opt);
 *     opt.model_path = "/opt/models/model.int8.onnx";
 *     esmw_handle *h = NULL;
 *     if (esmw_open(&opt, &h) != ESMW_OK) { log("%s", esmw_last_error()); return; }
 *     esmw_face faces[8];
 *     int32_t n = 0;
 *     if (esmw_score(h, buf, 640, 480, 1280, ESMW_PIXEL_YUYV, faces, 8, &n) == ESMW_OK)
 *         for (int i = 0; i < n && i < 8; i++) use(faces[i].expected_score);
 *     esmw_close(h);
 */
#ifndef EDGE_SMW_H
#define EDGE_SMW_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change of a function signature, struct layout or enum value.
 * Compare with esmw_abi_version() at start-up to catch a header/library mismatch. */
#define EDGE_SMW_ABI_VERSION 1

/* Most score levels a model may have through this ABI (the probabilities array length). */
#define EDGE_SMW_MAX_LEVELS 16

#if defined(__GNUC__)
#define EDGE_SMW_API __attribute__((visibility("default")))
#else
#define EDGE_SMW_API
#endif

/* Status codes. Negative values are errors; the text is in esmw_last_error(). */
typedef enum esmw_status {
    ESMW_OK = 0,
    ESMW_ERR_ARGUMENT = -1,  /* null pointer, bad size/stride/format, odd width for YUYV/NV12 */
    ESMW_ERR_NO_PYTHON = -2, /* the Python engine or libpython cannot be loaded or started */
    ESMW_ERR_PACKAGE = -3,   /* Python runs but cannot import edge_smw (not installed there) */
    ESMW_ERR_MODEL = -4,     /* model file missing, corrupt, not an edge-smw model */
    ESMW_ERR_BACKEND = -5,   /* the requested backend is not available (TensorRT, CUDA...) */
    ESMW_ERR_ABI = -6,       /* struct_size or layout mismatch between caller and library */
    ESMW_ERR_INTERNAL = -7   /* anything else raised while scoring; the text says what */
} esmw_status;

/* Pixel formats of the frame buffer. 8 bits per sample, rows `stride` bytes apart.
 *   BGR24, RGB24  3 bytes per pixel.
 *   GRAY8         1 byte per pixel (luma only, e.g. an IR camera).
 *   YUYV          4:2:2 packed Y0 U Y1 V (V4L2_PIX_FMT_YUYV, the usual UVC default);
 *                 width must be even.
 *   NV12          4:2:0: a Y plane of `height` rows, then an interleaved UV plane of
 *                 height/2 rows, both `stride` bytes per row, UV right after the Y plane
 *                 (V4L2_PIX_FMT_NV12; Jetson/Argus). Width and height must be even. For
 *                 planes that are not adjacent use esmw_score_nv12().
 * YUV formats are converted with OpenCV's BT.601 video-range conversion. */
typedef enum esmw_pixel_format {
    ESMW_PIXEL_BGR24 = 1,
    ESMW_PIXEL_RGB24 = 2,
    ESMW_PIXEL_GRAY8 = 3,
    ESMW_PIXEL_YUYV = 4,
    ESMW_PIXEL_NV12 = 5
} esmw_pixel_format;

/* The most inference threads per usable core (CPU affinity) esmw_open() accepts. */
#define EDGE_SMW_MAX_THREADS_PER_CORE 4

/* Options for esmw_open(). Always fill with esmw_options_init() first, then set fields. */
typedef struct esmw_options {
    uint32_t struct_size;    /* sizeof(esmw_options); set by esmw_options_init() */
    const char *model_path;  /* required: an exported .onnx / .engine, or an export folder */
    const char *backend;     /* NULL or "auto" (fastest available), "onnxruntime-cpu",
                                "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt",
                                "openvino-cpu" (with edge-smw's [openvino] extra) */
    int32_t threads;         /* inference threads; 0 = the runtime's default (one per usable
                                core); more than EDGE_SMW_MAX_THREADS_PER_CORE x the cores
                                this process may run on is ESMW_ERR_ARGUMENT */
    int32_t detect_faces;    /* 1 = find faces (Haar) and score each; 0 = score the whole
                                frame as one already-cropped face */
    int32_t max_faces;       /* most faces per frame when detecting; 0 = 5 */
    int32_t device;          /* GPU index for CUDA/TensorRT backends */
    const char *python;      /* the Python whose packages to use, e.g. a venv's bin/python;
                                NULL = $EDGE_SMW_PYTHON, else the Python the library was built
                                with. Only the first esmw_open() of a process uses it. */
    const char *python_path; /* extra import folders, ':'-separated, put first on sys.path;
                                NULL = $EDGE_SMW_PYTHONPATH */
} esmw_options;

/* One scored face, written into caller-owned memory. */
typedef struct esmw_face {
    int32_t x, y, width, height; /* face box in frame pixels (whole frame when not detecting) */
    int32_t level;               /* predicted level, 0-based index into the model's levels */
    int32_t num_levels;          /* how many entries of probabilities[] are valid */
    double expected_score;       /* probability-weighted level, from 1 to num_levels */
    double probabilities[EDGE_SMW_MAX_LEVELS]; /* per level, sum to 1 */
} esmw_face;

typedef struct esmw_handle esmw_handle; /* opaque: one open model */

/* EDGE_SMW_ABI_VERSION the library was built with. */
EDGE_SMW_API int32_t esmw_abi_version(void);

/* Defaults: backend auto, detection on, 5 faces, runtime's thread count, device 0. */
EDGE_SMW_API void esmw_options_init(esmw_options *options);

/* Start Python (first call only), load the model, and warm it up. On success *out is a
 * handle to pass to esmw_score() and, at the end, esmw_close(). On error *out is NULL. */
EDGE_SMW_API int32_t esmw_open(const esmw_options *options, esmw_handle **out);

/* Score one frame. `stride` is bytes per row (0 = tightly packed). Faces are written
 * largest first into results[0 .. min(*count, capacity) - 1]; *count is set to the number of
 * faces found (it may exceed capacity). results may be NULL when capacity is 0. */
EDGE_SMW_API int32_t esmw_score(esmw_handle *handle, const uint8_t *data, int32_t width,
                                int32_t height, int32_t stride, int32_t pixel_format,
                                esmw_face *results, int32_t capacity, int32_t *count);

/* NV12 whose Y and UV planes are separate buffers (Argus/NvBufSurface, V4L2 NV12M). */
EDGE_SMW_API int32_t esmw_score_nv12(esmw_handle *handle, const uint8_t *y, int32_t y_stride,
                                     const uint8_t *uv, int32_t uv_stride, int32_t width,
                                     int32_t height, esmw_face *results, int32_t capacity,
                                     int32_t *count);

/* Bytes a frame of this geometry occupies: rows * stride, NV12 height * 3 / 2 rows (what a
 * V4L2 driver reports as sizeimage). 0 if the geometry is invalid (see esmw_last_error()). */
EDGE_SMW_API size_t esmw_frame_bytes(int32_t width, int32_t height, int32_t stride,
                                     int32_t pixel_format);

/* The model's levels, lowest first; names stay valid until esmw_close(). */
EDGE_SMW_API int32_t esmw_num_levels(const esmw_handle *handle);
EDGE_SMW_API const char *esmw_level_name(const esmw_handle *handle, int32_t index);

/* The backend the handle runs on (what "auto" chose), e.g. "onnxruntime-cpu". */
EDGE_SMW_API const char *esmw_backend(const esmw_handle *handle);

/* Text of the calling thread's most recent error ("" if none); valid until the next call
 * into the library on this thread. */
EDGE_SMW_API const char *esmw_last_error(void);

/* Constant name of a status code, e.g. "ESMW_ERR_MODEL". */
EDGE_SMW_API const char *esmw_status_name(int32_t status);

/* Release the model. NULL is ignored. The Python interpreter stays up for later opens. */
EDGE_SMW_API void esmw_close(esmw_handle *handle);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_SMW_H */
