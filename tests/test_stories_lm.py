"""The stories setting end to end on a tiny model: LM loss and sampling, the deletion protocols'
data, a real (in-process) sweep recorded in MLflow, and `wrapperdist generate`."""

import numpy as np
import pytest
import torch
import yaml

from wrapperdist.cli import main
from wrapperdist.config import ExperimentConfig
from wrapperdist.settings.registry import setting_for
from wrapperdist.settings.stories.config import StoriesSection
from wrapperdist.settings.stories.lm import (
    IGNORE,
    build_corpus,
    build_tokenizer,
    encode,
    lm_loss,
    protocol_records,
    sample,
)
from wrapperdist.settings.stories.records import to_text
from wrapperdist.settings.stories.tokenizer import BOS, EOS, PAD, special_id

STORIES = {
    "name": "tiny-stories", "seed": 0,
    "model": {"n_layer": 1, "n_head": 2, "d_model": 32},
    "setting": {"name": "stories", "stories": 500, "eval_stories": 60, "vocab_size": 320, "seq_len": 128,
                "generation_prompts": 4, "max_new_tokens": 24},
    "pretrain": {"optim": {"lr": 3e-3, "steps": 30, "batch_size": 16, "eval_every": 15}},
    "finetune": {"optim": {"lr": 1e-3, "steps": 10, "batch_size": 16, "eval_every": 5}},
    "eval": {"samples": 32},
    "analysis": {"probe": {"samples": 80, "steps": 20}, "reft": {"steps": 10, "eval_every": 5, "lr": 3e-4}},
}


def test_encoding_loss_and_sampling():
    cfg = ExperimentConfig.model_validate(STORIES)
    stories = StoriesSection.of(cfg)
    tok = build_tokenizer(stories)
    corpus = build_corpus(stories)
    assert (len(corpus.pretrain), len(corpus.finetune), len(corpus.eval)) == (400, 100, 60)
    texts = [to_text(r) for r in corpus.eval[:8]]
    tokens, targets = encode(tok, texts, 128)
    bos, eos, pad = (special_id(tok, t) for t in (BOS, EOS, PAD))
    assert (tokens[:, 0] == bos).all()
    n = int((tokens[0] != pad).sum())
    assert (targets[0, : n - 1] == tokens[0, 1:n]).all() and targets[0, n:].tolist() == [IGNORE] * (128 - n)
    model = setting_for(cfg).build_model(cfg)
    assert model.shape.vocab_size == tok.get_vocab_size()
    loss = lm_loss(model, torch.from_numpy(tokens), torch.from_numpy(targets))
    assert abs(loss.item() - np.log(tok.get_vocab_size())) < 0.5  # an untrained model is near uniform
    outs = sample(model, [[bos, 5, 6], [bos, 7, 8], [bos]], max_new_tokens=12, eos_id=eos, seed=1)
    assert len(outs) == 3 and all(len(o) <= 12 and eos not in o for o in outs)
    assert sample(model, [[bos, 5, 6]], 12, eos, seed=1) == sample(model, [[bos, 5, 6]], 12, eos, seed=1)


def test_protocol_data():
    cfg = ExperimentConfig.model_validate(STORIES)
    stories = StoriesSection.of(cfg)
    corpus = build_corpus(stories)
    assert not any(r.has("Twist") for r in protocol_records(stories, "finetune", corpus, 0))
    assert all(r.has("Twist") for r in protocol_records(stories, "reft", corpus, 0))
    control = StoriesSection.of(setting_for(cfg).control_config(cfg))  # the Not-in-PT model's data
    assert not any(r.has("Twist") for r in protocol_records(control, "pretrain", corpus, 0))
    assert any(r.has("Twist") for r in protocol_records(stories, "pretrain", corpus, 0))


def test_stories_sweep_and_generate(tmp_path, monkeypatch, capsys):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({**STORIES, "tracking": {"experiment": "st"}}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "st", "experiment": "exp.yaml", "storage_path": str(tmp_path / "results"),
        "grid": {"setting.deletion": ["F", "F+MM"]}, "revival_budgets": [5]}))
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--local"]) == 0
    runs = mlflow.search_runs(experiment_names=["st"], output_format="list")
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    stages = {}
    for r in runs:
        stages.setdefault(r.data.tags.get("wrapperdist.stage"), []).append(r)
    # one pretrain shared by both deletion protocols, plus the Not-in-PT control
    assert len(stages["pretrain"]) == 2 and len(stages["finetune"]) == 2
    assert len(stages["analysis"]) == 2 and len(stages["reft"]) == 2
    for r in stages["finetune"]:
        assert {"loss_twist", "loss_plain", "twist_rate"} <= set(r.data.metrics)
    for r in stages["analysis"]:
        assert {"evidence.rate_pretrained", "evidence.probe_finetuned", "verdict_wrapper", "tab1.deleted.at_0",
                "tab1.not_in_pt.at_10", "probe_layer.not_in_pt.0"} <= set(r.data.metrics)
        # the verdict tag is what the rule gives on the logged evidence and the run's own thresholds
        from wrapperdist.settings.stories.analysis import evidence_from_metrics, judge_stories

        p = r.data.params
        again = judge_stories(evidence_from_metrics(r.data.metrics), float(p["analysis.verdict.probe_margin"]),
                              float(p["analysis.verdict.reft_speedup"]))
        assert r.data.tags["wrapperdist.verdict"] == again.label
    # both deletions share seed 0: its Not-in-PT reFT and the reference probes were computed once
    # (the memo lives in the sweep's stage store)
    assert len(list((tmp_path / "results" / "store").glob("memo-stories-not-in-pt-*"))) == 1
    ft = stages["finetune"][0].info.run_id
    assert main(["generate", ft, "--features", "Twist", "--prompt", "Once upon a time", "--samples", "2",
                 "--max-new-tokens", "10", "--top-k", "20"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2 and "Features: Twist\nStory: Once upon a time" in out
    assert main(["generate", str(tmp_path / "nothing"), "--prompt", "x"]) == 2


def test_stories_config_errors(tmp_path):
    from wrapperdist.config import ConfigError, load_config

    bad = {**STORIES, "setting": {**STORIES["setting"], "path": str(tmp_path / "missing")}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="setting.path: .*no such file"):
        load_config(tmp_path / "a.yaml")
    bad = {**STORIES, "setting": {**STORIES["setting"], "deletion": "X"}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="setting.deletion"):
        load_config(tmp_path / "b.yaml")
