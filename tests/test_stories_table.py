"""analysis/stories_table.py on fake analysis runs: Tab. 1 cells with intervals, the Not-in-PT row once
per seed, the probes per layer, and verdicts recomputed from the logged evidence."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]


def load_table():
    spec = importlib.util.spec_from_file_location("stories_table", ROOT / "analysis" / "stories_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(deletion: str, lr: float, seed: int, deleted: list[float], control: list[float]):
    metrics = {"evidence.rate_pretrained": 1.0, "evidence.rate_finetuned": deleted[0], "evidence.rate_control": 0.0,
               "evidence.rate_unasked_pretrained": 0.0, "evidence.probe_finetuned": 0.9,
               "evidence.probe_pretrained": 0.9, "evidence.probe_control": 0.8, "evidence.probe_random_init": 0.7,
               "evidence.probe_majority": 0.69, "evidence.reft_steps_finetuned": 10.0, "evidence.reft_budget": 100.0}
    for p, d, c in zip((0, 1, 10, 100), deleted, control, strict=True):
        metrics |= {f"tab1.deleted.at_{p}": d, f"tab1.not_in_pt.at_{p}": c,
                    f"reftloss.deleted.at_{p}": 1.0, f"reftloss.not_in_pt.at_{p}": 2.0}
    for model in ("present", "not_in_pt", "random", "deleted"):
        metrics |= {f"probe_layer.{model}.{i}": 0.8 for i in range(3)}
    params = {"setting.deletion": deletion, "finetune.optim.lr": str(lr), "seed": str(seed),
              "analysis.verdict.probe_margin": "0.05", "analysis.verdict.reft_speedup": "2.0"}
    return SimpleNamespace(data=SimpleNamespace(metrics=metrics, params=params, tags={}))


def test_tab1_analogue_with_intervals():
    table = load_table()
    assert table.interval([0.5, 0.5, 0.5]) == "50 ± 0 [50–50]"
    runs = [fake_run("F", 3e-3, s, [0.0, 0.0, 0.5 + 0.1 * s, 1.0], [0.0, 0.0, 0.0, 0.0]) for s in range(3)]
    runs += [fake_run("F+R", 3e-4, s, [0.9, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]) for s in range(3)]
    text = "\n".join(table.tables(runs))
    assert "| F (η_M = 0.003) | 44 / 81 / 81 / 82 | 3 | 0 ± 0 [0–0] | 0 ± 0 [0–0] | 60 ± 25 [50–70] |" in text
    assert "| F+R (η_S = 0.0003) | 12 / 44 / 81 / 81 | 3 |" in text
    assert "| Not in PT (control) | 12 / 31 / 44 / 81 | 3 |" in text  # one value per seed, not per run
    assert "| embedding | after block 0 | after block 1 |" in text
    assert "F (η_M): wrapper 3" in text and "F+R (η_S): not deleted 3" in text
