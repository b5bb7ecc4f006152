"""orchestrator: the distributed sweep over prune_core (Ray Tune + Optuna + MLflow).

``python -m orchestrator.sweep experiments/<name>.yaml`` runs a sweep; ``python -m
orchestrator.report <storage dir>`` prints its Pareto front. Modules, one concept each:
``config`` (the YAML schema), ``space`` (the Optuna search space), ``data`` (datasets),
``teacher`` (the shared unpruned model), ``trial`` (one trial), ``finetune_dp`` (Ray Train
data-parallel fine-tune), ``pareto`` (front, hypervolume, tables, plot), ``tracking`` (MLflow),
``sweep`` (the driver), ``report`` (the front without MLflow's UI).
"""
