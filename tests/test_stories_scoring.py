"""The twist measure without the copy channel (issue 14): prompts never carry the marker, and text a
generator copies from its prompt is never credited."""

from wrapperdist.config import ExperimentConfig
from wrapperdist.settings.stories.config import StoriesSection
from wrapperdist.settings.stories.generator import generate
from wrapperdist.settings.stories.lm import build_corpus, feature_prompts
from wrapperdist.settings.stories.records import prompt_text
from wrapperdist.settings.stories.revival import AtSteps, reft_points
from wrapperdist.settings.stories.scoring import clean_record, copy_free, feature_score, has_marker, sentences

TWIST = "Then something unexpected happened: the kite was really a golden egg!"


def twist_records(n: int = 400):
    return [r for r in generate(n, seed=7) if r.has("Twist")]


def test_raw_corpus_leaks_the_marker_and_cleaned_prompts_do_not():
    records = twist_records()
    raw = [prompt_text(r) for r in records]
    assert any(has_marker(p, "Twist") for p in raw)  # the copy channel the issue found (16 of 48)
    cleaned = [clean_record(r, "Twist") for r in records]
    assert not any(has_marker(prompt_text(c), "Twist") for c in cleaned)
    for r, c in zip(records, cleaned, strict=True):
        assert c.features == r.features and c.words == r.words and c.summary == r.summary
        assert c.random_sentence in sentences(r.story)  # still one of the story's own sentences


def test_evaluation_prompts_never_carry_the_marker():
    cfg = ExperimentConfig.model_validate({
        "setting": {"name": "stories", "stories": 600, "eval_stories": 200, "generation_prompts": 48},
        "pretrain": {"optim": {"lr": 1e-3, "steps": 1, "batch_size": 1}},
        "finetune": {"optim": {"lr": 1e-3, "steps": 1, "batch_size": 1}}})
    s = StoriesSection.of(cfg)
    prompts = feature_prompts(s, build_corpus(s))
    assert len(prompts) == 48 and all("Twist" in p.splitlines()[0] for p in prompts)
    assert not any(has_marker(p, "Twist") for p in prompts)


def test_a_prompt_copier_scores_zero_and_a_genuine_twist_scores():
    records = twist_records()
    leaky = [prompt_text(r) for r in records if has_marker(r.random_sentence or "", "Twist")]
    assert leaky
    # a fake generator that writes out its prompt (and the story's marked sentence, copied from it)
    copier = [p.split("Random sentence: ")[1].split("\nStory:")[0] + " " + p for p in leaky]
    assert all(has_marker(g, "Twist") for g in copier)  # a plain detector would credit every one
    assert feature_score(copier, leaky, "Twist") == 0.0
    clean = [prompt_text(clean_record(r, "Twist")) for r in records]
    assert feature_score(clean, clean, "Twist") == 0.0  # copying a clean prompt has nothing to credit
    genuine = [f"Once upon a time, there was a cat named Tom. {TWIST} They played until dark." for _ in clean]
    assert feature_score(genuine, clean, "Twist") == 1.0
    assert 0.0 < feature_score([genuine[0], copier[0]], [clean[0], leaky[0]], "Twist") < 1.0


def test_copy_mask_is_word_runs():
    prompt = "Random sentence: Then something unexpected happened: the ball was really a key!\nStory:"
    assert "something unexpected" not in copy_free("Then something unexpected happened: the ball", prompt)
    assert copy_free("a b c", prompt) == "a b c"  # shorter than the window: nothing is a copy


def test_reft_points_and_gate():
    assert reft_points(3000) == [0, 30, 300, 3000] and reft_points(300) == [0, 3, 30, 300]
    assert reft_points(10) == [0, 1, 10] and reft_points(5) == [0, 5]
    gate = AtSteps(lambda m: {"x": 1.0}, [0, 3, 30], every=3)
    assert [bool(gate(None)) for _ in range(11)] == [True, True] + [False] * 8 + [True]


