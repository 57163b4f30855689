"""SFT and DPO through TRL with steer, LoRA and full adapters, on tiny random models; run folders; W&B offline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import TrainerCallback

from steerft import SteerConfig, cli, tracking
from steerft.adapter import AdapterSpec, default_learning_rate, peft_config
from steerft.data import PromptFormatter, contrast_pairs, load_behaviour, split_items, training_subset
from steerft.jobs import train
from steerft.jobs.train import TrainConfig, run_training
from steerft.metrics import preference
from steerft.runconfig import ConfigError, build, load_config
from steerft.testing import tiny_model
from steerft.training import build_trainer, fit, training_rows

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
STEER_KEY = "base_model.model.model.layers.2.steer.vector.default.weight"


class Recorder(TrainerCallback):
    """Logged losses, and the parameters as they are when training starts (after TRL wrapped the model)."""

    def __init__(self) -> None:
        self.logs: list[dict] = []
        self.start: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = {name: p.detach().clone() for name, p in model.named_parameters()}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.logs.append(dict(logs))

    @property
    def losses(self) -> list[float]:
        return [log["loss"] for log in self.logs]


@pytest.fixture(scope="module")
def items():
    dataset = load_behaviour("sentiment")
    return training_subset(split_items(dataset.items, seed=0).train, 8, seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny llama and its tokenizer on disk, for the config path `model=<dir>`."""
    path = tmp_path_factory.mktemp("tiny")
    model, tokenizer = tiny_model()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _peft_config(adapter: str):
    if adapter == "steer":
        return SteerConfig(layers=[2])
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def _args(tmp_path: Path, adapter: str, steps: int = 6) -> dict:
    return dict(output_dir=str(tmp_path / "trainer"), max_steps=steps, per_device_train_batch_size=4, seed=0,
                learning_rate=0.1 if adapter == "steer" else 1e-2, logging_steps=1)


def _ids() -> torch.Tensor:
    return torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["sft", "dpo"])
@pytest.mark.parametrize("adapter", ["steer", "lora"])
def test_fit_trains_only_the_adapter_and_the_saved_adapter_reproduces_it(method, adapter, items, tmp_path):
    model, tokenizer = tiny_model(seed=0)
    recorder = Recorder()
    rows = training_rows(method, items, PromptFormatter(tokenizer))
    trained = fit(model, tokenizer, rows, method=method, peft_config=_peft_config(adapter),
                  args=_args(tmp_path, adapter), callbacks=[recorder])

    assert isinstance(trained, PeftModel)
    losses = recorder.losses
    assert len(losses) == 6 and sum(losses[-2:]) / 2 < losses[0], losses
    changed = {name for name, p in trained.named_parameters() if not torch.equal(p.detach(), recorder.start[name])}
    if adapter == "steer":
        assert changed == {STEER_KEY}
    else:
        assert changed and all("lora_" in name for name in changed), changed
        assert any("lora_B" in name for name in changed)

    trained.save_pretrained(tmp_path / "adapter")
    fresh, _ = tiny_model(seed=0)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    trained.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(_ids()).logits, trained(_ids()).logits)


def test_dpo_with_steer_uses_the_adapter_disabled_model_as_reference(items, tmp_path, monkeypatch):
    def no_copy(*args, **kwargs):
        raise AssertionError("DPO loaded a second model as reference")

    monkeypatch.setattr("trl.trainer.dpo_trainer.create_model_from_path", no_copy)
    model, tokenizer = tiny_model()
    recorder = Recorder()
    rows = training_rows("dpo", items, PromptFormatter(tokenizer))
    trainer = build_trainer(model, tokenizer, rows, method="dpo", peft_config=SteerConfig(layers=[2]),
                            args=_args(tmp_path, "steer", steps=2), callbacks=[recorder])
    assert trainer.ref_model is None
    trainer.train()
    first = recorder.logs[0]  # computed before the first update: the zero vector is the reference exactly
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_backward_stops_at_the_steered_block(method, items, tmp_path):
    """No checkpointing, no input gradients: blocks below the vector build no autograd graph."""
    model, tokenizer = tiny_model()
    needs_grad: dict[int, bool] = {}

    def record(index):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            needs_grad[index] = needs_grad.get(index, False) or hidden.requires_grad

        return hook

    for index, block in enumerate(model.model.layers):
        block.register_forward_hook(record(index))
    rows = training_rows(method, items, PromptFormatter(tokenizer))
    build_trainer(model, tokenizer, rows, method=method, peft_config=SteerConfig(layers=[2]),
                  args=_args(tmp_path, "steer", steps=1)).train()
    assert needs_grad == {0: False, 1: False, 2: True, 3: True}


