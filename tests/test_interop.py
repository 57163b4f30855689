"""Round trips of steer adapters through llama.cpp control vectors, repeng, steering-vectors,
merged checkpoints and Hub-ready folders, on tiny random models."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import gguf
import numpy as np
import pytest
import torch
from peft import PeftModel

from steerft.extract.pipeline import save_adapter
from steerft.interop import (
    InteropError,
    export_control_vector,
    export_merged,
    import_control_vector,
    import_repeng,
    import_steering_vector,
    prepare_for_hub,
    push_adapter,
    read_adapter,
    read_control_vector,
    upload_files,
)
from steerft.testing import tiny_model
from steerft.tuner import SteerConfig

PROMPT = "The weather today is"


def _model(arch: str = "llama", **kwargs):
    return tiny_model(arch, n_layers=4, hidden_size=64, **kwargs)


def _vectors(layers=(1, 3), size: int = 64, seed: int = 0) -> dict[int, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {layer: torch.randn(size, generator=generator) for layer in layers}


@torch.no_grad()
def _logits(model, tokenizer) -> torch.Tensor:
    return model(**tokenizer(PROMPT, return_tensors="pt")).logits[0].float()


@torch.no_grad()
def _adapter_logits(folder, arch: str = "llama") -> torch.Tensor:
    model, tokenizer = _model(arch)
    return _logits(PeftModel.from_pretrained(model, str(folder)), tokenizer)


def _adapter(tmp_path, name: str = "adapter", multiplier: float = 2.0, **config) -> tuple:
    model, _ = _model()
    vectors = _vectors()
    if not config:
        return save_adapter(model, vectors, tmp_path / name, multiplier=multiplier), vectors
    from peft import get_peft_model

    peft_model = get_peft_model(model, SteerConfig(layers=sorted(vectors), init=vectors, multiplier=multiplier, **config))
    peft_model.save_pretrained(tmp_path / name)
    return tmp_path / name, vectors


# --------------------------------------------------------------------------- llama.cpp control vectors


def test_control_vector_round_trip_keeps_the_steered_logits(tmp_path):
    folder, vectors = _adapter(tmp_path)
    path = export_control_vector(folder, tmp_path / "vector.gguf", model_hint="llama")

    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == 2
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.3"]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    read = read_control_vector(path)
    for layer, vector in vectors.items():  # the multiplier is baked in: strength 1 reproduces the adapter
        torch.testing.assert_close(read[layer], 2.0 * vector)

    model, _ = _model()
    back = import_control_vector(path, model, tmp_path / "back")
    assert read_adapter(back).multiplier == 1.0
    torch.testing.assert_close(_adapter_logits(back), _adapter_logits(folder))


def test_control_vector_export_of_chosen_layers(tmp_path):
    folder, _ = _adapter(tmp_path)
    path = export_control_vector(folder, tmp_path / "v.gguf", layers=[3])
    assert sorted(read_control_vector(path)) == [3]
    with pytest.raises(InteropError, match=r"no vector at blocks \[2\]"):
        export_control_vector(folder, tmp_path / "w.gguf", layers=[2])


@pytest.mark.parametrize(
    ("config", "message"),
    [({"operator": "ablate"}, "operator='ablate'"), ({"positions": "completion"}, "positions='completion'")],
)
def test_control_vector_export_refuses_what_llama_cpp_cannot_do(tmp_path, config, message):
    folder, _ = _adapter(tmp_path, **config)
    with pytest.raises(InteropError, match=message):
        export_control_vector(folder, tmp_path / "v.gguf")
    assert not (tmp_path / "v.gguf").exists()


def test_control_vector_export_refuses_block_zero(tmp_path):
    model, _ = _model()
    folder = save_adapter(model, _vectors(layers=(0, 2)), tmp_path / "a")
    with pytest.raises(InteropError, match=r"block 0 .*--layers 2"):
        export_control_vector(folder, tmp_path / "v.gguf")


def test_control_vector_from_another_model_is_refused(tmp_path):
    folder, _ = _adapter(tmp_path)
    path = export_control_vector(folder, tmp_path / "v.gguf")
    narrow, _ = tiny_model("llama", n_layers=4, hidden_size=32)
    with pytest.raises(InteropError, match="size \\[64\\] but LlamaForCausalLM has hidden size 32"):
        import_control_vector(path, narrow, tmp_path / "x")
    shallow, _ = tiny_model("llama", n_layers=2, hidden_size=64)
    with pytest.raises(InteropError, match=r"steers blocks \[3\] but the model has 2 blocks"):
        import_control_vector(path, shallow, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_model_gguf_is_not_taken_for_a_control_vector(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "model.gguf", "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InteropError, match="architecture='llama', not 'controlvector'"):
        read_control_vector(tmp_path / "model.gguf")


# --------------------------------------------------------------------------- repeng and steering-vectors


@pytest.fixture
def repeng(monkeypatch):
    # repeng 0.4.0 pins numpy<2 only because an annotation names np.float_ (removed in NumPy 2);
    # installed with --no-deps it runs on NumPy 2 once that name exists.
    monkeypatch.setattr(np, "float_", np.float64, raising=False)
    return pytest.importorskip("repeng")


def test_repeng_control_vector_steers_like_the_imported_adapter(tmp_path, repeng):
    vectors = _vectors(layers=(1, 2))
    control = repeng.ControlVector(model_type="llama", directions={k: v.numpy() for k, v in vectors.items()})
    model, tokenizer = _model()
    controlled = repeng.ControlModel(model, [1, 2])
    controlled.set_control(control, coeff=-1.5)
    expected = _logits(controlled, tokenizer)
    controlled.unwrap()

    folder = import_repeng(control, model, tmp_path / "from_repeng", coeff=-1.5)
    torch.testing.assert_close(_adapter_logits(folder), expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(expected, _logits(*_model()), atol=1e-3)  # the vector does move the logits


def test_repeng_gguf_file_imports_and_ours_reads_in_repeng(tmp_path, repeng):
    vectors = _vectors(layers=(1, 3))
    control = repeng.ControlVector(model_type="llama", directions={k: v.numpy() for k, v in vectors.items()})
    control.export_gguf(str(tmp_path / "repeng.gguf"))
    model, _ = _model()
    folder = import_control_vector(tmp_path / "repeng.gguf", model, tmp_path / "a")
    for layer, vector in vectors.items():
        torch.testing.assert_close(read_adapter(folder).vectors[layer], vector)

    ours = export_control_vector(folder, tmp_path / "ours.gguf")
    loaded = repeng.ControlVector.import_gguf(str(ours))
    assert sorted(loaded.directions) == [1, 3]
    np.testing.assert_allclose(loaded.directions[3], vectors[3].numpy())


def test_steering_vector_steers_like_the_imported_adapter(tmp_path):
    steering_vectors = pytest.importorskip("steering_vectors")
    vectors = {1: torch.randn(64), -1: torch.randn(64)}  # -1: the last block, as Python indexes lists
    steering = steering_vectors.SteeringVector(layer_activations=vectors, layer_type="decoder_block")
    model, tokenizer = _model()
    with steering.apply(model, multiplier=0.7):
        expected = _logits(model, tokenizer)

    folder = import_steering_vector(steering, model, tmp_path / "from_sv", multiplier=0.7)
    assert sorted(read_adapter(folder).vectors) == [1, 3]
    torch.testing.assert_close(_adapter_logits(folder), expected, rtol=1e-4, atol=1e-4)


def test_steering_vector_on_another_layer_type_is_refused(tmp_path):
    steering_vectors = pytest.importorskip("steering_vectors")
    steering = steering_vectors.SteeringVector(layer_activations={1: torch.randn(64)}, layer_type="mlp")
    with pytest.raises(InteropError, match="layer_type='mlp'"):
        import_steering_vector(steering, _model()[0], tmp_path / "x")


# --------------------------------------------------------------------------- merged checkpoints

_LOAD_WITHOUT_STEERFT = textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    prompt, *folders = sys.argv[1:]
    for folder in folders:
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        with torch.no_grad():
            torch.save(model(**tokenizer(prompt, return_tensors="pt")).logits[0], folder + "/logits.pt")
    assert not any(name.startswith(("steerft", "peft")) for name in sys.modules), "steerft or peft was imported"
    """
)


