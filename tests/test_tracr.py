"""The Tracr setting: compiled Counter / Max-identifier are exact, the torch conversion equals the
JAX model, fine-tuning moves accuracy as expected, and a tiny sweep runs end to end."""

import subprocess
import sys
from functools import cache

import mlflow
import numpy as np
import pytest
import torch
import yaml

from wrapperdist.config import ConfigError, ExperimentConfig, load_config
from wrapperdist.models import load_model
from wrapperdist.setting import Runtime
from wrapperdist.settings.registry import setting_for
from wrapperdist.settings.tracr.compile import compile_target, compiler_tokens, to_torch
from wrapperdist.settings.tracr.config import TracrSection
from wrapperdist.settings.tracr.tasks import TracrTarget, TracrTasks, reference_answer, tracr_vocab
from wrapperdist.sink import MemorySink
from wrapperdist.stages import run_finetune, run_pretrain

QUIET = Runtime(threads=1, progress=False)
TRACR = {
    "name": "tiny-tracr", "seed": 0,
    "setting": {"name": "tracr", "program": "counter", "tokens": ["a", "b", "c"], "min_len": 1, "max_len": 6},
    "finetune": {"optim": {"optimizer": "sgd", "lr": 0.1, "steps": 300, "batch_size": 64, "eval_every": 100,
                           "weight_decay": 0.0}},
    "eval": {"samples": 300},
    "analysis": {"prune": {"ks": [0, 2, 5], "score_samples": 64, "random_controls": 1, "learned_steps": 10},
                 "probe": {"samples": 200, "steps": 50}, "reft": {"steps": 60, "eval_every": 20, "lr": 0.003},
                 "attention_prompts": 2},
}


@cache
def compiled(program: str, arg: str, tokens: tuple[str, ...], max_len: int):
    return compile_target(TracrTarget(program, arg), list(tokens), max_len)


def all_positions_exact(program: str, arg: str, tokens: tuple[str, ...], max_len: int, seed: int) -> None:
    """Every position's output equals the reference, for every length 1..max_len (left-padded batch)."""
    c = compiled(program, arg, tokens, max_len)
    model = to_torch(c, softmax_coldness=TracrSection().softmax_coldness)  # the default fine-tunes start from
    target = TracrTarget(program, arg)
    tasks = TracrTasks(c.vocab, tokens, 1, max_len)
    rng = np.random.default_rng(seed)
    sequences = [[tokens[i] for i in rng.integers(0, len(tokens), size=n)] for n in range(1, max_len + 1)
                 for _ in range(25)]
    with torch.no_grad():
        predicted = model(torch.from_numpy(tasks.encode(sequences))).argmax(-1)
    for row, seq in enumerate(sequences):
        n = len(seq)
        for i in range(1, n + 1):  # position of s_i in the right-aligned row: BOS at T-1-n
            want = reference_answer(target, seq, tokens)  # the program's output is the same at every position
            got = c.vocab.answers[predicted[row, tasks.seq_len - 1 - n + i]]
            assert got == want, (seq, i, got, want)


@pytest.mark.parametrize("tokens,max_len,arg", [(("a", "b", "c"), 8, "a"), (("a", "b"), 5, "b"),
                                                 (("x", "y", "z", "w"), 10, "w")])
def test_compiled_counter_is_exact(tokens, max_len, arg):
    all_positions_exact("counter", arg, tokens, max_len, seed=len(tokens) * max_len)


@pytest.mark.parametrize("tokens,max_len,arg", [(("1", "2", "3", "4", "5"), 8, "max"), (("lo", "mid", "hi"), 6, "min"),
                                                 (("p", "q"), 4, "max")])
def test_compiled_max_identifier_is_exact(tokens, max_len, arg):
    all_positions_exact("max_identifier", arg, tokens, max_len, seed=len(tokens) * max_len)


@pytest.mark.parametrize("program,arg,tokens", [("counter", "a", ("a", "b", "c")),
                                                ("max_identifier", "max", ("1", "2", "3", "4", "5"))])