def test_full_dpo_gets_a_frozen_reference_copy(items, tmp_path):
    model, tokenizer = tiny_model()
    rows = training_rows("dpo", items, PromptFormatter(tokenizer))
    trainer = build_trainer(model, tokenizer, rows, method="dpo", peft_config=None, args=_args(tmp_path, "full"))
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())


def test_gradient_checkpointing_with_steer_warns(items, tmp_path):
    model, tokenizer = tiny_model()
    rows = training_rows("sft", items, PromptFormatter(tokenizer))
    with pytest.warns(UserWarning, match="gradient_checkpointing=False"):
        build_trainer(model, tokenizer, rows, method="sft", peft_config=SteerConfig(layers=[2]),
                      args={**_args(tmp_path, "steer"), "gradient_checkpointing": True})


def test_peft_config_kinds():
    steer = peft_config(AdapterSpec(layers=[3], positions="completion", multiplier=2.0))
    assert isinstance(steer, SteerConfig) and steer.layers == [3] and steer.positions == "completion"
    assert steer.multiplier == 2.0
    lora = peft_config(AdapterSpec(kind="lora", lora_r=4))
    assert isinstance(lora, LoraConfig) and lora.r == 4 and set(lora.target_modules) == {"q_proj", "v_proj"}
    assert peft_config(AdapterSpec(kind="full")) is None
    given = peft_config(AdapterSpec(peft={"peft_type": "lora", "r": 16, "target_modules": ["q_proj"]}))
    assert isinstance(given, LoraConfig) and given.r == 16 and given.task_type == "CAUSAL_LM"


def test_init_from_a_saved_steer_adapter_starts_from_its_vector(tmp_path):
    model, _ = tiny_model()
    vector = torch.randn(64, generator=torch.Generator().manual_seed(0))
    get_peft_model(model, SteerConfig(layers=[1], init={1: vector}, multiplier=2.0)).save_pretrained(tmp_path)
    config = peft_config(AdapterSpec(layers=[1], init=str(tmp_path)))
    assert torch.equal(config.given_vectors[1], 2.0 * vector)  # the steering the saved adapter applied
    with pytest.raises(ConfigError, match="layers"):
        peft_config(AdapterSpec(layers=[2], init=str(tmp_path)))


