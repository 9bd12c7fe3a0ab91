"""The whole personalisation loop against a running Tailor, in one script.

It creates a user (admin API), uploads that user's chat examples, fine-tunes a
specialist on them with the service's defaults, follows the job's events until
it ends (the evaluation gate promotes the specialist or holds it back, saying
why, with sample answers), chats with the result through the official OpenAI
SDK, and rates the answer.

Start Tailor in one shell (``make run``), then in another, from the repository root:

    .venv/bin/python examples/personalise.py --admin-key-file var/admin-key

Options and their environment variables: ``--url`` (``TAILOR_URL``, default
http://127.0.0.1:8000), ``--admin-key`` (``TAILOR_ADMIN_KEY``) or
``--admin-key-file``; ``--help`` lists the rest. On a 2-core CPU the fine-tune
takes a few minutes. The script exits with 0 once the job has ended and the
feedback is stored (also when the evaluation gate held the specialist back,
which it says), and with 1 when the job failed or was cancelled.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from openai import APIConnectionError, OpenAI

EXAMPLES_FILE = Path(__file__).with_name("pirate_examples.jsonl")
# The small chat model: it learns the examples' voice in a few CPU minutes.
DEFAULT_MODEL = "smollm2-135m-instruct"
# No hyperparameters: the service sizes the training to the data (28 examples: batch 4,
# up to 60 steps with early stopping, a few CPU minutes). A fixed 2 or 3 epochs (9-15
# steps) left the voice on only some questions.
HYPERPARAMETERS: dict[str, Any] = {}
# A question none of the examples asks: the answer shows what generalised.
QUESTION = "What is the capital of France?"
TERMINAL_STATES = ("succeeded", "failed", "cancelled")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The whole personalisation loop against a running Tailor."
    )
    parser.add_argument("--url", default=os.environ.get("TAILOR_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--admin-key", default=os.environ.get("TAILOR_ADMIN_KEY"))
    parser.add_argument("--admin-key-file", type=Path, help="e.g. var/admin-key (from make run)")
    parser.add_argument("--name", default=f"pirate-fan-{secrets.token_hex(3)}", help="new user")
    parser.add_argument("--examples", type=Path, default=EXAMPLES_FILE, help="a JSON Lines file")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="base model to personalise")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the job")
    # The service holds back a specialist that forgets more than 5% of its 30 factual
    # probes; on the 135M model a new voice costs a few (docs/benchmarks.md, "style
    # sets"). An admin may trade facts for style per user; the script can set that.
    parser.add_argument(
        "--max-probe-loss",
        type=float,
        help="share of factual probes this user's specialist may forget (admin's limit)",
    )
    return parser.parse_args()


def admin_key_from(args: argparse.Namespace) -> str:
    # The file wins: `make run` writes its generated key there.
    if args.admin_key_file is not None:
        return str(args.admin_key_file.read_text().strip())
    if args.admin_key:
        return str(args.admin_key)
    sys.exit("no admin key: pass --admin-key-file var/admin-key, --admin-key or TAILOR_ADMIN_KEY")


def checked(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a successful response; otherwise stop with Tailor's error message."""
    if response.is_error:
        sys.exit(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text}"
        )
    body: dict[str, Any] = response.json()
    return body


def create_user(admin: httpx.Client, name: str) -> dict[str, Any]:
    return checked(admin.post("/admin/users", json={"name": name}))


def allow_probe_loss(admin: httpx.Client, user_id: str, share: float) -> dict[str, Any]:
    body = {"max_probe_loss": share}
    return checked(admin.patch(f"/admin/users/{user_id}/fine-tuning", json=body))


def upload_examples(user: httpx.Client, path: Path) -> dict[str, Any]:
    # The file goes as it is: /v1/examples reads JSON Lines, one {"messages": [...]} a line.
    return checked(
        user.post(
            "/v1/examples",
            content=path.read_bytes(),
            headers={"Content-Type": "application/jsonl"},
        )
    )


def start_fine_tune(user: httpx.Client, model: str) -> dict[str, Any]:
    body = {"model": model, "hyperparameters": HYPERPARAMETERS}
    return checked(user.post("/v1/fine-tunes", json=body))


def event_line(event: dict[str, Any]) -> str:
    """One line per event: the few numbers worth reading, else the payload as JSON."""
    kind, payload = event["kind"], event["payload"]
    if kind == "progress":
        details = (
            f"step {payload['step']}/{payload['total_steps']} loss {payload['loss']:.3f} "
            f"{payload['tokens_per_second']:.0f} tokens/s, ETA {payload['eta_seconds']:.0f} s"
        )
    elif kind == "evaluation":
        nll = payload["nll_per_token"]
        details = (
            f"NLL per token on held-out examples: base {nll['base']:.3f}, "
            f"candidate {nll['candidate']:.3f}; generic text {payload['generic_rise']:+.2%}; "
            f"{_probes(payload)}verdict: {payload['verdict']}"
        )
    elif kind == "not_promoted":
        details = "; ".join(payload.get("reasons") or [payload.get("reason", "")])
    else:
        details = json.dumps(payload, separators=(", ", ": "))
    return f"  {kind:<12} {details}"


