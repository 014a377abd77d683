"""The resource estimate: its arithmetic on synthetic headers, and the real engine's memory.

The real check loads the Gemma 3 270M file in a subprocess (so its RSS is its own),
fills every slot with a concurrent request whose prompts add up to more than one
micro-batch (so the graph buffer and every slot's sampler are touched, as under load),
and compares RSS then, minus the RSS before loading (taken after importing xllamacpp,
whose code pages are the library's and not the model's), with ``loaded_bytes``: the
footprint a scheduler must find room for. The prompt cache is left out of that
comparison because it starts empty; the test checks that it does.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmos.engines.base import EngineConfig
from llmos.registry.estimate import MiB, ResourceEstimate, estimate_resources
from llmos.registry.gguf import ArraySummary, GGUFInfo, TensorInfo, parse_gguf, read_gguf
from tests.model import gemma_path
from tests.registry.test_gguf import make_gguf


def gemma_like(*, sliding_window: int | None = 512, **overrides: Any) -> GGUFInfo:
    """Gemma 3 270M's hyperparameters, without its tensors."""
    metadata: dict[str, Any] = {
        "general.architecture": "gemma3", "gemma3.context_length": 32768,
        "gemma3.embedding_length": 640, "gemma3.block_count": 18,
        "gemma3.feed_forward_length": 2048, "gemma3.attention.head_count": 4,
        "gemma3.attention.head_count_kv": 1, "gemma3.attention.key_length": 256,
        "gemma3.attention.value_length": 256,
        "tokenizer.ggml.tokens": ArraySummary(8, 262144)}
    if sliding_window is not None:
        metadata["gemma3.attention.sliding_window"] = sliding_window
    metadata.update({f"gemma3.{k}": v for k, v in overrides.items()})
    return GGUFInfo(version=3, metadata=metadata)


def estimate(info: GGUFInfo | None = None, **settings: Any) -> ResourceEstimate:
    settings = {"weights_bytes": 0, "slots": 1, "ctx_size": 8192} | settings
    return estimate_resources(info or gemma_like(), **settings)


CELL = 1 * (256 + 256) * 2  # one KV head, K and V of 256 each, f16


def test_sliding_window_layers_get_a_window_not_the_context() -> None:
    windowed = estimate(ctx_size=8192)
    # 3 global layers hold 8192 cells; 15 SWA layers pad256(min(8192, 512 + 512)) = 1024
    assert windowed.kv_cache_bytes == (3 * 8192 + 15 * 1024) * CELL
    full = estimate(ctx_size=8192, swa_full=True)
    assert full.kv_cache_bytes == 18 * 8192 * CELL
    no_swa = estimate(gemma_like(sliding_window=None), ctx_size=8192)
    assert no_swa.kv_cache_bytes == full.kv_cache_bytes
    # a window wider than the context saves nothing
    assert estimate(ctx_size=512).kv_cache_bytes == 18 * 512 * CELL


def test_the_context_is_split_across_slots_and_padded() -> None:
    split = estimate(slots=4, ctx_size=1024)
    assert split.ctx_per_slot == 256
    assert split.kv_cache_bytes == 4 * 18 * 256 * CELL
    odd = estimate(slots=3, ctx_size=1000)  # 1024 // 3 = 341 cells, padded to 512
    assert odd.ctx_per_slot == 512
    assert odd.kv_cache_bytes == 3 * 18 * 512 * CELL
    model_length = estimate(ctx_size=0)
    assert model_length.ctx_per_slot == 32768
    assert model_length.kv_cache_bytes == estimate(ctx_size=32768).kv_cache_bytes


def test_a_unified_cache_shares_the_context_and_widens_the_window() -> None:
    split = estimate(slots=8, ctx_size=8192)
    unified = estimate(slots=8, ctx_size=8192, kv_unified=True)
    assert (split.ctx_per_slot, unified.ctx_per_slot) == (1024, 8192)
    # split: 8 streams of 1024 cells, SWA min(1024, 512 + 512) = 1024 each
    assert split.kv_cache_bytes == 8 * 18 * 1024 * CELL
    # unified: one stream of 8192; SWA pad256(512 * 8 slots + 512) = 4608
    assert unified.kv_cache_bytes == (3 * 8192 + 15 * 4608) * CELL
    assert unified.kv_cache_bytes < split.kv_cache_bytes


