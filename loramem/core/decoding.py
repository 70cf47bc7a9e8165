"""One batched decoding loop over a transformers model, with a LoRA adapter per row.

Serving (the HF engine's `RunningBatch`, adapters from its `LoRABank`) and recall measurement (the
trainer's `decode_batch`, on the PEFT model it just trained) decode the same way: the same
prompts, stops and sampling, so the recall a version is promoted with is what requests will see.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from loramem.core.prefill import prefill

# Temperatures this small overflow the softmax (found by fuzzing); they mean greedy anyway, as in
# vLLM.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Decode past end-of-text up to max_tokens: fixed-length outputs for benchmarks.
    ignore_eos: bool = False
    # Report the generated tokens' summed log-probability (GenerationOutput.logprob).
    logprobs: bool = False


@dataclass
class DecodeRow:
    prompt_ids: Sequence[int]
    params: SamplingParams
    adapter_name: str | None = None
    generated: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    generator: torch.Generator | None = None
    logprob: float = 0.0

    def __post_init__(self) -> None:
        if self.params.seed is not None and self.params.temperature > 0:
            self.generator = torch.Generator().manual_seed(self.params.seed)


# Called before every forward pass with the adapter name of each row in it, in order.
AdapterSelector = Callable[[list[str | None]], None]


def _choose_tokens(logits: torch.Tensor, rows: list[DecodeRow]) -> list[int]:
    chosen = _sample(logits, rows)
    scored = [n for n, row in enumerate(rows) if row.params.logprobs]
    if scored:
        index = torch.tensor(scored, device=logits.device)
        tokens = torch.tensor([chosen[n] for n in scored], device=logits.device)
        logprobs = torch.log_softmax(logits[index].float(), dim=-1)
        for n, logprob in zip(
            scored, logprobs.gather(1, tokens[:, None])[:, 0].tolist(), strict=True
        ):
            rows[n].logprob += logprob
    return chosen


def _sample(logits: torch.Tensor, rows: list[DecodeRow]) -> list[int]:
    greedy = logits.argmax(dim=-1).tolist()
    chosen: list[int] = []
    for index, row in enumerate(rows):
        temperature = row.params.temperature
        if temperature < GREEDY_BELOW:
            chosen.append(greedy[index])
            continue
        # On the CPU, where the row's seeded generator lives.
        probs = torch.softmax(logits[index].float().cpu() / temperature, dim=-1)
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


class RunningBatch:
    """Rows decoding together, one token each per step; rows join and leave between steps.

    Joining rows are prefilled on their own (left-padded among themselves, a beginning that
    consecutive rows share computed once: `prefill`), then their KV cache is merged into the
    running one: both are left-padded to the longer length and the attention mask
    hides the padding. A new request so starts at the next step instead of after the whole batch,
    and a finished row frees its slot at once.
    """

    def __init__(
        self, model: Any, tokenizer: Any, select_adapters: AdapterSelector | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.select_adapters = select_adapters
        self.stop_ids = _stop_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.device = model.device
        self.rows: list[DecodeRow] = []  # in cache order
        self._cache = DynamicCache()
        self._mask = torch.zeros((0, 0), dtype=torch.long)
        self._positions = torch.zeros((0, 1), dtype=torch.long)
        self._next = torch.zeros((0, 1), dtype=torch.long)

    @torch.inference_mode()
    def join(self, rows: list[DecodeRow]) -> list[DecodeRow]:
        """Prefills `rows` (their first token) and adds them; returns those whose text moved."""
        prefilled = prefill(
            self.model,
            [row.prompt_ids for row in rows],
            self.pad_id,
            adapters=[row.adapter_name for row in rows],
            select_adapters=self.select_adapters,
        )
        tokens, moved = self._append_next_tokens(rows, prefilled.logits[:, -1, :])
        cache, mask = prefilled.cache, prefilled.mask
        if not self.rows:
            self._cache, self._mask = cache, mask
            self._positions, self._next = prefilled.last_positions, tokens
        else:
            length = max(self._mask.shape[1], mask.shape[1])
            for kept, joined in zip(_layers(self._cache), _layers(cache), strict=True):
                kept.keys = _stack_left_padded(kept.keys, joined.keys, length)
                kept.values = _stack_left_padded(kept.values, joined.values, length)
            self._mask = _stack_left_padded(self._mask, mask, length)
            self._positions = torch.cat([self._positions, prefilled.last_positions])
            self._next = torch.cat([self._next, tokens])
        self.rows.extend(rows)
        return moved

    @torch.inference_mode()
    def step(self) -> list[DecodeRow]:
        """One token for every row; returns the rows whose text moved."""
        ones = torch.ones((len(self.rows), 1), dtype=torch.long, device=self.device)
        self._mask = torch.cat([self._mask, ones], 1)
        self._positions = self._positions + 1
        self._next, moved = self._forward(
            self.rows, self._next, self._mask, self._positions, self._cache
        )
        return moved

    def leave(self) -> list[DecodeRow]:
        """Removes the rows that finished (or were given a finish_reason); returns them."""
        keep = [n for n, row in enumerate(self.rows) if row.finish_reason is None]
        if len(keep) == len(self.rows):
            return []
        gone = [row for row in self.rows if row.finish_reason is not None]
        self.rows = [self.rows[n] for n in keep]
        if not keep:
            self._cache = DynamicCache()
            return gone
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        self._mask, self._positions, self._next = (
            self._mask[index],
            self._positions[index],
            self._next[index],
        )
        # Columns that only padded the rows that left are dropped.
        start = int(self._mask.any(0).nonzero()[0])
        if start:
            self._mask = self._mask[:, start:]
            for layer in _layers(self._cache):
                layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]
        return gone

    def _forward(
        self,
        rows: list[DecodeRow],
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
    ) -> tuple[torch.Tensor, list[DecodeRow]]:
        if self.select_adapters is not None:
            self.select_adapters([row.adapter_name for row in rows])
        logits = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
        return self._append_next_tokens(rows, logits)

    def _append_next_tokens(
        self, rows: list[DecodeRow], logits: torch.Tensor
    ) -> tuple[torch.Tensor, list[DecodeRow]]:
        """Each row's next token from its logits, appended to the row; the tokens as a column,
        and the rows whose text moved."""
        tokens = _choose_tokens(logits, rows)
        moved = []
        for row, token in zip(rows, tokens, strict=True):
            row.generated.append(token)
            if _update_text(row, self.tokenizer, self.stop_ids):
                moved.append(row)
        return torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(-1), moved


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's per-layer key and value states (`keys`, `values`: batch, heads, length, dim)."""
    return list(cache.layers)


