"""The `wrapperdist` command line. Thin: parse, validate, hand over to the sweep driver (one-experiment
commands run as one-point sweeps: wrapperdist/sweep/single.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Only what parsing and validation need: torch, MLflow and Ray take seconds to import, and a bad
# file must be refused at once (torch, MLflow and Ray are imported inside the commands that work).
from wrapperdist.config import ConfigError, ExperimentConfig, load_config
from wrapperdist.confighelp import field_reference
from wrapperdist.settings.registry import load_plugins
from wrapperdist.sweep.spec import SweepConfig, load_sweep

DESCRIPTION = """\
wrapperdist: does fine-tuning change what a pretrained model can do, or only wrap it?
(a sweep-scale reproduction of Jain et al., ICLR 2024, arXiv 2311.12786)

Every command takes an experiment YAML (see experiments/; `sweep` takes a spec from sweeps/).
Results go to MLflow: by default the SQLite store ./mlflow.db, which `mlflow ui` started in this
directory opens; set MLFLOW_TRACKING_URI to use another store or a tracking server."""


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override one field, e.g. --set finetune.optim.lr=1e-4 (repeatable; the value is YAML; "
                   "validated like the file)")


def _add_execution(p: argparse.ArgumentParser) -> None:
    """How a one-experiment command runs: the same executors as `wrapperdist sweep`."""
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                   help="where training stages run (resources.device of the one-point sweep; default cpu)")
    p.add_argument("--ray", action="store_true",
                   help="run the stages as Ray Tune trials (default: in this process, like sweep --local)")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")


def _load(path: str, overrides: list[str] = ()) -> ExperimentConfig:  # type: ignore[assignment]
    try:
        return load_config(path, overrides=overrides)
    except ConfigError as err:
        print(f"invalid configuration:\n{err}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_validate(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.configs:
        try:
            load_config(path, overrides=args.overrides)
            print(f"{path}: ok")
        except ConfigError as err:
            print(err, file=sys.stderr)
            bad += 1
    return 2 if bad else 0


def _note(message: str) -> None:
    """The driver's notes go to stderr: a one-experiment command's stdout is its JSON summary."""
    print(message, file=sys.stderr)


def _progress(args: argparse.Namespace):
    import io

    from wrapperdist.sweep.progress import SweepProgress

    return SweepProgress(stream=io.StringIO(), tty=False) if args.no_progress else None


def _run(args: argparse.Namespace, stages: tuple[str, ...]) -> int:
    """pretrain / finetune / run: the experiment as a one-point sweep (wrapperdist/sweep/single.py)."""
    import tempfile

    from wrapperdist.sweep.driver import run_loaded  # heavy imports only when work is done
    from wrapperdist.sweep.single import experiment_sweep, finetune_start, stage_plan, tag_import

    try:
        sweep = experiment_sweep(args.config, args.overrides, analyze="analyze" in stages, device=args.device)
        with tempfile.TemporaryDirectory() as work:
            init = finetune_start(sweep, args.init_from, Path(work)) if stages == ("finetune",) else None
        plan = stage_plan(sweep, stages, init)
        summary = run_loaded(sweep, plan, local=not args.ray, overrides=args.overrides, log=_note,
                             progress=_progress(args))
    except ConfigError as err:
        print(f"invalid configuration:\n{err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if init is not None:
        tag_import(summary, plan, init, args.init_from or str(sweep.points[0].finetune.from_checkpoint))
    return _print_summary(summary, plan)


def _print_summary(summary: dict, plan) -> int:
    from wrapperdist.sweep.single import stage_summary
    from wrapperdist.tracking import ui_hint

    print(json.dumps(stage_summary(summary, plan), indent=2, default=str))
    print(f"\nMLflow store: {summary['tracking_uri']}\n  "
          f"{ui_hint(summary['tracking_uri'], summary['experiment_id'], summary['sweep_run_id'])}")
    return 1 if summary["failed"] else 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from wrapperdist.sweep.driver import run_loaded
    from wrapperdist.sweep.single import analysis_of_run

    override = _load(args.config) if args.config else None
    try:
        sweep, plan, parents = analysis_of_run(args.run_id, override)
        summary = run_loaded(sweep, plan, local=True, outside_parents=parents, log=_note, progress=_progress(args))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return _print_summary(summary, plan)


def cmd_sweep(args: argparse.Namespace) -> int:
    try:
        sweep = load_sweep(args.spec, args.overrides)
    except ConfigError as err:
        print(f"invalid sweep:\n{err}", file=sys.stderr)
        return 2
    # torch, MLflow and Ray: only once the spec is valid
    from wrapperdist.sweep.driver import plan_summary, run_sweep
    from wrapperdist.sweep.plan import make_plan
    from wrapperdist.tracking import ui_hint

    try:
        if args.dry_run:
            print(plan_summary(sweep, make_plan(sweep)))
            return 0
        summary = run_sweep(args.spec, local=args.local, resume=args.resume, address=args.address,
                            overrides=args.overrides)
    except ConfigError as err:  # what cannot run here (e.g. device: cuda without a GPU): nothing was started
        print(f"invalid sweep:\n{err}", file=sys.stderr)
        return 2
    runs = summary.pop("runs")
    print(json.dumps({**summary, "stage_runs": len(runs)}, indent=2))
    print(f"\nMLflow store: {summary['tracking_uri']}\n  {ui_hint(summary['tracking_uri'], summary['experiment_id'])}")
    return 1 if summary["failed"] else 0


def cmd_generate(args: argparse.Namespace) -> int:
    import tempfile

    from wrapperdist.models import load_model
    from wrapperdist.setting import TextGenerating
    from wrapperdist.settings.registry import setting_for
    from wrapperdist.sweep.single import resolve_checkpoint
    from wrapperdist.tracking import Tracker

    if args.samples < 1 or args.max_new_tokens < 1 or args.temperature <= 0:
        print("error: --samples and --max-new-tokens must be >= 1 and --temperature > 0", file=sys.stderr)
        return 2
    features = [f for f in (args.features or "").split(",") if f.strip()]
    with tempfile.TemporaryDirectory() as work:
        try:
            checkpoint = resolve_checkpoint(Tracker(args.experiment), args.run, Path(work), stage="finetune")
            model, meta = load_model(checkpoint)
            setting = setting_for(ExperimentConfig.model_validate(meta["config"]))
            if not isinstance(setting, TextGenerating):
                raise ValueError(f"{args.run}: a model of the {setting.name} setting does not write text")
            samples = setting.generate(model, meta, args.prompt, features, args.samples, args.max_new_tokens,
                                       args.temperature, args.top_k, args.seed)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    for i, s in enumerate(samples):
        found = ", ".join(s.found) or "none"
        print(f"--- sample {i + 1} (features found: {found})\n{s.prompt}{s.text}\n")
    return 0


RAW = argparse.RawDescriptionHelpFormatter


def _experiment_commands(sub) -> None:
    """validate, pretrain, finetune, run: commands over one experiment YAML."""
    experiment_fields = "experiment YAML fields:\n" + "\n".join(field_reference(ExperimentConfig))
    raw = RAW
    p = sub.add_parser("validate", help="check experiment YAML files without running anything",
                       description="Validate experiment YAML files; print every bad field as file: field: reason.",
                       epilog=experiment_fields, formatter_class=raw)
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML files to check")
    _add_set(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("pretrain", help="pretrain a model (PCFG mixture, stories LM) or compile a Tracr program",
                       description="Pretrain from scratch: on the PCFG task mixture under the sampling prior, on "
                       "the story corpus (setting 'stories'), or compile the RASP program (setting "
                       "'tracr'). Runs as a one-point sweep: one MLflow sweep run with a 'pretrain' child (params, "
                       "curves, checkpoint), the output kept in the config's output_dir store, where `run` and "
                       "`sweep` reuse it.")
    p.add_argument("config", metavar="CONFIG", help="experiment YAML")
    _add_set(p)
    _add_execution(p)
    p.set_defaults(func=lambda a: _run(a, ("pretrain",)), init_from=None)

    p = sub.add_parser("finetune", help="fine-tune a pretrained model on the fine-tuning task",
                       description="Fine-tune a pretrained model on its setting's fine-tuning task (PCFG: setting.task "
                       "with its spurious-correlation share C_Tr; Tracr: toward setting.finetune_target; stories: "
                       "the deletion protocol), tracking both the fine-tuning and the pretraining task.")
    p.add_argument("config", metavar="CONFIG", help="experiment YAML")
    _add_set(p)
    p.add_argument("--from", dest="init_from", metavar="RUN_OR_PATH",
                   help="a checkpoint file, or an MLflow run id (a pretrain run, or a sweep run with one); "
                   "default: finetune.from_checkpoint in the config, else this config's own pretraining if "
                   "its store (output_dir) has it")
    _add_execution(p)
    p.set_defaults(func=lambda a: _run(a, ("finetune",)))

    p = sub.add_parser("run", help="pretrain, then fine-tune (and --analyze): the whole experiment",
                       description="Pretrain and fine-tune one experiment as a one-point sweep (in this process "
                       "unless --ray): the same stage nodes, store and MLflow tree as `wrapperdist sweep` (sweep -> "
                       "pretrain -> fine-tune), so stages finished here are reused by a sweep over the same store "
                       "(output_dir; the sweeps' storage_path: runs) and the other way round. With --analyze, the "
                       "analysis stage (and its control's pretraining) follows, as a child of the fine-tune run.",
                       epilog=experiment_fields, formatter_class=raw)
    p.add_argument("config", metavar="CONFIG", help="experiment YAML")
    _add_set(p)
    p.add_argument("--analyze", action="store_true", help="also run pruning, probing, attention and reFT")
    _add_execution(p)
    p.set_defaults(func=lambda a: _run(a, ("pretrain", "finetune", "analyze") if a.analyze
                                       else ("pretrain", "finetune")), init_from=None)


def _run_commands(sub) -> None:
    """analyze, sweep, generate: commands over runs and sweeps."""
    sweep_fields = "sweep YAML fields:\n" + "\n".join(field_reference(SweepConfig))
    raw = RAW

    p = sub.add_parser("analyze", help="the wrapper verdict for a fine-tuned run",
                       description="Run the four analyses on a fine-tuned model — one-step grad x weight "
                       "pruning and a learned mask (with a random-units control), linear probes per layer, "
                       "attention maps, and reverse fine-tuning against the Scr.+FT control and a random "
                       "init — then write report.md with the verdict ('wrapper', 'capability changed' or "
                       "'mixed') and its thresholds. Logged as a child run of the fine-tune run.")
    p.add_argument("run_id", metavar="RUN", help="a fine-tune run id, or a sweep run id with a fine-tune child")
    p.add_argument("--config", help="experiment YAML overriding the config stored with the checkpoint "
                   "(e.g. other thresholds or reFT budget)")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    p.set_defaults(func=cmd_analyze)
    p = sub.add_parser("sweep", help="run a sweep spec: grids / Optuna search, on Ray or in-process",
                       description="Run a sweep (sweeps/*.yaml): pretrain once per distinct pretraining config, "
                       "fine-tune every grid point (or an Optuna search per grid point), then analyses and reFT "
                       "at each revival budget. Stage outputs are content-addressed under storage_path/store, "
                       "so finished stages are reused, never retrained. Results: one MLflow sweep run with the "
                       "stage runs nested under it.", epilog=sweep_fields, formatter_class=raw)
    p.add_argument("spec", metavar="SPEC", help="sweep YAML")
    p.add_argument("--local", action="store_true",
                   help="run every trial in this process, without starting Ray (debugging; breakpoints work)")
    p.add_argument("--resume", action="store_true",
                   help="continue the last interrupted run of this sweep: finished stages are kept, runs left "
                   "RUNNING by a killed driver are marked KILLED")
    p.add_argument("--dry-run", action="store_true", help="print the trials and resources, run nothing")
    _add_set(p)
    p.add_argument("--address", help="attach to this Ray cluster (host:port, or auto: the one running here); "
                   "default: a new local Ray instance, or the job's cluster inside a Ray job ($RAY_ADDRESS "
                   "exported in the shell is ignored, with a note)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("generate", help="sample stories from a stories-setting model",
                       description="Sample continuations of a prompt from a language model of the stories "
                       "setting (its tokenizer travels in the checkpoint), and say which story features the "
                       "detector finds in each. Example: wrapperdist generate RUN --features Twist "
                       "--prompt 'Once upon a time'")
    p.add_argument("run", metavar="RUN", help="a checkpoint file, a run folder with model.pt, or an MLflow run id "
                   "(a pretrain / fine-tune / reFT run, or one with a fine-tune child)")
    p.add_argument("--prompt", default="", help="text to continue ('\\n' for a newline)")
    p.add_argument("--features", help="comma-separated features to ask for: prepends 'Features: ...' and "
                   "'Story: ' to the prompt, in the Instruct format the model was trained on")
    p.add_argument("--samples", type=int, default=4, help="how many continuations (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="at most this many tokens each (default 200)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens only")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--experiment", default="wrapperdist", help="MLflow experiment of RUN (default wrapperdist)")
    p.set_defaults(func=cmd_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wrapperdist", description=DESCRIPTION, formatter_class=RAW)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _experiment_commands(sub)
    _run_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    load_plugins()  # settings named in $WRAPPERDIST_PLUGINS register before any config is read
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
