"""Stage 5, evaluate: core.py (test metrics, intervals, calibration, the gate), baseline.py, slices.py,
robustness.py, plots.py, the model card (card_facts.py what it tells, model_card.py and model_card_findings.py its
sections), adapter.py (MLflow, registering the challenger), component.py (KFP)."""
