"""Optuna studies that outlive the driver: an RDB storage (SQLite next to the sweep's store, or the
URL in `search.storage` on a cluster), one study per grid point named after the sweep and its
MLflow run, so `--resume` (which re-attaches to that run) continues the same study and
`optuna-dashboard <storage>` shows it. Used by both executors: the in-process ask/tell loop and Ray
Tune's OptunaSearch (which takes `storage=` and `study_name=` and loads an existing study)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wrapperdist.config import ExperimentConfig
from wrapperdist.setting import Runtime
from wrapperdist.store import Store
from wrapperdist.sweep.plan import finetune_node
from wrapperdist.sweep.spec import SearchConfig, Sweep, set_dotted
from wrapperdist.sweep.trials import NodeOutcome, Report, run_node

if TYPE_CHECKING:
    import optuna


def storage_url(sweep: Sweep, storage_path: str) -> str:
    """Where the sweep's studies live: `search.storage`, else `optuna.db` beside the stage store."""
    search = sweep.spec.search
    if search is not None and search.storage:
        return search.storage
    if "://" in storage_path:
        raise ValueError(f"{sweep.source}: search.storage: an Optuna RDB URL is required when storage_path is "
                         f"a URI ({storage_path}); e.g. postgresql://host/optuna")
    return f"sqlite:///{Path(storage_path).resolve() / 'optuna.db'}"


def study_name(sweep_name: str, sweep_run_id: str, point: int) -> str:
    """Unique per sweep run (a new run starts a new study), equal on --resume (same run)."""
    return f"{sweep_name}.{sweep_run_id[:8]}.{point}"


def searched_config(base: ExperimentConfig, sampled: dict, name: str) -> ExperimentConfig:
    """The base experiment with the searcher's sampled values at their dotted paths."""
    data = base.model_dump(mode="json")
    for path, value in sampled.items():
        set_dotted(data, path, value)
    data["name"] = name
    return ExperimentConfig.model_validate(data)


@dataclass
class OpenStudy:
    study: optuna.Study
    sampler_seed: int  # what a sampler for the trials still to come is seeded with
    remaining: int  # trials still to sample to reach num_samples
    previous: list[NodeOutcome]  # fine-tunes an earlier attempt finished (read back from the store)


def open_study(url: str, name: str, search: SearchConfig, base: ExperimentConfig, store: Store,
               report: Report) -> OpenStudy:
    """Create the study, or load it and settle what an interrupted driver left: trials it was
    running are marked FAIL (their process is gone) and will be sampled again; finished ones count
    toward num_samples and their fine-tunes come back from the store (reported as cached)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                direction="maximize" if search.mode == "max" else "minimize")
    states = optuna.trial.TrialState
    for trial in study.get_trials(deepcopy=False, states=(states.RUNNING, states.WAITING)):
        study.tell(trial.number, state=states.FAIL)
    done = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED))
    previous = []
    for trial in done:
        if trial.state != states.COMPLETE:
            continue
        node = finetune_node(searched_config(base, trial.params, f"{base.name} #{trial.number}"))
        if store.done(node.key):
            previous.append(run_node(node, store, report, Runtime(threads=1, progress=False)))
    # A sampler seeded as before would draw its first random points again, re-sampling finished
    # trials: shift the seed by the trials the study already holds.
    seed = search.seed + len(study.trials)
    return OpenStudy(study, seed, max(0, search.num_samples - len(done)), previous)
