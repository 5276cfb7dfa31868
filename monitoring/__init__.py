"""Stage 7, monitoring: core.py (the stage's core: the texts to check and the drift check against the served
model's reference), drift.py (Evidently), prediction_log.py (what serving writes), alerts.py, retraining.py (the
retraining claim) and rollout.py (a rollout's evidence, decision and record). Its MLflow adapter and KFP component
are in components/monitor/."""
