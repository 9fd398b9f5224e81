"""A corpus of malformed sweeps, conf entries, files and CLI overrides: each gets one `error:` line
naming the file and key, exit code 2, no traceback, and nothing written (no output directory)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from cluster.__main__ import main

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
SMOKE = (REPO / "sweeps" / "smoke.yaml").read_text()


def _data() -> dict:
    return yaml.safe_load(SMOKE)


def _sweep(
    tmp: Path, change: Callable[[dict], object] | None = None, text: str | bytes | None = None
) -> Path:
    path = tmp / "sweep.yaml"
    if text is None:
        data = _data()
        if change:
            change(data)
        text = yaml.safe_dump(data)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _conf(tmp: Path, rel: str, change: Callable[[dict], object]) -> Path:
    conf = tmp / "conf"
    shutil.copytree(REPO / "conf", conf)
    target = conf / rel
    data = yaml.safe_load(target.read_text())
    change(data)
    target.write_text(yaml.safe_dump(data))
    return _sweep(tmp, lambda d: d.update(conf_dir=str(conf)))


def _jsonl_model(tmp: Path, body: str) -> Path:
    data_file = tmp / "calib.jsonl"
    data_file.write_text(body)
    conf = tmp / "conf"
    shutil.copytree(REPO / "conf", conf)
    model = {"name": "mine", "path": str(REPO), "params_b": 0.1, "instruct_dataset": str(data_file)}
    (conf / "models" / "mine.yaml").write_text(yaml.safe_dump(model))
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text("{}")
    return _sweep(
        tmp, lambda d: d.update(conf_dir=str(conf), models=["mine"], model_paths={"mine": str(tmp / "model")})
    )


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("bcdefgh", "cdefghi", strict=True)
)

# (id, how to make the bad input -> (sweep path, extra CLI args), what the error line must say)
CASES: list[tuple[str, Callable[[Path], tuple[Path, list[str]]], str]] = [
    ("unknown-key", lambda t: (_sweep(t, lambda d: d.update(colour="red")), []), "unknown key 'colour'"),
    ("unknown-nested-key", lambda t: (_sweep(t, lambda d: d["eval"].update(actorz=2)), []), "eval.actorz"),
    ("wrong-type", lambda t: (_sweep(t, lambda d: d["eval"].update(actors="two")), []), "'eval.actors'"),
    (
        "unknown-format",
        lambda t: (_sweep(t, lambda d: d.update(formats=["bf16", "w3a3"])), []),
        "unknown 'w3a3'",
    ),
    ("unknown-model", lambda t: (_sweep(t, lambda d: d.update(models=["gpt-9"])), []), "unknown 'gpt-9'"),
    (
        "unknown-suite",
        lambda t: (_sweep(t, lambda d: d["eval"].update(suites=["mmlu-x"])), []),
        "eval.suites names unknown",
    ),
    (
        "unknown-use-case",
        lambda t: (_sweep(t, lambda d: d["serve"].update(use_cases=["chess"])), []),
        "serve.use_cases",
    ),
    (
        "unknown-hardware",
        lambda t: (_sweep(t, lambda d: d["serve"].update(hardware=["tpu"])), []),
        "serve.hardware",
    ),
    (
        "negative-limit",
        lambda t: (_sweep(t, lambda d: d["eval"].update(limit=-5)), []),
        "eval.limit must be >= 1",
    ),
    ("zero-limit", lambda t: (_sweep(t, lambda d: d["eval"].update(limit=0)), []), "eval.limit must be >= 1"),
    (
        "task-limit-of-no-task",
        lambda t: (_sweep(t, lambda d: d["eval"].update(task_limits={"mmlu": 2})), []),
        "eval.task_limits: 'mmlu' is no task of eval.suites",
    ),
    (
        "zero-task-limit",
        lambda t: (_sweep(t, lambda d: d["eval"].update(task_limits={"qs_tiny_mc": 0})), []),
        "eval.task_limits.qs_tiny_mc must be >= 1",
    ),
    (
        "nan-rate",
        lambda t: (_sweep(t, text=SMOKE.replace("async_rate: 4.0", "async_rate: .nan")), []),
        "serve.async_rate must be a finite",
    ),
    (
        "negative-rate",
        lambda t: (_sweep(t, lambda d: d["serve"].update(async_rate=-1.0)), []),
        "serve.async_rate must be > 0",
    ),
    (
        "inf-duration",
        lambda t: (_sweep(t, text=SMOKE.replace("async_duration_s: 6", "async_duration_s: .inf")), []),
        "finite",
    ),
    ("port-zero", lambda t: (_sweep(t, lambda d: d["serve"].update(port=0)), []), "serve.port must be >= 1"),
    ("port-too-big", lambda t: (_sweep(t, lambda d: d["serve"].update(port=70000)), []), "<= 65535"),
    ("duplicate-key", lambda t: (_sweep(t, text=SMOKE + "name: again\n"), []), "key 'name' given twice"),
    ("alias-bomb", lambda t: (_sweep(t, text=ALIAS_BOMB), []), "YAML anchors (&a) are not allowed"),
    (
        "alias",
        lambda t: (_sweep(t, text=SMOKE.replace("suites: [tiny]", "suites: &s [tiny]") + "x: *s\n"), []),
        "not allowed",
    ),
    ("not-utf8", lambda t: (_sweep(t, text=b"name: caf\xe9\n"), []), "not UTF-8 text (byte 0xe9"),
    ("huge-file", lambda t: (_sweep(t, text="#" * (2 << 20)), []), "config files are limited to"),
    ("nul-byte", lambda t: (_sweep(t, text="name: a\x00b\n"), []), "NUL byte"),
    ("empty-file", lambda t: (_sweep(t, text=""), []), "expected a mapping at top level"),
    ("top-level-list", lambda t: (_sweep(t, text="- a\n- b\n"), []), "expected a mapping at top level"),
    ("empty-models", lambda t: (_sweep(t, lambda d: d.update(models=[])), []), "models must not be empty"),
    ("empty-formats", lambda t: (_sweep(t, lambda d: d.update(formats=[])), []), "formats must not be empty"),
    (
        "repeated-format",
        lambda t: (_sweep(t, lambda d: d.update(formats=["bf16", "bf16"])), []),
        "lists 'bf16' more than once",
    ),
    ("path-in-name", lambda t: (_sweep(t, lambda d: d.update(name="../../etc")), []), "it becomes a path"),
    ("upper-name", lambda t: (_sweep(t, lambda d: d.update(name="Smoke/1")), []), "must match"),
    (
        "empty-space",
        lambda t: (_sweep(t, lambda d: d["tune"].update(space={"group_size": []})), []),
        "non-empty list",
    ),
    (
        "bad-rungs",
        lambda t: (_sweep(t, lambda d: d["tune"].update(rungs=[50, 10], limit=None)), []),
        "strictly increasing",
    ),
    (
        "recipe-key",
        lambda t: (_sweep(t, lambda d: d["recipe_overrides"]["w8a8-int"].update(dampen=1)), []),
        "'dampen' is not a recipe field",
    ),
    (
        "recipe-format",
        lambda t: (_sweep(t, lambda d: d["recipe_overrides"].update({"fp4": {}})), []),
        "recipe_overrides names unknown 'fp4'",
    ),
    (
        "engine-dtype",
        lambda t: (_sweep(t, lambda d: d["engine"].update(dtype="int3")), []),
        "engine.dtype 'int3'",
    ),
    ("gpu-util", lambda t: (_sweep(t, lambda d: d["engine"].update(gpu_memory_utilization=1.5)), []), "<= 1"),
    (
        "error-budget",
        lambda t: (_sweep(t, lambda d: d["serve"].update(error_budget=2)), []),
        "serve.error_budget",
    ),
    (
        "trial-cpus",
        lambda t: (_sweep(t, lambda d: d["tune"].update(cpus_per_trial=0)), []),
        "tune.cpus_per_trial must be > 0",
    ),
    (
        "model-path",
        lambda t: (_sweep(t, lambda d: d.update(model_paths={"organism": str(t)})), []),
        "no config.json",
    ),
    (
        "prompts-file",
        lambda t: (
            _sweep(t, lambda d: d["eval"].setdefault("similarity", {}).update(prompts=str(t / "p.jsonl"))),
            [],
        ),
        "does not exist",
    ),
    (
        "conf-dir",
        lambda t: (_sweep(t, lambda d: d.update(conf_dir=str(t / "nope"))), []),
        "is not a directory",
    ),
    (
        "conf-price",
        lambda t: (_conf(t, "hardware.yaml", lambda d: d["a100"]["price_per_hour"].update({1: -1.0})), []),
        "price_per_hour.1 must be > 0",
    ),
    (
        "chance-above-one",
        lambda t: (_conf(t, "suites/tiny.yaml", lambda d: d["tasks"][0].update(chance=1.5)), []),
        "task qs_tiny_mc: chance must be >= 0.0 and <= 1.0, got 1.5",
    ),
    (
        "conf-tokens",
        lambda t: (_conf(t, "use_cases.yaml", lambda d: d["rag"].update(prompt_tokens=0)), []),
        "prompt_tokens must be >= 1",
    ),
    (
        "conf-model-name",
        lambda t: (_conf(t, "models/organism.yaml", lambda d: d.update(name="x")), []),
        "must match the file name",
    ),
    (
        "calibration-keys",
        lambda t: (_jsonl_model(t, '{"question": "q", "answer": "a"}\n'), []),
        "row 1 has ['answer', 'question']",
    ),
    ("calibration-json", lambda t: (_jsonl_model(t, '{"text": "ok"}\n{oops\n'), []), "line 2 is not JSON"),
    (
        "override-no-equals",
        lambda t: (_sweep(t), ["eval.actors"]),
        "override 'eval.actors' is not of the form key=value",
    ),
    ("override-unknown", lambda t: (_sweep(t), ["eval.actorz=2"]), "eval.actorz"),
    (
        "override-twice",
        lambda t: (_sweep(t), ["eval.actors=2", "eval.actors=3"]),
        "override 'eval.actors' given twice",
    ),
    ("override-nan", lambda t: (_sweep(t), ["serve.async_rate=.nan"]), "finite"),
    ("override-alias", lambda t: (_sweep(t), ["eval.suites=*x"]), "not allowed"),
    ("missing-file", lambda t: (t / "nope.yaml", []), "nope.yaml: file not found"),
]


@pytest.fixture
def no_ray(monkeypatch):
    """A bad input must never reach Ray; fail loudly if one does."""
    import cluster.run.ray_init as ray_init

    def refuse(*_a, **_k):
        raise AssertionError("Ray was started for a bad input")

    monkeypatch.setattr(ray_init, "init_ray", refuse)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make, message", [(m, msg) for _, m, msg in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_exit_2_nothing_written(tmp_path, capsys, no_ray, make, message):
    sweep, extra = make(tmp_path)
    out = tmp_path / "out"
    code = main(["run", str(sweep), f"output_root={out}", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not out.exists()


def test_the_corpus_is_large():
    assert len(CASES) >= 30


def test_the_cli_itself_prints_no_traceback_and_writes_nothing(tmp_path):
    path = _sweep(tmp_path, text=ALIAS_BOMB)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "run", str(path), f"output_root={out}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert (
        proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr + proc.stdout
    )
    assert not out.exists()
