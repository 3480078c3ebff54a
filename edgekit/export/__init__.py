"""Export trained models to parity-checked ONNX bundles."""
