"""Engine throughput: many concurrent requests through the continuous-batching
engine, against the same requests one by one through HF ``generate``, in one run.

    python -m benchmarks.engine_throughput [--model-dir var/models/smollm2-135m-instruct]
        [--random-weights] [--device cpu|cuda] [--dtype float32|bfloat16]
        [--requests 64] [--prompt-len 64] [--max-tokens 128] [--adapters 0,64,64g]
        [--rank 16] [--sequential 8] [--hf-static] [--no-cuda-graphs]
        [--kernels auto|torch|triton] [--rounds 1] [--temperature 0] [--top-p 1]
        [--json OUT]

No HTTP: this measures the engine alone. Every request generates exactly
``--max-tokens`` tokens (end-of-sequence is ignored), from random prompt
tokens, greedy unless ``--temperature`` says otherwise (the baselines stay
greedy). With ``--adapters N`` the requests use N distinct random
rank-r LoRA adapters (all 7 modules) through the multi-LoRA slot pool; the
sequential baseline then runs peft with each request's adapter. The
sequential figure is measured on the first ``--sequential`` requests and is
per token, so it compares with the engine's per token figure. ``Ng`` is the
gated mixture: N specialists, each mixed with one shared generalist by its
CoMiGS gate. ``--rounds R`` measures every engine case R times, the cases
alternated, and reports each one's median, so no case gains from its place.

Beside each engine figure: the wall time per decode step, and on CUDA with
graphs the GPU's time per step (the largest recorded step graph replayed
back to back), so that the host's share of a step shows.

``--hf-static`` adds the baseline a GPU user tries first: HF ``generate``
over the whole batch at once with a static cache (which ``generate`` compiles
with torch.compile on CUDA), base model only, after two warm-up calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapters.base_shapes import BaseModelShapes
from adapters.device.multi_lora import MultiLoraModel
from adapters.device.slot_cache import AdapterSlotCache
from adapters.expert_sets import ExpertRef, ExpertSet
from adapters.lora_weights import TARGET_MODULES, LoraWeights
from serving.engine.engine import Engine, EngineConfig
from serving.engine.requests import GenerationRequest
from serving.engine.sampling import SamplingParams
from storage.tables import AdapterKind
from tests.adapter_factory import random_lora

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_model(model_dir: Path, *, random_weights: bool, device: str, dtype: torch.dtype) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    if random_weights:
        config = AutoConfig.from_pretrained(model_dir)
        torch.manual_seed(0)
        model: Any = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = model.to(device)
    model.train(False)
    return model


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Case:
    adapters: int  # distinct specialists, one per request in turn (0: the base model)
    gated: bool  # each specialist mixed with one shared generalist by its gate

    @classmethod
    def parse(cls, text: str) -> Case:
        gated = text.endswith("g")
        return cls(int(text.removesuffix("g")), gated)

    @property
    def name(self) -> str:
        return f"{self.adapters}{'g' if self.gated else ''}"


@dataclass
class EngineFigures:
    tokens_per_s: float
    step_ms: float  # wall time per decode step
    gpu_step_ms: float | None  # GPU time per step of the largest graph; None: not measured


GENERALIST = "generalist"


def run_engine(
    model: Any, tokenizer: Any, prompts: list[list[int]], args: argparse.Namespace, case: Case
) -> EngineFigures:
    """The engine serving every prompt at once: output tokens per second, time per step."""
    lora = slots = None
    loras: dict[str, LoraWeights] = {}
    adapters = case.adapters
    if adapters:
        shapes = BaseModelShapes.from_config(model.config.to_dict())
        gate = (GENERALIST,) if case.gated else ()
        loras = {
            f"adp_{i}": random_lora(
                shapes,
                base_model_id="bench",
                rank=args.rank,
                seed=i,
                target_modules=TARGET_MODULES,
                gate_experts=gate,
            )
            for i in range(adapters)
        }
        if case.gated:
            loras[GENERALIST] = random_lora(
                shapes,
                base_model_id="bench",
                rank=args.rank,
                seed=-1,
                target_modules=TARGET_MODULES,
            )
        lora = MultiLoraModel.wrap(
            model, num_slots=len(loras) + 1, max_rank=args.rank, kernels=args.kernels
        )
        slots = AdapterSlotCache(lora, fetch=lambda ref: loras[ref.adapter_id])
    engine = Engine(
        model_id="bench",
        model=model,
        tokenizer=tokenizer,
        eos_token_ids=set(),
        config=EngineConfig(
            max_batch=len(prompts),
            max_queue=len(prompts),
            prefill_budget=len(prompts) * args.prompt_len,
            context_length=args.prompt_len + args.max_tokens + 1,
            # Passed only when turned off, so this file also drives engines that predate it.
            **({"cuda_graphs": False} if args.no_cuda_graphs else {}),
        ),
        lora=lora,
        slots=slots,
    )
    engine.start()
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=0
    )

    def experts(index: int) -> ExpertSet | None:
        if not adapters:
            return None
        name = f"adp_{index % adapters}"
        ref = ExpertRef(name, f"{name}-v1", 1, AdapterKind.SPECIALIST, "0" * 64, "bench")
        if not case.gated:
            return ExpertSet("bench", specialist=ref)
        shared = ExpertRef(
            GENERALIST, f"{GENERALIST}-v1", 1, AdapterKind.GENERALIST, "0" * 64, "bench"
        )
        return ExpertSet("bench", generalists=(shared,), specialist=ref)

    try:
        # Warm up with the measured requests themselves: kernels, the slots and,
        # on CUDA, a graph for every shape the measured run takes.
        warm = [
            engine.submit(GenerationRequest(f"w{i}", tuple(p), params, experts(i)))
            for i, p in enumerate(prompts)
        ]
        for handle in warm:
            handle.wait(600)
        synchronize(args.device)
        steps = engine.stats.steps
        started = time.perf_counter()
        handles = [
            engine.submit(GenerationRequest(f"r{i}", tuple(p), params, experts(i)))
            for i, p in enumerate(prompts)
        ]
        tokens = sum(h.wait(600).completion_tokens for h in handles)
        synchronize(args.device)
        elapsed = time.perf_counter() - started
        steps = engine.stats.steps - steps
        return EngineFigures(
            tokens_per_s=tokens / elapsed,
            step_ms=elapsed / max(steps, 1) * 1000,
            gpu_step_ms=gpu_step_ms(engine),
        )
    finally:
        engine.stop()


def gpu_step_ms(engine: Engine) -> float | None:
    """The GPU's time for the largest recorded decode step, its graph replayed back to back.

    Replays queue up with no host work between them, so this is the GPU's
    own time per step; None without recorded graphs (CPU, or eager).
    """
    graphs = getattr(getattr(engine, "_runner", None), "_graphs", None)
    recorded = getattr(graphs, "_graphs", None)
    if not recorded:
        return None
    key = max(recorded, key=lambda k: (k.rows, k.columns))
    graph = recorded[key].graph
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    for _ in range(3):
        graph.replay()
    start.record()
    for _ in range(20):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end)) / 20


def run_sequential(
    model: Any, prompts: list[list[int]], args: argparse.Namespace, adapters: int, scratch: Path
) -> float:
    """Output tokens per second of HF generate, one request at a time."""
    target = model
    if adapters:
        from peft import PeftModel

        from adapters.peft_interop import export_peft_dir

        shapes = BaseModelShapes.from_config(model.config.to_dict())
        for i in range(min(adapters, len(prompts))):
            lora = random_lora(
                shapes, base_model_id="bench", rank=args.rank, seed=i, target_modules=TARGET_MODULES
            )
            export_peft_dir(lora, scratch / f"a{i}")
            if i == 0:
                target = PeftModel.from_pretrained(model, scratch / "a0", adapter_name="a0")
            else:
                target.load_adapter(scratch / f"a{i}", adapter_name=f"a{i}")
    timings = []
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            if adapters:
                target.set_adapter(f"a{i % adapters}")
            ids = torch.tensor([prompt], device=args.device)
            synchronize(args.device)
            started = time.perf_counter()
            target.generate(
                ids,
                max_new_tokens=args.max_tokens,
                min_new_tokens=args.max_tokens,
                do_sample=False,
                pad_token_id=0,
            )
            synchronize(args.device)
            timings.append(time.perf_counter() - started)
    per_request: float = statistics.median(timings)
    return float(args.max_tokens) / per_request


def run_hf_static(model: Any, prompts: list[list[int]], args: argparse.Namespace) -> float:
    """Output tokens per second of HF generate over the whole batch, static cache, compiled."""
    model.generation_config.cache_implementation = "static"
    ids = torch.tensor(prompts, device=args.device)  # one length: no padding

    def generate() -> None:
        model.generate(
            ids,
            max_new_tokens=args.max_tokens,
            min_new_tokens=args.max_tokens,
            do_sample=False,
            pad_token_id=0,
        )

    with torch.inference_mode():
        for _ in range(2):  # compiles, then captures
            generate()
        synchronize(args.device)
        started = time.perf_counter()
        generate()
        synchronize(args.device)
    return float(len(prompts) * args.max_tokens) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("var/models/smollm2-135m-instruct"))
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--adapters", default="0,64")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--sequential", type=int, default=8)
    parser.add_argument("--hf-static", action="store_true")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly on CUDA")
    parser.add_argument("--kernels", choices=("auto", "torch", "triton"), default="auto")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    generator = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(100, 40000, (args.prompt_len,), generator=generator).tolist()
        for _ in range(args.requests)
    ]
    figures: list[dict[str, Any]] = []
    cases = [Case.parse(text) for text in args.adapters.split(",")]

    def fresh_model() -> Any:
        return load_model(
            args.model_dir,
            random_weights=args.random_weights,
            device=args.device,
            dtype=DTYPES[args.dtype],
        )

    sequential: dict[Case, float] = {}
    if args.sequential:
        for case in cases:
            if case.gated:
                continue  # peft has no gated mixture to compare with
            with tempfile.TemporaryDirectory() as scratch:
                sequential[case] = run_sequential(
                    fresh_model(), prompts[: args.sequential], args, case.adapters, Path(scratch)
                )
    measured: dict[Case, list[EngineFigures]] = {case: [] for case in cases}
    for round_ in range(args.rounds):
        # Every other round in reverse: no case always runs first or last.
        for case in cases if round_ % 2 == 0 else cases[::-1]:
            measured[case].append(run_engine(fresh_model(), tokenizer, prompts, args, case))
    base = next((c for c in cases if c.adapters == 0), None)
    base_tokens = (
        statistics.median(f.tokens_per_s for f in measured[base]) if base is not None else None
    )
    for case in cases:
        tokens_per_s = statistics.median(f.tokens_per_s for f in measured[case])
        step_ms = statistics.median(f.step_ms for f in measured[case])
        gpu = [f.gpu_step_ms for f in measured[case] if f.gpu_step_ms is not None]
        gpu_ms = statistics.median(gpu) if gpu else None
        row: dict[str, Any] = {
            "case": case.name,
            "adapters": case.adapters,
            "gated": case.gated,
            "requests": args.requests,
            "engine_tokens_per_s": tokens_per_s,
            "step_ms": step_ms,
            "gpu_step_ms": gpu_ms,
            "rounds": [f.tokens_per_s for f in measured[case]],
        }
        line = (
            f"{case.name:>5} adapters: engine {tokens_per_s:9.1f} tok/s, "
            f"{step_ms:6.2f} ms/step" + (f" (GPU {gpu_ms:5.2f} ms)" if gpu_ms is not None else "")
        )
        if base_tokens is not None and case != base:
            row["vs_base"] = tokens_per_s / base_tokens
            line += f", {tokens_per_s / base_tokens:4.2f}x base"
        if case in sequential:
            row["sequential_generate_tokens_per_s"] = sequential[case]
            row["speedup"] = tokens_per_s / sequential[case]
            line += (
                f", HF generate{' + peft' if case.adapters else ''} one by one "
                f"{sequential[case]:7.1f} tok/s, {tokens_per_s / sequential[case]:6.1f}x"
            )
        figures.append(row)
        print(
            line + f" ({args.requests} requests, {args.prompt_len} prompt + "
            f"{args.max_tokens} new tokens, {args.device} {args.dtype})",
            flush=True,
        )
    if args.hf_static:
        model = load_model(
            args.model_dir,
            random_weights=args.random_weights,
            device=args.device,
            dtype=DTYPES[args.dtype],
        )
        hf_static = run_hf_static(model, prompts, args)
        ratio = (
            "" if base_tokens is None else f", engine base / this {base_tokens / hf_static:.3f}x"
        )
        print(
            f"HF generate, batch {args.requests}, static cache + compile: "
            f"{hf_static:9.1f} tok/s{ratio}"
        )
        figures.append({"hf_static_batch_tokens_per_s": hf_static, "requests": args.requests})
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
