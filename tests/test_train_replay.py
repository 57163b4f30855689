"""Steer training that runs the blocks below the steered one once per row (`BelowSiteCache`):
the same losses, gradients and vectors as running every block every step, the blocks really
skipped on cached batches, and the full model wherever the cache cannot vouch for a pass."""

from __future__ import annotations

import contextlib
import random
from unittest import mock

import pytest
import torch
from peft import LoraConfig, get_peft_model, inject_adapter_in_model
from transformers import TrainerCallback

from steerft import SteerConfig
from steerft.data import PromptFormatter, load_behaviour, split_items, training_subset
from steerft.testing import tiny_model
from steerft.training import fit_measured, training_rows
from steerft.tuner import block_list, hidden_of
from steerft.tuner.below_site import PROMPT_BYTES, BelowSiteCache, steer_site

pytestmark = pytest.mark.usefixtures("offline_wandb")

TEXTS = ["hi", "hello there friend", "a b c", "the quick brown fox jumps over it", "ok then, fine", "xyz"]
SITE = 2


def _model(arch: str):
    """A tiny model whose blocks are deterministic in training mode (gpt2's dropout off)."""
    model, tokenizer = tiny_model(arch, n_layers=4)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model, tokenizer


class BlockRuns:
    """Counts real runs of blocks below the site, and the token positions they ran: a hook on a module
    inside the block fires only when the block's own forward runs."""

    def __init__(self, model, below: int = SITE) -> None:
        self.calls = self.tokens = 0
        blocks = block_list(model.get_base_model() if hasattr(model, "get_base_model") else model)
        self.handles = [next(iter(block.children())).register_forward_hook(self._count) for block in blocks[:below]]

    def _count(self, module, args, output) -> None:
        self.calls += 1
        self.tokens += hidden_of(output).shape[:2].numel()


# --------------------------------------------------------------------------- whole TRL runs


class StepLosses(TrainerCallback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def _trl_run(arch: str, method: str, cache: bool, tmp_path, positions: str = "all"):
    model, tokenizer = _model(arch)
    runs, losses = BlockRuns(model), StepLosses()
    items = training_subset(split_items(load_behaviour("sentiment").items, 0).train, 6, 0)
    trained, budget = fit_measured(model, tokenizer, training_rows(method, items, PromptFormatter(tokenizer)),
                                   method=method, peft_config=SteerConfig(layers=[SITE], positions=positions),
                                   args={"output_dir": str(tmp_path), "num_train_epochs": 2, "use_cpu": True,
                                         "bf16": False, "per_device_train_batch_size": 2, "learning_rate": 0.05},
                                   callbacks=[losses], cache_below_site=cache)
    return trained.get_vectors()[SITE], losses.losses, budget, runs


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["sft", "dpo"])
@pytest.mark.parametrize("positions", ["all", "completion"])
def test_trl_training_with_the_cache_equals_training_without(arch, method, positions, tmp_path):
    vector, losses, budget, ran = _trl_run(arch, method, True, tmp_path / "cached", positions)
    plain_vector, plain_losses, plain_budget, plain_ran = _trl_run(arch, method, False, tmp_path / "plain", positions)
    assert len(losses) == 6 and vector.abs().max() > 1e-3
    assert losses == pytest.approx(plain_losses, abs=1e-5)
    torch.testing.assert_close(vector, plain_vector, rtol=0, atol=1e-5)
    # The blocks below the site ran in the first pass over the rows only: SFT's first epoch, DPO's
    # reference precompute (same rows), so DPO trains entirely from the cache. They ran twice per batch
    # where prompts run apart from the replies: a DPO batch's pairs share theirs, and steering completions
    # only, SFT's prompts run without gradients.
    split = method == "dpo" or positions == "completion"
    assert ran.calls == (6 if split else 3) * SITE and plain_ran.tokens > ran.tokens
    assert budget.tokens_replayed == (budget.tokens_forward // 2 if method == "sft" else budget.tokens_backward)
    assert plain_budget.tokens_replayed == plain_budget.tokens_prompt_reused == 0
    # Prompt positions that ran no block: steering completions only, every replayed pass's prompts (kept);
    # with DPO, a pair's prompt runs once for its chosen and rejected rows whatever the positions.
    assert (budget.tokens_prompt_reused > 0) is (positions == "completion" or method == "dpo")
    assert (budget.tokens_forward, budget.tokens_backward) == (plain_budget.tokens_forward, plain_budget.tokens_backward)


def test_other_adapters_train_without_the_cache(tmp_path):
    model, _ = _model("llama")
    assert steer_site(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")) is None
    assert steer_site(model, SteerConfig(layers=[0, 3])) is None  # nothing below block 0
    assert steer_site(model, SteerConfig(layers=[3, -3])) == (1, None)  # the lowest steered block
    assert steer_site(get_peft_model(model, SteerConfig(layers=[2]))) == (2, None)


# --------------------------------------------------------------------------- one step at a time, both paddings


def _batches(tokenizer, padding_side: str, epochs: int = 3) -> list[dict]:
    """Right padding: rows reshuffled every epoch (a row's states do not depend on its batch).
    Left padding: a row's position depends on its pad count, so the same batches come back in a new
    order, and one new batch whose rows sit at new offsets (it must run the blocks again)."""
    tokenizer.padding_side = padding_side
    order = list(range(len(TEXTS)))
    groups = []
    for epoch in range(epochs):
        if padding_side == "right":
            random.Random(epoch).shuffle(order)
            groups += [order[:3], order[3:]]
        else:
            groups += [[0, 1, 2], [3, 4, 5]] if epoch % 2 == 0 else [[3, 4, 5], [0, 1, 2]]
    if padding_side == "left":
        groups.append([0, 3, 5])
    batches = []
    for group in groups:
        encoded = tokenizer([TEXTS[i] for i in group], padding=True, return_tensors="pt")
        batches.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                        "labels": encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)})
    return batches


