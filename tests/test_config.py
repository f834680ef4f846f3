"""Invalid experiment files are rejected before any work, naming file, field and reason."""

from pathlib import Path

import pytest
import yaml

from wrapperdist.config import ConfigError, ExperimentConfig, config_hash, flatten, load_config
from wrapperdist.settings.pcfg.config import PRIORS

ROOT = Path(__file__).resolve().parents[1]

VALID = {
    "name": "t",
    "setting": {"name": "pcfg", "window": 24, "count_window": 12},
    "model": {"n_layer": 1, "n_head": 2, "d_model": 16},
    "pretrain": {"optim": {"lr": 1e-3, "steps": 10, "batch_size": 8}},
    "finetune": {"optim": {"lr": 1e-4, "steps": 10, "batch_size": 8}},
    "analysis": {"reft": {"lr_factor": 0.1}},
}


def with_change(path: str, value, base=VALID) -> dict:
    """A deep copy of `base` with the dotted `path` set to `value` (or removed for ...)."""
    data = yaml.safe_load(yaml.safe_dump(base))
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


# (description, file content, substring the error must contain — the field path, then the reason)
CASES = [
    ("negative lr", with_change("finetune.optim.lr", -1e-4), "finetune.optim.lr: Input should be greater than 0"),
    ("zero lr", with_change("pretrain.optim.lr", 0), "pretrain.optim.lr: Input should be greater than 0"),
    ("lr as text", with_change("finetune.optim.lr", "fast"), "finetune.optim.lr: Input should be a valid number"),
    ("negative steps", with_change("pretrain.optim.steps", -5), "pretrain.optim.steps: Input should be greater than 0"),
    ("zero batch", with_change("finetune.optim.batch_size", 0), "finetune.optim.batch_size"),
    ("steps float", with_change("pretrain.optim.steps", 2.5), "pretrain.optim.steps"),
    ("unknown top key", with_change("learning_rate", 1), "learning_rate: Extra inputs are not permitted"),
    ("unknown nested key", with_change("model.n_layers", 3), "model.n_layers: Extra inputs are not permitted"),
    ("unknown optim key", with_change("finetune.optim.lr_max", 3), "finetune.optim.lr_max: Extra inputs"),
    ("missing pretrain", with_change("pretrain", ...), "bad.yaml: pretrain.optim: required"),
    ("missing lr", with_change("finetune.optim.lr", ...), "finetune.optim.lr: Field required"),
    ("prior not summing to 1", with_change("setting.prior", {"a": 0.5, "b": 0.2}), "setting.prior: prior must sum to 1"),
    ("negative prior", with_change("setting.prior", {"a": 1.2, "b": -0.2}), "setting.prior.b"),
    ("unknown prior name", with_change("setting.prior", "extreme"), "setting.prior"),
    ("prior unknown operand", with_change("setting.prior", {"a": 0.5, "d": 0.5}), "setting.prior.d"),
    ("unknown family", with_change("setting.families", {"sorting": 1.0}), "setting.families.sorting"),
    ("no family weight", with_change("setting.families", {"counter": 0.0}), "setting.families: needs at least one"),
    ("bad operand", with_change("setting.task", {"family": "counter", "operand": "z"}), "setting.task.operand"),
    ("position-operand task", with_change("setting.task", {"family": "token_at_index", "operand": "a"}), "setting.task.family"),
    ("spurious above 1", with_change("setting.spurious_fraction", 1.5), "setting.spurious_fraction: Input should be less than or equal to 1"),
    ("spurious negative", with_change("setting.spurious_fraction", -0.1), "setting.spurious_fraction"),
    ("heads don't divide", with_change("model.d_model", 15), "model: d_model (15) must be divisible by n_head (2)"),
    ("negative d_model", with_change("model.d_model", -16), "model.d_model: Input should be greater than 0"),
    ("dropout 1", with_change("model.dropout", 1.0), "model.dropout"),
    ("count window > window", with_change("setting.count_window", 30), "setting: count_window (30) exceeds window (24)"),
    ("unknown grammar kind", with_change("setting.grammar.kind", "chomsky"), "setting.grammar.kind"),
    ("window too small", with_change("setting.window", 4), "setting.window: Input should be greater than or equal to 8"),
    ("correlation on the indexer", with_change("setting.task", {"family": "index_of_occurrence", "operand": "b"},
                                               with_change("setting.spurious_fraction", 0.5)),
     "setting: spurious_fraction: the planted relation"),
    ("unknown objective", with_change("setting.pretrain_objective", "masked"), "setting.pretrain_objective"),
    ("rhs bounds reversed", with_change("setting.grammar.rhs_len", [3, 1]), "setting.grammar.rhs_len: lower bound 3 exceeds upper bound 1"),
    ("warmup above 1", with_change("finetune.optim.warmup_frac", 2), "finetune.optim.warmup_frac"),
    ("bad optimizer", with_change("finetune.optim.optimizer", "adam"), "finetune.optim.optimizer"),
    ("betas wrong length", with_change("pretrain.optim.betas", [0.9]), "pretrain.optim.betas"),
    ("missing checkpoint file", with_change("finetune.from_checkpoint", "/nonexistent/model.pt"),
     "finetune.from_checkpoint: file not found: /nonexistent/model.pt"),
    ("same task twice", with_change("setting.task", {"family": "counter", "operand": "a"}), "setting: task equals capability"),
    ("section not a mapping", with_change("model", [1, 2]), "model: Input should be a valid dictionary"),
    ("no setting", with_change("setting", ...), "setting: Field required"),
    ("unknown setting", with_change("setting.name", "chess"), "setting: unknown setting 'chess'; known: pcfg, stories, tracr"),
    ("another setting's field", with_change("setting.program", "counter"), "setting.program: Extra inputs are not permitted"),
    ("tracr field checked as tracr", {**VALID, "setting": {"name": "tracr", "finetune_target": "z"}},
     "setting: finetune_target 'z' is not one of " + str(list("abcdefghi")) + " (counter)"),
    ("stories pretrains by training", {**VALID, "setting": {"name": "stories"}, "pretrain": {}},
     "pretrain.optim: required (the stories setting pretrains by training)"),
    ("execution detail in the config", with_change("torch_threads", 2), "torch_threads: Extra inputs are not permitted"),
]


