#!/bin/sh
# Entry point of the GPU and Jetson images: make sure the TensorRT engine exists in the
# /cache volume (built at first start, reused afterwards), then run `edge-smw ARGS...`.
# `serve` and `score` without --model / --backend get the two variables below, so the model
# that was warmed up is the one served.
#
#   EDGE_SMW_CACHE    the volume (default /cache); engines go to $EDGE_SMW_CACHE/ort-trt
#   EDGE_SMW_MODEL    model or export folder to build the engine for (default
#                     /models/model.onnx; /models/model.int8-trt.onnx for INT8 on TensorRT)
#   EDGE_SMW_BACKEND  backend to warm up (default onnxruntime-tensorrt); "none" skips it
set -eu

cache="${EDGE_SMW_CACHE:-/cache}"
model="${EDGE_SMW_MODEL:-/models/model.onnx}"
backend="${EDGE_SMW_BACKEND:-onnxruntime-tensorrt}"

if ! mkdir -p "$cache/ort-trt" 2>/dev/null || [ ! -w "$cache/ort-trt" ]; then
    echo "edge-smw: the engine cache $cache/ort-trt is not writable by uid $(id -u):" \
         "mount a volume there (-v edge-smw-engines:$cache)" >&2
    exit 2
fi

if [ "$backend" != "none" ] && [ -e "$model" ] && [ -z "$(ls -A "$cache/ort-trt")" ]; then
    echo "edge-smw: first start: building the TensorRT engine for $model into" \
         "$cache/ort-trt (minutes; later starts reuse it)" >&2
    python3 - "$model" "$backend" <<'EOF'
import sys

from edge_smw import Runtime
from edge_smw.errors import EdgeSmwError

try:
    with Runtime(sys.argv[1], backend=sys.argv[2]) as runtime:  # warm-up builds the engine
        print(f"edge-smw: engine ready ({runtime.backend}, {runtime.path})", file=sys.stderr)
except EdgeSmwError as exc:
    sys.exit(f"edge-smw: cannot build the engine: {exc}")
EOF
fi

if [ "${1:-}" = serve ] || [ "${1:-}" = score ]; then
    command="$1"
    shift
    case " $* " in *" --model "*) ;; *) set -- --model "$model" "$@" ;; esac
    if [ "$backend" != none ]; then
        case " $* " in *" --backend "*) ;; *) set -- --backend "$backend" "$@" ;; esac
    fi
    set -- "$command" "$@"
fi

exec edge-smw "$@"