def test_merged_checkpoint_loads_without_steerft_and_reproduces_the_steering(tmp_path):
    archs, merged, steered = ("llama", "gpt2"), [], []
    for arch in archs:  # one subprocess for both: starting Python with transformers dominates the time
        base, tokenizer = _model(arch)
        base.save_pretrained(tmp_path / arch / "base")
        tokenizer.save_pretrained(tmp_path / arch / "base")
        base.name_or_path = str(tmp_path / arch / "base")
        folder = save_adapter(base, _vectors(), tmp_path / arch / "adapter", multiplier=1.5)
        merged.append(export_merged(folder, tmp_path / arch / "merged"))
        steered.append(_adapter_logits(folder, arch))
        assert not torch.allclose(steered[-1], _logits(base, tokenizer), atol=1e-3)
    subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_STEERFT, PROMPT, *map(str, merged)], check=True,
                   env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    for folder, expected in zip(merged, steered):
        torch.testing.assert_close(torch.load(folder / "logits.pt"), expected, rtol=1e-4, atol=1e-4)


def test_merge_that_is_not_exact_is_refused(tmp_path):
    base, tokenizer = _model()
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    folder, _ = _adapter(tmp_path, positions="completion")
    with pytest.raises(InteropError, match="positions='completion' steers only some tokens"):
        export_merged(folder, tmp_path / "merged", model=str(tmp_path / "base"))
    assert not (tmp_path / "merged").exists()


