"""Hot swap under steady load: time from a version's publish to the first token served from it,
and requests that failed meanwhile.

    .venv/bin/python -m bench.hot_swap [--engines hf,vllm] [--swaps 5] [--clients 4]

A topic's version is published into the registry the way a trainer worker publishes it, while
`--clients` clients keep sending 8-token requests to the topic. A probe client sends 1-token
requests back to back; the swap time is from the publish's commit to the end of the first probe
answered by the new version (its one token). The server notices versions by polling the registry
(LORAMEM_VERSION_POLL_SECONDS, default 1 s), so the time is mostly that wait. Writes
bench/results/hot_swap.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import QUESTIONS, loramem, make_adapters, model_path, publish, save

TOPIC = "swap"


async def swaps(url: str, data: Path, adapters: list[Path], args: Any) -> dict[str, Any]:
    statuses: list[int] = []
    stop = asyncio.Event()

    async def ask(http: httpx.AsyncClient, tokens: int) -> int | None:
        body = {"prompt": QUESTIONS[0], "topic": TOPIC, "mode": "lora", "max_tokens": tokens}
        try:
            response = await http.post(f"{url}/generate", json=body)
        except httpx.HTTPError:
            statuses.append(0)
            return None
        statuses.append(response.status_code)
        return response.json()["adapters"][0]["version"] if response.status_code == 200 else None

    async def steady(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            await ask(http, 8)

    times = []
    async with httpx.AsyncClient(timeout=120) as http:
        load = [asyncio.create_task(steady(http)) for _ in range(args.clients)]
        await asyncio.sleep(3)
        for swap in range(args.swaps):
            version = await asyncio.to_thread(publish, data, TOPIC, adapters[(swap + 1) % 2])
            published = time.perf_counter()
            while await ask(http, 1) != version:
                pass
            times.append(time.perf_counter() - published)
            print(f"  version {version}: first token after {times[-1]:.2f} s", flush=True)
            await asyncio.sleep(1)
        stop.set()
        await asyncio.gather(*load)
    failed = sum(status != 200 for status in statuses)
    return {
        "publish_to_first_token_s": times,
        "mean_s": statistics.fmean(times),
        "max_s": max(times),
        "requests": len(statuses),
        "failed": failed,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="hf,vllm")
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"clients": args.clients, "engines": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        adapters = make_adapters(model_path(), work / "adapters", 2)
        for engine in args.engines.split(","):
            data = work / engine
            publish(data, TOPIC, adapters[0])
            # Rank-8 adapters: vLLM pads each to this bound, which on CPU costs time per step.
            with loramem(data, engine, max_lora_rank="8") as (url, _):
                result = report["engines"][engine] = asyncio.run(swaps(url, data, adapters, args))
            print(
                f"hot swap {engine}: publish to first token mean {result['mean_s']:.2f} s, "
                f"max {result['max_s']:.2f} s (target < 1 s); "
                f"{result['failed']} of {result['requests']} requests failed (target 0)",
                flush=True,
            )
    save("hot_swap", report)
    return report


if __name__ == "__main__":
    main()
