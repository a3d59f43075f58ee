"""The experiment platform's base, under both planners (:mod:`sellarec.tuning` for searches, :mod:`sellarec.ablation`
for ablations), which never import each other. It holds the only Ray and MLflow wiring: the one trainable and how a
trial's parameters become its configuration (:mod:`~sellarec.experiment.trial`), the run tracker and its one
parent/child schema (:mod:`~sellarec.experiment.tracking`), the driver's callbacks (MLflow child runs, progress
lines; :mod:`~sellarec.experiment.callbacks`) and Ray resources and GPU checks
(:mod:`~sellarec.experiment.resources`), and how they are handed to Tune (:mod:`~sellarec.experiment.launch`). Ray,
Optuna and MLflow are imported only in this layer and above it.
"""
