"""One batched decoding loop over a transformers model, with a LoRA adapter per row.

Serving (the HF engine, adapters from its `LoRABank`) and recall measurement (the trainer, on the
PEFT model it just trained) both decode through `decode_batch`: the same prompts, stops and
sampling, so the recall a version is promoted with is what requests will see.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from server.engines.base import SamplingParams

# Temperatures this small overflow the softmax (found by fuzzing); they mean greedy anyway, as in
# vLLM.
GREEDY_BELOW = 1e-5


@dataclass
class DecodeRow:
    prompt_ids: Sequence[int]
    params: SamplingParams
    adapter_name: str | None = None
    generated: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.params.seed is not None and self.params.temperature > 0:
            self.generator = torch.Generator().manual_seed(self.params.seed)


# Called after every step with the rows that produced something; returns the indices (into the
# rows passed to decode_batch) of rows to stop early, e.g. because their client went away.
StepCallback = Callable[[list[int]], set[int]]
# Called before every forward pass with the adapter name of each row still decoding, in order.
AdapterSelector = Callable[[list[str | None]], None]


def _choose_tokens(logits: torch.Tensor, rows: list[DecodeRow]) -> list[int]:
    greedy = logits.argmax(dim=-1).tolist()
    chosen: list[int] = []
    for index, row in enumerate(rows):
        temperature = row.params.temperature
        if temperature < GREEDY_BELOW:
            chosen.append(greedy[index])
            continue
        probs = torch.softmax(logits[index].float() / temperature, dim=-1)
        if row.params.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < row.params.top_p
            keep[0] = True  # a top_p below float32's range would otherwise keep nothing
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        chosen.append(int(torch.multinomial(probs, 1, generator=row.generator)))
    return chosen


def _update_text(row: DecodeRow, tokenizer: Any, stop_ids: set[int]) -> bool:
    """Decodes the row's tokens, applies stop strings; True when the row's text moved on."""
    last = row.generated[-1]
    if last in stop_ids and not row.params.ignore_eos:
        row.generated.pop()
        row.finish_reason = "stop"
        return True
    text = tokenizer.decode(row.generated, skip_special_tokens=True)
    for stop in row.params.stop:
        cut = text.find(stop)
        if cut != -1:
            row.text = text[:cut]
            row.finish_reason = "stop"
            return True
    if len(row.generated) >= row.params.max_tokens:
        row.finish_reason = "length"
    # A multi-byte character split across tokens decodes to U+FFFD until its last token arrives.
    if text.endswith("\ufffd") and row.finish_reason is None:
        return False
    changed = text != row.text
    row.text = text
    return changed or row.finish_reason is not None


@torch.inference_mode()
def decode_batch(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[DecodeRow],
    *,
    select_adapters: AdapterSelector | None = None,
    on_step: StepCallback | None = None,
) -> None:
    """Generates for every row until each stops; fills `generated`, `text`, `finish_reason`."""
    if not rows:
        return
    stop_ids = _stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(row.prompt_ids) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):  # left padding: every row's next token is at the end
        input_ids[index, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
        attention_mask[index, width - len(row.prompt_ids) :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    active = list(range(len(rows)))  # indices into rows, in cache order
    cache = DynamicCache()
    while active:
        if select_adapters is not None:
            select_adapters([rows[i].adapter_name for i in active])
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
        tokens = _choose_tokens(logits, [rows[i] for i in active])
        moved = []
        for index, token in zip(active, tokens, strict=True):
            rows[index].generated.append(token)
            if _update_text(rows[index], tokenizer, stop_ids):
                moved.append(index)
        stopped = on_step(moved) if on_step else set()
        for index in stopped:
            if rows[index].finish_reason is None:
                rows[index].finish_reason = "abort"
        keep = [n for n, index in enumerate(active) if rows[index].finish_reason is None]
        if not keep:
            return
        if len(keep) < len(active):
            cache.batch_select_indices(torch.tensor(keep))
            attention_mask = attention_mask[keep]
            position_ids = position_ids[keep]
            tokens = [tokens[n] for n in keep]
            active = [active[n] for n in keep]
        input_ids = torch.tensor(tokens, dtype=torch.long).unsqueeze(-1)
        attention_mask = torch.cat(
            [attention_mask, torch.ones((len(active), 1), dtype=torch.long)], 1
        )
        position_ids = position_ids[:, -1:] + 1


def _stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    configured = model.generation_config.eos_token_id
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