def _saved(folder, model, tokenizer):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model.name_or_path = str(folder)
    return model, tokenizer


def _adapter_on_saved_base(tmp_path):
    """A steer adapter recording a tiny base saved at tmp_path / "base", and that base's tokenizer."""
    base, tokenizer = _saved(tmp_path / "base", *_model())
    return save_adapter(base, _vectors(), tmp_path / "adapter"), tokenizer


def test_merged_checkpoint_keeps_the_adapter_folders_own_tokenizer_as_load_model_does(tmp_path):
    from transformers import AutoTokenizer

    folder, tokenizer = _adapter_on_saved_base(tmp_path)
    tokenizer.chat_template = "{{ 'the template this adapter was trained with' }}"
    tokenizer.save_pretrained(folder)
    merged = export_merged(folder, tmp_path / "merged")
    assert AutoTokenizer.from_pretrained(merged).chat_template == tokenizer.chat_template


def test_merged_export_with_a_missing_unknown_or_mismatched_base_is_one_line(tmp_path, capsys):
    from steerft.cli import main

    folder, _ = _adapter_on_saved_base(tmp_path)
    _saved(tmp_path / "narrow", *tiny_model(hidden_size=32))  # a base the adapter's 64-wide vectors do not fit
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    capsys.readouterr()  # saving the bases wrote progress bars
    for recorded, message in ((None, "does not record its base model (base_model_name_or_path); pass --model."),
                              ("/nowhere/base", "No model at '/nowhere/base'"),
                              (str(tmp_path / "narrow"), "could not be applied")):
        config_path.write_text(json.dumps({**config, "base_model_name_or_path": recorded}))
        assert main(["export", "merged", str(folder), str(tmp_path / "merged")]) == 2
        error = capsys.readouterr().err  # after any loading progress bars: one line
        assert error.splitlines()[-1].startswith("steerft export: ") and message in error.splitlines()[-1]
        assert "Traceback" not in error and not (tmp_path / "merged").exists()


# --------------------------------------------------------------------------- Hub-ready folders


def _run_folder(tmp_path):
    folder, _ = _adapter(tmp_path, "run")
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "smollm2-135m-instruct"
    config_path.write_text(json.dumps(config))
    (folder / "subset_ids.json").write_text(json.dumps({"dataset": "sentiment", "n": 16, "seed": 2, "ids": []}))
    (folder / "metrics.json").write_text(json.dumps({"val_preference_accuracy": 0.8125, "final_log": {}}))
    return folder


