"""Stage 7, monitor: core.py (the texts to check and the drift check against the served model's reference),
adapter.py (MLflow: the `7-monitor` run of a training run, and the monitor pipeline's check of served traffic
that raises alerts and claims retrainings), component.py (KFP). The libraries it uses are in monitoring/: drift
(Evidently), the prediction log, alerts, the retraining claim."""
