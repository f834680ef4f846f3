"""Helpers for scripts/device_bundle.sh (here) and scripts/device_run.sh (on the lent GPU machine).

The GPU machine's image has PyTorch and a long list of packages, but no Ray, MLflow, pydantic or
Optuna, and it cannot download anything. device_bundle.sh carries what is missing as wheels;
this file holds the parts that read better in Python than in shell:

    image-names                    the image's packages, normalised (one a line)
    constraints                    what is known of the image's versions, as pip constraints
    slim WHEEL DIR                 the Ray wheel without what a local sweep never loads
    missing LOG                    the requirement pip said it could not find (for the check's loop)
    classify REPORT BUNDLE IMAGE   which folder each requirement of a dry-run came from; asserts
    env-check TARGET               on the device: do the bundle's requirements hold against the image?
    experiment SPEC [--set ...]    the MLflow experiment a sweep records into
    throughput URI EXPERIMENT OUT  per stage run: steps, wall time, steps/s (throughput.json / .md)
    pack SRC TARBALL               a folder as one .tar.gz (the device hands back at most 8 files)

Only the standard library at module level: `image-names`, `slim`, `classify` and `pack` run with
any Python 3.11+; the others import what they read (packaging, wrapperdist, MLflow).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import re
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

# The packages already on the device image ('cuda', kind nvidia-h200), copied from the workplace's
# /work/.library/device/KINDS.md, section "Python packages already there" (as read on a machine on
# 2026-11-17). A bundle must not carry any of them: the bundle's folder comes first on PYTHONPATH,
# so a second copy would shadow the image's own (numpy, protobuf, ... built for its torch).
IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""

# What is known of the image's versions, for resolving as if against it (pip constraints).
IMAGE_PYTHON = "3.12"  # the image's python3 (3.12.3)
IMAGE_CONSTRAINTS = {
    # KINDS.md's 'pip list' row: the one image package the bundle's requirements reach whose
    # version a session read there (pandas, pyarrow, tensorboardX and optuna need numpy)
    "numpy": "==2.5.2",
    # inferred: the image has python-dateutil and six but no tzdata, and dateutil 3 and 4 require
    # tzdata, so the image's is a 2.x (which needs six only). Unconstrained, the resolver takes 4.0
    # and a tzdata that the image does not need would travel in the bundle.
    "python-dateutil": "<3",
}

# Dropped from the Ray wheel (compressed, the wheel is 79 MB; the working tree and everything
# carried must stay under 64 MiB together). None of it is loaded by a local `wrapperdist sweep`:
#   ray/jars/                    the Java worker's jar (32 MB), for Ray's Java API only
#   *.map                        the dashboard JavaScript's source maps (browser debugging)
#   ray/dashboard/client/build/  the dashboard web UI's files; sweeps start Ray with
#                                include_dashboard=False, and only the dashboard head serves them
#   ray/rllib/ ray/serve/ ray/llm/  RLlib, Serve and Ray LLM: Tune imports RLlib only inside a
#                                try/except ImportError (tune/registry.py), Serve and LLM are
#                                imported only by ray.data.llm and the dashboard's Serve module
SLIM_DROP_PREFIXES = ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/", "ray/serve/", "ray/llm/")
SLIM_DROP_SUFFIXES = (".map",)


def normalise(name: str) -> str:
    """A project name as PEP 503 compares them: lower case, runs of -_. as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_project(filename: str) -> str:
    """The normalised project of a wheel file name (`{distribution}-{version}-...whl`)."""
    return normalise(Path(filename).name.split("-", 1)[0])


def image_names(listing: str | None = None) -> set[str]:
    """The image's packages; `listing` (a file) replaces the built-in list: names separated by
    commas, spaces or new lines, or a KINDS.md, whose "Packages:" line after the section
    "Python packages already there" is read."""
    text = IMAGE_PACKAGES
    if listing:
        text = Path(listing).read_text()
        if "## Python packages already there" in text:
            section = text.split("## Python packages already there", 1)[1]
            text = section.split("Packages:", 1)[1].split("\n", 1)[0].rstrip(".")
    return {normalise(n) for n in re.split(r"[,\s]+", text) if n}


