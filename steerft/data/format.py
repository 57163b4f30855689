"""The exact text a model sees before its answer, for chat models and for base models alike.

Every method goes through one formatter, so a steering vector, a LoRA and a few-shot prompt
are trained and scored on the same strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from steerft.data.items import BehaviourDataError, BehaviourItem, Messages

PromptLike = BehaviourItem | str | Messages


class PromptFormatter:
    """Render prompts with the tokenizer's chat template, or as plain text when it has none.

    ``tokenizer`` is a Hugging Face tokenizer; ``None`` (or one without a chat template, as for
    base models) gives the plain-text format "Question: ...\\nAnswer:". ``system_prompt`` is
    the instruction used by the system-prompt baseline.
    """

    def __init__(self, tokenizer: Any | None, system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt

    @property
    def uses_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def prompt(self, item: PromptLike, demonstrations: Sequence[BehaviourItem] = ()) -> str:
        """Everything before the answer, with demonstrations as earlier question/answer turns."""
        messages = self.messages(item, demonstrations)
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self._plain(messages)

    def completion(self, text: str) -> str:
        """A completion as it must follow ``prompt()``.

        Chat templates end the assistant header with their own separator, so the answer starts
        bare; in plain text it follows "Answer:" after one space, as in " (A)".
        """
        return text.strip() if self.uses_chat_template else " " + text.strip()

    def messages(self, item: PromptLike, demonstrations: Sequence[BehaviourItem] = ()) -> Messages:
        """The conversation behind ``prompt()``: system prompt, demonstrations, then the item.

        System messages inside demonstrations are dropped: a template takes one system message,
        at the start. An item's own system message is kept after ``system_prompt``.
        """
        turns: Messages = []
        for demo in demonstrations:
            turns += [m for m in _as_messages(demo.prompt) if m["role"] != "system"]
            turns.append({"role": "assistant", "content": demo.matching.strip()})
        own = _as_messages(item.prompt if isinstance(item, BehaviourItem) else item)
        system = [m["content"] for m in own[:1] if m["role"] == "system"]
        turns += own[len(system):]
        system_text = "\n\n".join([self.system_prompt, *system] if self.system_prompt else system)
        return ([{"role": "system", "content": system_text}] if system_text else []) + turns

    def _plain(self, messages: Messages) -> str:
        """Stack turns as "Question: ...\\nAnswer: ..." blocks, ending at the open "Answer:"."""
        text = ""
        for message in messages:
            role, content = message["role"], message["content"].strip()
            if role == "system":
                text += content + "\n\n"
            elif role == "user":
                # model-written-evals questions already end in "Answer:"; do not repeat it
                text += f"Question: {content}" + ("" if content.endswith("Answer:") else "\nAnswer:")
            elif role == "assistant":
                text += self.completion(content) + "\n\n"
            else:
                raise BehaviourDataError(f"the plain-text format has no rendering for role {role!r}; "
                                         "use a tokenizer with a chat template")
        return text


def _as_messages(prompt: str | Messages) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