def _sgd(model, batches: list[dict], cache, layers=(SITE,), change=None, positions="all", **forward_kwargs):
    """Plain SGD on the steering vector, recording each step's loss and gradient; `change` edits
    the PeftModel first."""
    peft_model = get_peft_model(model, SteerConfig(layers=list(layers), positions=positions))
    if change is not None:
        change(peft_model)
    peft_model.train()
    vector = block_list(peft_model.get_base_model())[layers[0]].steer.vector["default"].weight
    losses, grads = [], []
    with cache(peft_model) as active:
        for batch in batches:
            loss = peft_model(**batch, use_cache=False, **forward_kwargs).loss
            loss.backward()
            losses.append(loss.item())
            grads.append(vector.grad.clone())
            with torch.no_grad():
                vector -= 2.0 * vector.grad
            vector.grad = None
    return losses, grads, active


def _assert_same_training(cached, plain) -> None:
    (losses, grads, _), (plain_losses, plain_grads, _) = cached, plain
    assert losses == pytest.approx(plain_losses, abs=1e-5)
    for grad, plain_grad in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(grad, plain_grad, rtol=0, atol=1e-5)
    assert max(g.abs().max() for g in plain_grads) > 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_each_step_has_the_same_loss_and_gradient_and_cached_batches_skip_the_blocks(arch, padding_side):
    model, tokenizer = _model(arch)
    batches = _batches(tokenizer, padding_side)
    runs = BlockRuns(model)
    cached = _sgd(model, batches, lambda m: BelowSiteCache(m, SITE))
    ran_cached, runs.calls = runs.calls, 0
    plain = _sgd(_model(arch)[0], batches, lambda m: contextlib.nullcontext())
    _assert_same_training(cached, plain)
    counts = cached[2].counts
    # Two batches of the first epoch fill the cache (and, with left padding, the last batch's new offsets).
    fills = 2 if padding_side == "right" else 3
    assert (counts.full_passes, counts.replayed_passes) == (fills, len(batches) - fills)
    assert ran_cached == fills * SITE
    filling = batches[:2] + batches[len(batches) - fills + 2:]
    assert counts.replayed_tokens == sum(b["input_ids"].numel() for b in batches if not any(b is f for f in filling))


def test_the_cache_steps_off_when_its_context_ends():
    model, tokenizer = _model("llama")
    batches = _batches(tokenizer, "right")
    runs = BlockRuns(model)
    _, _, cache = _sgd(model, batches, lambda m: BelowSiteCache(m, SITE))
    before = runs.calls
    model(**batches[0], use_cache=False)
    assert runs.calls == before + SITE and cache.rows == {}
    assert all("forward" not in block.__dict__ for block in block_list(model))


def test_an_adapter_at_several_blocks_caches_below_the_lowest():
    model, tokenizer = _model("llama")
    batches = _batches(tokenizer, "right")
    cached = _sgd(model, batches, lambda m: BelowSiteCache(m, *steer_site(m)), layers=(1, 3))
    plain = _sgd(_model("llama")[0], batches, lambda m: contextlib.nullcontext(), layers=(1, 3))
    _assert_same_training(cached, plain)
    assert cached[2].layer == 1 and cached[2].counts.replayed_passes == len(batches) - 2


