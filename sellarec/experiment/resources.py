"""What a trial asks of Ray, checked before anything starts, and how Ray is started: shared by sweeps and ablations.

Order of checks (STACK.md §4): option values (``ConfigError``) and a GPU request on a machine without CUDA
(``ResourceError``) before Ray starts; the request against ``ray.cluster_resources()`` right after Ray runs and
before ``fit()`` (a request Ray cannot place leaves trials PENDING forever). Ray is imported inside the functions
only, so this module loads without it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

from sellarec.errors import ConfigError, ResourceError

__all__ = ["DEFAULT_GPU_FRACTION", "Resources", "check_request", "default_gpus", "check_local_gpu",
           "check_shared_storage", "check_shared_tracking", "start_ray", "stop_ray", "cluster_gpus",
           "trial_gpu_fraction", "cap_gpu_memory", "add_experiment_arguments"]

DEFAULT_GPU_FRACTION = 0.25   # four trials share a card by default (ours)


def check_request(cpus_per_trial: float, gpus_per_trial: float | None, max_concurrent: int | None) -> None:
    """Values that are wrong on any machine.

    Raises:
        ConfigError: naming the option, e.g. ``--cpus-per-trial=0 must be > 0``.
    """
    if not cpus_per_trial > 0:
        raise ConfigError(f"--cpus-per-trial={cpus_per_trial} must be > 0")
    if gpus_per_trial is not None and (gpus_per_trial < 0 or (gpus_per_trial > 1
                                                              and gpus_per_trial != int(gpus_per_trial))):
        raise ConfigError(f"--gpus-per-trial={gpus_per_trial} must be a fraction in [0, 1] or a whole number")
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent={max_concurrent} must be >= 1")


def default_gpus(gpus_per_trial: float | None, address: str | None) -> float | None:
    """The GPU fraction per trial: the one asked for, else 0.25 when this machine has CUDA, else 0.

    Returns:
        None when joining a cluster (``address``) without a request: :func:`cluster_gpus` decides once Ray runs.
    """
    if gpus_per_trial is not None:
        return float(gpus_per_trial)
    if address is not None:
        return None
    import torch

    return DEFAULT_GPU_FRACTION if torch.cuda.is_available() else 0.0


def check_local_gpu(gpus: float | None, address: str | None) -> None:
    """Refuse a GPU request before Ray starts when this machine has no CUDA (Ray would wait forever).

    Skipped with ``address`` (the cluster's GPUs count) and when this process already runs Ray (its resources
    count; :func:`cluster_gpus` checks them).

    Raises:
        ResourceError: ``gpus`` > 0 and no CUDA GPU here.
    """
    ray = sys.modules.get("ray")   # not imported yet: Ray cannot be running in this process
    if gpus is None or gpus <= 0 or address is not None or (ray is not None and ray.is_initialized()):
        return
    import torch

    if not torch.cuda.is_available():
        raise ResourceError(f"--gpus-per-trial={gpus:g} but this machine has no CUDA GPU; pass --gpus-per-trial 0, "
                            "or --address of a Ray cluster with GPUs")


def check_shared_storage(storage: str | None) -> None:
    """With ``--address`` the Tune storage must be one every node can reach (Ray's default is this machine's disk).

    Raises:
        ConfigError: no ``storage`` given.
    """
    if storage is None:
        raise ConfigError("--address needs --storage PATH|URI on storage every node can reach (NFS path or "
                          "s3://...); see docs/distributed.md")


def check_shared_tracking(uri: str | None) -> None:
    """With ``--address`` the tracking store must be a server, not a file only this machine sees.

    Raises:
        ConfigError: ``uri`` is None (the local sqlite default) or a local store.
    """
    from sellarec.experiment.tracking import is_local_store

    if uri is None or is_local_store(uri):
        raise ConfigError(f"--address needs --tracking-uri of a server every node can reach (http://host:port), "
                          f"not {uri or 'the local sqlite default'}; see docs/distributed.md")


def start_ray(address: str | None) -> bool:
    """Join ``address`` or start a private local Ray; returns whether this call started it (and must stop it with
    :func:`stop_ray`). Before a local Ray starts, the processes that killed drivers' Rays left on this machine are
    stopped (:mod:`~sellarec.experiment.leftovers`), with one line saying so.

    Args:
        address: a Ray cluster (``auto``, ``host:port``, ``ray://host:port``), or None for a new local Ray.

    Raises:
        ResourceError: the cluster at ``address`` cannot be joined.
    """
    import ray

    from sellarec.experiment import leftovers

    if ray.is_initialized():
        return False
    if address is None:
        stopped = leftovers.stop_leftovers()
        if stopped:
            print(f"stopped {len(stopped)} processes left by a killed sellarec driver's Ray: {', '.join(stopped)}",
                  flush=True)
    try:
        # Trial output stays in the trial's log files. Without --address always a new local Ray: a bare ray.init()
        # would join whatever cluster the last `ray start` on this machine recorded in
        # /tmp/ray/ray_current_cluster (any user's, even a stopped one), and the trials would hang when it goes away.
        # Ray's INFO lines ("Started a local Ray instance") say nothing our own lines do not.
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ResourceError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}; start it with "
                            "'ray start --head' or check --address") from None
    if address is None:
        leftovers.record_ray_processes()
    return True


def stop_ray() -> None:
    """Shut down the Ray this process started (:func:`start_ray`) and drop its record of leftovers."""
    import ray

    from sellarec.experiment import leftovers

    ray.shutdown()
    leftovers.forget_ray_processes()


def cluster_gpus(planned: float | None, cpus: float) -> float:
    """The GPU fraction per trial once Ray runs (``planned``, or 0.25 when the cluster has a GPU, else 0), checked
    against ``ray.cluster_resources()`` before ``fit()``.

    Raises:
        ResourceError: the cluster has fewer GPUs or CPUs than one trial asks for.
    """
    import ray

    have = ray.cluster_resources()
    gpus = planned if planned is not None else (DEFAULT_GPU_FRACTION if have.get("GPU", 0.0) > 0 else 0.0)
    if gpus > 0 and have.get("GPU", 0.0) < gpus:
        raise ResourceError(f"trial asks for {gpus:g} GPU but Ray sees {have.get('GPU', 0.0):g} GPUs; pass "
                            "--gpus-per-trial 0 or start Ray on a GPU node")
    if have.get("CPU", 0.0) < cpus:
        raise ResourceError(f"trial asks for {cpus:g} CPUs but Ray sees {have.get('CPU', 0.0):g}; lower "
                            "--cpus-per-trial")
    return gpus


@dataclass(frozen=True)
class Resources:
    """What each trial asks of Ray, and where Ray runs (the defaults of :func:`add_experiment_arguments`).

    Attributes:
        cpus_per_trial: CPUs per trial (also its torch threads, at least 1).
        gpus_per_trial: GPUs per trial (a fraction shares a card); None: 0.25 when CUDA (or, with ``address``,
            the cluster) has a GPU, else 0.
        max_concurrent: most trials at once (None: as many as the resources allow).
        address: an existing Ray cluster (``auto``, ``host:port``, ``ray://host:port``); None starts a private
            local one (never an existing ``ray start`` cluster found by Ray's auto-detection).
    """

    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    address: str | None = None

    def plan_gpus(self) -> float | None:
        """Check the options before Ray starts; the GPU fraction per trial, or None to ask the cluster.

        Raises:
            ConfigError: an impossible value.
            ResourceError: GPUs requested on a machine without CUDA and no ``address`` (Ray would wait forever).
        """
        check_request(self.cpus_per_trial, self.gpus_per_trial, self.max_concurrent)
        gpus = default_gpus(self.gpus_per_trial, self.address)
        check_local_gpu(gpus, self.address)
        return gpus

    def cluster_gpus(self, planned: float | None) -> float:
        """:func:`cluster_gpus` for these CPUs."""
        return cluster_gpus(planned, self.cpus_per_trial)


def trial_gpu_fraction() -> float:
    """Inside a Tune trial: the GPU fraction it was given."""
    from ray import tune

    return float(tune.get_context().get_trial_resources().required_resources.get("GPU", 0.0))


def cap_gpu_memory(fraction: float) -> None:
    """Ray's GPU fractions are logical only: keep this trial's process within its share of the card's memory."""
    import torch

    if fraction > 0 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(min(1.0, fraction), 0)   # Ray maps the assigned GPU to cuda:0
        torch.cuda.reset_peak_memory_stats(0)


def add_experiment_arguments(parser: argparse.ArgumentParser, *, storage_default: str) -> None:
    """The options every Ray experiment takes, declared once for searches and ablations (defaults: :class:`Resources`
    and the tracking store's)."""
    defaults = Resources()
    parser.add_argument("--storage", default=None, help=f"Ray Tune storage path or URI (default {storage_default})")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default sqlite:///<repo>/mlflow/mlflow.db)")
    parser.add_argument("--address", default=defaults.address,
                        help="join this Ray cluster (needs a shared --storage and a tracking server)")
    parser.add_argument("--cpus-per-trial", type=float, default=defaults.cpus_per_trial,
                        help=f"CPUs per trial, also its torch threads (default {defaults.cpus_per_trial:g})")
    parser.add_argument("--gpus-per-trial", type=float, default=defaults.gpus_per_trial,
                        help="GPU fraction (default 0.25 with a GPU, else 0)")
    parser.add_argument("--max-concurrent", type=int, default=defaults.max_concurrent,
                        help="cap on trials running at once")

