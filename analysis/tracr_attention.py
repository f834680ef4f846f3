"""The paper's Fig. 10 for the project's Tracr Counter: the counting attention (block 1) of the
compiled model and of its fine-tunes at η_S and η_M with C_Tr = 0 and 1, on one token sequence, in
one figure; each panel's title gives the share of attention on `a` and on `b` (mean over 200 held-out
sequences, the measure every analysis logs as answers.attention_on_*).

    python analysis/tracr_attention.py [--tracking-uri sqlite:///mlflow.db] [--out reports/tracr-counter]"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from wrapperdist.config import ExperimentConfig  # noqa: E402
from wrapperdist.mech import attention_patterns  # noqa: E402
from wrapperdist.models import load_model  # noqa: E402
from wrapperdist.settings.tracr.config import TracrSection  # noqa: E402
from wrapperdist.settings.tracr.setting import TracrData  # noqa: E402
from wrapperdist.settings.tracr.weights_analysis import attention_shares  # noqa: E402

PANELS = (("η_S", 1e-3, 0.0), ("η_S", 1e-3, 1.0), ("η_M", 1e-2, 0.0), ("η_M", 1e-2, 1.0))
SEED = 7_000_031


def _checkpoint(run, dest: Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="checkpoint/model.pt",
                                                    dst_path=str(dest / run.info.run_id)))


def _find(experiment: str, stage: str) -> list:
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string=f"tags.`wrapperdist.stage` = '{stage}'")
    return [r for r in runs if r.data.params.get("setting.program") == "counter" and r.info.status == "FINISHED"
            and "control" not in r.info.run_name]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="wrapperdist")
    parser.add_argument("--out", type=Path, default=Path("reports/tracr-counter"))
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    torch.set_num_threads(1)
    finetunes = {(float(r.data.params["finetune.optim.lr"]), float(r.data.params["setting.spurious_fraction"])): r
                 for r in _find(args.experiment, "finetune")}
    compiled_runs = _find(args.experiment, "pretrain")
    with tempfile.TemporaryDirectory() as tmp:
        models = {"compiled": load_model(_checkpoint(compiled_runs[0], Path(tmp)))}
        for name, lr, ctr in PANELS:
            if (lr, ctr) in finetunes:
                models[f"FT {name}, C_Tr = {ctr:g}"] = load_model(_checkpoint(finetunes[(lr, ctr)], Path(tmp)))
    cfg = ExperimentConfig.model_validate(models["compiled"][1]["config"])
    data = TracrData(TracrSection.of(cfg))
    rng = np.random.default_rng(SEED)
    held_out = data.tasks.sample(200, rng)
    shown = next(s for s in data.tasks.sample(100, rng) if len(s) == data.tasks.max_len and "a" in s and "b" in s)
    tokens = torch.from_numpy(data.tasks.encode([shown]))
    labels = ["BOS", *shown]
    fig, axes = plt.subplots(1, len(models), figsize=(3.3 * len(models), 3.8), squeeze=False)
    print("| model | attention on a (block 1) | on b |\n|---|---|---|")
    for ax, (name, (model, _)) in zip(axes[0], models.items(), strict=True):
        shares = attention_shares(model, data.tasks, held_out, data.capability, data.target)
        a, b = shares["attention_on_a.block1"], shares["attention_on_b.block1"]
        print(f"| {name} | {a:.2f} | {b:.2f} |")
        pattern = attention_patterns(model, tokens)[1, 0, 0].numpy()  # block 1, head 0: the counting head
        ax.imshow(pattern[-len(labels):, -len(labels):], vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set_title(f"{name}\non a {a:.2f} / on b {b:.2f}", fontsize=8)
    fig.suptitle("Tracr Counter, block-1 attention (rows: queries, columns: keys)", fontsize=9)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "fig10_attention.png", dpi=130)
    print(f"wrote {args.out / 'fig10_attention.png'}")


if __name__ == "__main__":
    main()
