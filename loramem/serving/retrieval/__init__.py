"""Finding knowledge by content: which topic a request is about (`topic: "auto"`) and which
stored passages go into its prompt (modes `rag` and `hybrid`)."""

from loramem.serving.retrieval.index import Hit, KnowledgeIndex, Passage, TopicScore
from loramem.serving.retrieval.scorers import BM25Scorer, DenseScorer, PassageScorer, create_scorer

__all__ = [
    "BM25Scorer",
    "DenseScorer",
    "Hit",
    "KnowledgeIndex",
    "Passage",
    "PassageScorer",
    "TopicScore",
    "create_scorer",
]
