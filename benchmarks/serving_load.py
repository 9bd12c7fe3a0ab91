"""Load test: concurrent chat over HTTP from users with distinct adapters, against
the same requests one by one through HF ``generate`` (with peft), in one run.

    python -m benchmarks.serving_load [--users 32] [--requests 64] [--concurrency 16]
        [--max-tokens 32] [--model smollm2-135m-instruct] [--rank 8]
        [--targets q_proj,v_proj] [--json OUT]

Each simulated user gets a random rank-r specialist, uploaded and promoted
through the admin API; request i comes from a user drawn with Zipf
popularity (alpha 1.0). The server streams every answer, so time to first
token is measured at the client. The baseline runs afterwards, with the
server stopped: the same prompts and users, one at a time, through a peft
model holding every user's adapter (``set_adapter`` per request), greedy,
``max_new_tokens`` equal to the tokens the server generated for that request.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import secrets
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from adapters.base_shapes import BaseModelShapes
from adapters.lora_weights import LoraWeights
from adapters.peft_interop import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft_dir
from benchmarks.prompts import PROMPTS
from tests.adapter_factory import random_lora
from tests.server import running_server


@dataclass
class Outcome:
    user: int
    prompt: str
    tokens: int
    first_token_s: float
    total_s: float


def zipf_users(users: int, requests: int, rng: random.Random) -> list[int]:
    weights = [1.0 / (rank + 1) for rank in range(users)]
    return rng.choices(range(users), weights=weights, k=requests)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def one_request(
    client: httpx.AsyncClient, key: str, model: str, prompt: str, max_tokens: int, user: int
) -> Outcome:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "usage" in chunk:
                tokens = chunk["usage"]["completion_tokens"]
            delta = chunk["choices"][0].get("delta", {})
            if first is None and delta.get("content"):
                first = time.perf_counter() - started
    total = time.perf_counter() - started
    return Outcome(user, prompt, tokens, first if first is not None else total, total)


async def drive(
    url: str,
    keys: list[str],
    model: str,
    plan: list[tuple[int, str]],
    concurrency: int,
    max_tokens: int,
) -> tuple[list[Outcome], float]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def run(user: int, prompt: str) -> Outcome:
            async with gate:
                return await one_request(client, keys[user], model, prompt, max_tokens, user)

        started = time.perf_counter()
        outcomes = await asyncio.gather(*(run(u, p) for u, p in plan))
        return list(outcomes), time.perf_counter() - started


def baseline(
    store: Path, model_id: str, adapters: list[LoraWeights], outcomes: list[Outcome], scratch: Path
) -> float:
    """Seconds to generate the same requests one by one with HF generate + peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = store / model_id
    tokenizer: Any = AutoTokenizer.from_pretrained(path)
    base: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    peft_model: Any = None
    for index, lora in enumerate(adapters):
        directory = scratch / f"peft-{index}"
        export_peft_dir(lora, directory)
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(base, directory, adapter_name=f"u{index}")
        else:
            peft_model.load_adapter(directory, adapter_name=f"u{index}")
    peft_model.train(False)
    started = time.perf_counter()
    with torch.inference_mode():
        for outcome in outcomes:
            peft_model.set_adapter(f"u{outcome.user}")
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": outcome.prompt}], add_generation_prompt=True
            )
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            peft_model.generate(
                torch.tensor([ids]),
                max_new_tokens=max(1, outcome.tokens),
                min_new_tokens=max(1, outcome.tokens),
                do_sample=False,
            )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--model-store", type=Path, default=Path("var/models"))
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8)
    # peft's own default LoRA targets for llama-family models.
    parser.add_argument("--targets", default="q_proj,v_proj")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rng = random.Random(args.seed)
    store = args.model_store.resolve()
    shapes = BaseModelShapes.from_model_dir(store / args.model)
    adapters = [
        random_lora(
            shapes,
            base_model_id=args.model,
            rank=args.rank,
            seed=i,
            scale=0.05,
            target_modules=tuple(args.targets.split(",")),
        )
        for i in range(args.users)
    ]
    plan = [(u, rng.choice(PROMPTS)) for u in zipf_users(args.users, args.requests, rng)]
    admin_key = secrets.token_hex(8)
    admin = {"Authorization": f"Bearer {admin_key}"}

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        env = {
            "TAILOR_DATA_DIR": str(scratch / "data"),
            "TAILOR_MODEL_STORE": str(store),
            "TAILOR_ADMIN_KEY": admin_key,
            "TAILOR_ADAPTER_SLOTS": str(args.users + 1),
            "TAILOR_MAX_ADAPTER_RANK": str(args.rank),
            "TAILOR_MAX_BATCH": str(args.concurrency),
            "TAILOR_RATE_LIMIT_BURST": str(args.requests * 2),
        }
        with running_server(env, timeout=180) as server:
            keys = []
            for index, lora in enumerate(adapters):
                user = httpx.post(
                    f"{server.url}/admin/users", json={"name": f"user-{index}"}, headers=admin
                ).json()
                keys.append(user["api_key"])
                export_peft_dir(lora, scratch / f"upload-{index}")
                files = [
                    ("file", (name, io.BytesIO((scratch / f"upload-{index}" / name).read_bytes())))
                    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
                ]
                version = httpx.post(
                    f"{server.url}/admin/adapters",
                    data={"user_id": user["id"], "base_model": args.model},
                    files=files,
                    headers=admin,
                ).json()
                httpx.post(f"{server.url}/admin/adapters/{version['id']}/promote", headers=admin)
            # Warm up: the first requests load adapters into slots.
            asyncio.run(drive(server.url, keys, args.model, plan[:4], 4, 4))
            outcomes, wall = asyncio.run(
                drive(server.url, keys, args.model, plan, args.concurrency, args.max_tokens)
            )
        sequential = baseline(store, args.model, adapters, outcomes, scratch)

    tokens = sum(o.tokens for o in outcomes)
    ours = tokens / wall
    theirs = tokens / sequential
    ttft = [o.first_token_s for o in outcomes]
    latency = [o.total_s for o in outcomes]
    distinct = len({o.user for o in outcomes})
    figures = {
        "requests": len(outcomes),
        "distinct_users": distinct,
        "concurrency": args.concurrency,
        "output_tokens": tokens,
        "tailor_tokens_per_s": ours,
        "sequential_hf_generate_tokens_per_s": theirs,
        "speedup": ours / theirs,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p99_s": percentile(ttft, 99),
        "latency_p50_s": statistics.median(latency),
        "latency_p99_s": percentile(latency, 99),
    }
    p50, p99 = figures["ttft_p50_s"], figures["ttft_p99_s"]
    l50, l99 = figures["latency_p50_s"], figures["latency_p99_s"]
    rows = [
        ("requests", f"{len(outcomes)} from {distinct} users with distinct adapters"),
        ("concurrency", f"{args.concurrency}"),
        ("tailor over HTTP", f"{ours:.1f} output tokens/s ({tokens} tokens in {wall:.1f} s)"),
        ("HF generate one by one", f"{theirs:.1f} output tokens/s ({sequential:.1f} s)"),
        ("speed-up", f"{ours / theirs:.2f}x"),
        ("time to first token", f"p50 {p50:.3f} s, p99 {p99:.3f} s"),
        ("latency", f"p50 {l50:.3f} s, p99 {l99:.3f} s"),
    ]
    for label, value in rows:
        print(f"{label + ':':26s} {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
