"""Fine-tune training throughput and peak memory: QLoRA against plain LoRA, peft against Tailor.

    python -m benchmarks.finetune_throughput [--config-dir var/models/smollm2-135m-instruct]
        [--device cpu|cuda] [--batch N] [--seq N] [--steps N] [--warmup N]
        [--variants peft-lora-full,peft-qlora-nf4,tailor-full,tailor-nf4,tailor-nf4-gated]
        [--threads N] [--in-process] [--json-out OUT]

The base is the architecture of ``--config-dir`` (a model directory, a directory
holding only its ``config.json``, or the ``config.json`` file itself) with
RANDOM weights: throughput and memory do not depend on the weights' values, so
a GPU host needs the config alone. Full-precision bases are bf16 on CUDA and
float32 on CPU; NF4 bases are that model saved and reloaded through
bitsandbytes (NF4, double quantisation, computing in that dtype) and passed
through ``peft.prepare_model_for_kbit_training`` without gradient
checkpointing, exactly as ``finetune.base_loading`` does. The KV cache is off
in every variant. Every variant trains a rank-16 (alpha 32) LoRA on all seven
linear modules on random token batches of ``[batch, seq]`` (every token real,
labels = input ids):

- ``peft-lora-full``, ``peft-qlora-nf4``: plain peft (``get_peft_model``) and a
  bare AdamW loop (forward with labels, backward, step, zero_grad);
- ``tailor-full``, ``tailor-nf4``: the worker's own path,
  ``finetune.experts.attach_experts`` then ``finetune.training.train_experts``
  (gradient clipping, LR schedule and batch building included);
- ``tailor-nf4-gated``: as ``tailor-nf4`` beside one frozen random
  generalist, so the CoMiGS gate runs and every expert step is followed by a
  gate step on a validation batch of the same shape. Its tokens/s counts the
  expert steps' tokens only, over the time of an expert step plus its gate step.

Each variant runs ``--warmup`` steps, then ``--steps`` timed ones (CUDA is
synchronised around every step); tokens/s is ``batch * seq`` over the median
step time. Peak memory is, on CUDA, ``torch.cuda.max_memory_allocated`` with
the peak reset once the model is built (weights, adapters, optimizer state,
activations); on CPU, the peak RSS while training (the kernel's high-water mark,
reset once the model is built) less the process's RSS before the model was built.
Every variant runs in its own fresh process (unless ``--in-process``), so no
variant's memory or allocator state leaks into the next. Ratios compare with
the same run's peft variants and, on CUDA, with the figures measured elsewhere
with plain peft on an H200 at batch 16 x 512: 24,612 tokens/s on an NF4 base,
36,179 on bf16 (issue #6).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.util
import itertools
import json
import multiprocessing
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from models.device import AUTO, pick_device

DEFAULT_CONFIG_DIR = (
    Path(__file__).resolve().parents[1] / "var" / "models" / "smollm2-135m-instruct"
)
RANK = 16
ALPHA = 32.0
LEARNING_RATE = 1e-4
# Plain peft on an H200, SmolLM2-135M architecture, batch 16 x 512 (issue #6).
ANCHOR_BATCH, ANCHOR_SEQ = 16, 512
ANCHORS = {"nf4": 24_612.0, "full": 36_179.0}


@dataclass(frozen=True)
class Variant:
    name: str
    trainer: Literal["peft", "tailor"]
    nf4: bool
    gated: bool = False

    @property
    def anchor(self) -> float:
        return ANCHORS["nf4" if self.nf4 else "full"]


VARIANTS = {
    v.name: v
    for v in (
        Variant("peft-lora-full", "peft", nf4=False),
        Variant("peft-qlora-nf4", "peft", nf4=True),
        Variant("tailor-full", "tailor", nf4=False),
        Variant("tailor-nf4", "tailor", nf4=True),
        Variant("tailor-nf4-gated", "tailor", nf4=True, gated=True),
    )
}


@dataclass(frozen=True)
class Options:
    config_path: str
    device: str
    batch: int
    seq: int
    steps: int
    warmup: int
    threads: int | None


# --- the base model ---------------------------------------------------------------------------


def load_config(path: Path) -> Any:
    """The model config from a model directory, a config-only directory, or a config.json."""
    from transformers import AutoConfig

    if path.is_dir():
        return AutoConfig.from_pretrained(path)
    fields: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def build_base(config: Any, *, nf4: bool, device: torch.device) -> Any:
    """A frozen training base of random weights, as ``finetune.base_loading`` would load it."""
    from transformers import AutoModelForCausalLM

    from finetune.base_loading import compute_dtype, nf4_config

    dtype = compute_dtype(device)
    torch.manual_seed(0)
    model: Any = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
    if nf4:
        from peft import prepare_model_for_kbit_training

        # bitsandbytes quantises while loading: save the random model, load it back in NF4.
        with tempfile.TemporaryDirectory(prefix="tailor-bench-") as scratch:
            model.save_pretrained(scratch)
            del model
            model = AutoModelForCausalLM.from_pretrained(
                scratch,
                quantization_config=nf4_config(dtype),
                dtype=dtype,
                device_map={"": str(device)},
            )
            # On a CPU the unquantised tensors (embeddings, norms) may still lie in
            # the saved file's memory map, which keeps the whole file resident:
            # give them memory of their own so only the model is counted.
            with torch.no_grad():
                for parameter in model.parameters():
                    if parameter.device.type == "cpu" and parameter.dtype.is_floating_point:
                        parameter.data = parameter.data.clone()
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=False
        )
    else:
        model.to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.config.use_cache = False
    model.train()
    return model


def random_generalist(config: Any, *, seed: int = 1) -> Any:
    """A frozen generalist of random weights, all seven modules, under peft's tensor names."""
    from adapters.base_shapes import BaseModelShapes
    from adapters.lora_weights import TARGET_MODULES
    from tests.adapter_factory import random_lora

    return random_lora(
        BaseModelShapes.from_config(config.to_dict()),
        base_model_id="bench",
        rank=RANK,
        alpha=ALPHA,
        target_modules=TARGET_MODULES,
        seed=seed,
    )