@pytest.mark.parametrize(("kv_type", "ratio"), [
    ("f32", 2.0), ("q8_0", 34 / 64), ("q4_0", 18 / 64), ("q5_1", 24 / 64)])
def test_quantized_cache_types(kv_type: str, ratio: float) -> None:
    f16 = estimate(slots=2, ctx_size=4096)
    other = estimate(slots=2, ctx_size=4096, kv_type=kv_type)
    assert other.kv_cache_bytes == f16.kv_cache_bytes * ratio
    assert other.kv_type == kv_type
    assert other.compute_bytes == f16.compute_bytes


def test_an_unknown_cache_type_and_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="q3_k"):
        estimate(kv_type="q3_k")
    with pytest.raises(ValueError):
        estimate(slots=0)
    with pytest.raises(ValueError):
        estimate(ctx_size=-1)


def test_compute_grows_with_the_micro_batch_and_the_slots() -> None:
    base = estimate(slots=1, ctx_size=2048)
    assert estimate(slots=1, ctx_size=2048, n_ubatch=128).compute_bytes < base.compute_bytes
    # a context shorter than n_ubatch caps the micro-batch
    assert estimate(ctx_size=256).compute_bytes < estimate(ctx_size=512).compute_bytes
    # each slot adds its output row, its sampler and, past a point, logits in the graph
    many = estimate(slots=32, ctx_size=8192)
    assert many.compute_bytes - base.compute_bytes > 31 * 262144 * (4 + 16)


def test_the_prompt_cache_is_a_ceiling_apart_from_the_loaded_footprint() -> None:
    cached = estimate(slots=4, ctx_size=1024, cache_ram_mib=256)
    uncached = estimate(slots=4, ctx_size=1024, cache_ram_mib=0)
    assert uncached.prompt_cache_bytes == 0
    assert uncached.total_bytes == uncached.loaded_bytes == cached.loaded_bytes
    # the limit, which may be passed by the one entry the server always keeps
    assert cached.prompt_cache_bytes == 256 * MiB + cached.kv_cache_bytes // 4
    assert cached.total_bytes == cached.loaded_bytes + cached.prompt_cache_bytes


def test_weights_come_from_the_tensors_and_q4_matrices_count_twice() -> None:
    tensors = [TensorInfo("token_embd.weight", (640, 1024), 8, 0),  # Q8_0
               TensorInfo("blk.0.attn_output.weight", (1024, 640), 12, 0),  # Q4_K
               TensorInfo("blk.0.attn_norm.weight", (640,), 0, 0)]  # F32
    info = GGUFInfo(version=3, metadata=gemma_like().metadata, tensors=tensors)
    data = 1024 * 640 // 32 * 34 + 640 * 1024 // 256 * 144 + 640 * 4
    repacked = 640 * 1024 // 256 * 144
    assert estimate(info, weights_bytes=10**9).weights_bytes == data + repacked
    assert estimate(info, weights_bytes=10**9, repack=False).weights_bytes == data
    unknown = GGUFInfo(version=3, metadata=info.metadata,
                       tensors=[TensorInfo("x", (32, 32), 99, 0)])
    assert estimate(unknown, weights_bytes=12345, repack=False).weights_bytes == 12345


def test_a_header_without_hyperparameters_still_gives_an_estimate() -> None:
    info = parse_gguf(make_gguf())
    result = estimate(info, weights_bytes=6144, slots=2, ctx_size=0)
    assert result.kv_cache_bytes == 0  # no layers described
    assert result.ctx_per_slot == 16384  # context_length 32768 split in two
    assert result.compute_bytes > 0 and result.runtime_bytes > 0


def test_to_dict() -> None:
    result = estimate(slots=4, ctx_size=1024, kv_type="q8_0", kv_unified=True)
    data = result.to_dict()
    assert data["total_bytes"] == result.total_bytes
    assert data["loaded_bytes"] == result.loaded_bytes
    assert {k: data[k] for k in ("slots", "ctx_size", "kv_type", "kv_unified")} == {
        "slots": 4, "ctx_size": 1024, "kv_type": "q8_0", "kv_unified": True}
    assert json.loads(json.dumps(data)) == data