# --------------------------------------------------------------------------- where the cache cannot apply


def _full_path_only(model, batches, cache, **kwargs):
    runs = BlockRuns(model)
    result = _sgd(model, batches, cache, **kwargs)
    assert result[2].counts.replayed_passes == 0 and result[2].counts.full_passes == len(batches)
    assert runs.calls >= len(batches) * SITE  # gradient checkpointing runs them again in backward
    return result


def _with_positions(batches):
    return [{**b, "position_ids": torch.arange(b["input_ids"].shape[1]).expand_as(b["input_ids"])} for b in batches]


def test_a_gap_in_the_mask_is_part_of_the_key_and_stays_exact():
    """Causal attention: a row's states up to its last real token depend on its ids and mask there, holes included."""
    model, tokenizer = _model("llama")
    gapped = []
    for batch in _batches(tokenizer, "right")[:2]:
        mask = batch["attention_mask"].clone()
        mask[0, 2] = 0  # a hole inside the first row's tokens
        gapped.append({**batch, "attention_mask": mask, "labels": batch["input_ids"].masked_fill(mask == 0, -100)})
    batches = gapped * 3
    cached = _sgd(model, batches, lambda m: BelowSiteCache(m, SITE))
    plain = _sgd(_model("llama")[0], batches, lambda m: contextlib.nullcontext())
    _assert_same_training(cached, plain)
    assert (cached[2].counts.full_passes, cached[2].counts.replayed_passes) == (2, 4)


def test_a_label_on_a_pad_column_after_the_text_runs_in_full():
    """Such a label is predicted from a column the replay zeroes; the full model keeps the loss what it was."""
    model, tokenizer = _model("llama")
    batches = [{**b, "labels": b["input_ids"]} for b in _batches(tokenizer, "right")]
    cached = _full_path_only(model, batches, lambda m: BelowSiteCache(m, SITE))
    plain = _sgd(_model("llama")[0], batches, lambda m: contextlib.nullcontext())
    _assert_same_training(cached, plain)


@pytest.mark.parametrize("case", ["position_ids", "hidden_states", "use_cache"])
def test_passes_the_cache_cannot_vouch_for_run_in_full_and_train_alike(case):
    model, tokenizer = _model("llama")
    batches = _batches(tokenizer, "right")
    kwargs = {"output_hidden_states": True} if case == "hidden_states" else {}
    if case == "position_ids":
        batches = _with_positions(batches)
    use_cache = {"use_cache": True} if case == "use_cache" else {}

    def step_all(m, cache):
        peft_model = get_peft_model(m, SteerConfig(layers=[SITE]))
        peft_model.train()
        runs = BlockRuns(m)
        with cache(peft_model) as active:
            losses = [peft_model(**b, **{"use_cache": False, **use_cache}, **kwargs).loss.item() for b in batches]
        return losses, active, runs.calls

    losses, active, ran = step_all(model, lambda m: BelowSiteCache(m, SITE))
    plain, _, _ = step_all(_model("llama")[0], lambda m: contextlib.nullcontext())
    assert losses == pytest.approx(plain, abs=1e-5)
    assert active.counts.replayed_passes == 0 and ran == len(batches) * SITE


def test_inputs_embeds_run_in_full():
    model, tokenizer = _model("llama")
    batches = _batches(tokenizer, "right")
    embedded = [{"inputs_embeds": model.get_input_embeddings()(b["input_ids"]).detach(),
                 "attention_mask": b["attention_mask"], "labels": b["labels"]} for b in batches]
    cached = _full_path_only(model, embedded, lambda m: BelowSiteCache(m, SITE))
    plain = _sgd(_model("llama")[0], embedded, lambda m: contextlib.nullcontext())
    _assert_same_training(cached, plain)


def _lora_at(block: int):
    def change(peft_model):
        torch.manual_seed(0)
        inject_adapter_in_model(LoraConfig(r=2, target_modules=["q_proj"], layers_to_transform=[block],
                                           init_lora_weights=False), peft_model.get_base_model())
    return change


def _trainable_at(block: int):
    def change(peft_model):
        block_list(peft_model.get_base_model())[block].mlp.down_proj.weight.requires_grad_(True)
    return change


def _checkpointing(peft_model):
    peft_model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})


@pytest.mark.parametrize("change", [_lora_at(0), _trainable_at(0), _checkpointing], ids=["lora", "trainable",
                                                                                        "checkpointing"])
