"""Stage 4, fine_tune: core.py (the training loop in phases), session.py (what the loop works on, made once),
checkpoint.py (resumable checkpoints), frozen_blocks.py and pooled_block.py (what partial and head skip),
placement.py (in process, DDP or TrainJob), torchrun.py (DDP ranks under torchrun), trainjob.py (a Kubeflow Trainer
TrainJob), privacy.py (DP-SGD), adapter.py (MLflow), component.py (KFP)."""
