"""The claims module judges planted data as its criteria say: a clear revival is reproduced, a case
where nothing was lost is inconclusive (never reproduced), too few seeds is inconclusive, and a
runs.jsonl round trip gives the same verdicts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
import claims  # noqa: E402
import runs_data  # noqa: E402
import sweep_runs  # noqa: E402


def fine_tune(seed: int, *, prior="low", lr=1e-5, c_tr=1.0, pt_before=1.0, pt_after=0.1, ft_te0=0.02,
              ft_te1=0.99, reft_ft=100, reft_ctrl=None, budget=1000, prune=((0, 0.1), (5, 0.8)),
              random=((0, 0.1), (5, 0.15)), reft_final_ft=0.95, reft_final_ctrl=0.3):
    ft = sweep_runs.FineTune(f"run{seed}", prior, lr, c_tr, seed,
                         {"pt_acc": pt_after, "ft_acc": ft_te0, "ft_acc_spurious": ft_te1},
                         pt_acc_pretrained=pt_before, ft_acc_pretrained=0.27)
    evidence = {"reft_budget": budget, "reft_reached_finetuned": float(reft_ft is not None),
                "reft_reached_control": float(reft_ctrl is not None),
                "prune_best_gain": max(v for _, v in prune) - prune[0][1],
                "reft_final_pt_acc_finetuned": reft_final_ft, "reft_final_pt_acc_control": reft_final_ctrl}
    if reft_ft is not None:
        evidence["reft_steps_finetuned"] = reft_ft
    if reft_ctrl is not None:
        evidence["reft_steps_control"] = reft_ctrl
    ft.analysis = {f"evidence.{k}": [(0, float(v))] for k, v in evidence.items()}
    ft.analysis["prune.paper.pt_acc"] = list(prune)
    ft.analysis["prune.random.pt_acc"] = list(random)
    ft.start_metrics = {"pt_acc": pt_before, "ft_acc": 0.27}
    return {"setting": "pcfg", "ft": ft, "machine": {"cpu": "test", "cpu_capability": "AVX2", "device": "cpu"}}


def by_item(rows):
    return {claim.item: judgement for claim, judgement in claims.judge_all(rows)}


def test_a_clear_revival_is_reproduced():
    rows = [fine_tune(s) for s in range(5)]
    verdicts = by_item(rows)
    assert verdicts["6"].status == "reproduced", verdicts["6"]  # 0.95 vs 0.30 after the same budget
    assert verdicts["4"].status == "reproduced", verdicts["4"]  # +0.7 from pruning, random +0.05
    assert verdicts["2a"].status == "reproduced", verdicts["2a"]
    assert verdicts["3a"].status == "reproduced", verdicts["3a"]


def test_nothing_lost_is_inconclusive_never_reproduced():
    rows = [fine_tune(s, pt_after=0.98) for s in range(5)]  # the fine-tune kept count(a): no revival to show
    verdicts = by_item(rows)
    for item in ("4", "6"):
        assert verdicts[item].status == "inconclusive", (item, verdicts[item])
        assert "not lost" in verdicts[item].numbers or "lost O_PT" in verdicts[item].numbers
    assert verdicts["3a"].status == "not reproduced"  # the claim itself (O_PT collapses) is refuted


def test_slow_or_absent_revival_is_not_reproduced():
    rows = [fine_tune(s, reft_ft=None, reft_ctrl=None, prune=((0, 0.1), (5, 0.12)), reft_final_ft=0.35)
            for s in range(4)]
    verdicts = by_item(rows)
    assert verdicts["6"].status == "not reproduced"
    assert verdicts["4"].status == "not reproduced"


def test_a_revival_the_control_never_matches_is_not_lost_to_censoring():
    """The fine-tune needs 650 of 1000 reFT steps, the control never gets there: a steps ratio capped at
    (budget + 1) / 650 = 1.5 would call that slow; O_PT after the same budget (0.98 vs 0.32) does not."""
    rows = [fine_tune(s, reft_ft=650, reft_ctrl=None, reft_final_ft=0.98, reft_final_ctrl=0.32) for s in range(3)]
    verdict = by_item(rows)["6"]
    assert verdict.status == "reproduced", verdict
    assert "650 vs > 1000" in verdict.numbers
    near = [fine_tune(s, reft_ft=650, reft_ctrl=700, reft_final_ft=0.95, reft_final_ctrl=0.92) for s in range(3)]
    assert by_item(near)["6"].status == "not reproduced"  # the control catches up within the budget


def test_too_few_seeds_is_inconclusive_with_its_numbers():
    rows = [fine_tune(s) for s in range(2)]
    verdict = by_item(rows)["6"]
    assert verdict.status == "inconclusive" and "2 seed(s) < 3" in verdict.numbers and "reproduced" in verdict.numbers


def test_a_wrapper_needs_a_pretrained_model_that_did_not_count_b():
    rows = [fine_tune(s) for s in range(3)]
    for row in rows:
        row["ft"].ft_acc_pretrained = 0.99  # already counts b: a fine-tune answering b is no wrapper
    assert by_item(rows)["2a"].status == "inconclusive"


def test_runs_file_round_trip_gives_the_same_verdicts(tmp_path):
    from dataclasses import asdict

    rows = [fine_tune(s, reft_ft=300 + 50 * s, reft_ctrl=900) for s in range(3)]
    path = tmp_path / "runs.jsonl"
    runs_data.write([{**asdict(r["ft"]), "setting": "pcfg", "machine": r["machine"], "params": {}} for r in rows],
                    path)
    loaded = runs_data.load(path)
    assert [(c.item, j) for c, j in claims.judge_all(loaded)] == [(c.item, j) for c, j in claims.judge_all(rows)]
    text = claims.markdown(claims.judge_all(loaded), [str(path)], loaded)
    assert "| 6 |" in text and "test (AVX2, cpu)" in text


def test_a_fine_tune_recorded_by_two_sweeps_counts_once():
    """The 5-seed sweep reuses the demo's seeds 0-2: the same condition and seed from two files is one
    fine-tune, or the intervals would be too narrow."""
    first = [fine_tune(s) for s in range(3)]
    second = [fine_tune(s) for s in range(5)]
    rows = claims.unique(first + second)
    assert sorted(r["ft"].seed for r in rows) == [0, 1, 2, 3, 4]
    assert all(r is s for r, s in zip(sorted(rows, key=lambda r: r["ft"].seed), second, strict=True))
    other_lr = fine_tune(0, lr=1e-4)
    assert len(claims.unique(first + [other_lr])) == 4  # another condition is another fine-tune
    # the demo's file predates an analysis option; the 5-seed file records it: still one fine-tune each
    older = [{**r, "params": {"model.d_model": "64"}} for r in first]
    newer = [{**r, "params": {"model.d_model": "64", "analysis.probe.fresh_batch_size": "None"}} for r in second]
    assert sorted(r["ft"].seed for r in claims.unique(older + newer)) == [0, 1, 2, 3, 4]
    wider = {**older[0], "params": {"model.d_model": "128"}}
    assert len(claims.unique(older + [wider])) == 4  # a fine-tune parameter still tells them apart


def test_embedding_replaces_the_block_and_nothing_else():
    text = claims.markdown(claims.judge_all([fine_tune(s) for s in range(3)]), ["a.jsonl"], [])
    doc = "intro\n<!-- claims:start -->\nold table\n<!-- claims:end -->\noutro\n"
    once = claims.embedded(doc, text)
    assert once.startswith("intro\n<!-- claims:start -->\n") and once.endswith("<!-- claims:end -->\noutro\n")
    assert "old table" not in once and "| item | the paper |" in once and "# The paper's claims" not in once
    assert claims.embedded(once, text) == once  # idempotent
    with pytest.raises(ValueError, match="claims:start"):
        claims.embedded("no markers here", text)


def test_runs_data_reads_a_setting_without_answer_accuracies():
    """A TinyStories fine-tune logs losses and twist rates, no pt_acc / ft_acc: its start values are
    NaN, not an IndexError (make stories' export failed on that)."""
    from types import SimpleNamespace

    run = SimpleNamespace(info=SimpleNamespace(run_id="r"), data=SimpleNamespace(metrics={"twist_rate": 0.3}))
    assert sweep_runs.start_value(None, run, "pt_acc") != sweep_runs.start_value(None, run, "pt_acc")  # NaN


def test_a_10k_fine_tune_replaces_the_same_seeds_1k_one_for_the_table_5_claims():
    """Tab. 5 reads 10K-step runs. Where a seed has both lengths, claims on fine-tuning accuracy use
    the 10K run (not both: the seed would count twice); the analyses' claims keep the analysed 1K runs."""
    short = [fine_tune(s, pt_after=0.75) for s in range(3)]  # 1K steps: O_PT not yet collapsed
    for r in short:
        r["ft"].steps, r["params"] = 1000, {"finetune.optim.steps": "1000", "analysis.reft.steps": "1000",
                                            "seed": str(r["ft"].seed)}
    long = [fine_tune(s, pt_after=0.05) for s in range(3)]  # 10K steps, not analysed
    for r in long:
        r["ft"].steps, r["params"], r["ft"].analysis = 10000, {"finetune.optim.steps": "10000",
                                                               "seed": str(r["ft"].seed)}, {}
    assert by_item(short)["3a"].status == "not reproduced"
    verdicts = by_item(short + long)
    assert verdicts["3a"].status == "reproduced", verdicts["3a"]
    assert "(n=3)" in verdicts["3a"].numbers and "10K-step fine-tunes" in verdicts["3a"].numbers
    assert verdicts["4"].status == "reproduced" and "1K-step fine-tunes" in verdicts["4"].numbers  # the analysed runs
    assert len(claims.longest(short + long)) == 3
    fourth = fine_tune(3, pt_after=0.75)  # a seed run at 1K only: not mixed into the 10K verdict
    fourth["ft"].steps, fourth["params"] = 1000, {"finetune.optim.steps": "1000", "seed": "3"}
    assert "(n=3)" in by_item(short + long + [fourth])["3a"].numbers


def test_the_length_table_reads_the_1k_column_inside_the_10k_runs():
    import tab5

    short = [fine_tune(s, pt_after=0.75)["ft"] for s in range(2)]
    long = [fine_tune(s, pt_after=0.05)["ft"] for s in range(2)]
    for ft in short:
        ft.steps = 1000
    for ft in long:
        ft.steps = 10000
        ft.curves = {"pt_acc": [(0, 1.0), (1000, 0.6), (10000, 0.05)]}
    text = "\n".join(tab5.length_table(short + long))
    assert "eta_M, low prior, C_Tr = 1 — 2 run(s) of 10K steps, 2 of 1K" in text
    assert "| O_PT, C_Te = 0 | 75.0 ± 0.0 | 60.0 ± 0.0 | 5.0 ± 0.0 | 17.5 |" in text  # paper: Tab. 5, 10K
    assert tab5.length_table(short) == []  # nothing at the paper's length: no table
