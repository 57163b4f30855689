"""Behaviour judged on what a model writes, offline, with fluency beside it.

Likelihood margins of fixed completions flatter steering; generated text shows whether a method
moves behaviour without breaking the model. Replies are sampled for held-out prompts and scored by
a judge that needs no network:

- by default `fit_judge`: a logistic regression on the *unsteered* base model's activations,
  fitted on a judge split of the behaviour dataset's own labeled completions (matching = 1, not
  matching = 0). It reports its held-out accuracy and refuses to exist when that accuracy is not
  significantly above chance;
- or `ClassifierJudge`: any local or hub sequence classifier / reward model the user names.

Each reply also gets the base model's per-token log-likelihood and a repetition rate
(`steerft.metrics.fluency`); `GenerationScores` averages replies per prompt so intervals are over
prompts, the unit the study samples.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from ..batching import EncodedRow, batches, encode, text_ids
from ..data import BehaviourItem, ContrastPair, PromptFormatter
from ..extract import REDUCTIONS, fit_logistic, read_rows
from ..tuner import block_count
from ._forward import as_base, check_base_model, device_of, inference, pad_id
from .fluency import fluency_score, harmonic_mean, reply_loglik, repetition_rate
from .generation import _prompt_row, _stop_ids, _until_stop
from .preference import PreferenceResult
from .stats import Z95, mean_ci95

Reduce = Literal["mean", "last"]


class JudgeError(ValueError):
    """A judge steerft will not use (near chance, or misconfigured); the message says how to fix it."""


class Judge(Protocol):
    """Scores replies: p(the reply shows the behaviour) in [0, 1], one per (prompt, reply).

    `model` is the model under evaluation; judges that read activations use it with its adapter
    disabled (or `base_model`), so they always see the unsteered base model.
    """

    def score(self, prompts: Sequence[str], replies: Sequence[str], *, model: nn.Module,
              base_model: nn.Module | None = None) -> torch.Tensor: ...


# ---------------------------------------------------------------- the default, fitted judge


def encode_replies(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    replies: Sequence[str],
    *,
    layer: int,
    reduce: Reduce = "mean",
    base_model: nn.Module | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Base-model residual activations (n, d) float64 at the output of block `layer`, over each reply's tokens.

    The prompt is context; only reply tokens are pooled. The adapter of a PeftModel is disabled
    (or `base_model` is used), so a steered model is judged by the same features as the base. An
    empty reply is read as the end-of-sequence token it was generated as.
    """
    if len(prompts) != len(replies) or not prompts:
        raise ValueError(f"Need one reply per prompt, at least one; got {len(prompts)} prompts "
                         f"and {len(replies)} replies.")
    if reduce not in REDUCTIONS:
        raise JudgeError(f"reduce={reduce!r} is not supported; allowed values: {', '.join(REDUCTIONS)}.")
    check_base_model(model, base_model)
    rows = [_reply_row(tokenizer, prompt, reply) for prompt, reply in zip(prompts, replies)]
    with as_base(model, base_model) as base, inference(base):
        read = read_rows(base, rows, [layer], reduce, batch_size, pad_id(tokenizer), "right", False)
    return read[layer].double()


def _reply_row(tokenizer: PreTrainedTokenizerBase, prompt: str, reply: str) -> EncodedRow:
    if reply:
        return encode(tokenizer, prompt, reply)
    prompt_ids = text_ids(tokenizer, prompt)
    return EncodedRow(prompt_ids + [tokenizer.eos_token_id], len(prompt_ids))


@dataclass(frozen=True)
class HeldOutAccuracy:
    """Accuracy of a judge on completions it was not fitted on, with what makes it trustworthy.

    `p_value` is the exact one-sided binomial test of "accuracy > 0.5"; the interval is Wilson's
    95% score interval. Both treat the held-out completions as independent draws.
    """

    correct: int
    n: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    @property
    def p_value(self) -> float:
        return binomial_p_above_half(self.correct, self.n)

    def summary(self) -> dict[str, float | int]:
        low, high = self.interval
        return {"judge_heldout_n": self.n, "judge_heldout_accuracy": self.accuracy,
                "judge_heldout_ci_low": low, "judge_heldout_ci_high": high, "judge_heldout_p_value": self.p_value}


