"""Export trained models to parity-checked bundles: ONNX (fp32, int8 dynamic/static, fp16) and
TorchScript (fp32, int8 dynamic). Formats are registry entries (kind ``format``); presets live in
the top-level ``export/`` folder."""
