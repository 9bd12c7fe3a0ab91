"""Time from ``POST /v1/fine-tunes`` to a promoted specialist, over HTTP.

    python -m benchmarks.finetune_turnaround [--examples 200] [--words 80]
        [--model smollm2-135m-instruct] [--epochs N] [--data data/personal/reuters_c50]

Starts ``tailor serve`` with one fine-tune worker (the embedded mode a user
runs), uploads ``--examples`` chat examples of one user, queues a job and
follows it until it ends. With no ``--epochs`` the job sets no hyperparameters,
as a ``POST /v1/fine-tunes`` with only a model would: the worker sizes the
training to the data (``finetune.training_plan``). Each example asks for a news
story and answers with the first ``--words`` words of a Reuters C50 training
article (the authors in sorted order, 50 articles each), so the data is real prose. Prints the total
and each phase as the job's own events date them: waiting in the queue, data
set, model load and first step, training (with tokens/s), evaluation,
registration and promotion, and the job's outcome (promoted or held back, and why).
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.datasets import REUTERS_C50
from tests.server import prepared_model_store, running_server

DATA = REUTERS_C50


def news_examples(data_dir: Path, count: int, words: int) -> list[dict[str, Any]]:
    articles: list[str] = []
    for path in sorted((data_dir / "train").glob("*.jsonl")):
        articles += [json.loads(line)["text"] for line in path.read_text().splitlines() if line]
        if len(articles) >= count:
            break
    if len(articles) < count:
        raise SystemExit(f"only {len(articles)} articles under {data_dir / 'train'}")
    return [
        {
            "messages": [
                {"role": "user", "content": "Write the opening of a news story."},
                {"role": "assistant", "content": " ".join(text.split()[:words])},
            ]
        }
        for text in articles[:count]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--words", type=int, default=80)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()

    admin_key = "admin-" + secrets.token_hex(8)
    admin = {"Authorization": f"Bearer {admin_key}"}
    examples = news_examples(args.data, args.examples, args.words)
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            "TAILOR_DATA_DIR": data_dir,
            "TAILOR_MODEL_STORE": str(prepared_model_store()),
            "TAILOR_ADMIN_KEY": admin_key,
            "TAILOR_FINETUNE_WORKERS": "1",
            "TAILOR_FINETUNE_TRIGGER_NEW_EXAMPLES": "0",
        }
        with running_server(env, timeout=180) as server:
            user = httpx.post(f"{server.url}/admin/users", json={"name": "bench"}, headers=admin)
            me = {"Authorization": f"Bearer {user.json()['api_key']}"}
            stored = httpx.post(
                f"{server.url}/v1/examples", json={"examples": examples}, headers=me, timeout=60
            )
            stored.raise_for_status()
            hyperparameters = {} if args.epochs is None else {"epochs": args.epochs}
            body = {"model": args.model, "hyperparameters": hyperparameters}
            started = time.perf_counter()
            job = httpx.post(f"{server.url}/v1/fine-tunes", json=body, headers=me).json()
            while True:
                job = httpx.get(f"{server.url}/v1/fine-tunes/{job['id']}", headers=me).json()
                if job["status"] not in ("queued", "running"):
                    break
                if time.perf_counter() - started > args.timeout:
                    raise SystemExit(f"the job did not finish in {args.timeout} s")
                time.sleep(0.5)
            total = time.perf_counter() - started
            events = httpx.get(f"{server.url}/v1/fine-tunes/{job['id']}/events", headers=me).json()[
                "data"
            ]

    training = "sized to the data" if args.epochs is None else f"{args.epochs} epochs"
    print(f"{args.examples} examples of ~{args.words} words, {training}, {args.model}")
    print(f"job {job['status']} in {total:.1f} s (POST to the end, seen by polling every 0.5 s)")
    reason = f": {job['outcome_reason']}" if job["outcome_reason"] else ""
    print(f"outcome: {job['outcome']}{reason}")
    if job["error"]:
        print(f"error: {job['error']}")
    created = _time(job["created_at"])
    previous = created
    print("phase (ends with event)            seconds")
    for event in events:
        moment = _time(event["created_at"])
        if event["kind"] != "progress" or event["payload"]["step"] == 1:
            print(f"  {event['kind']:<32} {(moment - previous).total_seconds():7.1f}")
            previous = moment
        if event["kind"] in ("dataset", "plan"):
            print(f"    {event['payload']}")
        if event["kind"] == "trained":
            payload = event["payload"]
            print(
                f"    {payload['steps']} steps, {payload['tokens']} tokens, "
                f"{payload['tokens_per_second']} tokens/s, loss "
                f"{payload['first_loss']} -> {payload['last_loss']}; validation loss "
                f"{payload['first_validation_loss']} -> {payload['best_validation_loss']} "
                f"(best at step {payload['best_step']}, stopped early: {payload['stopped_early']})"
            )
        if event["kind"] == "evaluation":
            payload = event["payload"]
            print(f"    NLL per token {payload['nll_per_token']}; promote: {payload['promote']}")


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


if __name__ == "__main__":
    main()