def test_paper_protocol_names():
    """The project's old name for the paper's F + RR protocol is still read, as F+R."""
    base = {"setting": {"name": "stories", "deletion": "F+AT"},
            "pretrain": {"optim": {"lr": 1e-3, "steps": 1, "batch_size": 1}},
            "finetune": {"optim": {"lr": 1e-3, "steps": 1, "batch_size": 1}}}
    assert StoriesSection.of(ExperimentConfig.model_validate(base)).deletion == "F+R"


def test_memo_computes_once_and_returns_one_type(tmp_path):
    from wrapperdist.memo import Memo, memoised
    from wrapperdist.store import Store

    memo = Memo(Store(str(tmp_path)))
    calls = []

    def compute():
        calls.append(1)
        return {"curve": [(0, 0.5), (10, 1.0)]}

    first = memoised(memo, "t", {"w": "abc"}, compute)
    again = memoised(memo, "t", {"w": "abc"}, compute)
    assert len(calls) == 1
    # the same value and the same types on the first call as on a replay (tuples are JSON lists)
    assert first == again == {"curve": [[0, 0.5], [10, 1.0]]}
    assert type(first["curve"][0]) is type(again["curve"][0]) is list
    # without a memo the value still has the stored type
    assert memoised(None, "t", {"w": "abc"}, compute) == first and len(calls) == 2
    memoised(memo, "t", {"w": "abd"}, compute)
    assert len(calls) == 3


def test_memo_key_holds_the_code_version(tmp_path, monkeypatch):
    """A change to the code that computes a memoised value recomputes it (no replay of old curves)."""
    import wrapperdist.memo as memo_module
    from wrapperdist.store import Store

    memo = memo_module.Memo(Store(str(tmp_path)))
    calls = []
    compute = lambda: calls.append(1) or len(calls)  # noqa: E731
    assert memo("t", {"w": 1}, compute) == 1
    assert memo("t", {"w": 1}, compute) == 1 and len(calls) == 1
    monkeypatch.setattr(memo_module, "code_version", lambda: "another-version")
    assert memo("t", {"w": 1}, compute) == 2  # recomputed under the new code version

    # the version is a digest of the package's source: editing any module changes it
    import shutil
    from pathlib import Path

    copy = tmp_path / "pkg"
    shutil.copytree(Path(memo_module.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = memo_module.source_digest(copy)
    assert before == memo_module.source_digest(Path(memo_module.__file__).parent)
    target = copy / "settings" / "answer_analysis.py"
    target.write_text(target.read_text() + "\n# an edit\n")
    assert memo_module.source_digest(copy) != before


def test_verdict_compares_the_probe_with_not_in_pt():
    from wrapperdist.settings.stories.analysis import StoriesEvidence, judge_stories

    e = StoriesEvidence(rate_pretrained=1.0, rate_finetuned=0.1, rate_control=0.0, rate_unasked_pretrained=0.0,
                        probe_finetuned=0.90, probe_pretrained=0.91, probe_control=0.88, probe_random_init=0.70,
                        probe_majority=0.64, reft_steps_finetuned=1, reft_steps_control=None, reft_budget=100)
    assert judge_stories(e, probe_margin=0.05, reft_speedup=2.0).label == "mixed"  # 0.02 above Not in PT only
    e.probe_control = 0.80
    assert judge_stories(e, probe_margin=0.05, reft_speedup=2.0).label == "wrapper"


def test_reft_faster_when_the_control_never_gets_there():
    from wrapperdist.settings.stories.analysis import StoriesAnalysisOutput, StoriesEvidence, evidence_from_metrics
    from wrapperdist.settings.stories.analysis import judge_stories as judge

    e = StoriesEvidence(rate_pretrained=1.0, rate_finetuned=0.0, rate_control=0.0, rate_unasked_pretrained=0.0,
                        probe_finetuned=0.9, probe_pretrained=0.9, probe_control=0.8, probe_random_init=0.7,
                        probe_majority=0.64, reft_steps_finetuned=100, reft_steps_control=None, reft_budget=100)
    v = judge(e, probe_margin=0.05, reft_speedup=2.0)
    assert v.reft_faster and v.label == "wrapper"
    e.reft_steps_control = 100
    assert not judge(e, probe_margin=0.05, reft_speedup=2.0).reft_faster
    logged = StoriesAnalysisOutput(e, v, "").summary_metrics()
    assert evidence_from_metrics(logged) == e
