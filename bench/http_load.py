"""Load on a real `loramem serve` over loopback: requests/s and latency percentiles at several
concurrency levels, per engine, then the share refused with 429 at twice the admission bound.

    .venv/bin/python -m bench.http_load [--engines hf,vllm] [--clients 1,8,32] [--tokens 16]

Default model, base generations of `--tokens` tokens (greedy) on short questions. Each client
sends its next request as soon as its last one is answered. The overload run starts a server with
LORAMEM_MAX_PENDING_REQUESTS=--bound and drives 2 x bound clients; every answer must be 200 or
429, and the server must answer normally afterwards. Writes bench/results/http_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import QUESTIONS, latency_summary, loramem, save


async def drive(url: str, clients: int, per_client: int, tokens: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: list[int] = []

    async def client(number: int, http: httpx.AsyncClient) -> None:
        for i in range(per_client):
            body = {"prompt": QUESTIONS[(number + i) % len(QUESTIONS)], "max_tokens": tokens}
            started = time.perf_counter()
            response = await http.post(f"{url}/generate", json=body)
            statuses.append(response.status_code)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(n, http) for n in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(statuses),
        "ok": len(latencies),
        "refused_429": statuses.count(429),
        "server_errors": sum(s >= 500 for s in statuses),
        "requests_per_s": len(latencies) / elapsed,
        **latency_summary(latencies),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="hf,vllm")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=64, help="requests per level (at least)")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--bound", type=int, default=16, help="admission bound of the 429 run")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]
    results: dict[str, Any] = {"tokens": args.tokens, "engines": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for engine in args.engines.split(","):
            rows = []
            with loramem(work / engine, engine) as (url, _):
                asyncio.run(drive(url, 2, 2, args.tokens))  # warm-up
                for clients in levels:
                    per_client = max(2, -(-args.requests // clients))
                    row = asyncio.run(drive(url, clients, per_client, args.tokens))
                    rows.append(row)
                    print(
                        f"{engine:5} {clients:3} clients: {row['requests_per_s']:6.2f} req/s  "
                        f"p50 {row['p50_s']:.2f} s  p99 {row['p99_s']:.2f} s  "
                        f"429s {row['refused_429']}  5xx {row['server_errors']}"
                    )
            results["engines"][engine] = rows
        engine = args.engines.split(",")[0]
        with loramem(work / "overload", engine, max_pending_requests=str(args.bound)) as (url, _):
            overload = asyncio.run(drive(url, 2 * args.bound, 4, args.tokens))
            after = asyncio.run(drive(url, 1, 2, args.tokens))
        share = overload["refused_429"] / overload["requests"]
        overload.update(engine=engine, bound=args.bound, refused_share=share)
        overload["recovered"] = after["ok"] == after["requests"]
        results["overload"] = overload
        print(
            f"overload ({engine}, bound {args.bound}, {2 * args.bound} clients): "
            f"{share:.0%} refused with 429, {overload['server_errors']} 5xx, "
            f"recovered afterwards: {overload['recovered']}"
        )
    save("http_load", results)
    return results


if __name__ == "__main__":
    main()