def test_models_whose_lower_blocks_can_change_run_in_full_and_train_alike(change):
    model, tokenizer = _model("llama")
    batches = _batches(tokenizer, "right")
    result = _full_path_only(model, batches, lambda m: BelowSiteCache(m, SITE), change=change)
    plain = _sgd(_model("llama")[0], batches, lambda m: contextlib.nullcontext(), change=change)
    _assert_same_training(result, plain)


def test_dropout_below_the_site_runs_in_full_while_training():
    model, tokenizer = tiny_model("gpt2", n_layers=4)  # gpt2's default dropout, on in training mode
    _full_path_only(model, _batches(tokenizer, "right"), lambda m: BelowSiteCache(m, SITE))


def test_an_enabled_steer_layer_below_the_cached_block_runs_in_full():
    model, tokenizer = _model("llama")
    batches = _batches(tokenizer, "right")
    result = _sgd(model, batches, lambda m: BelowSiteCache(m, 3), layers=(1, 3))
    assert result[2].counts.replayed_passes == 0


def test_mixed_adapter_rows_run_in_full():
    model, tokenizer = _model("llama")
    batch = _batches(tokenizer, "right")[0]
    peft_model = get_peft_model(model, SteerConfig(layers=[SITE], init="random")).eval()
    with torch.no_grad(), BelowSiteCache(peft_model, SITE) as cache:
        for _ in range(2):
            peft_model(**batch, use_cache=False, adapter_names=["default", "__base__", "default"])
    assert cache.counts.replayed_passes == 0 and cache.counts.full_passes == 2


# --------------------------------------------------------------------------- prompts once: steering completions only

PROMPTS = ["question: hi there", "tell me about the quick brown fox", "x"]
REPLIES = ["fine", "it jumps over the lazy dog twice", "no, thanks a lot", "ok"]
PAIRS = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (1, 2), (2, 3)]  # prompts shared by rows, as in DPO pairs


def _prompted_batches(tokenizer, padding_side: str, epochs: int = 3) -> list[dict]:
    """Rows of a prompt then a reply, labels on the reply only. Right padding reshuffles the rows
    every epoch; left padding brings the same batches back (a row's pad count is part of its key)."""
    tokenizer.padding_side = padding_side
    batches = []
    for epoch in range(epochs):
        order = list(range(len(PAIRS)))
        if padding_side == "right":
            random.Random(epoch).shuffle(order)
        for group in (order[:4], order[4:]):
            encoded = tokenizer([f"{PROMPTS[PAIRS[i][0]]} {REPLIES[PAIRS[i][1]]}" for i in group], padding=True,
                                return_tensors="pt")
            labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
            for row, i in enumerate(group):
                pads = int((encoded["attention_mask"][row] == 0).sum()) if padding_side == "left" else 0
                labels[row, : pads + len(tokenizer(PROMPTS[PAIRS[i][0]])["input_ids"])] = -100
            batches.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                            "labels": labels})
    return batches


def _label_starts(batch: dict) -> list[int]:
    """Each row's first labelled column: the length of its prompt."""
    return (batch["labels"] != -100).int().argmax(-1).tolist()


def _first_labels(batch: dict) -> int:
    return sum(_label_starts(batch))


class TopBlockWidths:
    """The number of columns the last block runs in each pass, and whether its output carries gradients."""

    def __init__(self, model) -> None:
        self.widths: list[int] = []
        self.with_grad: list[bool] = []
        block_list(model)[-1].register_forward_hook(self._record)

    def _record(self, module, args, output) -> None:
        self.widths.append(args[0].shape[1])
        self.with_grad.append(hidden_of(output).requires_grad)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("positions", ["completion", "all"])
