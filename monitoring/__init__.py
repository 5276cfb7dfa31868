"""What stage 7 (components/monitor/) uses: drift detection with Evidently (drift.py), the prediction log that
serving writes (prediction_log.py), alerts (alerts.py) and the retraining claim (retraining.py)."""
