"""How much memory a GGUF model takes once llama.cpp (through xllamacpp) has it loaded.

A pure function of the GGUF header and the engine settings, so a scheduler can decide
where a deployment fits before it loads anything. The model follows what llama.cpp's
CPU backend allocates (``src/llama-context.cpp``, ``src/llama-kv-cache-iswa.cpp``,
``tools/server``) and was calibrated against the resident memory (RSS) of real loads:

weights
    llama.cpp mmaps the file (with ``MAP_POPULATE``), so every tensor byte is resident
    once the model is loaded. On top of that the CPU backend repacks Q4_0, Q4_K and
    IQ4_NL matrices into interleaved copies ("CPU_REPACK" buffer) in anonymous memory,
    while the file pages of the originals stay mapped: those tensors count twice.
KV cache
    Allocated and zeroed at load. ``ctx_size`` (0: the model's ``context_length``) is
    padded to 256; unless ``kv_unified`` it is split into one stream per slot, each
    padded to 256 cells. Sliding-window layers get their own, smaller cache of
    ``pad256(min(ctx_per_slot, n_swa * (slots if unified else 1) + n_ubatch))`` cells
    per stream (llama.cpp's server default is ``swa_full = false``).
compute
    The graph buffer reserved for a worst-case micro-batch of ``n_ubatch`` tokens: the
    larger of the FFN phase (about 3 * n_ff + 5 * n_embd floats per token live at once)
    and the output phase (the logits of one output per slot, n_vocab floats each, plus
    the same 5 * n_embd per token), plus the f16 attention masks (n_ubatch x cells of a
    stream, one per KV cache). Flash attention is on (llama.cpp's ``auto`` picks it on
    CPU), so no n_ubatch x n_ctx score matrix is counted. Then the context's output
    buffer (n_vocab floats per slot) and each slot's sampler (its n_vocab-entry
    candidate array and copies: 16 bytes per entry measured), made on a slot's first
    request and kept. The graph buffer is touched only by the first full micro-batch
    and the samplers by requests, so an idle engine shows less than this.
runtime
    What loading costs besides buffers: the tokenizer's tables (id -> token, token ->
    id, token -> piece cache; measured 205-240 bytes per vocabulary entry, including the
    loader's freed copies that glibc keeps resident), a few MiB of fixed state, and
    about 1 MiB per slot for the thread that waits on each request (stack, malloc
    arena, the request's JSON).
prompt cache
    The server's host-side prompt cache (``cache_ram_mib``) starts empty: an entry (a
    copy of one slot's KV state) is added when an idle slot with content is reused, and
    the oldest are dropped above the limit, though it always keeps one. So it is not
    part of the loaded footprint; it is reported as what it can grow to: the limit
    plus one slot's KV state.

Not modelled: the fit step's context shrinking when memory is short (this assumes it
fits), the server's SWA context checkpoints (one SWA state per 8192 tokens of a slot),
MoE expert routing buffers beyond ``expert_used_count * expert_feed_forward_length``,
and the separate n_ubatch x n_kv x n_head score matrix of backends without flash
attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmos.registry.gguf import ArraySummary, GGUFInfo
from llmos.registry.metadata import swa_layout

MiB = 1 << 20
PAD = 256
"""llama.cpp pads the context, each stream and the SWA cache to 256 cells."""

# ggml type id -> (elements per block, bytes per block); ggml/include/ggml.h, ggml-common.h
GGML_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17)}

KV_TYPES: dict[str, tuple[int, int]] = {
    "f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18),
    "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24), "iq4_nl": (32, 18)}
"""The cache types llama.cpp accepts for ``--cache-type-k/-v``."""

REPACKED_TYPES = frozenset({2, 12, 20})  # Q4_0, Q4_K, IQ4_NL: repacked by ggml-cpu

"""Architectures whose every n-th layer is global and the rest sliding-window, as
llama-model.cpp sets them (``hparams.set_swa_pattern``) when the file does not say."""

FFN_FLOATS_PER_FF = 3  # gate, up and their product live at once
RESIDUAL_FLOATS_PER_EMBD = 5  # residual stream, norms and inputs live throughout
SAMPLER_BYTES_PER_TOKEN = 16  # llama_token_data (id, logit, p) and the chain's copies
RUNTIME_BYTES_PER_TOKEN = 240  # tokenizer tables, per vocabulary entry
RUNTIME_FIXED_BYTES = 4 * MiB
RUNTIME_BYTES_PER_SLOT = 1 * MiB  # the thread a request blocks


@dataclass(frozen=True)
class ResourceEstimate:
    """Bytes of host memory a loaded model takes, and the settings they are for."""

    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    runtime_bytes: int
    prompt_cache_bytes: int
    """What the prompt cache can grow to; 0 right after loading."""
    slots: int
    ctx_size: int
    kv_type: str
    kv_unified: bool
    ctx_per_slot: int
    """Cells one slot gets after llama.cpp's padding (ctx_size 0: the model's)."""

    @property
    def loaded_bytes(self) -> int:
        """The engine loaded and busy in every slot, before its prompt cache fills."""
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes + self.runtime_bytes

    @property
    def total_bytes(self) -> int:
        """All it can hold: the loaded footprint plus a full prompt cache."""
        return self.loaded_bytes + self.prompt_cache_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "compute_bytes": self.compute_bytes,
            "runtime_bytes": self.runtime_bytes,
            "prompt_cache_bytes": self.prompt_cache_bytes,
            "loaded_bytes": self.loaded_bytes,
            "total_bytes": self.total_bytes,
            "slots": self.slots,
            "ctx_size": self.ctx_size,
            "ctx_per_slot": self.ctx_per_slot,
            "kv_type": self.kv_type,
            "kv_unified": self.kv_unified,
        }


def estimate_resources(
    info: GGUFInfo,
    *,
    weights_bytes: int,
    slots: int,
    ctx_size: int,
    kv_type: str = "f16",
    kv_unified: bool = False,
    cache_ram_mib: int = 256,
    n_batch: int = 2048,
    n_ubatch: int = 512,
    swa_full: bool = False,
    repack: bool = True,
) -> ResourceEstimate:
    """Estimate what llama.cpp will allocate for this model with these settings.

    ``weights_bytes`` is the size of the weights file; the tensor data the header
    describes is counted instead when every tensor type is known. ``n_batch`` and
    ``n_ubatch`` default to llama.cpp server's 2048 and 512; ``repack`` says whether
    the CPU backend repacks Q4 matrices (it does on x86 with AVX2 and on ARM).
    """
    if slots < 1:
        raise ValueError("slots must be at least 1")
    if ctx_size < 0 or cache_ram_mib < 0 or weights_bytes < 0:
        raise ValueError("ctx_size, cache_ram_mib and weights_bytes cannot be negative")
    if n_batch < 1 or n_ubatch < 1:
        raise ValueError("n_batch and n_ubatch must be at least 1")
    kv_block = KV_TYPES.get(kv_type)
    if kv_block is None:
        raise ValueError(f"unknown KV cache type {kv_type!r}; known: {', '.join(KV_TYPES)}")

    n_layer = _int(info.arch("block_count"), 0)
    n_embd = _int(info.arch("embedding_length"), 0)
    n_vocab = _vocab_size(info)

    # llama_context: the micro-batch fits the context; the total context is padded,
    # then split into streams of padded size (4096 if the file has no context length)
    requested = ctx_size or _int(info.arch("context_length"), 0) or 4096
    tokens = min(n_ubatch, n_batch, requested)  # what the graph is reserved for
    n_ctx = _pad(requested)
    if kv_unified:
        streams, per_stream = 1, n_ctx
    else:
        streams, per_stream = slots, _pad(max(n_ctx // slots, 1))

    # llama_kv_cache_iswa: a full cache for global layers, a window for SWA layers
    n_swa = _int(info.arch("attention.sliding_window"), 0)
    swa = swa_layout(info, n_layer) if n_swa > 0 else [False] * n_layer
    swa_cells = per_stream if swa_full else _pad(
        min(per_stream, n_swa * (slots if kv_unified else 1) + tokens))
    kv_cache = 0
    for layer, is_swa in enumerate(swa):
        row = _kv_heads(info, layer) * (_key_length(info) + _value_length(info))
        kv_cache += streams * (swa_cells if is_swa else per_stream) * _row_bytes(row, kv_block)

    # the graph buffer, the output buffer and the samplers
    n_ff = _feed_forward(info)
    layer_phase = 4 * tokens * (FFN_FLOATS_PER_FF * n_ff + RESIDUAL_FLOATS_PER_EMBD * n_embd)
    output_phase = 4 * (slots * n_vocab + RESIDUAL_FLOATS_PER_EMBD * n_embd * tokens)
    masks = 2 * tokens * ((0 if all(swa) else per_stream) + (swa_cells if any(swa) else 0))
    compute = (max(layer_phase, output_phase) + masks + 4 * slots * n_vocab
               + SAMPLER_BYTES_PER_TOKEN * slots * n_vocab)

    weights = _tensor_bytes(info) or weights_bytes
    if repack:
        weights += _repacked_bytes(info)
    runtime = (RUNTIME_FIXED_BYTES + RUNTIME_BYTES_PER_TOKEN * n_vocab
               + RUNTIME_BYTES_PER_SLOT * slots)
    prompt_cache = cache_ram_mib * MiB + kv_cache // streams if cache_ram_mib else 0

    return ResourceEstimate(
        weights_bytes=weights, kv_cache_bytes=kv_cache, compute_bytes=compute,
        runtime_bytes=runtime, prompt_cache_bytes=prompt_cache, slots=slots,
        ctx_size=ctx_size, kv_type=kv_type, kv_unified=kv_unified, ctx_per_slot=per_stream)


def _pad(n: int) -> int:
    return -(-n // PAD) * PAD


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return default
    return value


def _vocab_size(info: GGUFInfo) -> int:
    tokens = info.get("tokenizer.ggml.tokens")
    if isinstance(tokens, ArraySummary):
        return tokens.length
    if isinstance(tokens, list):
        return len(tokens)
    for tensor in info.tensors:
        if tensor.name == "token_embd.weight" and len(tensor.shape) == 2:
            return tensor.shape[1]
    return 0


def _per_layer(value: Any, layer: int, default: int) -> int:
    """A hyperparameter that may be one number or one per layer."""
    if isinstance(value, list):
        return _int(value[layer], default) if layer < len(value) else default
    return _int(value, default)


def _head_count(info: GGUFInfo) -> int:
    value = info.arch("attention.head_count")
    if isinstance(value, list):
        return max((_int(v, 0) for v in value), default=0)
    return _int(value, 0)


def _kv_heads(info: GGUFInfo, layer: int) -> int:
    heads = _head_count(info)
    return _per_layer(info.arch("attention.head_count_kv"), layer, heads)


def _head_dim(info: GGUFInfo) -> int:
    heads = _head_count(info)
    return _int(info.arch("embedding_length"), 0) // heads if heads else 0


def _key_length(info: GGUFInfo) -> int:
    return _int(info.arch("attention.key_length"), 0) or _head_dim(info)


def _value_length(info: GGUFInfo) -> int:
    return _int(info.arch("attention.value_length"), 0) or _head_dim(info)


def _feed_forward(info: GGUFInfo) -> int:
    value = info.arch("feed_forward_length")
    dense = max((_int(v, 0) for v in value), default=0) if isinstance(value, list) \
        else _int(value, 0)
    experts = (_int(info.arch("expert_used_count"), 0)
               * _int(info.arch("expert_feed_forward_length"), 0))
    return max(dense, experts)


def _row_bytes(elements: int, block: tuple[int, int]) -> int:
    per_block, size = block
    return -(-elements // per_block) * size


def _tensor_bytes(info: GGUFInfo) -> int:
    """The tensor data the header describes, or 0 when a tensor type is unknown."""
    total = 0
    for tensor in info.tensors:
        block = GGML_TYPES.get(tensor.ggml_type)
        if block is None:
            return 0
        rows = tensor.elements // tensor.shape[0]
        total += rows * _row_bytes(tensor.shape[0], block)
    return total


def _repacked_bytes(info: GGUFInfo) -> int:
    """Matrices ggml-cpu copies into its repacked layout (rows a multiple of 8)."""
    total = 0
    for tensor in info.tensors:
        if (tensor.ggml_type in REPACKED_TYPES and len(tensor.shape) == 2
                and tensor.shape[1] % 8 == 0 and tensor.name != "token_embd.weight"):
            total += tensor.shape[1] * _row_bytes(tensor.shape[0], GGML_TYPES[tensor.ggml_type])
    return total


def estimator(*, slots: int, ctx_size: int, kv_unified: bool = False,
              cache_ram_mib: int = 256, kv_type: str = "f16", batch_size: int = 512
              ) -> Callable[[GGUFInfo, int], dict[str, Any]]:
    """The registry's hook: the estimate of a new version under these engine settings."""
    def estimate(info: GGUFInfo, weights_bytes: int) -> dict[str, Any]:
        return estimate_resources(info, weights_bytes=weights_bytes, slots=slots,
                                  ctx_size=ctx_size, kv_unified=kv_unified,
                                  cache_ram_mib=cache_ram_mib, kv_type=kv_type,
                                  n_batch=batch_size, n_ubatch=batch_size).to_dict()
    return estimate
