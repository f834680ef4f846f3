"""Sweep specs: a base experiment, factorial grids and/or an Optuna search, revival budgets and the
resources to run them with. Validated like experiment files: every bad field is named."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from wrapperdist.config import (
    ConfigError,
    ExperimentConfig,
    PositiveInt,
    Strict,
    format_validation_error,
    read_yaml,
)
from wrapperdist.overrides import OverrideError, apply_overrides, parse_overrides, set_dotted
from wrapperdist.settings.registry import setting_for

# Sections that shape a pretrained model. Optuna samples per fine-tune trial, after the pretrained
# models exist, so it may not search over these (grids may); within `setting`, the setting's own
# pretraining fields are refused when the sweep is loaded (see `load_sweep`).
PRETRAIN_FIELDS = ("seed", "model", "pretrain", "eval")
# Every grid point is validated before anything runs (about 0.2 ms each): 10,000 points answer in
# seconds; a typo'd axis that makes a million would take minutes, so it is refused at once.
DEFAULT_MAX_GRID_POINTS = 10_000
# Sweep-file sections whose keys are dotted experiment paths: `--set grid.seed=[0,1]` sets one key.
KEYED_SECTIONS = ("grid", "overrides", "search.space")


class Distribution(Strict):
    """Exactly one of: loguniform / uniform [low, high], randint [low, high), choice [values]."""

    loguniform: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = Field(
        None, description="[low, high], log-uniform")
    uniform: tuple[float, float] | None = Field(None, description="[low, high], uniform")
    randint: tuple[int, int] | None = Field(None, description="[low, high), integers")
    choice: list[Any] | None = Field(None, description="values to choose among")

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [k for k in ("loguniform", "uniform", "randint", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of loguniform, uniform, randint, choice (got {given or 'none'})")
        bounds = self.loguniform or self.uniform or self.randint
        if bounds is not None and bounds[0] >= bounds[1]:
            raise ValueError(f"low ({bounds[0]}) must be below high ({bounds[1]})")
        return self


class AshaConfig(Strict):
    """Early stopping of fine-tune trials on their evaluation reports (Ray Tune's ASHAScheduler)."""

    max_t: PositiveInt = Field(20, description="most evaluation reports a trial gets")
    grace_period: PositiveInt = Field(2, description="reports before a trial may be stopped")
    reduction_factor: Annotated[int, Field(ge=2)] = Field(2, description="keep 1 in this many at each rung")


class SearchConfig(Strict):
    """Optuna search over fine-tuning/analysis settings, run for each grid point."""

    num_samples: PositiveInt = Field(8, description="fine-tunes sampled per grid point")
    metric: str = Field("ft_acc", description="the stage metric the search optimises")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    seed: int = Field(0, description="the sampler's seed")
    space: dict[str, Distribution] = Field(description="dotted path -> distribution (fine-tuning fields only)")
    asha: AshaConfig | None = Field(None, description="early stopping of poor trials (Ray only)")
    storage: str | None = Field(None, description="Optuna RDB URL of the studies (default: sqlite optuna.db "
                                "beside the stage store; required when storage_path is a URI)")

    @model_validator(mode="after")
    def _not_pretraining(self) -> SearchConfig:
        bad = [k for k in self.space if k.split(".")[0] in PRETRAIN_FIELDS]
        if bad:
            raise ValueError(f"search.space may not change pretraining ({bad}); put these in grid")
        return self


Device = Literal["cpu", "cuda", "auto"]


class ResourcesConfig(Strict):
    cpus: PositiveInt | None = Field(None, description="CPUs the sweep may use (None: this machine's)")
    cpus_per_trial: PositiveInt = Field(1, description="torch threads of an in-process trial")
    train_workers: Annotated[int, Field(ge=0)] = Field(
        0, description="0: train in the trial's process; N: Ray Train TorchTrainer with N DDP workers"
    )
    device: Device = Field("cpu", description="where training stages run: cpu, cuda (refused where there is no "
                           "CUDA device), or auto (cuda where there is one); analyses run on the CPU")
    gpus_per_trial: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="GPU share of an in-process training trial on cuda, so small trials pack onto one "
        "GPU (e.g. 0.125: 8 per GPU; None: the trials the CPUs allow share the GPUs evenly); a Ray Train "
        "worker always takes a whole GPU")
    max_concurrent_trials: PositiveInt | None = Field(None, description="None: what the CPUs (and GPUs) allow")
    max_failures: Annotated[int, Field(ge=0)] = Field(
        1, description="retries of a trial that raises (a Ray Train run that lost a node included: the "
        "retry starts a fresh run on the nodes there are then)")
    worker_start_timeout_s: Annotated[float, Field(gt=0)] = Field(
        1200.0, description="how long a Ray Train run waits for its workers' resources before its trial "
        "fails (then retried, max_failures): long enough for an autoscaler to boot a replacement node "
        "(Ray's own default, 60 s, is not); applies on every cluster the driver runs on or attaches to")

    @model_validator(mode="before")
    @classmethod
    def _use_gpu_was_replaced(cls, data: Any) -> Any:
        if isinstance(data, dict) and "use_gpu" in data:
            raise ValueError("use_gpu was replaced by device: write device: cuda (or auto) instead")
        return data


