"""Stage 2, model: core.py (the base model with its new head, saved with the spec of what trains), loading.py
(loading and saving a classifier, for every stage), strategies.py (each strategy's trainable parameters), blocks.py
(the architecture as the strategies see it), bottleneck.py (bottleneck adapters), peft_methods.py (any peft method by
its own config, checked), adapter.py (MLflow), component.py (KFP)."""
