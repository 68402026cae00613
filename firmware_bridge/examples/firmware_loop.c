/*
 * A firmware-style loop on top of edge_smw.h: read raw camera frames from a file (what
 * `v4l2-ctl --stream-mmap --stream-to=frames.yuyv` records), score each, print the faces.
 *
 *   edge_smw_example --model model.onnx --frames frames.yuyv --format yuyv \
 *                    --width 640 --height 480 [--stride 1280] [--no-detect] [--workers 4]
 *
 * Frames in the file are back to back, each esmw_frame_bytes() long (V4L2's sizeimage).
 * With --workers N, N threads share one handle and take frames in turn, as camera, encoder
 * and network threads of a real firmware would. One output line per face:
 *
 *   frame 3 face 0 box 212 80 190 190 level 1 smiling expected 1.7312 probs 0.2688 0.7312
 *
 * plus "frame 3 faces N" per frame. Exit status: 0 ok, 1 usage, 2 library error.
 */
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge_smw.h"

#define MAX_RESULTS 8
#define LINE_LEN 8192

typedef struct {
    esmw_handle *handle;
    const uint8_t *frames;
    size_t frame_size;
    long num_frames;
    int32_t width, height, stride, format;
    int worker, workers;
    char **lines; /* one text block per frame, printed in frame order at the end */
    int status;
} job;

static int parse_format(const char *name) {
    static const struct { const char *name; int value; } formats[] = {
        {"bgr24", ESMW_PIXEL_BGR24}, {"rgb24", ESMW_PIXEL_RGB24}, {"gray8", ESMW_PIXEL_GRAY8},
        {"yuyv", ESMW_PIXEL_YUYV},   {"nv12", ESMW_PIXEL_NV12},
    };
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++)
        if (!strcmp(name, formats[i].name)) return formats[i].value;
    return 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: edge_smw_example --model PATH --frames FILE --format "
            "bgr24|rgb24|gray8|yuyv|nv12\n"
            "                        --width W --height H [--stride BYTES] [--no-detect]\n"
            "                        [--backend NAME] [--threads N] [--max-faces N] "
            "[--workers N]\n");
}

