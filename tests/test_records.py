"""The typed records (meta.json, manifest.json, presets, profiles): what is written is what is read back,
versions are checked, and a bad field is one line that names it."""

import json

import pytest

from edgekit.errors import EdgekitError
from edgekit.records import (
    MANIFEST,
    META_VERSION,
    Lineage,
    Manifest,
    ModelFile,
    StageMeta,
    read_manifest,
    read_meta,
    write_meta,
)


def _stage(folder, **kw):
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"abcd")
    return write_meta(folder, **{"stage": "finetune", "config": {"model": "m"}, **kw})


def test_meta_round_trips_with_lineage_and_stage_details(tmp_path):
    parent = _stage(tmp_path / "teacher", fingerprint_value="f" * 16, metrics={"accuracy": 0.5})
    child = _stage(
        tmp_path / "student",
        parent=tmp_path / "teacher",
        metrics={"accuracy": 0.75},
        parameters=7,
        extra={"teacher": {"arch": "bert", "parameters": 9}, "links": [{"name": "1-L3"}]},
    )
    assert child.parent == Lineage(str((tmp_path / "teacher").resolve()), "finetune", parent.fingerprint)
    on_disk = json.loads((tmp_path / "student" / "meta.json").read_text())
    assert on_disk == child.to_json()
    # stage-specific fields are written beside the common ones, as before the records
    assert on_disk["teacher"] == {"arch": "bert", "parameters": 9} and on_disk["links"] == [{"name": "1-L3"}]
    assert on_disk["parent"]["stage"] == "finetune" and on_disk["size_bytes"] == 4
    back = read_meta(tmp_path / "student")
    assert back == child and back.details["teacher"]["arch"] == "bert" and back.path == tmp_path / "student"
    assert back.files["model.bin"]["bytes"] == 4 and back.size_bytes == 4


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"schema_version": 99}, "schema_version '99'"),
        ({"stage": 3}, "stage is int"),
        ({"metrics": None}, "metrics is NoneType"),
        ({"parameters": 1.5}, "parameters must be a whole number"),
        ({"parameters": True}, "parameters must be a whole number"),
    ],
)
def test_a_bad_meta_field_is_one_line_naming_it(tmp_path, change, needle):
    _stage(tmp_path / "s")
    path = tmp_path / "s" / "meta.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(EdgekitError, match=needle) as info:
        StageMeta.read(tmp_path / "s")
    assert "\n" not in str(info.value) and "re-run the stage" in str(info.value) or "update edgekit" in str(info.value)


def _manifest(**kw) -> Manifest:
    graph = ModelFile("model", "model.onnx", [{"name": "pixel_values", "dtype": "float32", "shape": [-1, 3, 8, 8]}], [])
    return Manifest("image-classification", ["a", "b"], {"image_size": 8}, [graph], **kw)


def test_manifest_round_trips_and_keeps_fields_a_newer_edgekit_added(tmp_path):
    written = _manifest(precision="int8", parity={"int8": {"passed": True}}, details={"from_the_future": [1]})
    written.write(tmp_path)
    data = json.loads((tmp_path / MANIFEST).read_text())
    assert data["schema_version"] == 2 and data["model_file"] == "model.onnx" and data["from_the_future"] == [1]
    # readers of schema 1 find the first model's inputs at the top level
    assert data["inputs"] == data["graphs"][0]["inputs"]
    back = read_manifest(tmp_path)
    assert back == written and back.quant_mode == "none" and back.graphs[0].input_names == ["pixel_values"]


def test_a_schema_1_manifest_reads_as_one_model_file(tmp_path):
    old = {
        "task": "text-classification",
        "label_names": ["neg", "pos"],
        "preprocessing": {"max_length": 16},
        "inputs": [{"name": "input_ids"}, {"name": "attention_mask"}],
        "sha256": "0" * 64,
    }
    (tmp_path / MANIFEST).write_text(json.dumps(old))
    manifest = read_manifest(tmp_path)
    assert manifest.schema_version == 1 and manifest.model_file == "model.onnx"
    assert manifest.graphs[0].input_names == ["input_ids", "attention_mask"] and manifest.graphs[0].sha256 == "0" * 64
    assert manifest.graphs[0].outputs == [{"name": "logits"}]


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"schema_version": 7}, "schema_version '7'"),
        ({"task": "poetry"}, "task 'poetry'"),
        ({"label_names": "ab"}, "label_names"),
        ({"format": "tflite"}, "format 'tflite'"),
        ({"graphs": [{"name": "model", "file": "../x.onnx", "inputs": []}]}, "outside the bundle"),
        ({"graphs": [{"name": "model", "file": "m.onnx", "inputs": "x"}]}, "no inputs"),
    ],
)
def test_a_bad_manifest_is_refused_in_one_line(tmp_path, change, needle):
    data = {**_manifest().to_json(), **change}
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(EdgekitError, match=needle) as info:
        read_manifest(tmp_path)
    assert "\n" not in str(info.value) and "export the bundle again" in str(info.value)


def test_every_shipped_preset_and_profile_round_trips():
    from edgekit.bench.profiles import Profile, list_profiles, load_profile
    from edgekit.export.presets import Preset, load_preset
    from edgekit.resources import list_named

    for name in list_profiles():
        profile = load_profile(name)
        assert Profile.from_json(profile.to_json()) == profile
        json.dumps(profile.to_json())  # what a bench worker and a device are sent
    for name in list_named("export"):
        preset = load_preset(name)
        assert Preset(**preset.to_json()) == preset and preset.schema_version == 1
        assert set(preset.quantization) >= {"mode", "engine", "reduce_range"} and "min_agreement" in preset.parity


@pytest.mark.parametrize(
    "text, needle",
    [
        ("name: mine\nprecison: int8\n", "unknown settings precison"),
        ("name: mine\nquantization: {mdoe: static}\n", "unknown quantization settings mdoe"),
        ("name: mine\nparity: {min_agreemnt: 0.9}\n", "unknown parity settings min_agreemnt"),
        ("name: mine\nparity: 0.9\n", "parity must be a mapping"),
        ("name: mine\nschema_version: 2\n", "schema_version 2"),
        ("name: mine\ndescription: [1]\n", "description must be text"),
    ],
)
def test_a_bad_preset_file_is_refused_in_one_line(tmp_path, text, needle):
    from edgekit.export.presets import load_preset

    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(EdgekitError, match=needle) as info:
        load_preset(str(path))
    assert "\n" not in str(info.value) and "export preset mine" in str(info.value)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("name: mine\nschema_version: 3\n", "schema_version 3"),
        ("name: mine\nbatch_sizes: [0]\n", "batch_sizes"),
        ("name: mine\nexport_preset: 4\n", "export_preset must be text"),
    ],
)
def test_a_bad_profile_file_is_refused_in_one_line(tmp_path, text, needle):
    from edgekit.bench.profiles import load_profile

    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(EdgekitError, match=needle):
        load_profile(str(path))


def test_meta_version_is_the_one_written():
    assert StageMeta("s", {}).schema_version == META_VERSION == 1