def binomial_p_above_half(correct: int, n: int) -> float:
    """P(X >= correct) for X ~ Binomial(n, 0.5): how often a coin-flip judge does at least this well."""
    if not 0 <= correct <= n or n < 1:
        raise ValueError(f"Need 0 <= correct <= n and n >= 1; got correct={correct}, n={n}.")
    return sum(math.comb(n, k) for k in range(correct, n + 1)) / 2**n


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a share `correct / n` (stays inside [0, 1] at small n)."""
    if not 0 <= correct <= n or n < 1:
        raise ValueError(f"Need 0 <= correct <= n and n >= 1; got correct={correct}, n={n}.")
    p, z2 = correct / n, Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class FittedJudge:
    """Logistic regression on standardised base-model activations; see `fit_judge`."""

    tokenizer: PreTrainedTokenizerBase
    layer: int
    reduce: Reduce
    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: float
    held_out: HeldOutAccuracy
    n_fit: int
    l2: float
    batch_size: int = 16

    def score(self, prompts: Sequence[str], replies: Sequence[str], *, model: nn.Module,
              base_model: nn.Module | None = None) -> torch.Tensor:
        features = encode_replies(model, self.tokenizer, prompts, replies, layer=self.layer, reduce=self.reduce,
                                  base_model=base_model, batch_size=self.batch_size)
        return torch.sigmoid(self.logits(features))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return _logits(features, self.mean, self.scale, self.weight, self.bias)

    def summary(self) -> dict[str, float | int | str]:
        return {"judge": "fitted", "judge_layer": self.layer, "judge_reduce": self.reduce, "judge_l2": self.l2,
                "judge_fit_n": self.n_fit, **self.held_out.summary()}


def fit_judge(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[BehaviourItem],
    *,
    layer: int | None = None,
    reduce: Reduce = "mean",
    held_out_frac: float = 0.3,
    l2: float = 1e-2,
    alpha: float = 0.05,
    seed: int = 0,
    base_model: nn.Module | None = None,
    batch_size: int = 16,
) -> FittedJudge:
    """Fit the default judge on a judge split of behaviour items, or refuse one near chance.

    Every item gives two labeled completions (matching = 1, not matching = 0) after its plain prompt
    (`PromptFormatter(tokenizer)`, the context `judge_generations` scores replies in).
    Items, not completions, are split into fit and held-out parts, so a held-out prompt was never
    seen in fitting. Features are the base model's block-`layer` output (default: the middle
    block), mean-pooled over the completion by default: generated replies end wherever sampling
    stops (often mid-sentence, at `max_new_tokens`), so the last token is an arbitrary position,
    while the mean reads the whole reply; `reduce="last"` reads the last token instead. The
    regression uses standardised features and a fixed L2 penalty `l2` on the mean log-loss, so
    nothing is tuned on the held-out part. The judge is refused (JudgeError) unless its held-out
    accuracy is above 0.5 at significance `alpha` (exact one-sided binomial test).
    """
    formatter = PromptFormatter(tokenizer)
    if not 0 < held_out_frac < 1:
        raise JudgeError(f"held_out_frac={held_out_frac} must be in (0, 1).")
    if l2 <= 0:
        raise JudgeError(f"l2={l2} must be > 0: without a penalty a separable judge split has no finite fit.")
    n_held_out = round(len(items) * held_out_frac)
    if n_held_out < 1 or len(items) - n_held_out < 2:
        raise JudgeError(f"{len(items)} judge items are too few to fit and test a judge with held_out_frac="
                         f"{held_out_frac}; give the judge split more items.")
    layer = _judge_layer(model, layer)
    order = list(range(len(items)))
    random.Random(f"steerft.judge:{seed}").shuffle(order)
    held_out = [items[i] for i in order[:n_held_out]]
    fit = [items[i] for i in order[n_held_out:]]

    def features_and_labels(part: Sequence[BehaviourItem]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = [formatter.prompt(item) for item in part]
        replies = ([formatter.completion(item.matching) for item in part]
                   + [formatter.completion(item.not_matching) for item in part])
        x = encode_replies(model, tokenizer, prompts + prompts, replies, layer=layer, reduce=reduce,
                           base_model=base_model, batch_size=batch_size)
        return x, torch.cat([torch.ones(len(part)), torch.zeros(len(part))]).double()

    x_fit, y_fit = features_and_labels(fit)
    mean, scale = x_fit.mean(0), x_fit.std(0, correction=0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    weight, bias, _ = fit_logistic((x_fit - mean) / scale, y_fit, l2=l2)
    x_test, y_test = features_and_labels(held_out)
    correct = int(((_logits(x_test, mean, scale, weight, bias) > 0).double() == y_test).sum())
    judge = FittedJudge(tokenizer, layer, reduce, mean, scale, weight, bias, HeldOutAccuracy(correct, len(y_test)),
                        len(fit), l2, batch_size)
    _refuse_near_chance(judge.held_out, alpha)
    return judge


def _logits(features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor,
            bias: float) -> torch.Tensor:
    return ((features - mean) / scale) @ weight + bias


def _judge_layer(model: nn.Module, layer: int | None) -> int:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    n_blocks = block_count(base)
    if layer is None:
        return n_blocks // 2
    if not -n_blocks <= layer < n_blocks:
        raise JudgeError(f"judge layer {layer} is outside the model's {n_blocks} blocks; "
                         f"use {-n_blocks}..{n_blocks - 1}.")
    return layer % n_blocks


def _refuse_near_chance(held_out: HeldOutAccuracy, alpha: float) -> None:
    if held_out.p_value >= alpha:
        low, high = held_out.interval
        raise JudgeError(
            f"the fitted judge is near chance: held-out accuracy {held_out.accuracy:.3f} (95% CI {low:.3f}-{high:.3f}) "
            f"on {held_out.n} completions is not above 0.5 (binomial p={held_out.p_value:.3g} >= {alpha}); "
            "give it more judge items, another layer, or name a classifier judge instead.")


# ---------------------------------------------------------------- a judge the user names


class ClassifierJudge:
    """Any sequence classifier or reward model (`AutoModelForSequenceClassification`) as the judge.

    `behaviour_label` names the class that counts as the behaviour: an index, or a label name from
    the model's `id2label`; the score is its softmax probability. A one-logit model (a reward
    model) is read as log-odds: score = sigmoid(logit). With `with_prompt`, the classifier reads
    prompt + reply; by default the reply alone.
    """

    def __init__(self, name_or_path: str, *, behaviour_label: int | str = 1, with_prompt: bool = False,
                 batch_size: int = 16, device: str | None = None, **from_pretrained_kwargs) -> None:
        self.name = name_or_path
        self.classifier = AutoModelForSequenceClassification.from_pretrained(name_or_path, **from_pretrained_kwargs)
        self.classifier.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        if device is not None:
            self.classifier.to(device)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.classifier.config.pad_token_id is None:
            self.classifier.config.pad_token_id = self.tokenizer.pad_token_id
        self.label_index = self._label_index(behaviour_label)
        self.with_prompt = with_prompt
        self.batch_size = batch_size

    def _label_index(self, label: int | str) -> int | None:
        id2label = {int(i): str(name) for i, name in self.classifier.config.id2label.items()}
        n_labels = self.classifier.config.num_labels
        if n_labels == 1:
            return None
        if isinstance(label, int) and 0 <= label < n_labels:
            return label
        matches = [i for i, name in id2label.items() if name == label]
        if not matches:
            raise JudgeError(f"behaviour_label {label!r} is not a label of classifier {self.name}; its labels are "
                             f"{', '.join(f'{i}={name}' for i, name in sorted(id2label.items()))}.")
        return matches[0]

    def score(self, prompts: Sequence[str], replies: Sequence[str], *, model: nn.Module | None = None,
              base_model: nn.Module | None = None) -> torch.Tensor:
        """p(behaviour) per reply; `model` and `base_model` are not needed by a standalone classifier."""
        if len(prompts) != len(replies):
            raise ValueError(f"Need one reply per prompt; got {len(prompts)} prompts and {len(replies)} replies.")
        texts = [p + r for p, r in zip(prompts, replies)] if self.with_prompt else list(replies)
        scores = []
        with inference(self.classifier):
            for start in range(0, len(texts), self.batch_size):
                inputs = self.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True,
                                        return_tensors="pt").to(device_of(self.classifier))
                logits = self.classifier(**inputs).logits.double()
                scores.append(torch.sigmoid(logits[:, 0]) if self.label_index is None
                              else logits.softmax(-1)[:, self.label_index])
        return torch.cat(scores).cpu() if scores else torch.zeros(0, dtype=torch.float64)

    def summary(self) -> dict[str, str | int | None]:
        return {"judge": self.name, "judge_label_index": self.label_index}


# ---------------------------------------------------------------- sampling and judging replies


@dataclass(frozen=True)
class SamplingSettings:
    """How replies are sampled: `temperature` 0 means greedy (then one sample per prompt).

    `top_k` 0 and `top_p` 1 sample from the model's full distribution, overriding a
    checkpoint's generation defaults, so every method is sampled the same way.
    """

    samples_per_prompt: int = 4
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1 or self.max_new_tokens < 1:
            raise JudgeError(f"samples_per_prompt={self.samples_per_prompt} and "
                             f"max_new_tokens={self.max_new_tokens} must be >= 1.")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise JudgeError(f"temperature={self.temperature} must be >= 0, top_p={self.top_p} in (0, 1], "
                             f"top_k={self.top_k} >= 0.")
        if self.temperature == 0 and self.samples_per_prompt != 1:
            raise JudgeError("temperature=0 is greedy decoding, which gives one reply per prompt: "
                             "set samples_per_prompt=1.")

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"do_sample": False, "num_beams": 1}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "num_beams": 1}


def sample_replies(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    settings: SamplingSettings,
    *,
    batch_size: int = 8,
) -> list[list[list[int]]]:
    """Generated token ids [prompt][sample], each up to and including its first stop token.

    The global RNG is seeded with `settings.seed` inside a fork, so the caller's random state is
    untouched and a run is reproducible for the same prompts and batch size.
    """
    rows = [_prompt_row(tokenizer, prompt) for prompt in prompts for _ in range(settings.samples_per_prompt)]
    empty = [i // settings.samples_per_prompt for i, row in enumerate(rows) if not row.ids]
    if empty:
        raise ValueError(f"Prompt {empty[0]} tokenises to nothing; generation needs a prompt.")
    stop, pad = _stop_ids(model, tokenizer), pad_id(tokenizer)
    flat: list[list[int]] = [[] for _ in rows]
    device = device_of(model)
    with inference(model), torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        for batch in batches(rows, batch_size, pad, padding_side="left"):
            batch = batch.to(device)
            sequences = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                       max_new_tokens=settings.max_new_tokens, pad_token_id=pad,
                                       **settings.generate_kwargs())
            for i, ids in zip(batch.index, sequences[:, batch.input_ids.shape[1]:].tolist()):
                flat[i] = _until_stop(ids, stop)
    k = settings.samples_per_prompt
    return [flat[start : start + k] for start in range(0, len(flat), k)]


@dataclass(frozen=True)
class JudgedReply:
    """One sampled reply with its behaviour score and the base model's fluency measures.

    `n_tokens` and `loglik_per_token` count the generated ids, including the stop token when the
    reply ended before `max_new_tokens` (ending is part of the reply); `text` is decoded without
    special tokens and is what the judge and `repetition` read.
    """

    prompt_id: str
    sample: int
    text: str
    n_tokens: int
    behaviour: float
    loglik_per_token: float
    repetition: float


def judge_generations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[BehaviourItem],
    judge: Judge,
    *,
    formatter: PromptFormatter | None = None,
    demonstrations: Sequence[BehaviourItem] = (),
    settings: SamplingSettings = SamplingSettings(),
    base_model: nn.Module | None = None,
    repetition_n: int = 3,
    batch_size: int = 8,
) -> list[JudgedReply]:
    """Sample replies from `model` for held-out items and judge each one.

    Replies are generated from the method's own prompt (`formatter`, with its system prompt, and
    `demonstrations` for few-shot methods) but judged and scored for fluency after the plain
    prompt (`PromptFormatter(tokenizer)`), so every method's replies are read in the same context.
    """
    if not items:
        raise ValueError("judge_generations needs at least one held-out item.")
    formatter = formatter or PromptFormatter(tokenizer)
    plain = PromptFormatter(tokenizer)
    generated = sample_replies(model, tokenizer, [formatter.prompt(item, demonstrations) for item in items],
                               settings, batch_size=batch_size)
    item_of = [item for item, samples in zip(items, generated) for _ in samples]
    reply_ids = [ids for samples in generated for ids in samples]
    prompts = [plain.prompt(item) for item in item_of]
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in reply_ids]
    behaviour = judge.score(prompts, texts, model=model, base_model=base_model)
    loglik, counts = reply_loglik(model, tokenizer, prompts, reply_ids, base_model=base_model, batch_size=batch_size)
    k = settings.samples_per_prompt
    return [JudgedReply(prompt_id=item.id, sample=i % k, text=text, n_tokens=int(counts[i]),
                        behaviour=float(behaviour[i]), loglik_per_token=float(loglik[i]),
                        repetition=repetition_rate(text, repetition_n))
            for i, (item, text) in enumerate(zip(item_of, texts))]


@dataclass(frozen=True)
class GenerationScores:
    """Per-prompt means of judged replies (samples of one prompt are not independent items).

    `per_prompt` maps behaviour, loglik_per_token, repetition, fluency and aggregate to float64
    arrays aligned with `prompt_ids`; a study pairs them across methods by prompt id.
    """

    prompt_ids: list[str]
    per_prompt: dict[str, torch.Tensor]
    n_replies: int

    def summary(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"n_prompts": len(self.prompt_ids), "n_replies": self.n_replies}
        for name, values in self.per_prompt.items():
            mean, low, high = mean_ci95(values)
            out |= {f"{name}_mean": mean, f"{name}_ci_low": low, f"{name}_ci_high": high}
        return out


def summarise_judged(replies: Sequence[JudgedReply], *, reference_loglik: float = 0.0) -> GenerationScores:
    """Average judged replies per prompt, with fluency and the aggregate computed per reply first.

    Fluency is `fluency_score(loglik_per_token, repetition, reference_loglik=...)`; the aggregate
    is `harmonic_mean(behaviour, fluency)` of each reply (AxBench averages per-example harmonic
    means). To score movement *away* from the behaviour, judge 1 - behaviour instead.
    """
    if not replies:
        raise ValueError("summarise_judged needs at least one judged reply.")
    by_prompt: dict[str, list[dict[str, float]]] = {}
    for reply in replies:
        fluency = fluency_score(reply.loglik_per_token, reply.repetition, reference_loglik=reference_loglik)
        by_prompt.setdefault(reply.prompt_id, []).append({
            "behaviour": reply.behaviour, "loglik_per_token": reply.loglik_per_token, "repetition": reply.repetition,
            "fluency": fluency, "aggregate": harmonic_mean(reply.behaviour, fluency)})
    names = ["behaviour", "loglik_per_token", "repetition", "fluency", "aggregate"]
    per_prompt = {name: torch.tensor([sum(r[name] for r in rows) / len(rows) for rows in by_prompt.values()],
                                     dtype=torch.float64) for name in names}
    return GenerationScores(list(by_prompt), per_prompt, len(replies))


# ---------------------------------------------------------------- length-normalised margins


def completion_token_counts(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[ContrastPair]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens in each pair's positive and negative completion, exactly as the preference metric scores them."""
    positive = [encode(tokenizer, pair.prompt, pair.positive).completion_length for pair in pairs]
    negative = [encode(tokenizer, pair.prompt, pair.negative).completion_length for pair in pairs]
    return torch.tensor(positive, dtype=torch.float64), torch.tensor(negative, dtype=torch.float64)


def per_token_margins(
    result: PreferenceResult, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[ContrastPair]
) -> torch.Tensor:
    """Length-normalised margins: log p(pos)/|pos| - log p(neg)/|neg| per item, in nats per token.

    Summed margins track reply length (long replies have large log-probabilities of either sign);
    dividing each side by its own token count compares the completions per token. Needs only
    tokenisation, no second forward pass.
    """
    if [pair.id for pair in pairs] != result.ids:
        raise ValueError("pairs must be the contrast pairs `result` was scored on, in the same order.")
    n_positive, n_negative = completion_token_counts(tokenizer, pairs)
    return result.logp_positive / n_positive - result.logp_negative / n_negative
