"""Turning stored texts into training data: QA pairs, summaries, rewrites (and the original).

`rules` needs no model; `model` asks the base model itself; `endpoint` asks any OpenAI-compatible
server. When a model-written generation fails, the rules take over and the reason is kept.
"""

from loramem.trainer.augmentation.base import (
    DataGenerator,
    GeneratedItem,
    Generation,
    GeneratorError,
)
from loramem.trainer.augmentation.checking import ReadBack, ScoreAnswers, check_items
from loramem.trainer.augmentation.coverage import unasked_things
from loramem.trainer.augmentation.recital import recitals
from loramem.trainer.augmentation.rules import RuleBasedGenerator
from loramem.trainer.augmentation.written import (
    EndpointGenerator,
    ServedModelGenerator,
    parse_written,
)

__all__ = [
    "DataGenerator",
    "EndpointGenerator",
    "GeneratedItem",
    "Generation",
    "GeneratorError",
    "ReadBack",
    "RuleBasedGenerator",
    "ScoreAnswers",
    "ServedModelGenerator",
    "check_items",
    "generate_with_fallback",
    "parse_written",
    "recitals",
    "unasked_things",
]


def generate_with_fallback(generator: DataGenerator, text: str) -> Generation:
    rules = RuleBasedGenerator()
    if generator.name != rules.name:
        try:
            return Generation(generator.generate(text), generator.name)
        except GeneratorError as error:
            return Generation(rules.generate(text), rules.name, fallback_reason=str(error))
    return Generation(rules.generate(text), rules.name)
