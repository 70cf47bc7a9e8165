"""Cross-entropy at the labelled positions only.

A causal LM's head turns every position into vocabulary-wide logits (49,152 wide for SmolLM2),
though the loss of a QA example covers only its answer. Here the decoder's hidden states are
sliced to the positions that predict a label before the head is applied, and the head and loss
run over chunks of `HEAD_CHUNK_TOKENS` positions; past one chunk each is checkpointed (its logits
recomputed in the backward pass), so a text's thousands of labelled positions never hold their
logits at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trainer_worker.batching import IGNORE_INDEX

HEAD_CHUNK_TOKENS = 1024


@dataclass
class LabelledLoss:
    # The summed token losses (divide by the batch's labelled tokens for the mean).
    total: torch.Tensor
    labelled: int
    # Per row: was the argmax right at every labelled position?
    exact_rows: list[bool]


def decoder_and_head(model: Any) -> tuple[Any, Any]:
    """The transformer body and the output head of a causal LM (wrapped by PEFT or not)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal_lm.base_model, causal_lm.get_output_embeddings()


def labelled_loss(model: Any, batch: dict[str, torch.Tensor]) -> LabelledLoss:
    decoder, head = decoder_and_head(model)
    # Padding is on the right and attention causal: no real token attends to a pad, so no mask
    # is needed, and attention takes its fused causal kernel instead of a masked one.
    hidden = decoder(input_ids=batch["input_ids"], use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    where = targets != IGNORE_INDEX
    picked = hidden[:, :-1][where]
    wanted = targets[where]
    rows = where.nonzero()[:, 0]
    total = hidden.new_zeros((), dtype=torch.float32)
    wrong = torch.zeros(len(targets), dtype=torch.long, device=hidden.device)
    chunked = len(wanted) > HEAD_CHUNK_TOKENS
    for start in range(0, len(wanted), HEAD_CHUNK_TOKENS):
        part = slice(start, start + HEAD_CHUNK_TOKENS)
        if chunked and torch.is_grad_enabled():
            loss, hits = checkpoint(
                _head_loss, head, picked[part], wanted[part], use_reentrant=False
            )
        else:
            loss, hits = _head_loss(head, picked[part], wanted[part])
        total = total + loss
        wrong.index_add_(0, rows[part], (~hits).long())
    return LabelledLoss(total, len(wanted), (wrong == 0).tolist())


def _head_loss(
    head: Any, hidden: torch.Tensor, wanted: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()
    return F.cross_entropy(logits, wanted, reduction="sum"), logits.argmax(-1) == wanted
