"""Training, ONNX export and evaluation of Earmark's neural audio fingerprint."""
