"""Stage 4, fine_tune: core.py (the training loop in phases), checkpoint.py (resumable checkpoints),
frozen_blocks.py and pooled_block.py (what partial and head skip), placement.py (in process, DDP or TrainJob),
processes.py (DDP under torchrun), trainjob.py (a Kubeflow Trainer TrainJob), adapter.py (MLflow),
component.py (KFP)."""