class SweepConfig(Strict):
    name: str = Field(description="names the sweep's MLflow run and Tune experiments")
    experiment: Path = Field(description="base experiment YAML, relative to the sweep file")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted path -> value, for every trial")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted path -> values (factorial)")
    search: SearchConfig | None = None
    revival_budgets: list[PositiveInt] = Field(default_factory=list, description="reFT steps; one run each")
    analyze: bool = Field(True, description="run the analysis stage (and its control's pretraining)")
    storage_path: str = Field("ray_results", description="local path, NFS mount or URI (s3://, gs://)")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    max_grid_points: PositiveInt = Field(
        DEFAULT_MAX_GRID_POINTS, description="refuse a grid with more points than this (before validating any)")

    @model_validator(mode="after")
    def _non_empty_axes(self) -> SweepConfig:
        empty = [k for k, v in self.grid.items() if not v]
        if empty:
            raise ValueError(f"grid axes without values: {empty}")
        return self


class Sweep(BaseModel):
    """A loaded sweep: the spec, its base experiment and the validated grid points."""

    spec: SweepConfig
    base: dict[str, Any]
    points: list[ExperimentConfig]
    source: str


def grid_assignments(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def experiment_for(base: dict[str, Any], assignment: dict[str, Any], name: str) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for path, value in assignment.items():
        set_dotted(data, path, value)
    data["name"] = name
    return data


def point_name(sweep: str, assignment: dict[str, Any]) -> str:
    parts = [f"{k.split('.')[-1]}={v}" for k, v in assignment.items()]
    return " ".join([sweep, *parts])


def _grid_size(grid: dict[str, list[Any]]) -> int:
    return math.prod(len(values) for values in grid.values())


def _split_overrides(overrides: Sequence[str]) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """`--set` on a sweep: paths that start with a sweep-file field (`resources.cpus`, `grid.seed`)
    change the sweep file; any other path (`finetune.optim.lr`) changes the base experiment."""
    sweep_fields = set(SweepConfig.model_fields)
    parsed = parse_overrides(overrides)
    return ([(p, v) for p, v in parsed if p.split(".")[0] in sweep_fields],
            [(p, v) for p, v in parsed if p.split(".")[0] not in sweep_fields])


def _read_spec(path: Path, overrides: Sequence[str]) -> SweepConfig:
    raw = read_yaml(path)
    try:
        to_spec, to_experiment = _split_overrides(overrides)
        apply_overrides(raw, to_spec, keyed=KEYED_SECTIONS)
    except OverrideError as err:
        raise ConfigError(f"{path}: {err}") from None
    if to_experiment and isinstance(raw.setdefault("overrides", {}), dict):
        raw["overrides"].update(dict(to_experiment))
    try:
        spec = SweepConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(path), err)) from None
    size = _grid_size(spec.grid)
    if size > spec.max_grid_points:
        axes = " x ".join(f"{len(v)} {k}" for k, v in spec.grid.items())
        raise ConfigError(f"{path}: grid: {size:,} points ({axes}) exceed max_grid_points "
                          f"({spec.max_grid_points:,}); raise it in the file or with --set max_grid_points=N")
    return spec


def _search_errors(path: Path, spec: SweepConfig, base: dict[str, Any], base_cfg: ExperimentConfig) -> list[str]:
    """Each search dimension, tried at its first value: valid, and not touching pretraining."""
    errors = []
    for key, dist in (spec.search.space.items() if spec.search else ()):
        probe = copy.deepcopy(base)
        sample = (dist.loguniform or dist.uniform or dist.randint or dist.choice)[0]
        try:
            set_dotted(probe, key, sample)
            sampled = ExperimentConfig.model_validate(probe)
        except OverrideError as err:
            errors.append(f"{path}: search.space.{key}: {err}")
            continue
        except ValidationError as err:
            errors.append(format_validation_error(f"{path}: search.space.{key}", err))
            continue
        setting = setting_for(base_cfg)
        if setting.pretrain_identity(sampled) != setting.pretrain_identity(base_cfg):
            errors.append(f"{path}: search.space.{key}: changes the pretrained model; put it in grid")
    return errors


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> Sweep:
    """Read a sweep file, its base experiment, and validate every grid point before anything runs.
    `overrides` are `--set PATH=VALUE` arguments (see `_split_overrides`)."""
    path = Path(path)
    spec = _read_spec(path, overrides)
    base_path = spec.experiment if spec.experiment.is_absolute() else path.parent / spec.experiment
    if not base_path.is_file():
        raise ConfigError(f"{path}: experiment: file not found: {base_path}")
    base = read_yaml(base_path)
    try:
        for key, value in spec.overrides.items():
            set_dotted(base, key, value)
        base_cfg = ExperimentConfig.model_validate(base)
    except OverrideError as err:
        raise ConfigError(f"{path}: overrides: {err}") from None
    except ValidationError as err:
        raise ConfigError(format_validation_error(f"{path} (experiment {base_path} + overrides)", err)) from None
    points, errors = [], []
    for assignment in grid_assignments(spec.grid):
        try:
            data = experiment_for(base, assignment, point_name(spec.name, assignment))
            points.append(ExperimentConfig.model_validate(data))
        except (ValidationError, OverrideError) as err:
            where = ", ".join(f"grid.{k}={v!r}" for k, v in assignment.items())
            errors.append(format_validation_error(f"{path}: {where}", err) if isinstance(err, ValidationError)
                          else f"{path}: {where}: {err}")
    errors += _search_errors(path, spec, base, base_cfg)
    if errors:
        raise ConfigError("\n".join(dict.fromkeys(errors)))
    return Sweep(spec=spec, base=base, points=points, source=str(path))
