"""Stage 7, monitor: adapter.py (MLflow: the `7-monitor` run of a training run, and the monitor pipeline's check of
served traffic that raises alerts and claims retrainings) and component.py (KFP). Its core and the libraries it
uses are in monitoring/."""