def test_prompts_run_once_and_training_stays_the_same(arch, padding_side, positions):
    """Steering completions only, a prompt is kept from its first pass and later passes run the labelled
    parts only; steering every position, each pass runs each distinct prompt once, then the labelled parts."""

    def wide(arch):
        """gemma3's sliding-window layers (and cache classes) with a window over these rows: a shorter one keeps no
        prompts (see below)."""
        model, tokenizer = _model(arch)
        if arch == "gemma3":
            model.config.sliding_window = 256
        return model, tokenizer

    model, tokenizer = wide(arch)
    batches = _prompted_batches(tokenizer, padding_side)
    top = TopBlockWidths(model)
    cached = _sgd(model, batches, lambda m: BelowSiteCache(m, SITE), positions=positions)
    plain = _sgd(wide(arch)[0], batches, lambda m: contextlib.nullcontext(), positions=positions)
    _assert_same_training(cached, plain)
    counts = cached[2].counts
    assert (counts.full_passes, counts.replayed_passes) == (2, len(batches) - 2)
    kept = positions == "completion"
    # Prompt positions that ran no block: in each pass, those of rows sharing a prompt beyond its one run;
    # steering completions only, every prompt of the later passes (kept from the first epoch).
    reused = [_first_labels(b) if kept and i >= 2 else _shared_prompt_tokens(b) for i, b in enumerate(batches)]
    assert counts.prompt_tokens_reused == sum(reused)
    # Left padding puts one prompt at other columns (positions) in rows of other lengths: nothing to share there.
    assert (sum(reused) > 0) is (kept or padding_side == "right")
    # The last block runs a split pass as its distinct prompts (unless kept) then its labelled parts, each
    # narrower than the batch; a pass that shares and keeps nothing runs whole rows. Steering completions
    # only, the prompts run without gradients (nothing that trains reaches them), even where no row shares one.
    expected = []
    for i, (batch, saved) in enumerate(zip(batches, reused)):
        full = batch["input_ids"].shape[1]
        if kept:
            expected += [(None, full, True)] if i >= 2 else [(None, full, False), (None, full, True)]
        else:
            expected += [(None, full, True)] * 2 if saved else [(full, full, True)]
    assert len(top.widths) == len(expected)
    assert all((width == exact if exact is not None else width < full) and grad is with_grad
               for width, grad, (exact, full, with_grad) in zip(top.widths, top.with_grad, expected))


@pytest.mark.parametrize("positions", ["all", "completion"])
def test_prompts_are_kept_only_for_an_adapter_that_steers_completions_alone(positions):
    """DPO's reference pass runs with the adapter off, when every prompt is the base model's; keeping them
    pays only if the adapter, once on, leaves prompts alone."""
    model, tokenizer = _model("llama")
    peft_model = get_peft_model(model, SteerConfig(layers=[SITE], positions=positions))
    with torch.no_grad(), peft_model.disable_adapter(), BelowSiteCache(peft_model, SITE) as cache:
        peft_model(**_prompted_batches(tokenizer, "right")[0], use_cache=False)
        assert bool(cache.prompts) is (positions == "completion") and cache.counts.full_passes == 1


def _shared_prompt_tokens(batch: dict) -> int:
    """Prompt positions of a batch's rows beyond one run of each distinct prompt (ids and mask up to the first
    label)."""
    prompts = [(tuple(ids[:split].tolist()), tuple(mask[:split].tolist())) for ids, mask, split in
               zip(batch["input_ids"], batch["attention_mask"], _label_starts(batch))]
    return sum(len(ids) for ids, _ in prompts) - sum(len(ids) for ids, _ in set(prompts))


@pytest.mark.parametrize("case", ["all positions", "lora above", "trainable above", "no room", "narrow window"])
def test_prompts_that_can_change_or_do_not_fit_run_once_per_pass_for_the_rows_sharing_them(case):
    """Not kept across passes, each distinct prompt still runs once for every row of the pass that has it;
    a sliding window shorter than the rows keeps no prompts either (its cache holds the window's last columns)."""
    arch = "gemma3" if case == "narrow window" else "llama"

    def make():
        model, tokenizer = _model(arch)
        if case == "narrow window":
            model.config.sliding_window = 8
        return model, tokenizer

    model, tokenizer = make()
    batches = _prompted_batches(tokenizer, "right")
    positions = "all" if case == "all positions" else "completion"
    change = {"lora above": _lora_at(3), "trainable above": _trainable_at(3)}.get(case)
    room = 0 if case == "no room" else PROMPT_BYTES
    cached = _sgd(model, batches, lambda m: BelowSiteCache(m, SITE, prompt_bytes=room), positions=positions,
                  change=change)
    plain = _sgd(make()[0], batches, lambda m: contextlib.nullcontext(), positions=positions, change=change)
    _assert_same_training(cached, plain)
    counts, shared = cached[2].counts, sum(_shared_prompt_tokens(b) for b in batches)
    assert counts.replayed_passes == len(batches) - 2 and 0 < shared < sum(_first_labels(b) for b in batches)
    assert counts.prompt_tokens_reused == shared