# -- here: building and checking the bundle -------------------------------------------------------
def cmd_image_names(args: argparse.Namespace) -> int:
    print("\n".join(sorted(image_names(args.list))))
    return 0


def cmd_constraints(args: argparse.Namespace) -> int:
    """IMAGE_CONSTRAINTS as pip constraints; for another Python than the image's (a rehearsal
    here), without the exact pins, whose wheels may not exist for that Python."""
    print("\n".join(f"{name}{spec}" for name, spec in IMAGE_CONSTRAINTS.items()
                    if args.python == IMAGE_PYTHON or not spec.startswith("==")))
    return 0


def slim_wheel(src: Path, dest_dir: Path) -> tuple[Path, int, int]:
    """Copy `src` into `dest_dir` (same file name) without SLIM_DROP_*; the dropped files' lines
    leave RECORD too, so RECORD still lists exactly the files there are (pip reads it to install
    and uninstall). Entries keep their metadata: permissions (the raylet and GCS binaries must stay
    executable), dates and compression method."""
    dest = dest_dir / src.name
    dropped = dropped_bytes = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        # the wheel's own RECORD, at the top (Ray also ships vendored packages' dist-info folders)
        record_name = next(n for n in zin.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD"))
        removed = set()
        for info in zin.infolist():
            if info.filename.startswith(SLIM_DROP_PREFIXES) or info.filename.endswith(SLIM_DROP_SUFFIXES):
                removed.add(info.filename)
                dropped += 1
                dropped_bytes += info.compress_size
                continue
            if info.filename == record_name:
                continue  # rewritten below, last, as wheels have it
            zout.writestr(info, zin.read(info), compress_type=info.compress_type)
        rows = [row for row in csv.reader(io.StringIO(zin.read(record_name).decode())) if row and row[0] not in removed]
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        zout.writestr(zin.getinfo(record_name), text.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    return dest, dropped, dropped_bytes


def cmd_slim(args: argparse.Namespace) -> int:
    dest, n, size = slim_wheel(Path(args.wheel), Path(args.dest))
    print(f"slimmed {dest.name}: {n} files dropped ({size / 1e6:.1f} MB compressed), "
          f"{Path(args.wheel).stat().st_size / 1e6:.1f} MB -> {dest.stat().st_size / 1e6:.1f} MB")
    return 0


def cmd_missing(args: argparse.Namespace) -> int:
    """Print a requirement that failed pip's offline resolution for want of any wheel in the
    folders given: from "No matching distribution found for REQ", or, where a constraint names the
    project (then pip reports a conflict instead), from the conflict's "X depends on REQ" lines.
    Exit 1 when there is none: a real conflict between versions that are there."""
    log = Path(args.log).read_text()
    have = {wheel_project(p.name) for folder in args.folders for p in Path(folder).glob("*.whl")}
    found = re.findall(r"No matching distribution found for (\S+)", log) + re.findall(r" depends on (\S+)", log)
    for req in (r.rstrip(";") for r in found):
        if normalise(re.split(r"[^A-Za-z0-9._-]", req, maxsplit=1)[0]) not in have:
            print(req)
            return 0
    return 1


def cmd_classify(args: argparse.Namespace) -> int:
    """Read a `pip install --dry-run --report` and say where each distribution came from. Fails
    when one came from neither folder, when the bundle holds an image package, or when the
    image folder holds a package that is not on the image."""
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # pip carries its own copy
        from pip._vendor.packaging.specifiers import SpecifierSet

    report = json.loads(Path(args.report).read_text())
    bundle, image_dir = Path(args.bundle).resolve(), Path(args.image_dir).resolve()
    image = image_names(args.list)
    rows, problems = [], []
    for item in report["install"]:
        meta = item["metadata"]
        path = Path(unquote(urlparse(item["download_info"]["url"]).path)).resolve()
        source = "bundle" if path.parent == bundle else "image" if path.parent == image_dir else str(path.parent)
        rows.append((normalise(meta["name"]), meta["version"], source, path.name))
        if source not in ("bundle", "image"):
            problems.append(f"{meta['name']}: from {path}, neither the bundle nor the image folder")
        # the check runs pip with --ignore-requires-python (see device_bundle.sh): checked here
        if meta.get("requires_python") and args.python not in SpecifierSet(meta["requires_python"]):
            problems.append(f"{path.name}: requires Python {meta['requires_python']}, the device has {args.python}")
    used = {r[3] for r in rows}
    in_bundle = sorted(p.name for p in bundle.glob("*.whl"))
    duplicates = [w for w in in_bundle if wheel_project(w) in image]
    problems += [f"{w}: in the bundle, but the image has {wheel_project(w)}" for w in duplicates]
    problems += [f"{name}: taken from the image folder, but not on the image" for name, _, src, _ in rows
                 if src == "image" and name not in image]
    unused = [w for w in in_bundle if w not in used]
    width = max(len(r[0]) for r in rows)
    for source in ("bundle", "image"):
        picked = sorted(r for r in rows if r[2] == source)
        print(f"\nfrom the {source} ({len(picked)}):")
        for name, version, _, _ in picked:
            print(f"  {name:<{width}}  {version}")
    if unused:  # not wrong, but bytes that travel for nothing
        print(f"\nwarning: {len(unused)} bundle wheel(s) that the resolution did not use: {', '.join(unused)}")
    if problems:
        print("\nFAILED:\n  " + "\n  ".join(problems))
        return 1
    print(f"\nok: {len(rows)} distributions, every one from the bundle or the image; "
          "no bundle wheel duplicates an image package")
    return 0


# -- on the device ----------------------------------------------------------------------------------
def cmd_env_check(args: argparse.Namespace) -> int:
    """For each distribution installed in TARGET: are its requirements there (in TARGET or on the
    image), at versions it accepts? And does TARGET shadow any image distribution? Prints a report;
    exit 1 if something is off (the bundle was resolved against a model of the image: this is the
    check against the real one)."""
    from importlib.metadata import PackageNotFoundError, distribution, distributions

    from packaging.requirements import Requirement
    from packaging.version import Version

    target = str(Path(args.target).resolve())
    extras = {normalise(p): set(e.split(",")) for p, e in (x.split(":", 1) for x in args.extras)}
    ours = list(distributions(path=[target]))
    names = {normalise(d.metadata["Name"]) for d in ours}
    problems, shadowed = [], []
    for dist in ours:
        name = normalise(dist.metadata["Name"])
        for line in dist.requires or []:
            req = Requirement(line)
            wanted = extras.get(name, set()) | {""}
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in wanted):
                continue
            try:
                have = distribution(req.name).version
            except PackageNotFoundError:
                problems.append(f"{name}: needs {req}, which is not installed")
                continue
            if req.specifier and not req.specifier.contains(Version(have), prereleases=True):
                problems.append(f"{name}: needs {req}, found {have}")
    for dist in distributions():  # everything on sys.path outside TARGET
        where = str(Path(dist.locate_file("")).resolve())
        if not where.startswith(target) and normalise(dist.metadata["Name"]) in names:
            shadowed.append(f"{dist.metadata['Name']} {dist.version} ({where})")
    print(f"bundle in {target}: {len(ours)} distributions")
    for line in problems:
        print(f"  UNMET  {line}")
    for line in shadowed:
        print(f"  SHADOWS image's {line}")
    if not problems and not shadowed:
        print("  ok: every requirement met, no image package shadowed")
    return 1 if problems or shadowed else 0


def cmd_experiment(args: argparse.Namespace) -> int:
    """The sweep command line's `--set PATH=VALUE` / `--set=PATH=VALUE` count; its other options
    (`--resume`, ...) do not change the experiment and are passed over."""
    from wrapperdist.sweep.spec import load_sweep

    overrides, rest = [], list(args.args)
    while rest:
        arg = rest.pop(0)
        if arg == "--set" and rest:
            overrides.append(rest.pop(0))
        elif arg.startswith("--set="):
            overrides.append(arg.removeprefix("--set="))
    sweep = load_sweep(args.spec, overrides)
    print(sweep.points[0].tracking.experiment if sweep.points else "wrapperdist")
    return 0


# How many optimiser steps a stage run takes, read from its params (the recorder logs the whole
# config as params); analysis runs train only small probes and masks: reported without steps.
STEP_PARAMS = {"pretrain": ("pretrain.optim.steps",), "finetune": ("finetune.optim.steps",),
               "reft": ("reft.budget", "analysis.reft.steps")}
BATCH_PARAMS = {"pretrain": "pretrain.optim.batch_size", "finetune": "finetune.optim.batch_size",
                "reft": "finetune.optim.batch_size"}


def cmd_throughput(args: argparse.Namespace) -> int:
    """Per stage run of the latest sweep: steps, wall time and steps per second, from the MLflow
    store. Wall time is the run's start (the trial's first report, once its data and model are
    built) to its end (the recorder closing it after the trial's last report and artifacts)."""
    from mlflow.tracking import MlflowClient

    from wrapperdist.tracking import PARENT_TAG, STAGE_TAG

    client = MlflowClient(args.uri)
    experiment = client.get_experiment_by_name(args.experiment)
    out = Path(args.out)
    result: dict = {"tracking_uri": args.uri, "experiment": args.experiment, "sweep": None, "stages": [],
                    "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    if experiment is not None:
        sweeps = client.search_runs([experiment.experiment_id], f"tags.`{STAGE_TAG}` = 'sweep'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
        if sweeps:
            sweep = sweeps[0]
            result["sweep"] = {"run_id": sweep.info.run_id, "name": sweep.info.run_name,
                               "status": sweep.info.status, **_wall(sweep)}
            runs = client.search_runs([experiment.experiment_id],
                                      f"tags.`wrapperdist.sweep` = '{sweep.info.run_id}'", max_results=50_000)
            for run in sorted(runs, key=lambda r: r.info.start_time or 0):
                kind, params = run.data.tags.get(STAGE_TAG, "?"), run.data.params
                steps = next((int(params[p]) for p in STEP_PARAMS.get(kind, ()) if p in params), None)
                batch = params.get(BATCH_PARAMS.get(kind, ""))
                wall = _wall(run)
                row = {"stage": kind, "name": run.info.run_name, "run_id": run.info.run_id,
                       "status": run.info.status, "reused": run.data.tags.get("wrapperdist.reused") == "true",
                       "parent": run.data.tags.get(PARENT_TAG), "steps": steps,
                       "batch_size": int(batch) if batch else None, "threads": params.get("runtime.threads"),
                       "host": run.data.tags.get("wrapperdist.host"),
                       **wall}
                # a run cut short (KILLED, FAILED) did not take its configured steps
                if steps and wall["wall_s"] and not row["reused"] and run.info.status == "FINISHED":
                    row["steps_per_s"] = round(steps / wall["wall_s"], 2)
                    if row["batch_size"]:
                        row["examples_per_s"] = round(steps * row["batch_size"] / wall["wall_s"], 1)
                result["stages"].append(row)
    (out / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "throughput.md").write_text(_throughput_md(result))
    print(_throughput_md(result))
    return 0


def _wall(run) -> dict:
    start, end = run.info.start_time, run.info.end_time
    return {"start_ms": start, "end_ms": end, "wall_s": round((end - start) / 1000, 2) if start and end else None}


def _throughput_md(result: dict) -> str:
    sweep = result["sweep"]
    if not sweep:
        return f"# Throughput\n\nNo sweep run in experiment {result['experiment']!r} of {result['tracking_uri']}.\n"
    lines = [f"# Throughput: {sweep['name']} ({sweep['status']}, {sweep['wall_s']} s)", "",
             "Wall time: MLflow run start (the trial's first report) to end. Reused runs did no work.", "",
             "| stage | run | status | steps | batch | wall s | steps/s | examples/s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in result["stages"]:
        status = r["status"] + (" (reused)" if r["reused"] else "")
        lines.append(f"| {r['stage']} | {r['name']} | {status} | {r['steps'] or ''} | {r['batch_size'] or ''} "
                     f"| {r['wall_s'] if r['wall_s'] is not None else ''} | {r.get('steps_per_s', '')} "
                     f"| {r.get('examples_per_s', '')} |")
    by_stage: dict[str, list[float]] = {}
    for r in result["stages"]:
        if "steps_per_s" in r:
            by_stage.setdefault(r["stage"], []).append(r["steps_per_s"])
    if by_stage:
        lines += ["", "| stage | runs | mean steps/s |", "|---|---:|---:|"]
        lines += [f"| {k} | {len(v)} | {sum(v) / len(v):.2f} |" for k, v in by_stage.items()]
    return "\n".join(lines) + "\n"


def cmd_pack(args: argparse.Namespace) -> int:
    """SRC as one gzipped tarball (whose top folder is named after it); each file at most --tail
    bytes (its end: logs), files matching --exclude left out, and files added only while the
    bytes read stay under --max-bytes (the rest are listed in SKIPPED.txt inside the tarball)."""
    src, dest = Path(args.src), Path(args.dest)
    skipped, total = [], 0
    with tarfile.open(dest, "w:gz") as tar:
        for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
            rel = path.relative_to(src)
            if any(fnmatch.fnmatch(path.name, g) for g in args.exclude):
                skipped.append(f"{rel} (excluded)")
                continue
            size = path.stat().st_size
            keep = min(size, args.tail) if args.tail else size
            if total + keep > args.max_bytes:
                skipped.append(f"{rel} ({size} bytes: over the cap)")
                continue
            with path.open("rb") as f:
                if keep < size:
                    f.seek(size - keep)
                data = f.read(keep)
            info = tarfile.TarInfo(f"{src.name}/{rel}")
            info.size, info.mtime = len(data), int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
            total += keep
        if skipped:
            note = ("\n".join(skipped) + "\n").encode()
            info = tarfile.TarInfo(f"{src.name}/SKIPPED.txt")
            info.size = len(note)
            tar.addfile(info, io.BytesIO(note))
    print(f"packed {src} -> {dest} ({dest.stat().st_size / 2**20:.1f} MiB; {len(skipped)} file(s) left out)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("image-names")
    p.add_argument("--list", help="a file listing the image's packages (default: the built-in list)")
    p.set_defaults(func=cmd_image_names)
    p = sub.add_parser("constraints")
    p.add_argument("--python", default=IMAGE_PYTHON, help="the Python resolved for (default: the image's)")
    p.set_defaults(func=cmd_constraints)
    p = sub.add_parser("slim")
    p.add_argument("wheel")
    p.add_argument("dest")
    p.set_defaults(func=cmd_slim)
    p = sub.add_parser("missing")
    p.add_argument("log")
    p.add_argument("folders", nargs="*", help="the folders pip resolved from")
    p.set_defaults(func=cmd_missing)
    p = sub.add_parser("classify")
    p.add_argument("report")
    p.add_argument("bundle")
    p.add_argument("image_dir")
    p.add_argument("--python", required=True, help="the device's Python version (e.g. 3.12)")
    p.add_argument("--list", help="as for image-names")
    p.set_defaults(func=cmd_classify)
    p = sub.add_parser("env-check")
    p.add_argument("target")
    p.add_argument("--extras", nargs="*", default=["ray:tune,train"], metavar="PROJECT:EXTRA,...",
                   help="extras whose requirements count (default ray:tune,train)")
    p.set_defaults(func=cmd_env_check)
    p = sub.add_parser("experiment")
    p.add_argument("spec")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the rest of the sweep's command line")
    p.set_defaults(func=cmd_experiment)
    p = sub.add_parser("throughput")
    p.add_argument("uri")
    p.add_argument("experiment")
    p.add_argument("out")
    p.set_defaults(func=cmd_throughput)
    p = sub.add_parser("pack")
    p.add_argument("src")
    p.add_argument("dest")
    p.add_argument("--tail", type=int, default=0, help="keep at most the last N bytes of each file")
    p.add_argument("--exclude", action="append", default=[], help="file-name glob to leave out (repeatable)")
    p.add_argument("--max-bytes", type=int, default=2**62, help="stop adding files past this many bytes")
    p.set_defaults(func=cmd_pack)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