def test_conversion_equals_the_jax_model(program, arg, tokens, tmp_path):
    """Residual stream after every block and the decoded outputs match Tracr's own forward pass;
    left padding changes nothing; a checkpoint round-trip keeps every tensor."""
    c = compiled(program, arg, tokens, 8)
    model = to_torch(c)  # Tracr's own coldness: bit-for-bit the compiled model
    to_compiler = compiler_tokens(TracrTarget(program, arg), list(tokens))
    rng = np.random.default_rng(0)
    for n in (1, 3, 8):
        seq = [tokens[i] for i in rng.integers(0, len(tokens), size=n)]
        out = c.compiled.apply(["BOS", *(to_compiler[s] for s in seq)])
        ids = torch.tensor([[c.vocab.token_ids["BOS"], *(c.vocab.token_ids[s] for s in seq)]])
        padded = torch.cat([torch.full((1, 8 - n), c.vocab.token_ids["PAD"]), ids], dim=1)
        names = [f"blocks.{i}.resid_post" for i in range(c.n_layer)]
        with torch.no_grad(), model.capture(names) as plain:
            logits = model(ids)
        with torch.no_grad(), model.capture(names) as pad:
            padded_logits = model(padded)
        for i, name in enumerate(names):  # Tracr collects the residual after each attn and each MLP
            jax_resid = np.asarray(out.residuals[2 * i + 1])[0]
            np.testing.assert_allclose(plain[name][0].numpy(), jax_resid, atol=1e-5)
            np.testing.assert_allclose(pad[name][0, 8 - n:].numpy(), jax_resid, atol=1e-5)
        decoded = [c.vocab.answers[k] for k in logits[0, 1:].argmax(-1).tolist()]
        assert decoded == [out.decoded[i] if program == "counter" else
                           {v: k for k, v in to_compiler.items()}[out.decoded[i]] for i in range(1, n + 1)]
        assert torch.equal(logits.argmax(-1)[0], padded_logits[0, 8 - n:].argmax(-1))
    from wrapperdist.train import save_checkpoint

    path = save_checkpoint(tmp_path / "m.pt", model, {"arch": "tracr", "shape": model.shape.to_dict()})
    loaded, _ = load_model(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_core_install_does_not_import_jax():
    code = ("import sys, wrapperdist, wrapperdist.stages, wrapperdist.settings.registry, wrapperdist.cli, "
            "wrapperdist.settings.tracr.setting, wrapperdist.models.tracr_model; "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tracr_config_errors(tmp_path):
    bad = {**TRACR, "setting": {**TRACR["setting"], "spurious_fraction": 0.5}}  # a PCFG-only field
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="setting.spurious_fraction: Extra inputs are not permitted"):
        load_config(tmp_path / "a.yaml")
    bad = {**TRACR, "setting": {**TRACR["setting"], "finetune_target": "z"}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"setting: finetune_target 'z' is not one of \['a', 'b', 'c'\]"):
        load_config(tmp_path / "b.yaml")
    max_cfg = ExperimentConfig.model_validate({**TRACR, "setting": {"name": "tracr", "program": "max_identifier",
                                                                    "tokens": ["1", "2"]}})
    assert (max_cfg.setting.pretrain_target, max_cfg.setting.finetune_target) == ("max", "min")


def test_finetuning_the_compiled_counter(tmp_path):
    """Compiled: pt_acc 1, ft_acc at chance. A few hundred SGD steps teach count(b) and the
    compiled behaviour is gone from the output (the question the analyses then ask is: from inside?)."""
    cfg = ExperimentConfig.model_validate(TRACR)
    setting = setting_for(cfg)
    pretrain = run_pretrain(setting, cfg, tmp_path / "pt", MemorySink(), QUIET)
    assert pretrain.metrics["pt_acc"] == 1.0 and pretrain.metrics["ft_acc"] < 0.5
    sink = MemorySink()
    finetune = run_finetune(setting, cfg, pretrain.checkpoint, tmp_path / "ft", sink, QUIET)
    assert finetune.metrics["ft_acc"] > 0.9, sink.history("ft_acc")
    assert finetune.metrics["pt_acc"] < 0.6
    # the vocabulary layout is the project's, fixed by the config alone
    assert tracr_vocab("counter", ["a", "b", "c"], 6).token_ids == {"a": 0, "b": 1, "c": 2, "BOS": 3, "PAD": 4}
    model, meta = load_model(finetune.checkpoint)
    assert meta["arch"] == "tracr"
    assert setting.evaluator(cfg)(model)["ft_acc"] == finetune.metrics["ft_acc"]


def test_tracr_sweep_end_to_end(tmp_path, monkeypatch):
    from wrapperdist.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({**TRACR, "tracking": {"experiment": "tr"}}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "tr", "experiment": "exp.yaml", "storage_path": str(tmp_path / "results"),
        "grid": {"finetune.optim.lr": [0.1, 0.01]}, "revival_budgets": [20]}))
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--local"]) == 0
    runs = mlflow.search_runs(experiment_names=["tr"], output_format="list")
    assert all(r.info.status == "FINISHED" for r in runs)
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.data.tags.get("wrapperdist.stage"), []).append(r)
    assert len(by_stage["pretrain"]) == 2  # the compiled program and the Scr.+FT control (compiled for 'b')
    assert all(r.data.metrics["pt_acc"] == 1.0 for r in by_stage["pretrain"] if "control" not in r.info.run_name)
    assert len(by_stage["finetune"]) == 2 and len(by_stage["analysis"]) == 2 and len(by_stage["reft"]) == 2
    for r in by_stage["analysis"]:
        changes = {k: v for k, v in r.data.metrics.items() if k.startswith("weights.change.")}
        assert "weights.change.blocks.0.attn.k.weight" in changes and max(changes.values()) > 0
