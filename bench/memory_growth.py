"""What a long-running server keeps from job to job: its resident memory after each job and after
the questions that follow it.

    .venv/bin/python -m bench.memory_growth [--articles marsh_bread,lantern_festival,...]

One fresh server (HF engine, default settings, this environment's other variables passed on, so
`ONEDNN_PRIMITIVE_CACHE_CAPACITY=128 .venv/bin/python -m bench.memory_growth` measures oneDNN's
cache at another size) memorizes each text of `bench/data/prose` as its own topic, then is asked
that text's questions in each mode of `bench.recall`'s prose part. The server's VmRSS is read
from `/proc` after each job and after its questions; the job log lines (`bench/results/server.log`)
give memory and peak at each stage of each job. Writes bench/results/memory_growth.json.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.common import PROSE, memory_gib, save
from bench.recall import PROSE_MODES, ask_prose, loramem_server


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", default="marsh_bread,lantern_festival,lighthouse_story")
    args = parser.parse_args(argv)
    questions = json.loads((PROSE / "questions.json").read_text())
    readings: list[dict[str, Any]] = []
    with loramem_server() as server:

        def reading(moment: str) -> None:
            readings.append({"moment": moment, "resident_gib": memory_gib(server.pid)["rss_gib"]})
            print(f"  {moment}: {readings[-1]['resident_gib']:.2f} GiB", flush=True)

        reading("started")
        for name in args.articles.split(","):
            job = server.memorize(f"prose-{name}", text=(PROSE / f"{name}.txt").read_text())
            reading(f"after the job for {name} ({job['seconds']:.0f} s)")
            for question, _ in questions[name]:
                for mode in PROSE_MODES:
                    ask_prose(server, question, name, mode)
            reading(f"after the questions about {name}")
    report = {"articles": args.articles.split(","), "readings": readings}
    save("memory_growth", report)
    return report


if __name__ == "__main__":
    main()
