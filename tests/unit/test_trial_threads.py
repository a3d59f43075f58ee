"""A trial (sweeps and ablations share one trainable) runs with as many torch threads as CPUs its resource request
holds (at least one), checked without starting Ray: Tune's trial context is replaced by one holding the request, and
the pipeline by a stub."""

from __future__ import annotations

import types

import pytest

from sellarec.config import load_config, to_dict


class _Stop(Exception):
    """Raised by the stub pipeline once it has seen the trial's configuration."""


@pytest.mark.parametrize(("cpus", "threads"), [(1.0, 1), (2.0, 2), (0.5, 1), (3.5, 3)])
def test_trial_threads_are_its_cpus(monkeypatch, tmp_path, cpus, threads) -> None:
    tune = pytest.importorskip("ray.tune")
    import sellarec.pipeline
    from sellarec.experiment.trial import TrialConfigs, run_trial

    request = types.SimpleNamespace(required_resources={"CPU": cpus, "GPU": 0.0})  # as PlacementGroupFactory
    context = types.SimpleNamespace(get_trial_resources=lambda: request, get_trial_dir=lambda: str(tmp_path),
                                    get_trial_id=lambda: "t0")
    monkeypatch.setattr(tune, "get_context", lambda: context)
    seen: list[int] = []

    def pipeline(cfg, out_dir, **_):
        seen.append(cfg.runtime.threads)  # run_pipeline sets torch's threads from it
        raise _Stop

    monkeypatch.setattr(sellarec.pipeline, "run_pipeline", pipeline)
    with pytest.raises(_Stop):
        run_trial({"stage3.lr": 0.01}, TrialConfigs(base=to_dict(load_config("tiny"))))
    assert seen == [threads]
