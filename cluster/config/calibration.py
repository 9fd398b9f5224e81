"""Calibration and prompt files: the layouts quantsweep reads, checked before any work starts.

A model's `instruct_dataset` (calibration text for `calibration.source: instruct`) is a hub dataset
id (read on clusters with hub access), a saved `datasets` folder (`save_to_disk`), or a local jsonl
whose rows each carry one of these layouts:

- `{"text": ...}`
- `{"messages": [{"role": ..., "content": ...}, ...]}` (chat)
- `{"instruction": ..., "output": ...}` (an optional `input` is placed between them)
- `{"prompt": ..., "completion": ...}`

A source may end in `#<column>` to take the text of that one column of every row instead (a saved
dataset of passages, e.g. SciQ's `support` paragraphs), and may name a folder or file inside an
installed Python package as `pkg:<package>/<path>` (the package is located, never imported).

`check_calibration_file` reads a local file once at plan time and names the first bad line;
`calibration_texts` turns any of them into plain texts for the quantize stage.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError

LAYOUTS = ("text", "messages", "instruction/output", "prompt/completion")
MAX_FILE_BYTES = 512 << 20


PACKAGE_PREFIX = "pkg:"


def package_path(spec: str) -> Path:
    """`pkg:<package>/<relative path>` as a path inside the installed package (never imported);
    any other spec as a filesystem path."""
    import importlib.util

    if not spec.startswith(PACKAGE_PREFIX):
        return Path(spec).expanduser()
    package, _, rel = spec[len(PACKAGE_PREFIX) :].partition("/")
    found = importlib.util.find_spec(package) if package else None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"'{spec}': no installed package '{package}' (is it in requirements?)")
    return Path(list(found.submodule_search_locations)[0]) / rel


def split_column(source: str) -> tuple[str, str | None]:
    """`<source>#<column>` -> (source, column); a source without one -> (source, None)."""
    base, sep, column = source.rpartition("#")
    return (base, column) if sep and base and column else (source, None)


def is_local(source: str) -> bool:
    """True when `source` names a local file or folder rather than a hub dataset id."""
    source = split_column(source)[0]
    if source.startswith(PACKAGE_PREFIX):
        return True
    return Path(source).exists() or source.startswith((".", "/", "~")) or source.endswith((".jsonl", ".json"))


def row_text(row: Any, column: str | None = None) -> str | None:
    """The training text of one row in any accepted layout, or of `column` when one is named (None
    when the row has neither)."""
    if not isinstance(row, dict):
        return None
    if column is not None:
        value = row.get(column)
        return value if isinstance(value, str) and value.strip() else None
    if isinstance(row.get("text"), str):
        return row["text"]
    msgs = row.get("messages")
    if (
        isinstance(msgs, list)
        and msgs
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs)
    ):
        return "\n".join(m["content"] for m in msgs)
    if isinstance(row.get("instruction"), str) and isinstance(row.get("output"), str):
        middle = f"\n{row['input']}" if isinstance(row.get("input"), str) and row["input"] else ""
        return f"{row['instruction']}{middle}\n{row['output']}"
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return f"{row['prompt']}{row['completion']}"
    return None


def _jsonl_rows(path: Path, where: str) -> list[Any]:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(f"{where}: '{path}' is larger than {MAX_FILE_BYTES >> 20} MiB")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="strict").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: '{path}' line {n} is not JSON ({exc.msg})") from None
    return rows


def check_calibration_file(source: str, where: str) -> None:
    """A local calibration file must exist and every row must have an accepted layout."""
    if not is_local(source):
        return  # a hub dataset id: checked where the cluster can reach the hub
    spec, column = split_column(source)
    path = package_path(spec)
    if path.is_dir():
        _check_saved_dataset(path, where, column)
        return
    if not path.is_file():
        raise ConfigError(f"{where}: '{path}' does not exist")
    try:
        rows = _jsonl_rows(path, where)
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: '{path}' is not UTF-8 text") from None
    if not rows:
        raise ConfigError(f"{where}: '{path}' has no rows")
    for n, row in enumerate(rows, start=1):
        if row_text(row, column) is None:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            need = f"a text '{column}'" if column else f"one of {', '.join(LAYOUTS)}"
            raise ConfigError(f"{where}: '{path}' row {n} has {keys}; each row needs {need}")


LAYOUT_COLUMNS = ({"text"}, {"messages"}, {"instruction", "output"}, {"prompt", "completion"})


def _check_saved_dataset(path: Path, where: str, column: str | None = None) -> None:
    """A `save_to_disk` folder (a Dataset, or a DatasetDict read through its train split) with a layout's columns."""
    info = path / "dataset_info.json"
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text()).get("splits") or []
        except (OSError, ValueError):
            splits = []
        split = "train" if "train" in splits else (splits[0] if splits else "")
        info = path / split / "dataset_info.json"
    if not info.is_file():
        raise ConfigError(f"{where}: '{path}' is a folder but not a saved dataset (no dataset_info.json)")
    try:
        columns = set(json.loads(info.read_text()).get("features") or {})
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: '{info}' cannot be read ({exc})") from None
    if column is not None and column not in columns:
        raise ConfigError(
            f"{where}: saved dataset '{path}' has no column '{column}' (it has {sorted(columns)})"
        )
    if column is None and not any(need <= columns for need in LAYOUT_COLUMNS):
        raise ConfigError(
            f"{where}: saved dataset '{path}' has columns {sorted(columns)}; it needs one of {', '.join(LAYOUTS)}"
        )


def check_prompts_file(source: str, where: str) -> None:
    """A prompts jsonl: every row an object with a string `prompt`."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(f"{where}: '{path}' does not exist")
    try:
        rows = _jsonl_rows(path, where)
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: '{path}' is not UTF-8 text") from None
    bad = next(
        (n for n, r in enumerate(rows, 1) if not (isinstance(r, dict) and isinstance(r.get("prompt"), str))),
        0,
    )
    if not rows or bad:
        raise ConfigError(f"{where}: '{path}' row {bad or 1} needs a string 'prompt'")


def calibration_texts(source: str, n: int, seed: int) -> list[str]:
    """`n` shuffled calibration texts from a local jsonl, a saved dataset or a hub dataset id."""
    spec, column = split_column(source)
    path = package_path(spec)
    if path.is_file():
        texts = [t for t in (row_text(r, column) for r in _jsonl_rows(path, source)) if t]
    else:
        from datasets import load_dataset, load_from_disk

        ds = load_from_disk(str(path)) if path.is_dir() else load_dataset(spec, split="train")
        if hasattr(ds, "keys") and "train" in ds:  # a DatasetDict
            ds = ds["train"]
        texts = [t for t in (row_text(dict(r), column) for r in ds) if t]
    random.Random(seed).shuffle(texts)
    return texts[:n]