def _stack_left_padded(first: torch.Tensor, second: torch.Tensor, length: int) -> torch.Tensor:
    """Both along the batch, each padded with zeros before its sequence dimension to `length`
    (the last dimension of a mask, the one before it of KV states)."""
    dim = -1 if first.dim() == 2 else -2
    padded = []
    for tensor in (first, second):
        missing = length - tensor.shape[dim]
        pad = (missing, 0) if dim == -1 else (0, 0, missing, 0)
        padded.append(torch.nn.functional.pad(tensor, pad) if missing else tensor)
    return torch.cat(padded)


def decode_batch(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[DecodeRow],
    *,
    select_adapters: AdapterSelector | None = None,
    max_rows: int | None = None,
) -> None:
    """Generates for every row until each stops; fills `generated`, `text`, `finish_reason`.

    With `max_rows`, at most that many decode at a time, and waiting rows take the places of
    those that finished: fixed chunks would each run as long as their longest answer. They join
    in groups of at least a quarter of `max_rows`, since each join prefills and then copies the
    running batch's cache."""
    if not rows:
        return
    limit = max_rows or len(rows)
    batch = RunningBatch(model, tokenizer, select_adapters)
    waiting = deque(rows)
    while waiting or batch.rows:
        free = limit - len(batch.rows)
        if waiting and free >= min(len(waiting), max(1, limit // 4)):
            batch.join([waiting.popleft() for _ in range(min(free, len(waiting)))])
        else:
            batch.step()
        batch.leave()


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
