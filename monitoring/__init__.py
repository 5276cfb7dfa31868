"""Stage 7, monitoring and maintenance (drift, alerts, retraining): not built yet."""