def test_run_training_writes_the_run_folder_and_logs_offline_without_a_login(tiny_dir, tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-files"))
    (tmp_path / "wandb-files").mkdir()
    assert tracking.wandb_mode() == "offline"
    out = tmp_path / "runs"
    code = cli.main(["train", f"model={tiny_dir}", "adapter.layers=[2]", "n=8", "trainer.max_steps=3", "eval_items=4",
                     "threads=1", f"output_dir={out}", "wandb_group=test"])
    assert code == 0
    run = out / "sft-steer-L2-n8-s0"
    assert sorted(p.name for p in out.iterdir()) == [run.name]  # no staging leftovers
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.yaml", "subset_ids.json", "metrics.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["trainable_params"] == 64 and metrics["world_size"] == 1
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["trainer"] == {"learning_rate": default_learning_rate("steer"), "max_steps": 3}
    assert resolved["n"] == 8 and resolved["adapter"]["layers"] == [2]
    assert len(json.loads((run / "subset_ids.json").read_text())["ids"]) == 8
    assert list((tmp_path / "wandb-files" / "wandb").glob("offline-run-*"))

    fresh, tokenizer = tiny_model()
    reloaded = PeftModel.from_pretrained(fresh, run)
    assert reloaded.get_vectors()[2].abs().sum() > 0
    val = split_items(load_behaviour("sentiment").items, seed=0).val[:4]  # what metrics.json scored
    expected = preference(reloaded, tokenizer, contrast_pairs(val, PromptFormatter(tokenizer))).accuracy
    assert metrics["val_preference_accuracy"] == expected and metrics["val_items"] == 4


class Stop(Exception):
    pass


def test_trainer_section_reaches_trls_args_from_overrides(tiny_dir, tmp_path, monkeypatch):
    """Any SFTConfig key is settable as `trainer.<key>=...`; steerft's defaults stay under the rest.

    transformers 5 folded `warmup_ratio` into `warmup_steps` (a float below 1 is a ratio)."""
    seen = {}

    def capture(trainer, *args, **kwargs):
        seen["args"] = trainer.args
        raise Stop  # before training: the args are what is checked

    monkeypatch.setattr(train, "_train", capture)
    with pytest.raises(Stop):
        cli.main(["train", f"model={tiny_dir}", "adapter.layers=[2]", "n=8", "--no-wandb", f"output_dir={tmp_path}",
                  "trainer.warmup_steps=0.1", "trainer.lr_scheduler_type=cosine", "trainer.bf16=true",
                  "trainer.learning_rate=3e-2"])
    args = seen["args"]
    assert args.warmup_steps == 0.1 and args.lr_scheduler_type == "cosine" and args.bf16 is True
    assert args.learning_rate == 0.03  # YAML's `3e-2` string read as the float the field wants
    assert args.per_device_train_batch_size == 4 and args.max_length == 256 and args.logging_steps == 1
    assert args.save_strategy == "steps" and args.save_total_limit == 1  # the train job checkpoints (resume=true)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"adapter": {"kind": "qlora"}}, "adapter.kind"),
        ({"method": "ppo"}, "method"),
        ({"n": 10_000}, "n=10000"),
        ({"dataset": "/nonexistent/behaviour.jsonl"}, "dataset"),
        ({"adapter": {"layers": [7]}}, "adapter.layers"),
        ({"adapter": {"init": "/nonexistent/adapter"}}, "adapter.init"),
        ({"trainer": {"learning_rate": "fast"}}, "trainer.learning_rate"),
        ({"trainer": {"num_epochs": 3}}, "trainer.num_epochs"),
        ({"trainer": {"report_to": "wandb"}}, "wandb"),
        ({"adapter": {"peft": {"peft_type": "NOPE"}}}, "peft"),
    ],
)
def test_bad_configs_fail_before_training_and_name_the_key(overrides, key, tiny_dir, tmp_path, monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train, "build_trainer", started)
    config = {"model": str(tiny_dir), "adapter": {"layers": [2]}, "n": 8, "wandb": False, "output_dir": str(tmp_path),
              **overrides}
    with pytest.raises(ConfigError, match=key):
        run_training(build(TrainConfig, config))
    assert not list(tmp_path.iterdir())


def test_recipe_refuses_a_config_for_the_other_method(tmp_path, capsys):
    assert cli.main(["train", "method=dpo", "--no-wandb"], pinned={"method": "sft"}) == 2
    assert "this recipe runs method=sft but the config sets method='dpo'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "env, netrc_text, expected",
    [
        ({"WANDB_MODE": "disabled", "WANDB_API_KEY": "k"}, None, "disabled"),
        ({"WANDB_API_KEY": "k"}, None, "online"),
        ({}, "machine example.com\n  login user\n  password secret\n", "offline"),
        ({}, None, "offline"),
    ],
)
def test_wandb_mode_is_online_only_for_a_logged_in_user(env, netrc_text, expected, tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    netrc_file = tmp_path / "netrc"
    if netrc_text is not None:
        netrc_file.write_text(netrc_text)
        netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert tracking.wandb_mode() == expected


def test_report_to_off_disables_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.report_to(False) == []
    assert tracking.init_run("steerft", enabled=False) is None


@pytest.mark.parametrize("name, method, kind, trainer", [
    ("sft_steer", "sft", "steer", {"num_train_epochs": 3, "per_device_train_batch_size": 4, "max_length": 256}),
    ("dpo_lora", "dpo", "lora", {"num_train_epochs": 2, "per_device_train_batch_size": 4, "beta": 0.1,
                                 "max_length": 256}),
])
def test_recipe_configs_are_train_configs(name, method, kind, trainer):
    config = train.check_config(build(TrainConfig, load_config(RECIPES / "configs" / f"{name}.yaml")))
    assert (config.method, config.adapter.kind, config.trainer) == (method, kind, trainer)


def test_cli_flags_and_overrides_mix_in_any_order():
    args = cli.parse(["train", "n=4", "--adapter", "lora", "adapter.lora_r=4", "--no-wandb"])
    assert cli.config_data(args, pinned={"method": "dpo"}) == {
        "n": 4, "adapter": {"lora_r": 4, "kind": "lora"}, "wandb": False, "method": "dpo"}
