"""Fused multi-LoRA kernels in Triton: the gathers and both matmuls of a layer in two launches.

The torch path of ``MultiLoraLinear`` gathers every row's experts out of the
pool (a copy of ``E * R * (in + out)`` values per row), then runs two batched
matmuls and, with a gate, a separate scaling pass. Here the slot indices are
read inside the kernels, so each program reads its expert's weights straight
from the pool and nothing is copied:

    shrink:  h[b, l, e*R:(e+1)*R]  = A[slot[b, e]] @ x[b, l]                  (float32)
    expand:  y[b, l]              += sum_e w[b, l, e] * h[b, l, e*R:(e+1)*R] @ B[slot[b, e]]

with the pool's layout (``A [S, R, in]``, ``B [S, R, out]``, scale folded into
B, ranks below R zero-padded) and slot 0 meaning "no expert". One launch each
covers every row and every expert. For a decode step (one token a row) the
programs are one per row and expert (shrink) or per row and output block
(expand), with no matrix instruction to waste on a single token; for prefill
the rows are segments of L tokens and each program loads a weight tile once
per block of tokens and multiplies it on the tensor cores.

Invariants:
- An empty slot loads no weights: shrink writes zeros to its part of ``h``,
  expand skips it, and a row without any expert leaves its output untouched
  (so it equals the base output bit for bit).
- Accumulation is float32; ``h`` is stored in float32 (a prefill expand
  rounds it to the pool's dtype for the matrix unit, as the torch path's
  bmm output is); the expand adds in place into the base output in that
  output's own dtype (bf16, fp16 or fp32). A float32 pool multiplies in
  full float32 (no TF32).
- Every launch's shapes depend only on ``(B, L, E)`` and the pool, nothing is
  read back to the host, so the calls can be captured in a CUDA graph.
- There is no backward: the caller takes the torch path when autograd records.

Importing this module imports Triton; ``MultiLoraLinear`` imports it only when
the Triton path is chosen. ``TRITON_INTERPRET=1`` must be set before the import
for the kernels to run on CPU tensors (Triton reads it when it decorates them).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError(
        "the Triton multi-LoRA kernels need the 'triton' package (CUDA builds of torch "
        "bring it; else `pip install triton`), or use kernels='torch'"
    ) from error

# Triton's grid axes 1 and 2 hold at most this many programs; rows and experts sit there.
_MAX_GRID_YZ = 65535
# Rank is tiled in blocks of at most this: any pool rank fits, and the float32
# accumulator of a prefill tile stays in registers.
_MAX_BLOCK_R = 64


# Kernel parameters carry no Python annotations: Triton reads annotations as
# its own hints (tl.constexpr), and mypy cannot see through triton.jit.
@triton.jit  # type: ignore[untyped-decorator]
def _shrink_kernel(  # type: ignore[no-untyped-def]
    x_ptr,
    a_ptr,
    slots_ptr,
    h_ptr,
    tokens,
    in_features,
    rank,
    rank_blocks,
    x_stride_b,
    x_stride_l,
    x_stride_k,
    a_stride_s,
    a_stride_r,
    a_stride_k,
    slots_stride_b,
    slots_stride_e,
    h_stride_b,
    h_stride_l,
    h_stride_r,
    BLOCK_L: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    # int64 before any multiply: a prefill batch can pass 2**31 elements.
    row = tl.program_id(1).to(tl.int64)
    expert = tl.program_id(2)
    token_block = pid // rank_blocks
    rank_block = pid % rank_blocks
    offs_l = token_block * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_r = rank_block * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    l_mask = offs_l < tokens
    r_mask = offs_r < rank

    slot = tl.load(slots_ptr + row * slots_stride_b + expert * slots_stride_e).to(tl.int64)
    acc = tl.zeros((BLOCK_L, BLOCK_R), dtype=tl.float32)
    if slot != 0:
        x_ptrs = (
            x_ptr + row * x_stride_b + offs_l[:, None] * x_stride_l + offs_k[None, :] * x_stride_k
        )
        a_ptrs = (
            a_ptr + slot * a_stride_s + offs_r[:, None] * a_stride_r + offs_k[None, :] * a_stride_k
        )
        for k0 in range(0, in_features, BLOCK_K):
            k_mask = offs_k[None, :] < in_features - k0
            x = tl.load(x_ptrs, mask=l_mask[:, None] & k_mask, other=0.0)
            a = tl.load(a_ptrs, mask=r_mask[:, None] & k_mask, other=0.0)
            if BLOCK_L == 1:
                # One token: a matrix instruction would pad it to 16 rows; a
                # broadcast multiply and a row sum read A just the same.
                prod = x.to(tl.float32)[:, None, :] * a.to(tl.float32)[None, :, :]
                acc += tl.sum(prod, axis=2)
            else:
                acc = tl.dot(x, tl.trans(a), acc, input_precision=PRECISION)
            x_ptrs += BLOCK_K * x_stride_k
            a_ptrs += BLOCK_K * a_stride_k
    # Empty slots store zeros too: h is then A[slot] @ x for every position.
    h_ptrs = (
        h_ptr
        + row * h_stride_b
        + offs_l[:, None] * h_stride_l
        + (expert * rank + offs_r)[None, :] * h_stride_r
    )
    tl.store(h_ptrs, acc, mask=l_mask[:, None] & r_mask[None, :])


@triton.jit  # type: ignore[untyped-decorator]
def _expand_kernel(  # type: ignore[no-untyped-def]
    y_ptr,
    h_ptr,
    b_ptr,
    slots_ptr,
    w_ptr,
    tokens,
    out_features,
    rank,
    experts,
    y_stride_b,
    y_stride_l,
    y_stride_n,
    h_stride_b,
    h_stride_l,
    h_stride_r,
    b_stride_s,
    b_stride_r,
    b_stride_n,
    slots_stride_b,
    slots_stride_e,
    w_stride_b,
    w_stride_l,
    w_stride_e,
    HAS_WEIGHTS: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    PRECISION: tl.constexpr,
):
    token_block = tl.program_id(0)
    n_block = tl.program_id(1)
    row = tl.program_id(2).to(tl.int64)
    offs_l = token_block * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_n = n_block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    l_mask = offs_l < tokens
    n_mask = offs_n < out_features

    # Slots are >= 0, so their max is 0 exactly when the row has no expert:
    # then the base output is neither read nor written.
    offs_e = tl.arange(0, BLOCK_E)
    row_slots = tl.load(
        slots_ptr + row * slots_stride_b + offs_e * slots_stride_e,
        mask=offs_e < experts,
        other=0,
    )
    if tl.max(row_slots, axis=0) != 0:
        acc = tl.zeros((BLOCK_L, BLOCK_N), dtype=tl.float32)
        for expert in range(0, experts):
            slot = tl.load(slots_ptr + row * slots_stride_b + expert * slots_stride_e).to(tl.int64)
            if slot != 0:
                if HAS_WEIGHTS:
                    w = tl.load(
                        w_ptr + row * w_stride_b + offs_l * w_stride_l + expert * w_stride_e,
                        mask=l_mask,
                        other=0.0,
                    ).to(tl.float32)
                for r0 in range(0, rank, BLOCK_R):
                    r = r0 + offs_r
                    r_mask = r < rank
                    h = tl.load(
                        h_ptr
                        + row * h_stride_b
                        + offs_l[:, None] * h_stride_l
                        + (expert * rank + r)[None, :] * h_stride_r,
                        mask=l_mask[:, None] & r_mask[None, :],
                        other=0.0,
                    )
                    if HAS_WEIGHTS:
                        # The gate weight scales the expert's h before its
                        # matmul: one multiply per rank value, not per output.
                        h = h * w[:, None]
                    b = tl.load(
                        b_ptr
                        + slot * b_stride_s
                        + r[:, None] * b_stride_r
                        + offs_n[None, :] * b_stride_n,
                        mask=r_mask[:, None] & n_mask[None, :],
                        other=0.0,
                    )
                    if BLOCK_L == 1:
                        prod = h[:, :, None] * b.to(tl.float32)[None, :, :]
                        acc += tl.sum(prod, axis=1)
                    else:
                        # The matrix unit takes both operands in the pool's
                        # dtype (what the torch path's bmm does with h too).
                        acc = tl.dot(h.to(b.dtype), b, acc, input_precision=PRECISION)
        y_ptrs = (
            y_ptr + row * y_stride_b + offs_l[:, None] * y_stride_l + offs_n[None, :] * y_stride_n
        )
        mask = l_mask[:, None] & n_mask[None, :]
        y = tl.load(y_ptrs, mask=mask, other=0.0)
        tl.store(y_ptrs, (y.to(tl.float32) + acc).to(y.dtype), mask=mask)


def interpreted() -> bool:
    """Whether the kernels run under Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    # The decorator picked the interpreter or the compiler once, at import;
    # the kernel's own type is the one reliable record of which.
    return type(_shrink_kernel).__name__ == "InterpretedFunction"


