"""Instruction tuning: a causal LM learns the replies of conversations, not the prompts.

Each conversation is rendered with the tokenizer's chat template, the format the model
saw when it was instruction-tuned, and only the tokens of the assistant turns (their
text and the template's end-of-turn marker, so that the model learns to stop) carry a
label, but for turns of ``weight`` 0 (OpenAI's mark of a reply not to learn from);
system and user turns are context. The turns are located by rendering the
conversation cut before each reply (with the generation prompt) and up to its end:
the reply is what lies between, which holds for any template that renders a
conversation's start the same whatever follows it, and is checked token by token.

A tokenizer without a chat template gets :data:`PLAIN_TEMPLATE`, which ends a reply
with the tokenizer's end-of-sequence token; the run records which one was used.

Tool calls are trained on, never dropped: a template that renders ``tool_calls`` and
``tools`` gets them parsed, any other gets them as JSON text in the turn and the
system prompt (:func:`pipeline.chat.prepare`, as the ``tokens`` stage counted them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from pipeline import chat
from pipeline.errors import PipelineError
from pipeline.train.batching import IGNORE, attention_mask, pad

Example = dict[str, Any]
Messages = list[dict[str, str]]

PLAIN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}### Assistant:\n{{ m['content'] }}{{ eos_token }}\n\n"
    "{% elif m['role'] == 'system' %}### System:\n{{ m['content'] }}\n\n"
    "{% else %}### User:\n{{ m['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


class InstructionTask:
    kind = "instruction"

    def __init__(self, tokenizer: Any, max_length: int, model_name: str) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.model_name = model_name
        self.template = "tokenizer"
        if not getattr(tokenizer, "chat_template", None):
            if tokenizer.eos_token is None:
                raise PipelineError(f"model {model_name}: its tokenizer has neither a chat template nor an eos token")
            tokenizer.chat_template = PLAIN_TEMPLATE
            self.template = "plain (the tokenizer has none)"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def _ids(self, messages: Messages, generation_prompt: bool, tools: Any = None) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prepare(self, messages: Messages, tools: str | None = None) -> tuple[Messages, Any]:
        """Canonical messages (``tool_calls`` and ``tools`` as JSON text) as this
        tokenizer's template takes them, and the ``tools`` argument it gets."""
        prepared, extra = chat.prepare(messages, tools, *chat.template_features(self.tokenizer.chat_template))
        return prepared, extra.get("tools")

    def encode_messages(self, messages: Messages, tools: str | None = None) -> tuple[list[int], list[int]]:
        """Token ids of the conversation and their labels: the id on assistant tokens,
        :data:`IGNORE` elsewhere; both cut at ``max_length``."""
        return self._encode(*self.prepare(messages, tools))

    def _encode(self, messages: Messages, template_tools: Any) -> tuple[list[int], list[int]]:
        ids = self._ids(messages, generation_prompt=False, tools=template_tools)
        labels = [IGNORE] * len(ids)
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or message.get("weight") == 0:
                continue
            prompt = self._ids(messages[:i], generation_prompt=True, tools=template_tools) if i else []
            upto = self._ids(messages[: i + 1], generation_prompt=False, tools=template_tools)
            if ids[: len(prompt)] != prompt or ids[: len(upto)] != upto:
                raise PipelineError(
                    f"model {self.model_name}: its chat template renders the start of a conversation differently "
                    "depending on what follows, so replies cannot be told from prompts"
                )
            labels[len(prompt) : len(upto)] = upto[len(prompt) :]
        return ids[: self.max_length], labels[: self.max_length]

    def encode(
        self, conversations: Sequence[Messages], row_ids: Sequence[str], tools: Sequence[str | None] | None = None
    ) -> list[Example]:
        """Examples of the conversations (``tools``: each row's tool definitions, JSON
        text); one whose reply the cut at ``max_length`` removed entirely is left out,
        as it would teach nothing."""
        examples = []
        for i, (row_id, messages) in enumerate(zip(row_ids, conversations)):
            prepared, template_tools = self.prepare(messages, tools[i] if tools is not None else None)
            ids, labels = self._encode(prepared, template_tools)
            if any(label != IGNORE for label in labels[1:]):
                examples.append(
                    {"row_id": row_id, "input_ids": ids, "labels": labels, "messages": prepared, "tools": template_tools}
                )
        return examples

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        seqs = [e["input_ids"] for e in examples]
        return {
            "input_ids": pad(seqs, self.tokenizer.pad_token_id),
            "attention_mask": attention_mask(seqs),
            "labels": pad([e["labels"] for e in examples], IGNORE),
        }

    def weight(self, batch: dict[str, torch.Tensor]) -> float:
        """The loss's denominator: the labelled tokens (each predicts its successor)."""
        return float((batch["labels"][:, 1:] != IGNORE).sum())

    def loss_sum(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy of the next token, over labelled positions only (the
        logits of the others are never brought to fp32)."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE
        return F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum")

    @torch.no_grad()
    def evaluate(self, model: Any, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Mean loss per reply token and its perplexity."""
        loss, tokens = 0.0, 0.0
        for batch in batches:
            loss += float(self.loss_sum(model, batch))
            tokens += self.weight(batch)
        mean = loss / tokens
        return {"loss": mean, "perplexity": math.exp(min(mean, 50.0))}

    @torch.no_grad()
    def generate(self, model: Any, examples: Sequence[Example], max_new_tokens: int, device: torch.device) -> list[dict]:
        """Greedy replies to the prompts of ``examples`` (each cut before its last reply)."""
        rows = []
        stop = [self.tokenizer.eos_token_id, self.tokenizer.pad_token_id]
        for example in examples:
            messages = example["messages"]
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompt = self._ids(messages[:last], generation_prompt=True, tools=example.get("tools"))
            input_ids = torch.tensor([prompt], device=device)
            out = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                do_sample=False, eos_token_id=[t for t in stop if t is not None],
                pad_token_id=self.tokenizer.pad_token_id,
            )
            reply = self.tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True).strip()
            rows.append({
                "row_id": example["row_id"],
                "prompt": messages[last - 1]["content"] if last else "",
                "reference": messages[last]["content"],
                "generated": reply,
            })
        return rows
