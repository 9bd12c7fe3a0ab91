"""Ask a model every factual probe and count the ones it gets right.

    python -m benchmarks.check_factual_probes [--model DIR] [--max-new-tokens 24]

``finetune.factual_probes`` must hold only questions the base model answers, or the
gate would blame an adapter for the base model's own gaps; this is how that was
checked, and how to re-check after editing the set. The prompt is what serving
sends (``models.chat_format``): the model's chat template where it has one, else
the plain "User: ...\\nAssistant:" transcript a base model continues. Decoding is
greedy, in float32 on the CPU, so the result is the same on every run. A base model
does not stop after its answer but goes on to write the next "User:" turn itself;
the reply is cut there, so an answer it gives to a question it invented does not
count. Prints one line per probe (ok or MISS, the question, the reply) and the total.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from finetune.base_loading import load_evaluation_base
from finetune.factual_probes import FACTUAL_PROBES, probe_answered
from models.chat_format import prompt_ids

DEFAULT_MODEL = Path("var/models/smollm2-135m-instruct")
NEXT_TURN = "\nUser:"  # where a base model starts inventing the conversation's next turn


def greedy_reply(model: Any, tokenizer: Any, question: str, max_new_tokens: int) -> str:
    """The model's greedy answer to ``question`` asked as a one-turn conversation."""
    ids = torch.tensor([prompt_ids(tokenizer, [{"role": "user", "content": question}])])
    with torch.no_grad():
        output = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    reply = str(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True))
    return reply.split(NEXT_TURN, 1)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a model directory")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = load_evaluation_base(args.model, device=torch.device("cpu"))  # float32
    # Greedy decoding ignores these, but a checkpoint's sampling defaults make
    # transformers warn on every call.
    model.generation_config.temperature = None
    model.generation_config.top_p = None
    model.generation_config.top_k = None

    right = 0
    for probe in FACTUAL_PROBES:
        reply = greedy_reply(model, tokenizer, probe.question, args.max_new_tokens)
        answered = probe_answered(probe, reply)
        right += answered
        flat_reply = " ".join(reply.split())
        print(f"{'ok  ' if answered else 'MISS'}  {probe.question}  ->  {flat_reply}", flush=True)
    print(f"{right}/{len(FACTUAL_PROBES)} answered by {args.model}")


if __name__ == "__main__":
    main()