def test_an_explicit_steer_mask_runs_every_row_whole_and_trains_alike():
    """It may steer rows with one prompt differently, so their prompts are neither kept nor shared."""
    model, tokenizer = _model("llama")
    batches = [{**b, "steer_mask": b["attention_mask"].bool()} for b in _prompted_batches(tokenizer, "right")]
    cached = _sgd(model, batches, lambda m: BelowSiteCache(m, SITE), positions="completion")
    plain = _sgd(_model("llama")[0], batches, lambda m: contextlib.nullcontext(), positions="completion")
    _assert_same_training(cached, plain)
    assert cached[2].counts.replayed_passes == len(batches) - 2 and cached[2].counts.prompt_tokens_reused == 0


def test_dropout_above_the_site_shares_no_prompt_pass():
    """Rows would draw their own dropout masks over a prompt, so it is not run once for them."""
    model, tokenizer = tiny_model("gpt2", n_layers=4)
    for block in block_list(model)[:SITE]:
        for module in block.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    model.transformer.drop.p = 0.0
    _, _, cache = _sgd(model, _prompted_batches(tokenizer, "right"), lambda m: BelowSiteCache(m, SITE), positions="all")
    assert cache.counts.replayed_passes > 0 and cache.counts.prompt_tokens_reused == 0


# --------------------------------------------------------------------------- TRL's fused LM head on CPU


class HeadRows:
    """Records how many positions each call of TRL's fused LM head scores, and how many of them carry a label."""

    def __init__(self) -> None:
        from trl.trainer import utils as trl_utils

        self.real = trl_utils._ChunkedLogProbFunction
        self.scored: list[int] = []

    def apply(self, hidden, weight, bias, labels, *rest):
        self.scored.append(hidden.shape[0])
        return self.real.apply(hidden, weight, bias, labels, *rest)


def _dpo_run(peft_config, labels_only: bool, tmp_path):
    from trl.trainer import utils as trl_utils

    model, tokenizer = _model("llama")
    losses, head = StepLosses(), HeadRows()
    items = training_subset(split_items(load_behaviour("sentiment").items, 0).train, 4, 0)
    everywhere = contextlib.nullcontext() if labels_only else mock.patch(
        "steerft.training.fused_head_on_labels_only", contextlib.nullcontext)
    with everywhere, mock.patch.object(trl_utils, "_ChunkedLogProbFunction", head):
        trained, _ = fit_measured(model, tokenizer, training_rows("dpo", items, PromptFormatter(tokenizer)),
                                  method="dpo", peft_config=peft_config,
                                  args={"output_dir": str(tmp_path), "num_train_epochs": 2, "use_cpu": True,
                                        "bf16": False, "per_device_train_batch_size": 2, "learning_rate": 0.05},
                                  callbacks=[losses])  # on the CPU: TRL already scores labelled positions on a GPU
    weights = {name: p.detach().clone() for name, p in trained.named_parameters() if p.requires_grad}
    return losses.losses, weights, head


@pytest.mark.parametrize("adapter", ["steer", "lora"])
def test_dpo_on_cpu_scores_only_labelled_positions_and_trains_alike(adapter, tmp_path):
    make = {"steer": lambda: SteerConfig(layers=[SITE]),
            "lora": lambda: LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")}[adapter]
    losses, weights, head = _dpo_run(make(), True, tmp_path / "labelled")
    plain_losses, plain_weights, plain_head = _dpo_run(make(), False, tmp_path / "every")
    # TRL alone scores every position of every pass on CPU (rows x columns - 1); inside steerft's runs
    # only the labelled ones, in the same passes (reference precompute, then training steps).
    assert len(head.scored) == len(plain_head.scored) == 6
    assert all(0 < mine < every for mine, every in zip(head.scored, plain_head.scored))
    assert len(losses) == 4 and losses == pytest.approx(plain_losses, abs=1e-5)
    assert weights.keys() == plain_weights.keys()
    for name, value in weights.items():
        torch.testing.assert_close(value, plain_weights[name], rtol=0, atol=1e-5)


def test_the_labelled_positions_switch_is_trls_and_is_put_back():
    from trl.trainer import utils as trl_utils

    from steerft.training import fused_head_on_labels_only

    decide = trl_utils._use_triton  # the switch TRL's fused head asks; an upgrade that moves it must be noticed
    assert decide(torch.device("cpu")) is False
    with pytest.raises(RuntimeError), fused_head_on_labels_only():
        assert trl_utils._use_triton(torch.device("cpu")) is True
        assert trl_utils._use_triton(torch.device("meta")) is decide(torch.device("meta"))
        raise RuntimeError
    assert trl_utils._use_triton is decide