def lora_shrink(x: torch.Tensor, lora_A: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``h [B, L, E*R]`` (float32): every row's tokens through each of its experts' A.

    ``x [B, L, in]`` in the pool's dtype, ``lora_A [S, R, in]``, ``slots [B, E]``
    (integer, 0 = empty). Position ``e``'s block of ``h`` is zero for an
    empty slot.
    """
    _check_slots(slots, x, lora_A)
    if x.dim() != 3 or lora_A.dim() != 3:
        raise ValueError(
            f"x must be [B, L, in] and lora_A [S, R, in], got {list(x.shape)} and "
            f"{list(lora_A.shape)}"
        )
    batch, tokens, in_features = x.shape
    _, rank, pool_in = lora_A.shape
    if in_features != pool_in:
        raise ValueError(f"x has {in_features} features but lora_A takes {pool_in}")
    if slots.shape[0] != batch:
        raise ValueError(f"slots has {slots.shape[0]} rows but x has {batch}")
    if x.dtype != lora_A.dtype:
        raise ValueError(f"x is {x.dtype} but the pool is {lora_A.dtype}: cast x first")
    experts = slots.shape[1]
    h = torch.empty(batch, tokens, experts * rank, device=x.device, dtype=torch.float32)
    if tokens == 0:
        return h

    block_r = min(_MAX_BLOCK_R, max(16, triton.next_power_of_2(rank)))
    rank_blocks = triton.cdiv(rank, block_r)
    if tokens == 1:
        # Decode: one program per row and expert streams A in wide K tiles.
        block_l, block_k = 1, min(256, max(16, triton.next_power_of_2(in_features)))
    else:
        block_l, block_k = _token_block(tokens), 64
    grid = (triton.cdiv(tokens, block_l) * rank_blocks, batch, experts)
    _shrink_kernel[grid](
        x,
        lora_A,
        slots,
        h,
        tokens,
        in_features,
        rank,
        rank_blocks,
        *x.stride(),
        *lora_A.stride(),
        *slots.stride(),
        *h.stride(),
        BLOCK_L=block_l,
        BLOCK_R=block_r,
        BLOCK_K=block_k,
        PRECISION=_precision(x.dtype),
    )
    return h


def lora_expand(
    y: torch.Tensor,
    h: torch.Tensor,
    lora_B: torch.Tensor,
    slots: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Add ``sum_e w[b, l, e] * h[b, l, e-th block] @ B[slot[b, e]]`` into ``y`` in place.

    ``y [B, L, out]`` (any float dtype), ``h [B, L, E*R]`` from ``lora_shrink``,
    ``lora_B [S, R, out]``, ``slots [B, E]``, ``weights [B, L, E]`` (float32
    preferred; None = every weight 1). Returns ``y``.
    """
    _check_slots(slots, y, lora_B)
    if y.dim() != 3 or h.dim() != 3 or lora_B.dim() != 3:
        raise ValueError(
            f"y must be [B, L, out], h [B, L, E*R] and lora_B [S, R, out], got "
            f"{list(y.shape)}, {list(h.shape)} and {list(lora_B.shape)}"
        )
    batch, tokens, out_features = y.shape
    _, rank, pool_out = lora_B.shape
    experts = slots.shape[1]
    if out_features != pool_out:
        raise ValueError(f"y has {out_features} features but lora_B gives {pool_out}")
    if slots.shape[0] != batch:
        raise ValueError(f"slots has {slots.shape[0]} rows but y has {batch}")
    if tuple(h.shape) != (batch, tokens, experts * rank):
        raise ValueError(
            f"h must be [B, L, E*R] = {[batch, tokens, experts * rank]}, got {list(h.shape)}"
        )
    if h.dtype != torch.float32 or h.device != y.device:
        raise ValueError(f"h must be float32 on {y.device}, got {h.dtype} on {h.device}")
    if not y.is_floating_point():
        raise ValueError(f"y must be floating point, got {y.dtype}")
    if weights is not None:
        if tuple(weights.shape) != (batch, tokens, experts):
            raise ValueError(
                f"weights must be [B, L, E] = {[batch, tokens, experts]}, got {list(weights.shape)}"
            )
        if not weights.is_floating_point() or weights.device != y.device:
            raise ValueError(
                f"weights must be floating point on {y.device}, got {weights.dtype} on "
                f"{weights.device}"
            )
    if tokens == 0:
        return y

    block_r = min(_MAX_BLOCK_R, max(16, triton.next_power_of_2(rank)))
    if tokens == 1:
        block_l, block_n = 1, 64
    else:
        block_l, block_n = _token_block(tokens), 64
    # Without weights the kernel never reads them; h stands in as a valid pointer.
    w = h if weights is None else weights
    w_strides = (0, 0, 0) if weights is None else weights.stride()
    grid = (triton.cdiv(tokens, block_l), triton.cdiv(out_features, block_n), batch)
    _expand_kernel[grid](
        y,
        h,
        lora_B,
        slots,
        w,
        tokens,
        out_features,
        rank,
        experts,
        *y.stride(),
        *h.stride(),
        *lora_B.stride(),
        *slots.stride(),
        *w_strides,
        HAS_WEIGHTS=weights is not None,
        BLOCK_L=block_l,
        BLOCK_N=block_n,
        BLOCK_R=block_r,
        BLOCK_E=triton.next_power_of_2(experts),
        PRECISION=_precision(lora_B.dtype),
    )
    return y


def _check_slots(slots: torch.Tensor, data: torch.Tensor, pool: torch.Tensor) -> None:
    """Checks the launch needs that both kernels share; reads only metadata (no sync)."""
    if slots.dim() != 2 or slots.shape[1] == 0:
        raise ValueError(f"slots must be [B, E] with E >= 1, got {list(slots.shape)}")
    if slots.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"slots must hold int32 or int64 slot indices, got {slots.dtype}")
    if not (slots.device == data.device == pool.device):
        raise ValueError(
            f"slots ({slots.device}), activations ({data.device}) and pool ({pool.device}) "
            "must share one device"
        )
    if not pool.is_floating_point():
        raise ValueError(f"the pool must be floating point, got {pool.dtype}")
    if slots.shape[0] > _MAX_GRID_YZ or slots.shape[1] > _MAX_GRID_YZ:
        raise ValueError(
            f"at most {_MAX_GRID_YZ} rows and experts a launch, got {list(slots.shape)}"
        )


def _token_block(tokens: int) -> int:
    """Tokens of one row a prefill program covers: enough to reuse each weight tile."""
    # 16 is the smallest tile the matrix unit takes.
    return 16 if tokens <= 16 else 32 if tokens <= 32 else 64


def _precision(dtype: torch.dtype) -> str:
    # TF32 would round a float32 pool's inputs to 10 bits of mantissa, which the
    # torch path (cuBLAS without allow_tf32) does not; 16-bit inputs ignore it.
    return "ieee" if dtype == torch.float32 else "tf32"
