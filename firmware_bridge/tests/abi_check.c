/*
 * Drives libedge_smw.so with the mistakes firmware makes, and prints what came back, one line
 * per case: "case NAME STATUS_NAME error text". tests/test_firmware_bridge.py checks them.
 *
 *   abi_check args MODEL   bad arguments before and after a successful open
 *   abi_check open MODEL   only esmw_open (for missing Python / package / model cases)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* PATH_MAX */
#endif
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge_smw.h"

static void report(const char *name, int32_t rc) {
    printf("case %s %s %s\n", name, esmw_status_name(rc), esmw_last_error());
    fflush(stdout);
}

/* For calls that answer with a value instead of a status (no error text to show). */
static void report_value(const char *name, int ok) {
    printf("case %s %s\n", name, ok ? "ESMW_OK" : "ESMW_ERR_ARGUMENT");
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[1], "args") && strcmp(argv[1], "open"))) {
        fprintf(stderr, "usage: abi_check args|open MODEL\n");
        return 1;
    }
    const char *model = argv[2];
    esmw_options opt;
    esmw_handle *h = NULL;

    if (!strcmp(argv[1], "open")) {
        esmw_options_init(&opt);
        opt.model_path = model;
        opt.detect_faces = 0;
        int32_t rc = esmw_open(&opt, &h);
        report("open", rc);
        if (rc == ESMW_OK) {
            /* a second open in the same process reuses the interpreter */
            esmw_handle *h2 = NULL;
            report("open_again", esmw_open(&opt, &h2));
            esmw_close(h2);
        }
        esmw_close(h);
        return 0;
    }

    report_value("abi_version", esmw_abi_version() == EDGE_SMW_ABI_VERSION);
    report("open_null_options", esmw_open(NULL, &h));
    esmw_options_init(&opt);
    opt.model_path = model;
    report("open_null_out", esmw_open(&opt, NULL));
    opt.struct_size = 8;
    report("open_bad_struct_size", esmw_open(&opt, &h));
    esmw_options_init(&opt);
    report("open_no_model_path", esmw_open(&opt, &h));
    opt.model_path = model;
    opt.threads = -1;
    report("open_negative_threads", esmw_open(&opt, &h));
    esmw_options_init(&opt);
    char missing[4096];
    snprintf(missing, sizeof missing, "%s.does-not-exist.onnx", model);
    opt.model_path = missing;
    int32_t rc = esmw_open(&opt, &h);
    report("open_missing_model", rc);
    if (h) {
        fprintf(stderr, "a handle came back for a missing model\n");
        return 2;
    }
    opt.model_path = model;
    opt.backend = "no-such-backend";
    report("open_unknown_backend", esmw_open(&opt, &h));

    /* absurd settings: argument errors, never an abort or a runaway allocation */
    esmw_options_init(&opt);
    opt.model_path = model;
    opt.threads = 100000;
    report("open_threads_over_cap", esmw_open(&opt, &h));
    opt.threads = INT32_MAX;
    report("open_threads_int32_max", esmw_open(&opt, &h));
    static char long_path[PATH_MAX + 64];
    memset(long_path, 'a', sizeof long_path - 1);
    long_path[0] = '/';
    opt.threads = 1;
    opt.model_path = long_path;
    report("open_path_too_long", esmw_open(&opt, &h));
    static char long_name[512]; /* one 300-byte file name: longer than NAME_MAX */
    memset(long_name, 'b', 300);
    memcpy(long_name, "/tmp/", 5);
    memcpy(long_name + 300, ".onnx", 6);
    opt.model_path = long_name;
    report("open_name_too_long", esmw_open(&opt, &h));
    if (h) {
        fprintf(stderr, "a handle came back for an absurd setting\n");
        return 2;
    }

    esmw_options_init(&opt);
    opt.model_path = model;
    opt.detect_faces = 0;
    opt.threads = 1;
    rc = esmw_open(&opt, &h);
    report("open", rc);
    if (rc != ESMW_OK) return 2;

    enum { W = 64, H = 64 };
    static uint8_t frame[W * H * 3];
    esmw_face faces[4];
    int32_t n = -1;
    report("score_null_handle", esmw_score(NULL, frame, W, H, 0, ESMW_PIXEL_BGR24, faces, 4, &n));
    report("score_null_data", esmw_score(h, NULL, W, H, 0, ESMW_PIXEL_BGR24, faces, 4, &n));
    report("score_null_count", esmw_score(h, frame, W, H, 0, ESMW_PIXEL_BGR24, faces, 4, NULL));
    report("score_negative_capacity",
           esmw_score(h, frame, W, H, 0, ESMW_PIXEL_BGR24, faces, -1, &n));
    report("score_null_results", esmw_score(h, frame, W, H, 0, ESMW_PIXEL_BGR24, NULL, 2, &n));
    report("score_zero_width", esmw_score(h, frame, 0, H, 0, ESMW_PIXEL_BGR24, faces, 4, &n));
    report("score_negative_height",
           esmw_score(h, frame, W, -4, 0, ESMW_PIXEL_BGR24, faces, 4, &n));
    report("score_unknown_format", esmw_score(h, frame, W, H, 0, 9, faces, 4, &n));
    report("score_odd_width_yuyv",
           esmw_score(h, frame, W - 1, H, 0, ESMW_PIXEL_YUYV, faces, 4, &n));
    report("score_odd_width_nv12",
           esmw_score(h, frame, W - 1, H, 0, ESMW_PIXEL_NV12, faces, 4, &n));
    report("score_odd_height_nv12",
           esmw_score(h, frame, W, H - 1, 0, ESMW_PIXEL_NV12, faces, 4, &n));
    report("score_stride_too_small",
           esmw_score(h, frame, W, H, W * 3 - 1, ESMW_PIXEL_BGR24, faces, 4, &n));
    report("score_stride_too_small_yuyv",
           esmw_score(h, frame, W, H, W, ESMW_PIXEL_YUYV, faces, 4, &n));
    report("score_negative_stride",
           esmw_score(h, frame, W, H, -W * 3, ESMW_PIXEL_BGR24, faces, 4, &n));
    report("score_nv12_null_uv",
           esmw_score_nv12(h, frame, W, NULL, W, W, H, faces, 4, &n));
    report("frame_bytes_odd_yuyv", esmw_frame_bytes(W - 1, H, 0, ESMW_PIXEL_YUYV) == 0
                                       ? ESMW_ERR_ARGUMENT : ESMW_OK);
    report_value("level_name_out_of_range", esmw_level_name(h, esmw_num_levels(h)) != NULL);

    /* The handle still works after all of that. */
    n = -1;
    rc = esmw_score(h, frame, W, H, 0, ESMW_PIXEL_BGR24, faces, 4, &n);
    report("score_after_errors", rc == ESMW_OK && n == 1 ? ESMW_OK : rc ? rc : ESMW_ERR_INTERNAL);
    n = -1;
    rc = esmw_score(h, frame, W, H, 0, ESMW_PIXEL_GRAY8, NULL, 0, &n);
    report("score_count_only", rc == ESMW_OK && n == 1 ? ESMW_OK : rc ? rc : ESMW_ERR_INTERNAL);
    esmw_close(h);
    esmw_close(NULL);
    report("close", ESMW_OK);
    return 0;
}
