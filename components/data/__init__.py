"""Stage 1, data: core.py (read, find personal data, validate, split, write the splits and the manifest),
table_readers.py (files and URIs in every format, damaged records skipped and counted), validation.py (the
great-expectations gate), personal_data.py (each text's personal data redacted or refused), splitting.py (clean,
balance, split, leakage), adapter.py (MLflow), component.py (KFP)."""
