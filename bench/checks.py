"""The checks of generated questions: their time with and without the shared prefill, on the
articles of the prose benchmark, with the default model, in one run.

    .venv/bin/python -m bench.checks [--articles harbor_clinic,kelda_looms] [--rounds 1]

Each article's rules-generated items are checked as a job checks them (the base model reading
back every question with its passage, then scoring the candidate answers of those it failed),
once with `loramem.core.prefill` sharing the beginnings rows have in common and once with every
row prefilled whole (the baseline), alternating, in one process. The verdicts must be the same
both ways: the sharing changes the arithmetic's order, not what is computed.
Writes bench/results/checks.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import PROSE, model_path, ratio, save

DEFAULT_ARTICLES = "harbor_clinic,cartographer,quillmark,kelda_looms"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", default=DEFAULT_ARTICLES)
    parser.add_argument("--rounds", type=int, default=1, help="alternations of the two ways")
    args = parser.parse_args(argv)

    from loramem.core import prefill
    from loramem.core.base_model import load_causal_lm
    from loramem.trainer.augmentation import RuleBasedGenerator, check_items
    from loramem.trainer.knowledge import base_model_reader, base_model_scorer

    model, tokenizer = load_causal_lm(model_path())
    read_back, score = base_model_reader(model, tokenizer), base_model_scorer(model, tokenizer)
    sharing_cost = prefill.GROUP_COST_TOKENS
    seconds = {"shared": 0.0, "whole": 0.0}
    report: dict[str, Any] = {"articles": {}}
    for name in args.articles.split(","):
        text = (PROSE / f"{name}.txt").read_text()
        items = RuleBasedGenerator().generate(text)
        article: dict[str, Any] = {"items": len(items), "seconds": {"shared": [], "whole": []}}
        verdicts = {}
        for _ in range(args.rounds):
            for way, cost in (("whole", 10**9), ("shared", sharing_cost)):
                prefill.GROUP_COST_TOKENS = cost  # a group that costs this much never forms
                start = time.perf_counter()
                checked = check_items(items, text, read_back, score)
                spent = time.perf_counter() - start
                seconds[way] += spent
                article["seconds"][way].append(round(spent, 1))
                verdicts[way] = [item.rejected for item in checked]
        prefill.GROUP_COST_TOKENS = sharing_cost
        article["kept"] = sum(reason is None for reason in verdicts["shared"])
        article["same_verdicts"] = verdicts["shared"] == verdicts["whole"]
        report["articles"][name] = article
        print(name, article, flush=True)
    report["ratio"] = ratio(
        "checks' time, shared prefill / whole rows", seconds["shared"], seconds["whole"]
    )
    print("written to", save("checks", report))
    return report


if __name__ == "__main__":
    main()
