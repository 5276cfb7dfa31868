"""Stage 3, environment: core.py (device, precision, threads, seeds, versions, hardware), adapter.py (MLflow),
component.py (KFP)."""
