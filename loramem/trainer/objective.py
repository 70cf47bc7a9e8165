"""The training loss, computed at the labelled positions only: cross-entropy, context
distillation, or both.

A causal LM's head turns every position into vocabulary-wide logits (49,152 wide for SmolLM2),
though the loss of a QA example covers only its answer. Here the decoder's hidden states are
sliced to the positions that predict a label before the head is applied, and the head and loss
run over chunks of `HEAD_CHUNK_TOKENS` positions; past one chunk each is checkpointed (its logits
recomputed in the backward pass), so a text's thousands of labelled positions never hold their
logits at once.

Context distillation (Deep Context Distillation in Caccia et al. 2025, and the seed paper's
code): the student, asked without the passage, learns to predict the labelled tokens as the
frozen base model does when the passage is in its prompt: KL divergence at temperature 2 to the
teacher's distribution, plus an L1 term between the last hidden states normalised by the
teacher's. The teacher runs once per job (`teacher_targets`); only its top `TEACHER_TOP_K`
tokens per position are kept, and the KL compares the two distributions on those tokens and the
rest of the vocabulary taken as one, so no vocabulary-wide logits are stored and a student that
predicts as the teacher does scores zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from loramem.core.options import Objective
from loramem.trainer.batching import (
    IGNORE_INDEX,
    TrainingExample,
    collate,
    members,
    micro_batches,
)

HEAD_CHUNK_TOKENS = 1024
DISTILL_TEMPERATURE = 2.0
TEACHER_TOP_K = 32


@dataclass(frozen=True)
class TeacherTargets:
    """What the teacher predicted at each labelled position of one example."""

    top_ids: torch.Tensor  # [positions, TEACHER_TOP_K]
    top_logprobs: torch.Tensor  # [positions, TEACHER_TOP_K], at the temperature
    hidden: torch.Tensor  # [positions, hidden size]


@dataclass(frozen=True)
class LossTerms:
    """How a batch is scored: which rows are distilled, from what, and with what weights."""

    objective: Objective = "ce"
    hidden_weight: float = 0.1
    # Per example, in the batch's order; None for one with no teacher (it is scored by
    # cross-entropy).
    teachers: Sequence[TeacherTargets | None] = ()


@dataclass
class LabelledLoss:
    # The summed token losses (divide by the batch's labelled tokens for the mean).
    total: torch.Tensor
    labelled: int
    # Per example, in the batch's order: was the argmax right at every labelled position?
    exact: list[bool]


def decoder_and_head(model: Any) -> tuple[Any, Any]:
    """The transformer body and the output head of a causal LM (wrapped by PEFT or not)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal_lm.base_model, causal_lm.get_output_embeddings()


