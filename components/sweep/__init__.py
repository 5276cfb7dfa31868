"""Stage 4 as a search (`lifecycle tune`): core.py (the Optuna study, its trials, the winner), space.py (the search
space and its defaults), adapter.py (the trials as nested MLflow runs, the sweep's figures), component.py (KFP: the
study, a worker, the selection)."""
