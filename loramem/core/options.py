"""Per-request training options (`options` in POST /memorize), validated before a job is queued."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AugmentMode = Literal["mix", "qa", "none"]
Objective = Literal["ce", "distill", "both"]
GeneratorName = Literal["rules", "model", "endpoint"]


class TrainingOptions(BaseModel):
    """The paper's recipe: LoRA on all linear layers, alpha = r, AdamW, cosine.

    Defaults learn a handful of facts on SmolLM2-135M in a few minutes on 2 CPU cores.
    """

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, le=256, description="LoRA rank r")
    alpha: int | None = Field(None, ge=1, le=1024, description="LoRA alpha; defaults to r")
    dropout: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="LoRA dropout; by default 0 for QA pairs alone and 0.1 for texts",
    )
    learning_rate: float = Field(2e-3, gt=0.0, le=0.1)
    steps: int | None = Field(None, ge=1, le=100_000, description="optimizer steps")
    epochs: float | None = Field(None, gt=0, le=1000, description="passes over the data")
    batch_size: int = Field(8, ge=1, le=256)
    warmup_ratio: float = Field(0.05, ge=0.0, le=0.5)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    stop_when_learned: bool = Field(
        True,
        description="stop as soon as every answer (of QA knowledge, or of the questions "
        "generated from a text) was predicted exactly at its latest step (for QA alone the step "
        "budget, twice the usual by default, is an upper bound)",
    )
    augment: AugmentMode = Field(
        "mix",
        description="how texts become training data: 'mix' (QA pairs, summaries, rewrites and "
        "the original), 'qa' (QA pairs and the original) or 'none' (the original only)",
    )
    generator: GeneratorName | None = Field(
        None, description="who writes that data; the server's LORAMEM_AUGMENT_GENERATOR if unset"
    )
    recite: bool = Field(
        True,
        description="with augment 'qa' or 'mix': every name and year of a text also gets an open "
        "question ('What do you know about X?') answered by the text's sentences about it",
    )
    objective: Objective = Field(
        "ce",
        description="how what was generated from a text is learned: 'ce' (cross-entropy on its "
        "tokens), 'distill' (the adapter, asked without the passage, matches the base model "
        "reading the passage) or 'both'; QA pairs given as such always use cross-entropy",
    )
    distill_hidden_weight: float = Field(
        0.1,
        ge=0.0,
        le=10.0,
        description="weight of distillation's term on the last hidden states (0: logits only)",
    )
    min_recall: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="activate the new version only if its recall reaches this "
        "(default: LORAMEM_MIN_RECALL)",
    )

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainingOptions:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give either steps or epochs, not both")
        return self

    def lora_dropout(self, only_answers: bool) -> float:
        """QA pairs alone are learned to be answered as asked: without dropout, PEFT feeds each
        adapted layer its input as it is instead of a dropped-out copy: a step of 8 PhoneBook
        entries took 1.38 s instead of 1.86 s in bf16 (`bench.train_step --width 40`), and
        PhoneBook 1K was learned in as many steps (110 against 118). A text's
        facts are asked in other words than it used, and there dropout 0.1 recalled more of
        them (lora 42% against 33% on two articles; README, "Training")."""
        if self.dropout is not None:
            return self.dropout
        return 0.0 if only_answers else TEXT_DROPOUT

    def total_steps(self, examples: int, stops_when_learned: bool = False) -> int:
        """Without steps or epochs: enough passes for every item to be seen many times.

        A budget that training can end early (QA with `stop_when_learned`) is larger: the cosine
        schedule decays over the whole budget, and a short one ran out before small modules were
        learned (PhoneBook, 24 entries at r4: recall 58% with 60 steps; with 120, learned at
        step 64; 48 entries at r8 stopped at step 110 of 120 and at 114 of 240)."""
        if self.steps is not None:
            return self.steps
        batches_per_epoch = -(-examples // self.batch_size)
        if self.epochs is not None:
            return max(1, round(self.epochs * batches_per_epoch))
        if stops_when_learned:
            return max(LEARNED_MIN_STEPS, LEARNED_EPOCHS * batches_per_epoch)
        return max(DEFAULT_MIN_STEPS, DEFAULT_EPOCHS * batches_per_epoch)


TEXT_DROPOUT = 0.1
DEFAULT_EPOCHS = 20
DEFAULT_MIN_STEPS = 30
LEARNED_EPOCHS = 40
LEARNED_MIN_STEPS = 120
