"""Stage 6, deploy: core.py (ONNX export, parity, int8, the bundle and its drift reference), onnx_classifier.py
(the served graph), serving.py (MLServer's runtime behind `lifecycle serve`), adapter.py (MLflow, publishing the
champion), component.py (KFP)."""
