"""Calibrate a PCFG scale against the paper's Tab. 5 (and Fig. 9), outside any sweep machinery.

Runs, in parallel worker processes, the paper's PCFG Counter protocol on one experiment YAML:
pretraining per (prior, seed), the Scr.+FT control's from-scratch model per seed, fine-tuning over
a grid of learning rates x C_Tr, and reFT back to counting O_PT from the fine-tuned models, the
Scr.+FT models and random init (Scr.). Every finished job is one JSON line in `<out>/results.jsonl`,
so a run cut short by `--deadline` still leaves every result it finished; `--summarize` prints the
Tab. 5 analogue and the reFT table from such a file.

It calls the project's own stage functions (`stages.run_pretrain` / `run_finetune` / `run_reft`);
nothing is tracked in MLflow. On a machine with a GPU, `--device cuda` trains every job there.

    python scripts/calibrate_pcfg.py sweeps/cpu_small.yaml --out /tmp/calib --workers 2
    python scripts/calibrate_pcfg.py --summarize /tmp/calib/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
from paper_tables import PAPER_ETA, PAPER_PRETRAINED, mean_ci, paper_finetuned  # noqa: E402

from wrapperdist.config import ExperimentConfig, read_yaml
from wrapperdist.models import load_model, random_like
from wrapperdist.overrides import set_dotted
from wrapperdist.setting import Runtime
from wrapperdist.settings.registry import setting_for
from wrapperdist.sink import MemorySink
from wrapperdist.stages import run_finetune, run_pretrain, run_reft

# Tab. 5's column order: O_PT on C_Te = 0 and 1, then O_FT on C_Te = 0 and 1
KEYS = ("pt_acc", "pt_acc_spurious", "ft_acc", "ft_acc_spurious")


def config(base: dict[str, Any], **dotted: Any) -> ExperimentConfig:
    data = json.loads(json.dumps(base))
    for path, value in dotted.items():
        set_dotted(data, path.replace("__", "."), value)
    data.setdefault("analysis", {}).setdefault("reft", {})["below_finetune"] = False  # reFT LR set per job
    return ExperimentConfig.model_validate(data)


def run_job(job: dict[str, Any]) -> dict[str, Any] | None:
    """One job's record, or None where it was skipped (past its deadline, or its input was)."""
    needs = job.get("init") or job.get("shape_from")
    if time.time() > job["deadline"] or (needs and not (Path(job["out"]) / needs / "model.pt").is_file()):
        return None
    base, out, runtime = job["base"], Path(job["out"]), Runtime(threads=1, progress=False, device=job["device"])
    start, sink, kind = time.time(), MemorySink(), job["kind"]
    record = {k: v for k, v in job.items() if k not in ("base", "out", "device", "deadline")}
    if kind in ("pretrain", "control"):
        cfg = config(base, setting__prior=job["prior"], seed=job["seed"])
        if kind == "control":
            cfg = setting_for(cfg).control_config(cfg)
        run_pretrain(setting_for(cfg), cfg, out / job["name"], sink, runtime)
        record["history"] = {k: sink.history(k) for k in (*KEYS, "mix_acc")}
    elif kind == "finetune":
        cfg = config(base, setting__prior=job["prior"], seed=job["seed"], finetune__optim__lr=job["lr"],
                     setting__spurious_fraction=job["c_tr"])
        steps = cfg.finetune.optim.steps
        cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={
            "optim": cfg.finetune.optim.model_copy(update={"eval_every": steps // 10})})})
        run_finetune(setting_for(cfg), cfg, out / job["init"] / "model.pt", out / job["name"], sink, runtime)
        record["history"] = {k: sink.history(k) for k in KEYS}
    else:  # reft: from a fine-tuned model, the Scr.+FT model, or random init (init == "")
        cfg = config(base, setting__prior=job["prior"], seed=job["seed"], finetune__optim__lr=job["lr"],
                     analysis__reft__steps=job["steps"], analysis__reft__eval_every=job["eval_every"])
        model, _ = load_model(out / (job["init"] or job["shape_from"]) / "model.pt")
        if not job["init"]:
            model = random_like(model, cfg.seed)
        model.to(runtime.device)
        record["curve"] = run_reft(setting_for(cfg), cfg, model, job["reft_lr"], sink, runtime)
    record["wall_s"] = round(time.time() - start, 1)
    return record


def run_guarded(job: dict[str, Any]) -> dict[str, Any] | None:
    """A job that raises is recorded as failed; the others go on."""
    try:
        return run_job(job)
    except Exception as err:  # noqa: BLE001 - one bad grid point must not end the calibration
        return {"kind": "error", "job": job.get("name") or job.get("init"), "error": repr(err)}


def plan(args: argparse.Namespace, base: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Three phases; a phase starts when the one before it has finished."""
    now = time.time()
    common = {"base": base, "out": str(args.out), "device": args.device, "deadline": now + args.deadline}
    pretrain = [{**common, "kind": "pretrain", "prior": p, "seed": s, "name": f"pt-{p}-{s}"}
                for s in args.seeds for p in args.priors]
    pretrain += [{**common, "kind": "control", "prior": args.priors[0], "seed": s, "name": f"scrft-{s}"}
                 for s in args.seeds]
    ft_deadline = now + min(args.ft_deadline, args.deadline)
    finetune = [{**common, "deadline": ft_deadline, "kind": "finetune", "prior": p, "seed": s, "lr": lr, "c_tr": c,
                 "init": f"pt-{p}-{s}", "name": f"ft-{p}-{s}-{lr:g}-{c:g}"}
                for s in args.seeds for lr in args.ft_lrs for c in args.c_tr for p in args.priors]
    reft = []
    for lr in args.reft_from:  # reFT at lr * reft_factor, from FT at lr, C_Tr in reft_c_tr, and the controls
        r = {**common, "kind": "reft", "lr": lr, "reft_lr": lr * args.reft_factor, "steps": args.reft_steps,
             "eval_every": args.reft_eval_every}
        for s in args.seeds:
            reft += [{**r, "source": "ft", "prior": p, "seed": s, "c_tr": c, "init": f"ft-{p}-{s}-{lr:g}-{c:g}"}
                     for c in args.reft_c_tr for p in args.priors]
            reft += [{**r, "source": "scr+ft", "prior": args.priors[0], "seed": s, "init": f"scrft-{s}"},
                     {**r, "source": "scr", "prior": args.priors[0], "seed": s, "init": "",
                      "shape_from": f"scrft-{s}"}]
    return [pretrain, finetune, reft]


def run(args: argparse.Namespace) -> None:
    base = read_yaml(args.experiment)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    ctx = mp.get_context("spawn")  # CUDA cannot be forked; spawn is also what a clean worker needs
    with ctx.Pool(args.workers, maxtasksperchild=None) as pool, results.open("a") as f:
        for phase in plan(args, base):
            done = 0
            for record in pool.imap_unordered(run_guarded, phase):
                done += record is not None
                if record is not None:
                    f.write(json.dumps(record) + "\n")
                    f.flush()
            print(f"{phase[0]['kind']}: {done}/{len(phase)} jobs done", flush=True)
    print(summarize(results))


def _at(history: list[list[float]], frac: float) -> float:
    """The value logged at `frac` of the run (the 1K / 10K points of Tab. 5)."""
    last = history[-1][0]
    return min(history, key=lambda sv: abs(sv[0] - frac * last))[1]


def _cell(values: list[float]) -> str:
    """Percent, mean ± half-width of the 95 % t interval over seeds."""
    if not values:
        return "-"
    mean, half = mean_ci([100 * v for v in values])
    return f"{mean:.0f}" if len(values) == 1 else f"{mean:.0f}±{half:.0f}"


def _paper(value: float | None) -> str:
    return "" if value is None else f" [{value:g}]"


def steps_to(curve: list[list[float]], threshold: float) -> int | None:
    return next((int(s) for s, v in curve if v >= threshold), None)


def summarize(path: Path, threshold: float = 0.9) -> str:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    out = ["Cells: accuracy %, mean ± 95 % t-interval over seeds; [the paper's Tab. 5 value, 200K / 10K iterations].",
           "", "## Pretrained models", "", "| prior | count a (O_PT) | count b (O_FT) | seeds |", "|---|---|---|---|"]
    for prior in dict.fromkeys(r["prior"] for r in rows if r["kind"] == "pretrain"):
        pts = [r for r in rows if r["kind"] == "pretrain" and r["prior"] == prior]
        paper = PAPER_PRETRAINED.get(prior, (None, None))
        out.append(f"| {prior} | {_cell([r['history']['pt_acc'][-1][1] for r in pts])}{_paper(paper[0])} | "
                   f"{_cell([r['history']['ft_acc'][-1][1] for r in pts])}{_paper(paper[1])} | {len(pts)} |")
    controls = [r for r in rows if r["kind"] == "control"]
    if controls:
        out.append(f"| Scr.+FT start (counts b only) | {_cell([r['history']['pt_acc'][-1][1] for r in controls])} | "
                   f"{_cell([r['history']['ft_acc'][-1][1] for r in controls])} | {len(controls)} |")
    out += ["", "## After fine-tuning (Tab. 5 layout: accuracy % at 10% / 100% of FT steps)", "",
            "| lr | prior | C_Tr | O_PT Te0 | O_PT Te1 | O_FT Te0 | O_FT Te1 |", "|---|---|---|---|---|---|---|"]
    fts = [r for r in rows if r["kind"] == "finetune"]
    for lr in sorted({r["lr"] for r in fts}, reverse=True):
        for prior in dict.fromkeys(r["prior"] for r in fts):
            for c in sorted({r["c_tr"] for r in fts}):
                cell = [r for r in fts if (r["lr"], r["prior"], r["c_tr"]) == (lr, prior, c)]
                paper = paper_finetuned(PAPER_ETA.get(lr, "?"), prior, c) or (None,) * len(KEYS)
                if cell:
                    out.append(f"| {lr:g} | {prior} | {c:g} | " + " | ".join(
                        f"{_cell([_at(r['history'][k], 0.1) for r in cell])} / "
                        f"{_cell([_at(r['history'][k], 1.0) for r in cell])}{_paper(p)}"
                        for k, p in zip(KEYS, paper, strict=True)) + " |")
    refts = [r for r in rows if r["kind"] == "reft"]
    if refts:
        out += ["", f"## reFT: steps to count-a accuracy >= {threshold} (C_Te = 0; per seed; '>': not in the budget)",
                "", "| FT lr | reFT lr | start | prior | C_Tr | steps per seed | final acc |",
                "|---|---|---|---|---|---|---|"]
        for r0 in sorted({(r["lr"], r["reft_lr"], r["source"], r["prior"], r.get("c_tr", -1)) for r in refts},
                         key=lambda k: (-k[0], k[2], k[3], k[4])):
            cell = [r for r in refts if (r["lr"], r["reft_lr"], r["source"], r["prior"], r.get("c_tr", -1)) == r0]
            steps = [steps_to(r["curve"], threshold) for r in cell]
            shown = ", ".join(str(s) if s is not None else f">{r['steps']}" for s, r in zip(steps, cell, strict=True))
            prior, c = (r0[3], f"{r0[4]:g}") if r0[2] == "ft" else ("any", "-")
            out.append(f"| {r0[0]:g} | {r0[1]:g} | {r0[2]} | {prior} | {c} | {shown} | "
                       f"{_cell([r['curve'][-1][1] for r in cell])} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", nargs="?", help="experiment YAML (a pcfg setting)")
    p.add_argument("--out", type=Path, default=Path("calibration"), help="checkpoints and results.jsonl")
    p.add_argument("--summarize", type=Path, help="only print the tables of this results.jsonl")
    p.add_argument("--priors", nargs="+", default=["low", "medium", "high"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--ft-lrs", nargs="+", type=float, default=[1e-4, 3e-5, 1e-5, 3e-6, 1e-6])
    p.add_argument("--c-tr", nargs="+", type=float, default=[0.0, 0.5, 1.0], help="fine-tuning C_Tr values")
    p.add_argument("--reft-from", nargs="+", type=float, default=[1e-5], help="FT lrs whose models are revived")
    p.add_argument("--reft-c-tr", nargs="+", type=float, default=[0.0, 1.0])
    p.add_argument("--reft-factor", type=float, default=0.1, help="reFT lr = this x the FT lr (paper: below it)")
    p.add_argument("--reft-steps", type=int, default=1500)
    p.add_argument("--reft-eval-every", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--deadline", type=float, default=1e9, help="seconds after which no new job starts")
    p.add_argument("--ft-deadline", type=float, default=1e9, help="seconds after which no fine-tuning job starts")
    args = p.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
    elif args.experiment:
        run(args)
    else:
        p.error("give an experiment YAML, or --summarize results.jsonl")


if __name__ == "__main__":
    main()
