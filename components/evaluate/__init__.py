"""Stage 5, evaluate: core.py (test metrics, intervals, calibration, the gate), baseline.py, slices.py,
robustness.py, plots.py, model_card.py, adapter.py (MLflow, registering the challenger), component.py (KFP)."""
