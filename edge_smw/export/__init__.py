"""Torch-side export: checkpoints -> ONNX (fp32, int8, fp16) and TensorRT engines."""
