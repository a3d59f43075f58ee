"""The experiment platform's base, under both planners (:mod:`sellarec.tuning` for searches, :mod:`sellarec.ablation`
for ablations), which never import each other: MLflow store helpers (:mod:`~sellarec.experiment.tracking`), Ray
resources and GPU checks (:mod:`~sellarec.experiment.resources`) and the flat trial metrics
(:mod:`~sellarec.experiment.trial_metrics`). Ray, Optuna and MLflow are imported only in this layer and above it.
"""