# --- measuring ----------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class MemoryMeter:
    """Peak memory from the moment the model is built: CUDA allocations, or CPU RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.note = "cuda max_memory_allocated" if device.type == "cuda" else ""
        # RSS before any model exists: CPU figures are above this.
        self.baseline_kib = self._rss_kib()

    @staticmethod
    def _rss_kib() -> int:
        found = _status_kib("VmRSS")
        if found is not None:
            return found
        try:
            import psutil

            return int(psutil.Process().memory_info().rss) // 1024
        except ImportError:
            return 0

    def start(self) -> None:
        """Called once the model is built: the peak starts from what is resident now."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        # Give freed build-time memory (an unquantised copy) back to the system.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:  # "5" resets the process's RSS high-water mark (VmHWM), Linux 4.0+
            with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
                clear.write("5")
            self.note = "peak RSS while training less RSS before the model was built"
        except OSError:
            self.note = "process peak RSS (ru_maxrss, includes model building) less RSS before it"

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        peak = _status_kib("VmHWM") if self.note.startswith("peak RSS") else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return (peak - self.baseline_kib) / 1024


def random_batches(vocab: int, count: int, batch: int, seq: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (batch, seq), generator=generator) for _ in range(count)]


def time_peft(model: Any, batches: list[torch.Tensor], device: torch.device) -> list[float]:
    """Seconds of each step of a bare AdamW loop over plain peft's LoRA."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE)
    on_device = [ids.to(device) for ids in batches]
    times: list[float] = []
    for ids in on_device:
        synchronize(device)
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def time_tailor(
    experts: Any, batches: list[torch.Tensor], validation: list[torch.Tensor], pad_id: int
) -> tuple[list[float], int]:
    """Seconds between ``train_experts``'s progress reports (an expert step and its
    gate step, if any), and how many gate steps ran."""
    from finetune.conversations import TimeSplit, TokenizedConversation
    from finetune.training import train_experts

    def conversations(tensors: list[torch.Tensor]) -> list[TokenizedConversation]:
        return [
            TokenizedConversation(input_ids=row, labels=list(row))
            for ids in tensors
            for row in ids.tolist()
        ]

    device: torch.device = next(p.device for p in experts.model.parameters())

    def clock() -> float:
        synchronize(device)
        return time.perf_counter()

    marks = [clock()]
    report = train_experts(
        experts,
        TimeSplit(conversations(batches), conversations(validation), []),
        pad_id=pad_id,
        on_progress=lambda _: marks.append(clock()),
        clock=clock,
    )
    if report.steps != len(batches):
        raise RuntimeError(f"train_experts ran {report.steps} steps, {len(batches)} expected")
    return [after - before for before, after in itertools.pairwise(marks)], report.gate_steps


def run_variant(name: str, options: Options) -> dict[str, Any]:
    """One variant, start to end: build, train, time, measure. Plain data out."""
    variant = VARIANTS[name]
    device = torch.device(options.device)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    import peft  # noqa: F401  # imported before the memory baseline
    import transformers

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    if variant.nf4:
        import bitsandbytes  # noqa: F401
    from finetune.config import TrainingConfig
    from finetune.experts import attach_experts

    config = load_config(Path(options.config_path))
    meter = MemoryMeter(device)
    base = build_base(config, nf4=variant.nf4, device=device)
    batches = random_batches(
        config.vocab_size, options.warmup + options.steps, options.batch, options.seq
    )
    gate_steps = 0
    if variant.trainer == "peft":
        from peft import LoraConfig, get_peft_model

        from adapters.lora_weights import TARGET_MODULES

        model = get_peft_model(
            base,
            LoraConfig(
                r=RANK,
                lora_alpha=int(ALPHA),
                target_modules=list(TARGET_MODULES),
                lora_dropout=0.0,
                bias="none",
                task_type="CAUSAL_LM",
            ),
        )
        model.train()
        meter.start()
        times = time_peft(model, batches, device)
    else:
        training = TrainingConfig(
            rank=RANK,
            alpha=ALPHA,
            epochs=1,
            learning_rate=LEARNING_RATE,
            batch_size=options.batch,
            quantization="nf4" if variant.nf4 else "none",
        )
        generalists = [("generalist", random_generalist(config))] if variant.gated else []
        experts = attach_experts(base, training, base_model_id="bench", generalists=generalists)
        validation = random_batches(config.vocab_size, 1, options.batch, options.seq)
        pad_id = int(config.pad_token_id if config.pad_token_id is not None else 0)
        meter.start()
        times, gate_steps = time_tailor(experts, batches, validation, pad_id)
    measured = times[options.warmup :]
    median = statistics.median(measured)
    return {
        "variant": name,
        "tokens_per_s": options.batch * options.seq / median,
        "median_step_ms": median * 1e3,
        "step_ms": [t * 1e3 for t in times],
        "warmup": options.warmup,
        "peak_memory_mib": meter.peak_mib(),
        "memory_measure": meter.note,
        "gate_steps": gate_steps,
        "tokens_counted": "expert steps only" if variant.gated else "every step",
        "attention": str(getattr(base.config, "_attn_implementation", "?")),
    }


# --- the run ------------------------------------------------------------------------------------


def skip_reason(variant: Variant) -> str | None:
    if variant.nf4 and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    return None


def run_isolated(name: str, options: Options) -> dict[str, Any]:
    """The variant in a fresh spawned process: its own allocator, CUDA context and peak."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(run_variant, name, options).result()


def ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def print_table(
    results: list[dict[str, Any]], skipped: dict[str, str], device: torch.device
) -> None:
    by_name = {r["variant"]: r for r in results}
    lora = by_name.get("peft-lora-full", {}).get("tokens_per_s")
    qlora = by_name.get("peft-qlora-nf4", {}).get("tokens_per_s")
    cuda = device.type == "cuda"
    header = (
        f"{'variant':<18} {'tokens/s':>10} {'median ms':>10} {'peak MiB':>9} "
        f"{'vs peft-lora':>12} {'vs peft-qlora':>13}"
    )
    print(header + (f" {'vs anchor':>10}" if cuda else ""))
    for name, variant in VARIANTS.items():
        if name in skipped:
            print(f"{name:<18} skipped: {skipped[name]}")
            continue
        if name not in by_name:
            continue
        row = by_name[name]
        tps = row["tokens_per_s"]
        line = (
            f"{name + ('*' if variant.gated else ''):<18} {tps:>10,.0f} "
            f"{row['median_step_ms']:>10.1f} {row['peak_memory_mib']:>9,.0f} "
            f"{ratio(tps, lora):>12} {ratio(tps, qlora):>13}"
        )
        if cuda:
            line += f" {ratio(tps, variant.anchor):>10}"
        print(line)
    if any(VARIANTS[r["variant"]].gated for r in results):
        print(
            "* gated: tokens/s counts expert-step tokens only; a step's time is an expert "
            "step plus its gate step on a validation batch of the same shape"
        )
    if results:
        print(f"peak memory: {results[0]['memory_measure']}")
    if cuda:
        print(
            f"anchors (plain peft, H200, batch {ANCHOR_BATCH} x {ANCHOR_SEQ}): "
            f"NF4 {ANCHORS['nf4']:,.0f} tokens/s, bf16 {ANCHORS['full']:,.0f}"
        )


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=DEFAULT_CONFIG_DIR,
        help="model directory, directory with only config.json, or a config.json",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--batch", type=int, default=None, help="16 on cuda, 4 on cpu")
    parser.add_argument("--seq", type=int, default=None, help="512 on cuda, 256 on cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps: 20 cuda, 5 cpu")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first: 3 cuda, 1 cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every variant in this process (CPU memory figures then mix variants)",
    )
    parser.add_argument("--json-out", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()

    device = pick_device(args.device or AUTO)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    cuda = device.type == "cuda"
    batch = args.batch or (ANCHOR_BATCH if cuda else 4)
    seq = args.seq or (ANCHOR_SEQ if cuda else 256)
    steps = args.steps if args.steps is not None else (20 if cuda else 5)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if steps < 1 or warmup < 0 or batch < 1 or seq < 2:
        parser.error("--steps, --batch must be positive, --seq at least 2, --warmup >= 0")
    if not args.config_dir.exists():
        parser.error(f"{args.config_dir} does not exist")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    options = Options(
        config_path=str(args.config_dir),
        device=str(device),
        batch=batch,
        seq=seq,
        steps=steps,
        warmup=warmup,
        threads=args.threads,
    )

    import peft
    import transformers

    bnb = importlib.util.find_spec("bitsandbytes")
    print(
        f"{describe_device(device)}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, peft {peft.__version__}, bitsandbytes "
        f"{'present' if bnb else 'absent'}; random-weight {args.config_dir}; batch {batch} x "
        f"seq {seq}, {warmup} warm-up + {steps} timed steps, LoRA r{RANK} "
        f"alpha {ALPHA:g} on all 7 modules; "
        f"{'in process' if args.in_process else 'one process per variant'}",
        flush=True,
    )
    run: Callable[[str, Options], dict[str, Any]] = run_variant if args.in_process else run_isolated
    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    started = time.perf_counter()
    for name in names:
        reason = skip_reason(VARIANTS[name])
        if reason is not None:
            skipped[name] = reason
            print(f"  {name}: skipped, {reason}", flush=True)
            continue
        variant_started = time.perf_counter()
        try:
            result = run(name, options)
        except Exception as error:  # one variant failing must not lose the others
            skipped[name] = f"failed: {type(error).__name__}: {error}"
            print(f"  {name}: {skipped[name]}", flush=True)
            continue
        finally:
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        results.append(result)
        print(
            f"  {name}: {result['tokens_per_s']:,.0f} tokens/s, median step "
            f"{result['median_step_ms']:.1f} ms, peak {result['peak_memory_mib']:,.0f} MiB "
            f"({time.perf_counter() - variant_started:.0f} s)",
            flush=True,
        )
    print()
    print_table(results, skipped, device)
    if cuda and (batch, seq) != (ANCHOR_BATCH, ANCHOR_SEQ):
        print(f"this run is batch {batch} x {seq}: the anchor ratios are indicative only")
    print(f"wall time {time.perf_counter() - started:.0f} s")
    if args.json_out is not None:
        args.json_out.write_text(
            json.dumps(
                {
                    "device": describe_device(device),
                    "options": asdict(options),
                    "versions": {
                        "torch": torch.__version__,
                        "transformers": transformers.__version__,
                        "peft": peft.__version__,
                        "python": sys.version.split()[0],
                    },
                    "anchors_tokens_per_s": {"batch": ANCHOR_BATCH, "seq": ANCHOR_SEQ, **ANCHORS},
                    "results": results,
                    "skipped": skipped,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
