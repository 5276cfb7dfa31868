"""Stage 6, deploy: core.py (ONNX export, parity, int8, the bundle and its drift reference), onnx_classifier.py
(the served graph), adapter.py (MLflow, publishing the champion), component.py (KFP); and serving the bundle:
server.py (`lifecycle serve`: MLServer in this process), serving_runtime.py (the MLServer runtime),
request_limits.py (what a request may be), registry_follower.py (a running server following the registry)."""