def test_prepare_for_hub_records_the_hub_id_and_writes_a_real_card(tmp_path):
    from huggingface_hub import ModelCard

    folder = _run_folder(tmp_path)
    prepare_for_hub(folder, made_with={"method": "caa"}, repo_id="someone/sentiment-steer")

    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.library_name == "peft" and "steerft" in card.data.tags
    text = card.text
    assert "| 1, 3 | all | add | 2 |" in text
    for fact in ("- method: caa", "- dataset: sentiment", "- n: 16", "- seed: 2", "- val_preference_accuracy: 0.8125",
                 'AutoPeftModelForCausalLM.from_pretrained("someone/sentiment-steer")'):
        assert fact in text
    assert "More Information Needed" not in text


class _RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls instead of sending them."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return "https://huggingface.co/someone/x/commit/0"


def test_push_uploads_the_adapter_card_and_run_records_only(tmp_path):
    folder = _run_folder(tmp_path)
    (folder / "scratch.bin").write_bytes(b"not part of the adapter")
    api = _RecordingApi()
    url = push_adapter(folder, "someone/x", private=True, api=api)

    assert url.endswith("/commit/0")
    (create, repo, create_kwargs), (upload, _, upload_kwargs) = api.calls
    assert (create, repo, create_kwargs["private"], create_kwargs["exist_ok"]) == ("create_repo", "someone/x", True, True)
    assert upload == "upload_folder" and upload_kwargs["folder_path"] == str(folder)
    assert upload_kwargs["allow_patterns"] == upload_files(folder) == [
        "adapter_config.json", "adapter_model.safetensors", "README.md", "metrics.json", "subset_ids.json"]
    assert "someone/x" in (folder / "README.md").read_text()


def test_push_of_a_folder_without_an_adapter_fails_before_any_upload(tmp_path):
    api = _RecordingApi()
    with pytest.raises(InteropError, match="not an adapter folder"):
        push_adapter(tmp_path, "someone/x", api=api)
    assert api.calls == []


def test_card_of_an_extraction_run_says_how_the_vector_was_made(tmp_path):
    run = tmp_path / "extract"
    folder, _ = _adapter(run / "adapters", "mean_diff-layer3")
    (run / "run.json").write_text(json.dumps({"config": {"model": "smollm2-135m-instruct", "dataset": "sentiment",
                                                         "seed": 1}}))
    (run / "report.json").write_text(json.dumps({"reports": [
        {"layer": 3, "estimator": "mean_diff", "n_train": 16, "heldout_accuracy": 0.9375, "norm": 15.4},
        {"layer": 5, "estimator": "pca", "n_train": 16, "heldout_accuracy": 0.5, "norm": 1.0}]}))
    text = prepare_for_hub(folder).text
    for fact in ("- method: extraction (mean_diff)", "- dataset: sentiment", "- n: 16", "- seed: 1",
                 "- heldout_accuracy: 0.9375"):
        assert fact in text
    assert "0.5" not in text  # another vector's numbers stay out


# --------------------------------------------------------------------------- command line


def test_cli_export_import_and_dry_run_push(tmp_path, capsys):
    from steerft.cli import main

    base, tokenizer = _model()
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    folder, _ = _adapter(tmp_path)

    assert main(["export", "gguf", str(folder), str(tmp_path / "v.gguf"), "--layers", "3"]) == 0
    assert "--control-vector-scaled" in capsys.readouterr().out
    assert main(["import", "gguf", str(tmp_path / "v.gguf"), str(tmp_path / "back"), "--model",
                 str(tmp_path / "base")]) == 0
    assert sorted(read_adapter(tmp_path / "back").vectors) == [3]
    assert main(["push", str(folder), "someone/x", "--dry-run"]) == 0
    assert "adapter_config.json, adapter_model.safetensors, README.md" in capsys.readouterr().out

    assert main(["export", "gguf", str(folder), str(tmp_path / "w.gguf"), "--layers", "2"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("steerft export: ") and error.count("\n") == 1 and "Traceback" not in error


@pytest.mark.real
def test_an_adapter_made_on_a_builtin_records_its_hub_id(tmp_path):
    from steerft.models import load_model

    model, _ = load_model("smollm2-135m-instruct")
    assert model.config.gguf_source.startswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    folder = save_adapter(model, {5: torch.zeros(576)}, tmp_path / "a")
    assert read_adapter(folder).base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