@pytest.mark.parametrize("content,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_field_is_named(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\npretrain:\n  optim: {lr: 1e-3, steps: 10\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+:\d+: YAML syntax error"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: <top level>: expected a mapping"):
        load_config(path)


def test_several_errors_reported_at_once(tmp_path):
    content = with_change("finetune.optim.lr", -1, with_change("model.n_head", 0))
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "finetune.optim.lr" in str(err.value) and "model.n_head" in str(err.value)


EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", [*EXPERIMENTS, *SWEEPS], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_file_loads_and_says_what_it_is_for(path):
    """experiments/ holds base experiments, sweeps/ sweep specs: each loads with its own loader (a
    sweep with its experiment resolved, its grid validated and its stage plan built, nothing run), and
    opens with a comment saying what it is for. A renamed field breaks this test, not a user."""
    from wrapperdist.sweep.plan import make_plan
    from wrapperdist.sweep.spec import load_sweep

    assert path.read_text().startswith("#"), f"{path.name}: no header comment"
    if path.parent.name == "experiments":
        assert "experiment" not in yaml.safe_load(path.read_text()), "a sweep spec belongs in sweeps/"
        load_config(path)
    else:
        sweep = load_sweep(path)
        assert sweep.points or sweep.spec.search, f"{path.name}: no grid point and no search"
        assert make_plan(sweep).pretrain  # every sweep pretrains (or compiles) something


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweeps_keep_the_papers_lr_rules(path):
    """App. D: reFT runs below the fine-tuning LR; Sec. 2: fine-tuning LRs sit below pretraining's."""
    from wrapperdist.sweep.spec import load_sweep

    for cfg in load_sweep(path).points:
        ft = cfg.finetune.optim.lr
        assert cfg.analysis.reft.effective_lr(ft) < ft, (cfg.name, "reFT LR not below the FT LR")
        if cfg.pretrain.optim is not None and cfg.setting.trains_pretraining:
            assert ft < cfg.pretrain.optim.lr, (cfg.name, "FT LR not below the pretraining LR")


def test_named_priors_are_the_papers():
    cfg = ExperimentConfig.model_validate(with_change("setting.prior", "low"))
    assert cfg.setting.prior_vector() == PRIORS["low"] == (0.999, 0.001, 0.0)


def test_flatten_and_hash():
    cfg = ExperimentConfig.model_validate(VALID)
    flat = flatten(cfg.model_dump(mode="json"))
    assert flat["finetune.optim.lr"] == 1e-4 and flat["model.n_layer"] == 1
    other = ExperimentConfig.model_validate(with_change("finetune.optim.lr", 2e-4))
    assert config_hash(cfg) != config_hash(other)
    assert config_hash(cfg) == config_hash(ExperimentConfig.model_validate(VALID))


def test_help_is_generated_from_the_field_descriptions(capsys):
    """`--help` lists every field with its pydantic description: one source, no hand-written copy."""
    from wrapperdist.cli import main

    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    text = capsys.readouterr().out
    description = ExperimentConfig.model_fields["seed"].description
    assert f"seed: {description}" in text
    assert "setting.spurious_fraction: C_Tr: share of fine-tuning examples with the planted relation" in text
    assert "setting (name: tracr)" in text and "setting.noise_std:" in text


# Bad bytes and bad YAML: one `FILE: problem` line each (the file's name, then what is wrong).
YAML_CASES = [
    ("utf-16 file", "name: t\n".encode("utf-16"), "not UTF-8 text (byte 0xff at offset 0; it looks like UTF-16"),
    ("binary garbage", bytes(range(128, 256)) * 4, "not UTF-8 text (byte 0x80 at offset 0)"),
    ("NUL bytes", b"name: t\n\x00\x00", "not UTF-8 text (NUL byte at offset 8"),
    ("duplicate top key", b"name: a\nseed: 1\nname: b\n", ":3:1: duplicate key 'name' (first on line 1)"),
    ("duplicate nested key", b"model:\n  n_layer: 1\n  n_layer: 2\n", ":3:3: duplicate key 'n_layer' (first on line 2)"),
]


@pytest.mark.parametrize("content,expected", [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES])
def test_unreadable_yaml_is_one_line(tmp_path, capsys, content, expected):
    from wrapperdist.cli import main

    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(str(path)) and expected in err and "\n" not in err, err


def test_utf8_bom_and_merge_keys_are_fine(tmp_path):
    path = tmp_path / "ok.yaml"
    # a merge plus the same key is not a duplicate
    text = "base: &b {n_layer: 1}\n" + yaml.safe_dump(VALID).replace("model:\n", "model:\n  <<: *b\n")
    path.write_bytes("\ufeff".encode() + text.encode())
    with pytest.raises(ConfigError, match="base: Extra inputs"):  # read, then validated as usual
        load_config(path)


SET_CASES = [  # (--set arguments, substring of the error; None: valid)
    (["finetune.optim.lr=1e-5"], None),
    (["finetune.optim.lr=-1"], "(with --set finetune.optim.lr=-1): finetune.optim.lr: Input should be greater than 0"),
    (["model.n_head=3"], "model: d_model (16) must be divisible by n_head (3)"),
    (["finetune.optim.lr"], "--set 'finetune.optim.lr': expected PATH=VALUE"),
    (["=3"], "expected PATH=VALUE"),
    (["model..n_head=3"], "expected PATH=VALUE"),
    (["model.n_layer.x=1"], "--set model.n_layer.x: model.n_layer is 1, not a section"),
    (["finetune.optim.lr=[1"], "--set value '[1'"),
    (["model.n_layerz=2"], "model.n_layerz: Extra inputs are not permitted"),
]


@pytest.mark.parametrize("overrides,expected", SET_CASES, ids=[" ".join(c[0]) for c in SET_CASES])
def test_set_overrides_are_validated_like_the_file(tmp_path, overrides, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(VALID))
    if expected is None:
        cfg = load_config(path, overrides=overrides)
        assert cfg.finetune.optim.lr == 1e-5  # `1e-5` is a float, although YAML 1.1 would keep it a string
        return
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides=overrides)
    assert str(err.value).startswith(str(path)) and expected in str(err.value), str(err.value)


def test_set_values_are_yaml():
    from wrapperdist.overrides import parse_overrides

    assert parse_overrides(["a=true", "b=null", "c=[50, 200]", "d=medium", "e=3", "f=1.5e-3", "g="]) == [
        ("a", True), ("b", None), ("c", [50, 200]), ("d", "medium"), ("e", 3), ("f", 1.5e-3), ("g", "")]