PROBE = r"""
import json, sys, threading
from pathlib import Path

def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

import xllamacpp  # noqa: F401  (its code pages are the library's, not the model's)
from llmos.engines import EngineConfig, load_engine

args = json.loads(sys.argv[1])
before = rss()
engine = load_engine("llama.cpp", EngineConfig(
    model_path=Path(args["model"]), slots=args["slots"], ctx_size=args["ctx_size"],
    threads=1, cache_ram_mib=args["cache_ram_mib"], log_verbosity=4))
loaded = rss()
tokens = []

def ask(i):
    body = {"prompt": f"{i} " + "alpha beta gamma delta " * args["words"], "max_tokens": 2}
    tokens.append(engine.generate("completion", body, lambda event: False).prompt_tokens)

threads = [threading.Thread(target=ask, args=(i,)) for i in range(args["slots"])]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
busy = rss()
print("PROBE " + json.dumps({"before": before, "loaded": loaded, "busy": busy, "tokens": tokens}),
      flush=True)
engine.close()
"""


def run_engine(model: Path, **args: Any) -> tuple[dict[str, Any], str]:
    """Load the model in a fresh process; its RSS figures and llama.cpp's log."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps({"model": str(model)} | args)],
                          capture_output=True, text=True, timeout=180)
    found = re.search(r"^PROBE (.*)$", done.stdout, re.MULTILINE)
    assert done.returncode == 0 and found, done.stderr[-3000:]
    return json.loads(found.group(1)), done.stderr


def logged_mib(log: str, buffer: str) -> float:
    """The sum of llama.cpp's '<...> <buffer> buffer size = N MiB' lines."""
    sizes = re.findall(rf"{buffer} buffer size = +([\d.]+) MiB", log)
    assert sizes, f"llama.cpp logged no {buffer} buffer"
    return sum(float(size) for size in sizes)


@pytest.mark.parametrize(("slots", "ctx_size", "cache_ram_mib", "words"), [
    (4, 1024, 256, 40),  # 256 cells a slot; 4 x ~160 prompt tokens > one 512 micro-batch
    (8, 8192, 0, 20),  # 1024 cells a slot: the SWA window is as large as the slot
])
def test_the_estimate_matches_the_real_engine(
    tmp_path_factory: pytest.TempPathFactory, slots: int, ctx_size: int, cache_ram_mib: int,
    words: int,
) -> None:
    model = gemma_path(tmp_path_factory)
    batch = EngineConfig(model_path=model).batch_size  # (the SWA cache holds one batch more)
    result = estimate_resources(read_gguf(model), weights_bytes=model.stat().st_size,
                                slots=slots, ctx_size=ctx_size, cache_ram_mib=cache_ram_mib,
                                n_batch=batch, n_ubatch=batch)
    rss, log = run_engine(model, slots=slots, ctx_size=ctx_size, cache_ram_mib=cache_ram_mib,
                          words=words)
    assert len(rss["tokens"]) == slots and min(rss["tokens"]) * slots > 512

    # the parts llama.cpp reports itself: exact but for its rounding to 0.01 MiB
    assert abs(logged_mib(log, "KV") * MiB - result.kv_cache_bytes) < 0.02 * MiB
    assert abs(logged_mib(log, "model") * MiB - result.weights_bytes) < 0.02 * MiB

    loaded = rss["loaded"] - rss["before"]
    busy = rss["busy"] - rss["before"]
    print(f"slots={slots} ctx={ctx_size}: estimated {result.loaded_bytes / MiB:.1f} MiB "
          f"(+{result.prompt_cache_bytes / MiB:.1f} prompt cache), measured "
          f"{loaded / MiB:.1f} MiB idle, {busy / MiB:.1f} MiB busy")
    assert abs(result.loaded_bytes - busy) <= 0.25 * busy
    # nothing of the prompt cache (nor of the graph buffer) is taken before it is used
    assert loaded < result.loaded_bytes
