"""Forward throughput with many LoRA adapters in one batch: base vs ours vs peft.

    python -m benchmarks.multi_lora [--model smollm2-135m-instruct] [--random-weights]
        [--device cpu|cuda] [--dtype float32|bfloat16] [--rank 16] [--batch 64]
        [--prefill-len 64] [--decode-prefix 64] [--adapters 1,8,64] [--repeats 5]
        [--peft-max-adapters N] [--kernels auto|torch|triton[,...]] [--kernel-time]
        [--threads N] [--json OUT]

The same inputs for every system, each on its own copy of the same model:

- base: the model alone;
- ours: ``MultiLoraModel`` with 1, 8, 64 distinct adapters, row i using
  adapter i mod n; plus every row mixing a shared generalist with its own
  gated specialist (CoMiGS, top-2 of 2);
- peft: the same adapters through peft's mixed batch (``adapter_names``).

``--kernels torch,triton`` runs ours once per kernel choice of
``MultiLoraConfig.kernels``, each on its own copy with the same adapters, in
the same rounds; the table then gives each Triton case's speed against the
torch case of the same shape and adapters ("vs torch", and "kern vs torch"
from the kernel times with ``--kernel-time``). The default, ``auto``, is what
serving runs: Triton on CUDA, torch on the CPU.

Two shapes: prefill (batch x prefill-len tokens; only the last position's
logits, as serving needs) and one decode step of one new token per row
against a KV cache of decode-prefix tokens. Every round runs each case once,
in turn, so that a neighbour's load slows all cases alike rather than
whichever ran at the time; each figure is the median over ``--repeats``
rounds after ``--warmup`` rounds. ``--random-weights`` builds the
architecture from its config.json alone, for hosts the weights cannot reach
(speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.profiler import ProfilerActivity, profile
from transformers import AutoConfig, AutoModelForCausalLM

from adapters.device.multi_lora import MultiLoraModel
from adapters.device.multi_lora.model import Kernels
from adapters.lora_weights import TARGET_MODULES, LoraWeights

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Case:
    """One timed configuration: a forward of one shape through one system."""

    shape: str  # "prefill" or "decode"
    system: str  # "base", "peft", "ours" or "ours-mixture"
    adapters: int
    tokens: int  # tokens one forward processes
    run: Callable[[], object]
    # Untimed, before every run: a fresh KV cache for a decode step.
    prepare: Callable[[], object] = lambda: None
    # Entered around every run, untimed: our routing.
    routing: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
    times_s: list[float] = field(default_factory=list)
    # With --kernel-time on CUDA: the GPU time of one run's kernels, free of
    # launch overhead (about what a CUDA-graph replay of it would take).
    kernel_s: float | None = None
    # Ours only: what the layers ran ("torch" or "triton"); "" for base and peft.
    kernels: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.median_s

    def figures(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "system": self.system,
            "kernels": self.kernels,
            "adapters": self.adapters,
            "tokens": self.tokens,
            "median_s": self.median_s,
            "tokens_per_s": self.tokens_per_s,
            "times_s": self.times_s,
            "kernel_s": self.kernel_s,
        }


@dataclass(frozen=True)
class Inputs:
    prefill_ids: torch.Tensor  # [batch, prefill_len]
    next_ids: torch.Tensor  # [batch, 1]
    prefix_cache: Any  # the model's KV cache after decode-prefix tokens


class Runner:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds(self, case: Case) -> float:
        case.prepare()
        with case.routing():
            self.sync()
            started = time.perf_counter()
            case.run()
            self.sync()
            return time.perf_counter() - started

    def kernel_seconds(self, case: Case) -> float:
        """The summed GPU time of the kernels of one run of ``case``."""
        case.prepare()
        with case.routing():
            self.sync()
            with profile(activities=[ProfilerActivity.CUDA]) as profiler:
                case.run()
                self.sync()
        microseconds = sum(event.self_device_time_total for event in profiler.key_averages())
        return float(microseconds) / 1e6


def shape_cases(
    model: nn.Module,
    inputs: Inputs,
    system: str,
    adapters: int,
    routing: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    kernels: str = "",
    **forward_kwargs: Any,
) -> list[Case]:
    """The prefill and the decode case of one system."""
    batch, prefill_len = inputs.prefill_ids.shape
    # Each decode step appends to the cache, so every run gets a fresh copy.
    cache: list[Any] = [None]

    def fresh_cache() -> None:
        cache[0] = copy.deepcopy(inputs.prefix_cache)

    def prefill() -> object:
        return model(inputs.prefill_ids, logits_to_keep=1, **forward_kwargs)

    def decode() -> object:
        return model(inputs.next_ids, past_key_values=cache[0], **forward_kwargs)

    return [
        Case(
            "prefill",
            system,
            adapters,
            batch * prefill_len,
            prefill,
            routing=routing,
            kernels=kernels,
        ),
        Case("decode", system, adapters, batch, decode, fresh_cache, routing, kernels=kernels),
    ]


def load_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> nn.Module:
    path = Path(args.model_store) / args.model
    model: nn.Module
    if args.random_weights:
        config = AutoConfig.from_pretrained(path)
        torch.manual_seed(0)
        # Built on the device directly: no host copy of random weights.
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
        model.to(dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device)
    return model.train(False)


def make_inputs(model: nn.Module, args: argparse.Namespace, device: torch.device) -> Inputs:
    generator = torch.Generator().manual_seed(0)
    # Ordinary token ids; the values do not matter for speed.
    high = 1000
    prefill_ids = torch.randint(0, high, (args.batch, args.prefill_len), generator=generator)
    prefix_ids = torch.randint(0, high, (args.batch, args.decode_prefix), generator=generator)
    next_ids = torch.randint(0, high, (args.batch, 1), generator=generator)
    with torch.no_grad():
        prefix = model(prefix_ids.to(device), use_cache=True, logits_to_keep=1)
    return Inputs(prefill_ids.to(device), next_ids.to(device), prefix.past_key_values)


def add_peft_adapters(model: nn.Module, count: int, rank: int) -> PeftModel:
    """``count`` rank-``rank`` adapters on every target module, named a0, a1, ..."""
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(TARGET_MODULES))
    peft_model = get_peft_model(model, config, adapter_name="a0")
    for index in range(1, count):
        peft_model.add_adapter(f"a{index}", config)
    # peft starts lora_B at zero; make the adapters do something.
    with torch.no_grad():
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                for linear in module.lora_B.values():
                    assert isinstance(linear, nn.Linear)
                    linear.weight.normal_(0.0, 0.02)
    peft_model.train(False)
    return peft_model


def peft_to_weights(peft_model: PeftModel, count: int, rank: int) -> list[LoraWeights]:
    weights = []
    for index in range(count):
        state = get_peft_model_state_dict(peft_model, adapter_name=f"a{index}")
        tensors = {name: tensor.detach() for name, tensor in state.items()}
        weights.append(LoraWeights("bench", rank, 2 * rank, TARGET_MODULES, tensors))
    return weights


def with_gate(weights: LoraWeights, generator: torch.Generator) -> LoraWeights:
    """The same expert as a specialist whose gate mixes one generalist and itself."""
    gates = {}
    for name, tensor in weights.tensors.items():
        if name.endswith(".lora_A.weight"):
            gate_name = name.replace(".lora_A.weight", ".tailor_gate.weight")
            in_features = tensor.shape[1]
            gates[gate_name] = torch.randn(2, in_features, generator=generator) / in_features**0.5
    return LoraWeights(
        weights.base_model_id,
        weights.rank,
        weights.alpha,
        weights.target_modules,
        {**weights.tensors, **gates},
        gate_experts=("generalist",),
    )


def build_cases(args: argparse.Namespace, device: torch.device) -> list[Case]:
    counts = sorted(args.adapters)
    most = counts[-1]
    batch = args.batch

    base = load_model(args, device, DTYPES[args.dtype])
    inputs = make_inputs(base, args, device)
    cases = shape_cases(base, inputs, "base", 0)

    peft_model = add_peft_adapters(copy.deepcopy(base), most, args.rank)
    for count in counts:
        if args.peft_max_adapters is None or count <= args.peft_max_adapters:
            names = [f"a{row % count}" for row in range(batch)]
            cases += shape_cases(peft_model, inputs, "peft", count, adapter_names=names)

    generalist_slot = most + 1
    generator = torch.Generator().manual_seed(1)
    weights = peft_to_weights(peft_model, most, args.rank)
    specialists = [with_gate(expert, generator) for expert in weights]
    done: set[str] = set()
    for choice in args.kernels:
        ours = copy.deepcopy(base)
        handle = MultiLoraModel.wrap(
            ours, num_slots=most + 2, max_rank=args.rank, max_experts=2, kernels=choice
        )
        if handle.kernels in done:  # "auto" and the choice it resolved to
            continue
        done.add(handle.kernels)
        for slot, expert in enumerate(specialists, start=1):
            handle.load(slot, expert)
        handle.load(generalist_slot, weights[0])
        cases += ours_cases(ours, handle, inputs, counts, batch)
    return cases


def ours_cases(
    ours: nn.Module, handle: MultiLoraModel, inputs: Inputs, counts: list[int], batch: int
) -> list[Case]:
    """Our cases on one wrapped copy: slots 1..most hold specialists, most + 1 the generalist."""
    most = counts[-1]
    generalist_slot = most + 1

    def routing(*indices: list[Any]) -> Callable[[], AbstractContextManager[object]]:
        return lambda: handle.routing(*indices)

    cases = []
    for count in counts:
        # One expert a row: a routing one position wide, no gate.
        slots = [1 + row % count for row in range(batch)]
        cases += shape_cases(ours, inputs, "ours", count, routing(slots), handle.kernels)
    # Every row: the shared generalist and its own specialist, mixed per token.
    specialists = [1 + row % most for row in range(batch)]
    mixtures = [[generalist_slot, slot] for slot in specialists]
    cases += shape_cases(
        ours,
        inputs,
        "ours-mixture",
        min(most, batch),
        routing(mixtures, specialists),
        handle.kernels,
    )
    return cases


def run(args: argparse.Namespace) -> list[Case]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    runner = Runner(device)
    cases = build_cases(args, device)
    with torch.no_grad():
        for round_ in range(args.warmup + args.repeats):
            started = time.perf_counter()
            for case in cases:
                seconds = runner.seconds(case)
                if round_ >= args.warmup:
                    case.times_s.append(seconds)
            kind = "warm-up" if round_ < args.warmup else "timed"
            print(
                f"round {round_ + 1}/{args.warmup + args.repeats} ({kind}): "
                f"{time.perf_counter() - started:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        if args.kernel_time and device.type == "cuda":
            for case in cases:
                case.kernel_s = runner.kernel_seconds(case)
    return cases


def table(cases: list[Case]) -> str:
    shapes = ["prefill", "decode"]
    cases = sorted(cases, key=lambda c: shapes.index(c.shape))
    base = {c.shape: c.tokens_per_s for c in cases if c.system == "base"}
    peft = {(c.shape, c.adapters): c.tokens_per_s for c in cases if c.system == "peft"}
    # The torch case each Triton case is set against: same shape, system, adapters.
    torch_cases = {(c.shape, c.system, c.adapters): c for c in cases if c.kernels == "torch"}
    compare = any(c.kernels == "triton" for c in cases) and bool(torch_cases)
    timed = any(c.kernel_s is not None for c in cases)
    header = (
        f"{'shape':8} {'system':13} {'kernels':7} {'adapters':>8} {'median s':>9} "
        f"{'tokens/s':>10} {'vs base':>8} {'ours/peft':>9}"
    )
    header += f" {'kernel ms':>9}" if timed else ""
    header += f" {'vs torch':>8}" if compare else ""
    header += f" {'kern vs torch':>13}" if compare and timed else ""
    lines = [header]
    for c in cases:
        versus_peft = ""
        if c.system == "ours" and (c.shape, c.adapters) in peft:
            versus_peft = f"{c.tokens_per_s / peft[(c.shape, c.adapters)]:8.1f}x"
        line = (
            f"{c.shape:8} {c.system:13} {c.kernels or '-':7} {c.adapters:>8} {c.median_s:9.4f} "
            f"{c.tokens_per_s:10.1f} {c.tokens_per_s / base[c.shape]:8.2f}x {versus_peft:>9}"
        )
        if timed:
            line += " " * 10 if c.kernel_s is None else f" {c.kernel_s * 1e3:9.2f}"
        reference = torch_cases.get((c.shape, c.system, c.adapters))
        if compare and c.kernels == "triton" and reference is not None:
            # Above 1: Triton is faster (tokens/s up, kernel time down).
            line += f" {c.tokens_per_s / reference.tokens_per_s:7.2f}x"
            if timed and c.kernel_s and reference.kernel_s:
                line += f" {reference.kernel_s / c.kernel_s:12.2f}x"
        lines.append(line.rstrip())
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--model-store", default="var/models")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prefill-len", type=int, default=64)
    parser.add_argument("--decode-prefix", type=int, default=64)
    parser.add_argument(
        "--adapters",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 8, 64],
        help="comma-separated adapter counts",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--peft-max-adapters",
        type=int,
        default=None,
        help="skip peft for larger counts (its per-adapter loop is slow)",
    )
    parser.add_argument(
        "--kernels",
        type=_kernel_choices,
        default=["auto"],
        help="comma-separated MultiLoraConfig.kernels to run ours with, e.g. torch,triton "
        "(auto: Triton on CUDA, torch on the CPU)",
    )
    parser.add_argument(
        "--kernel-time",
        action="store_true",
        help="on CUDA, also profile one run of each case and report its summed kernel time",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    return parser.parse_args(argv)


def _kernel_choices(text: str) -> list[str]:
    choices = [name.strip() for name in text.split(",")]
    unknown = [name for name in choices if name not in get_args(Kernels)]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown kernels {unknown}; choose from {', '.join(get_args(Kernels))}"
        )
    return choices


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # transformers' deprecation notices (past_key_values is renamed in newer
    # releases, but the GPU hosts run older ones) would bury the figures.
    warnings.filterwarnings("ignore", category=FutureWarning)
    cases = run(args)
    print(
        f"{args.model} ({'random' if args.random_weights else 'real'} weights) on {args.device} "
        f"{args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
        f"kernels {','.join(args.kernels)}; "
        f"rank {args.rank}, batch {args.batch}, prefill {args.prefill_len} tokens, "
        f"decode 1 token after {args.decode_prefix}; median of {args.repeats} rounds"
    )
    print(table(cases))
    if args.json is not None:
        settings = {**vars(args), "json": str(args.json)}
        figures = [case.figures() for case in cases]
        args.json.write_text(json.dumps({"args": settings, "results": figures}, indent=2))


if __name__ == "__main__":
    main()
