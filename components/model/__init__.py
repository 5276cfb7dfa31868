"""Stage 2, model: core.py (the base model, its new head, the strategy's trainable parameters), adapter.py
(MLflow), component.py (KFP)."""
