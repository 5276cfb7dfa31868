"""Stage 1, data: core.py (read, validate, clean, balance, split), validation.py (the great-expectations gate),
tables.py (reading files), adapter.py (MLflow), component.py (KFP)."""