def _probes(evaluation: dict[str, Any]) -> str:
    answered = evaluation.get("probes_answered")
    if not answered:
        return ""
    return (
        f"factual probes {answered['candidate']}/{evaluation['probes_asked']} "
        f"(base {answered['base']}); "
    )


def follow_job(user: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    """Prints the job's events as they come and returns the job once it has ended."""
    last_event_id = 0
    deadline = time.monotonic() + timeout
    while True:
        # The state is read before the events: every event written before the
        # job ended is then in this round's page.
        job = checked(user.get(f"/v1/fine-tunes/{job_id}"))
        page = checked(user.get(f"/v1/fine-tunes/{job_id}/events", params={"after": last_event_id}))
        for event in page["data"]:
            print(event_line(event), flush=True)
            last_event_id = event["id"]
        if job["status"] in TERMINAL_STATES:
            return job
        if time.monotonic() > deadline:
            sys.exit(f"job {job_id} still {job['status']} after {timeout:.0f} s")
        time.sleep(2)


def print_samples(user: httpx.Client, version_id: str) -> None:
    """The held-back version's sample answers beside the base model's: what a user decides on."""
    for adapter in checked(user.get("/v1/adapters"))["data"]:
        for version in adapter["versions"]:
            if version["id"] == version_id:
                for sample in (version["eval_metrics"] or {}).get("samples", []):
                    print(f"   held-out question {sample['question']!r}")
                    print(f"     base model: {sample['base']!r}")
                    print(f"     candidate:  {sample['candidate']!r}")


def main() -> int:
    args = parse_args()
    base_url = args.url.rstrip("/")
    admin = httpx.Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {admin_key_from(args)}"},
        timeout=60,
    )

    created = create_user(admin, args.name)
    print(f"1. user {created['id']} ({created['name']}), API key {created['api_key']}")
    if args.max_probe_loss is not None:
        limits = allow_probe_loss(admin, created["id"], args.max_probe_loss)
        print(f"   may forget {limits['effective_max_probe_loss']:.0%} of the factual probes")
    user = httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {created['api_key']}"}, timeout=60
    )

    stored = upload_examples(user, args.examples)
    print(f"2. uploaded {stored['stored']} examples from {args.examples}")

    job = start_fine_tune(user, args.model)
    hyperparameters = json.dumps(job["hyperparameters"])
    print(f"3. fine-tune {job['id']} on {job['model']} {hyperparameters}: {job['status']}")
    job = follow_job(user, job["id"], args.timeout)
    print(f"   the job {job['status']}: {job['outcome']}", end="")
    print(f" ({job['outcome_reason']})" if job["outcome_reason"] else "")
    if job["status"] != "succeeded":
        print(f"   error: {job['error']}", file=sys.stderr)
        return 1

    # The same question to the bare base model and to this user's experts.
    client = OpenAI(base_url=f"{base_url}/v1", api_key=created["api_key"], timeout=120)
    messages: list[Any] = [{"role": "user", "content": args.question}]
    bare = client.chat.completions.create(
        model=job["model"],
        messages=messages,
        temperature=0,  # greedy: the same answer every run
        max_tokens=40,
        extra_body={"personalize": False},
    )
    answer = client.chat.completions.create(
        model=job["model"], messages=messages, temperature=0, max_tokens=40
    )
    # Tailor's own part of the answer, beside the OpenAI fields.
    adapters = (answer.model_extra or {})["tailor"]["adapters"]
    print(f"4. asked {args.question!r}")
    print(f"   base model:        {bare.choices[0].message.content!r}")
    print(f"   with your experts: {answer.choices[0].message.content!r}")
    used = ", ".join(f"{a['kind']} {a['id']} v{a['version']}" for a in adapters) or "none"
    print(f"   adapters that answered: {used}")
    if job["result_version_id"] not in [a["version_id"] for a in adapters]:
        print_samples(user, job["result_version_id"])
        print(
            f"   the new version {job['result_version_id']} was held back, so it does not "
            "answer yet; you can still choose it: "
            f"POST /v1/adapters/{job['result_version_id']}/promote"
        )

    # +1 tells the router this model did well here, and makes the answer a
    # training example for the user's next fine-tune.
    feedback = checked(user.post("/v1/feedback", json={"response_id": answer.id, "rating": 1}))
    print(f"5. feedback {feedback['id']} stored: rating {feedback['rating']} on {answer.id}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (httpx.TransportError, APIConnectionError) as error:
        sys.exit(f"cannot reach Tailor: {error} (is it running? `make run` starts it)")