def _labelled_hidden(
    model: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """The last hidden states at the positions that predict a label, those labels, and the
    example of each (in the batch's order, so each example's positions come in order)."""
    decoder, head = decoder_and_head(model)
    if "position_ids" in batch:  # rows that share a prefix (see `batching.collate`)
        masking = {"attention_mask": batch["attention_mask"], "position_ids": batch["position_ids"]}
    else:
        # Padding is on the right and attention causal: no real token attends to a pad, so no
        # mask is needed, and attention takes its fused causal kernel instead of a masked one.
        masking = {}
    hidden = decoder(input_ids=batch["input_ids"], use_cache=False, **masking).last_hidden_state
    targets = batch["labels"][:, 1:]
    where = targets != IGNORE_INDEX
    return hidden[:, :-1][where], targets[where], batch["owners"][:, 1:][where], head


def labelled_loss(
    model: Any, batch: dict[str, torch.Tensor], terms: LossTerms | None = None
) -> LabelledLoss:
    terms = terms or LossTerms()
    picked, wanted, owners, head = _labelled_hidden(model, batch)
    teacher = _aligned_teacher(terms, wanted, owners, picked.shape[-1])
    # What a position must predict to count as learned: its label, or where only the teacher
    # teaches it, the teacher's first choice (which the label may word otherwise).
    expected = wanted
    if teacher is not None and terms.objective == "distill":
        _, distilled, top_ids, *_ = teacher
        expected = torch.where(distilled, top_ids[:, 0], wanted)
    total = picked.new_zeros((), dtype=torch.float32)
    examples = int(batch["owners"].max()) + 1
    wrong = torch.zeros(examples, dtype=torch.long, device=picked.device)
    chunked = len(wanted) > HEAD_CHUNK_TOKENS
    for start in range(0, len(wanted), HEAD_CHUNK_TOKENS):
        part = slice(start, start + HEAD_CHUNK_TOKENS)
        arguments = (
            head,
            picked[part],
            wanted[part],
            *((None,) * 5 if teacher is None else (tensor[part] for tensor in teacher)),
            terms.hidden_weight,
        )
        if chunked and torch.is_grad_enabled():
            loss, predicted = checkpoint(_head_loss, *arguments, use_reentrant=False)
        else:
            loss, predicted = _head_loss(*arguments)
        total = total + loss
        wrong.index_add_(0, owners[part], (predicted != expected[part]).long())
    return LabelledLoss(total, len(wanted), (wrong == 0).tolist())


def _aligned_teacher(
    terms: LossTerms, wanted: torch.Tensor, owners: torch.Tensor, width: int
) -> tuple[torch.Tensor, ...] | None:
    """Per labelled position: the cross-entropy weight (0 or 1), whether it is distilled, and
    the teacher's targets (zeros where a position is not distilled); None when no row of the
    batch is distilled, as with the default objective, which then computes nothing more."""
    if terms.objective == "ce" or all(teacher is None for teacher in terms.teachers):
        return None
    positions = len(wanted)
    device = wanted.device
    distilled = torch.zeros(positions, dtype=torch.bool, device=device)
    top_ids = torch.zeros((positions, TEACHER_TOP_K), dtype=torch.long, device=device)
    top_logprobs = torch.zeros((positions, TEACHER_TOP_K), device=device)
    hidden = torch.zeros((positions, width), device=device)
    for owner, teacher in enumerate(terms.teachers):
        if teacher is None:
            continue
        at = (owners == owner).nonzero()[:, 0]
        if len(at) != len(teacher.top_ids):
            raise ValueError("a teacher's positions do not match its example's labels")
        distilled[at] = True
        top_ids[at] = teacher.top_ids.to(device)
        top_logprobs[at] = teacher.top_logprobs.to(device)
        hidden[at] = teacher.hidden.to(device, torch.float32)
    cross_entropy = (
        torch.ones(positions, device=device) if terms.objective == "both" else (~distilled).float()
    )
    return cross_entropy, distilled, top_ids, top_logprobs, hidden


def _with_tail(top_logprobs: torch.Tensor) -> torch.Tensor:
    """The top-k log-probabilities and, last, the log of the mass outside them: a distribution
    of k + 1 outcomes that the teacher's and the student's can be compared on exactly."""
    rest = (1.0 - top_logprobs.exp().sum(-1, keepdim=True)).clamp(min=1e-8)
    return torch.cat([top_logprobs, rest.log()], dim=-1)


def _head_loss(
    head: Any,
    hidden: torch.Tensor,
    wanted: torch.Tensor,
    cross_entropy_weight: torch.Tensor | None,
    distilled: torch.Tensor | None,
    top_ids: torch.Tensor | None,
    top_logprobs: torch.Tensor | None,
    teacher_hidden: torch.Tensor | None,
    hidden_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's summed loss and the student's first choice at each position (the teacher's
    tensors are None where nothing is distilled)."""
    logits = head(hidden).float()
    if cross_entropy_weight is None:
        return F.cross_entropy(logits, wanted, reduction="sum"), logits.argmax(-1)
    assert distilled is not None and top_ids is not None and top_logprobs is not None
    assert teacher_hidden is not None
    loss = (F.cross_entropy(logits, wanted, reduction="none") * cross_entropy_weight).sum()
    if bool(distilled.any()):
        # KL(teacher || student) over the teacher's top tokens and the rest of the vocabulary
        # as one outcome, scaled by T^2 so that its gradients keep the size of a cross-entropy's.
        student = F.log_softmax(logits[distilled] / DISTILL_TEMPERATURE, dim=-1)
        student = _with_tail(student.gather(1, top_ids[distilled]))
        teacher = _with_tail(top_logprobs[distilled])
        kl = (teacher.exp() * (teacher - student)).sum(-1) * DISTILL_TEMPERATURE**2
        own, target = hidden[distilled].float(), teacher_hidden[distilled]
        l1 = (own - target).abs().sum(-1) / target.abs().sum(-1).clamp(min=1e-8)
        loss = loss + (kl + hidden_weight * l1).sum()
    return loss, logits.argmax(-1)


def teacher_targets(
    model: Any, examples: Sequence[TrainingExample], pad_id: int, micro_batch_tokens: int
) -> dict[int, TeacherTargets]:
    """The frozen model's predictions for every example that has a teacher sequence, by index,
    computed once (call it on the model without an adapter, under the job's autocast)."""
    distilled = [i for i, example in enumerate(examples) if example.teacher_ids is not None]
    sequences = [examples[i].teacher_example() for i in distilled]
    result: dict[int, TeacherTargets] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for run in micro_batches(range(len(sequences)), sequences, micro_batch_tokens):
                batch = collate(sequences, pad_id, model.device, run)
                picked, _, owners, head = _labelled_hidden(model, batch)
                logprobs = F.log_softmax(head(picked).float() / DISTILL_TEMPERATURE, dim=-1)
                top = logprobs.topk(TEACHER_TOP_K, dim=-1)
                for owner, n in enumerate(members(run)):
                    at = owners == owner
                    result[distilled[n]] = TeacherTargets(
                        top.indices[at], top.values[at], picked[at].float()
                    )
    finally:
        model.train(was_training)
    return result