static void append(char **text, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void append(char **text, size_t *len, size_t *cap, const char *fmt, ...) {
    char line[LINE_LEN];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (*len + (size_t)n + 1 > *cap) {
        size_t grow = (*cap + (size_t)n + 1) * 2;
        char *bigger = realloc(*text, grow);
        if (!bigger) return;
        *text = bigger;
        *cap = grow;
    }
    memcpy(*text + *len, line, (size_t)n + 1);
    *len += (size_t)n;
}

static void *worker_main(void *arg) {
    job *j = arg;
    esmw_face faces[MAX_RESULTS];
    for (long f = j->worker; f < j->num_frames; f += j->workers) {
        int32_t count = 0;
        const uint8_t *frame = j->frames + (size_t)f * j->frame_size;
        int32_t rc = esmw_score(j->handle, frame, j->width, j->height, j->stride, j->format,
                                faces, MAX_RESULTS, &count);
        if (rc != ESMW_OK) {
            fprintf(stderr, "frame %ld: %s: %s\n", f, esmw_status_name(rc), esmw_last_error());
            j->status = 2;
            return NULL;
        }
        char *text = NULL;
        size_t len = 0, cap = 0;
        append(&text, &len, &cap, "frame %ld faces %d\n", f, count);
        for (int32_t i = 0; i < count && i < MAX_RESULTS; i++) {
            const esmw_face *face = &faces[i];
            append(&text, &len, &cap, "frame %ld face %d box %d %d %d %d level %d %s expected "
                   "%.17g probs", f, i, face->x, face->y, face->width, face->height,
                   face->level, esmw_level_name(j->handle, face->level), face->expected_score);
            for (int32_t k = 0; k < face->num_levels; k++)
                append(&text, &len, &cap, " %.17g", face->probabilities[k]);
            append(&text, &len, &cap, "\n");
        }
        j->lines[f] = text;
    }
    return NULL;
}

static uint8_t *read_file(const char *path, size_t *size) {
    FILE *file = fopen(path, "rb");
    if (!file) {
        fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 20, len = 0;
    uint8_t *data = malloc(cap);
    size_t got;
    while (data && (got = fread(data + len, 1, cap - len, file)) > 0) {
        len += got;
        if (len == cap) {
            uint8_t *bigger = realloc(data, cap * 2);
            if (!bigger) {
                free(data);
                data = NULL;
                break;
            }
            data = bigger;
            cap *= 2;
        }
    }
    fclose(file);
    *size = len;
    return data;
}

int main(int argc, char **argv) {
    esmw_options options;
    esmw_options_init(&options);
    const char *frames_path = NULL;
    int32_t width = 0, height = 0, stride = 0, format = 0;
    int workers = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-detect")) { options.detect_faces = 0; continue; }
        if (!v) { usage(); return 1; }
        if (!strcmp(a, "--model")) options.model_path = v;
        else if (!strcmp(a, "--frames")) frames_path = v;
        else if (!strcmp(a, "--format")) format = parse_format(v);
        else if (!strcmp(a, "--width")) width = atoi(v);
        else if (!strcmp(a, "--height")) height = atoi(v);
        else if (!strcmp(a, "--stride")) stride = atoi(v);
        else if (!strcmp(a, "--backend")) options.backend = v;
        else if (!strcmp(a, "--threads")) options.threads = atoi(v);
        else if (!strcmp(a, "--max-faces")) options.max_faces = atoi(v);
        else if (!strcmp(a, "--workers")) workers = atoi(v);
        else { usage(); return 1; }
        i++;
    }
    if (!options.model_path || !frames_path || !format || workers < 1) { usage(); return 1; }
    if (esmw_abi_version() != EDGE_SMW_ABI_VERSION) {
        fprintf(stderr, "libedge_smw.so has ABI %d, this program was built for %d\n",
                esmw_abi_version(), EDGE_SMW_ABI_VERSION);
        return 2;
    }
    size_t frame_size = esmw_frame_bytes(width, height, stride, format);
    if (!frame_size) {
        fprintf(stderr, "bad frame geometry: %s\n", esmw_last_error());
        return 1;
    }
    size_t size = 0;
    uint8_t *frames = read_file(frames_path, &size);
    if (!frames) return 2;
    if (size % frame_size) {
        fprintf(stderr, "%s holds %zu bytes, not a whole number of %zu-byte frames\n",
                frames_path, size, frame_size);
        free(frames);
        return 1;
    }
    esmw_handle *handle = NULL;
    int32_t rc = esmw_open(&options, &handle);
    if (rc != ESMW_OK) {
        fprintf(stderr, "esmw_open: %s: %s\n", esmw_status_name(rc), esmw_last_error());
        free(frames);
        return 2;
    }
    printf("backend %s levels", esmw_backend(handle));
    for (int32_t k = 0; k < esmw_num_levels(handle); k++) printf(" %s", esmw_level_name(handle, k));
    printf("\n");

    long num_frames = (long)(size / frame_size);
    char **lines = calloc((size_t)num_frames + 1, sizeof(char *));
    job *jobs = calloc((size_t)workers, sizeof(job));
    pthread_t *threads = calloc((size_t)workers, sizeof(pthread_t));
    int status = 0;
    if (!lines || !jobs || !threads) {
        fprintf(stderr, "out of memory\n");
        status = 2;
    }
    for (int w = 0; !status && w < workers; w++) {
        jobs[w] = (job){handle, frames, frame_size, num_frames, width, height, stride, format,
                        w, workers, lines, 0};
        if (pthread_create(&threads[w], NULL, worker_main, &jobs[w]) != 0) {
            fprintf(stderr, "cannot start worker thread %d\n", w);
            status = 2;
            workers = w;
        }
    }
    for (int w = 0; jobs && threads && w < workers; w++) {
        pthread_join(threads[w], NULL);
        if (jobs[w].status) status = jobs[w].status;
    }
    for (long f = 0; lines && f < num_frames; f++) {
        if (lines[f]) fputs(lines[f], stdout);
        free(lines[f]);
    }
    esmw_close(handle);
    free(lines);
    free(jobs);
    free(threads);
    free(frames);
    return status;
}
