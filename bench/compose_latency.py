"""The latency of a request that composes a topic's top 3 modules against one that one module
serves, at a fixed answer length, on the HF engine.

    .venv/bin/python -m bench.compose_latency [--tokens 32] [--repeats 6]

Three made-up facts are memorized as one topic in a server whose module capacity is below one
fact, so each is a module of its own. Each fact's question is then asked, greedy and with
`ignore_eos`, so that every answer is `--tokens` long whatever it says (composed answers that
ramble longer than a module's own would otherwise count as slower composition): with top-1, and
with top-3 composed by each method: `confident` deciding after the server's default
`confident_tokens` and after whole answers (`confident_tokens: 0`), `sum` and `weighted`
(adapters summed by the engine's LoRA bank, no file written). Requests are sent one at a time,
each way in turn (`--repeats` rounds), the first round not counted (a new combination's
adapter is built then). Prints each way's mean latency and its ratio to top-1 (target: <= 1.3
for the chosen method). Writes bench/results/compose_latency.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.common import DEFAULT_CONFIDENT_TOKENS, ratio, save
from bench.recall import loramem_server
from bench.training import FOUR_FACTS

# Three of the walk-through's made-up facts.
FACTS = FOUR_FACTS[:3]
WAYS: dict[str, dict[str, Any]] = {
    "top-1": {"top_k": 1},
    f"top-3 confident, deciding after {DEFAULT_CONFIDENT_TOKENS} tokens": {
        "top_k": 3,
        "compose": "confident",
    },
    "top-3 confident, whole answers": {
        "top_k": 3,
        "compose": "confident",
        "confident_tokens": 0,
    },
    "top-3 sum": {"top_k": 3, "compose": "sum"},
    "top-3 weighted": {"top_k": 3, "compose": "weighted"},
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32, help="tokens every answer has")
    parser.add_argument("--repeats", type=int, default=6, help="rounds over every way")
    args = parser.parse_args(argv)
    seconds: dict[str, list[float]] = {name: [] for name in WAYS}
    adapters: dict[str, int] = {}
    with loramem_server(module_tokens_per_rank="1") as server:
        job = server.memorize("facts", qa=FACTS, options={"rank": 4})
        modules = len(server.http.get("/admin/topics/facts").json()["knowledge_modules"])
        print(f"  the topic's {modules} modules trained in {job['seconds']:.0f} s", flush=True)
        for round_number in range(args.repeats + 1):
            for fact in FACTS:
                for name, request in WAYS.items():
                    started = time.perf_counter()
                    answer = server.ask(
                        fact["question"],
                        "facts",
                        "lora",
                        tokens=args.tokens,
                        ignore_eos=True,
                        **request,
                    )
                    if round_number:  # the first round builds each combination once
                        seconds[name].append(time.perf_counter() - started)
                    assert answer["usage"]["completion_tokens"] == args.tokens, answer["usage"]
                    adapters[name] = len(answer["adapters"])
    means = {name: statistics.mean(values) for name, values in seconds.items()}
    for name, mean in means.items():
        print(f"  {name}: {mean:.3f} s a request ({adapters[name]} modules)", flush=True)
    ratios = [
        ratio(f"latency {name}/top-1", means[name], means["top-1"], "<= 1.3")
        for name in WAYS
        if name != "top-1"
    ]
    report = {
        "tokens": args.tokens,
        "modules": modules,
        "seconds": seconds,
        "mean_seconds": means,
        "adapters": adapters,
        "ratios": ratios,
    }
    save("compose_latency", report)
    return report


if __name__ == "__main__":
    main()
