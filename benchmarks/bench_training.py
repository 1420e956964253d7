"""Training and feature-extraction throughput of megfm, beside PatchTST and LUNA.

For every width (``small`` 256 x 8 layers, 8 heads; ``base`` 768 x 12 layers, 12 heads), every
attention mode (``latent``, ``factorized``, ``full``) and every mask ratio, this measures on
random windows of ``--sensors`` x ``--samples`` (patches of 25 samples):

- a full pretraining step of ``MEGForMaskedSignalModeling`` (forward, backward, AdamW step;
  fused AdamW and ``torch.autocast(bfloat16)`` on CUDA), its mask drawn on the CPU as the
  pretraining collator draws it in the data loader and passed in: windows/s and
  tokens/s (tokens = sensors x patches), the median of ``--steps`` timed steps after
  ``--warmup`` untimed ones;
- feature extraction with ``MEGModel`` (no mask, no grad, same precision): windows/s;
- peak memory of each measurement: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the
  process's peak resident set (``resource.getrusage``), reset before every measurement where
  Linux allows it (``/proc/self/clear_refs``) and otherwise the peak over the run so far;
- model FLOPs per window, counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
  attention kernels) on one step at batch 1 with the eager model, and on a GPU the model-FLOP
  utilisation against a bf16 matmul peak measured in the same run (8192 x 8192 products timed
  with CUDA events).

``--compile`` compiles megfm's blocks (``accelerate.utils.compile_regions``), which keeps the
encoder on visible tokens and the decoder on hidden ones; ``--compile-scope whole`` compiles the
whole model instead: in ``latent`` mode the choice of the hidden tokens runs between its two
graphs, so it does the eager model's work; ``full`` and ``factorized`` trace as one static graph,
which encodes the whole grid, and their FLOPs count that work. Peers are compiled whole.

Beside each figure, ``PatchTSTForPretraining`` / ``PatchTSTModel`` from transformers at the same
input, width, depth, heads, feed-forward width (4 x width) and mask ratio run in the same
process, and the table reports megfm / PatchTST speed ratios. PatchTST attends within each
sensor only (channel independence), so it is the cost floor of a patch transformer over the
same tokens, not an equal in what it can learn. Where braindecode is installed and the window
is a multiple of 40 samples, braindecode's LUNA runs beside too, at the same width, depth and
heads (``peers.py``): its masked reconstruction, and its forward for features.

Reference shape (the default on CUDA): batch 32, 306 sensors x 1000 samples (4 s at 250 Hz),
both widths, all modes, mask ratios 0.5 and 0.75, 3 warm-up and 10 timed steps. Without a GPU
the defaults shrink to what a CPU finishes: batch 8, 306 x 500 samples, width 256 x 8 only,
``latent`` and ``factorized`` (``full`` is quadratic in sensors x patches; ask for it with
``--modes``), 1 warm-up and 3 timed steps.

    python benchmarks/bench_training.py                       # CPU or GPU defaults
    python benchmarks/bench_training.py --sizes base --modes latent --compile
    python benchmarks/bench_training.py --modes latent --compile --compile-scope whole
    python benchmarks/bench_training.py --modes latent --compile-mode reduce-overhead
    python benchmarks/bench_training.py --print-table benchmarks/results/training_cpu.json

Prints a Markdown table and writes ``benchmarks/results/training_<device>.json`` (``cpu``, or
the GPU's name, e.g. ``training_nvidia-h100-80gb-hbm3.json``); the file is rewritten after every
measurement, so an interrupted run keeps what it finished. ``--output`` writes elsewhere.
``--keep-freed-memory`` has the process keep the memory it frees for its next tensors, as the
``megfm`` subcommands that run a model do (:mod:`megfm_hf.memory`); on a CPU that spares
the page faults of every large tensor.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import re
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate.utils import compile_regions
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from megfm_hf import MEGConfig, MEGForMaskedSignalModeling, MEGModel
from megfm_hf.memory import keep_freed_memory

import peers
from common import record_header, write_results

RESULTS = Path(__file__).parent / "results"
PATCH_LENGTH = 25
MODES = ("latent", "factorized", "full")


@dataclass(frozen=True)
class Size:
    """Encoder width, depth and heads shared by megfm and PatchTST."""

    name: str
    width: int
    depth: int
    heads: int


SIZES = {"small": Size("small", 256, 8, 8), "base": Size("base", 768, 12, 12)}

#: Defaults per device kind: the reference shape on CUDA, a shape a CPU finishes otherwise.
DEFAULTS: dict[str, dict[str, Any]] = {
    "cuda": {
        "batch": 32, "sensors": 306, "samples": 1000, "sizes": "all", "modes": list(MODES),
        "steps": 10, "warmup": 3,
    },
    "cpu": {
        "batch": 8, "sensors": 306, "samples": 500, "sizes": "small",
        "modes": ["latent", "factorized"], "steps": 3, "warmup": 1,
    },
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Device, memory and FLOP helpers
# --------------------------------------------------------------------------------------------


def device_slug(device: torch.device) -> str:
    """``cpu``, or the GPU's name in lower case with dashes (for the results file name)."""
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def device_identity(device: torch.device) -> dict[str, str | None]:
    """The ``kind`` and ``name`` of a results record's device (``record_header``'s keywords):
    a GPU's name, or None for a CPU, whose name ``record_header`` finds itself."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"kind": device.type, "name": name}


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device, compiled: bool) -> None:
    """Drop garbage, cached device blocks and (after ``torch.compile``) compiled graphs."""
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _reset_cpu_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process; False where Linux refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


CPU_PEAK_RESETS = _reset_cpu_peak()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif CPU_PEAK_RESETS:
        _reset_cpu_peak()


def current_memory(device: torch.device) -> int:
    """Bytes allocated on the GPU, or this process's resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_memory(device: torch.device) -> int:
    """Peak bytes since :func:`reset_peak_memory` (CPU: ``ru_maxrss``, kB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _register_cpu_attention_flops() -> None:
    """Count PyTorch's CPU flash-attention kernels, which ``FlopCounterMode`` leaves out.

    The formulas are the ones it applies to the CUDA attention kernels.
    """
    aten = torch.ops.aten

    def forward(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(q_shape, k_shape, v_shape)

    def backward(grad_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_shape, q_shape, k_shape, v_shape)

    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", forward),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", backward),
    ):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_registry:
            register_flop_formula(op)(formula)


_register_cpu_attention_flops()


def count_flops(run: Callable[[], None]) -> int:
    """Floating-point operations (multiply-add = 2) of matmuls and attention in ``run()``."""
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return int(counter.get_total_flops())


def time_steps(
    step: Callable[[], None], warmup: int, steps: int, device: torch.device
) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step`` after ``warmup`` untimed ones.

    On a GPU every step is bracketed by CUDA events and read after one synchronisation at the
    end; on the CPU by the host clock.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(steps)
        ]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1e3 for start, end in events]
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure_matmul_peak(
    device: torch.device, n: int = 8192, warmup: int = 5, repeats: int = 20
) -> dict[str, float]:
    """bf16 matmul rate of this GPU: median of ``repeats`` n x n x n products on random data."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=generator)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=generator)
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    seconds = time_steps(lambda: torch.mm(a, b, out=out), warmup, repeats, device)
    median = statistics.median(seconds)
    return {
        "n": n,
        "repeats": repeats,
        "median_seconds": median,
        "tflops": 2 * n**3 / median / 1e12,
    }


# --------------------------------------------------------------------------------------------
# Inputs and models
# --------------------------------------------------------------------------------------------


def make_inputs(batch: int, sensors: int, samples: int, device: torch.device) -> dict:
    """Random MEG windows: Vectorview-like sensor types (1 magnetometer, 2 gradiometers)."""
    generator = torch.Generator().manual_seed(0)
    positions = torch.randn(sensors, 6, generator=generator) * 0.1
    types = (torch.arange(sensors) % 3 != 0).long()
    return {
        "input_values": torch.randn(batch, sensors, samples, generator=generator).to(device),
        "sensor_positions": positions.expand(batch, -1, -1).contiguous().to(device),
        "sensor_types": types.expand(batch, -1).contiguous().to(device),
    }


def megfm_config(size: Size, mode: str, ratio: float) -> MEGConfig:
    """megfm at this width and depth; decoder and everything else at the library defaults."""
    return MEGConfig(
        patch_length=PATCH_LENGTH,
        hidden_size=size.width,
        num_hidden_layers=size.depth,
        num_attention_heads=size.heads,
        attention_mode=mode,
        mask_ratio=ratio,
    )


def patchtst_config(
    size: Size, sensors: int, samples: int, ratio: float, masked: bool
) -> transformers.PatchTSTConfig:
    """PatchTST over the same tokens: one channel per sensor, patches of 25 samples."""
    return transformers.PatchTSTConfig(
        num_input_channels=sensors,
        context_length=samples,
        patch_length=PATCH_LENGTH,
        patch_stride=PATCH_LENGTH,
        d_model=size.width,
        num_hidden_layers=size.depth,
        num_attention_heads=size.heads,
        ffn_dim=4 * size.width,
        mask_type="random",
        random_mask_ratio=ratio,
        do_mask_input=masked,
    )


def batch_of(inputs: dict, n: int) -> dict:
    """The first ``n`` windows of every input tensor."""
    return {key: value[:n] for key, value in inputs.items()}


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What every measurement of one run shares."""

    device: torch.device
    batch: int
    sensors: int
    samples: int
    steps: int
    warmup: int
    #: ``torch.compile`` mode (``"default"``, ``"reduce-overhead"``, ...); None runs eagerly
    compile_mode: str | None
    gradient_checkpointing: bool
    #: decode every token in pretraining steps, not only the hidden ones (``latent`` mode)
    decode_visible: bool = False
    #: compile megfm's blocks (``"regions"``, the sizes that follow the mask stay) or the
    #: whole model (``"whole"``); peers compile whole
    compile_scope: str = "regions"

    @property
    def compile(self) -> bool:
        return self.compile_mode is not None

    @property
    def cudagraphs(self) -> bool:
        """Whether the compiled model replays CUDA graphs (each step must say where it starts)."""
        return self.compile_mode in ("reduce-overhead", "max-autotune")

    @property
    def megfm_compile_scope(self) -> str | None:
        """What of megfm is compiled (``"regions"`` or ``"whole"``); None when eager."""
        return self.compile_scope if self.compile else None

    def encodes_whole_grid(self, mode: str) -> bool:
        """Whether megfm in attention ``mode`` runs as one static graph, whose encoder covers
        the whole grid (compiled whole, ``full`` and ``factorized`` leave out the gathering of
        the present tokens, whose number follows the mask)."""
        return self.megfm_compile_scope == "whole" and mode != "latent"

    def compiled(self, model: torch.nn.Module, regions: bool = False) -> torch.nn.Module:
        """``model`` under ``torch.compile`` in the chosen mode, or itself when eager.

        With ``regions`` (megfm's models) and the ``"regions"`` scope, its blocks are compiled
        (``accelerate.utils.compile_regions``) and the steps between them, whose sizes follow
        the mask, run eagerly; otherwise the whole model is one compiled graph.
        """
        if not self.compile:
            return model
        if regions and self.compile_scope == "regions":
            return compile_regions(model, mode=self.compile_mode)
        return torch.compile(model, mode=self.compile_mode)

    @property
    def patches(self) -> int:
        return self.samples // PATCH_LENGTH

    @property
    def tokens_per_window(self) -> int:
        return self.sensors * self.patches

    def autocast(self) -> Any:
        """bf16 autocast on CUDA; full float32 on the CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()


def _figures(
    settings: Settings,
    seconds: list[float],
    flops_per_window: int,
    peak_tflops: float | None,
    tokens_per_window: int | None = None,
) -> dict[str, Any]:
    """Rates of timed steps; tokens per window default to the settings' (patches of 25)."""
    median = statistics.median(seconds)
    windows_per_s = settings.batch / median
    achieved = flops_per_window * windows_per_s / 1e12
    tokens = settings.tokens_per_window if tokens_per_window is None else tokens_per_window
    return {
        "status": "ok",
        "step_seconds_median": median,
        "step_seconds": seconds,
        "windows_per_s": windows_per_s,
        "tokens_per_s": windows_per_s * tokens,
        "gflops_per_window": flops_per_window / 1e9,
        "achieved_tflops": achieved,
        "mfu": achieved / peak_tflops if peak_tflops else None,
    }


@contextmanager
def _memory_window(settings: Settings, row: dict) -> Iterator[None]:
    """Record the peak memory of the enclosed block into ``row``."""
    free_memory(settings.device, settings.compile)
    reset_peak_memory(settings.device)
    row["memory_before_bytes"] = current_memory(settings.device)
    yield
    synchronize(settings.device)
    row["peak_memory_bytes"] = peak_memory(settings.device)
    row["peak_memory_above_start_bytes"] = max(
        0, row["peak_memory_bytes"] - row["memory_before_bytes"]
    )


def time_training(
    settings: Settings,
    model: torch.nn.Module,
    one_step: Callable[[torch.nn.Module, Any], None],
    inputs: Any,
    regions: bool = False,
) -> list[float]:
    """Seconds of timed training steps: ``one_step`` (forward, backward) and an AdamW step,
    on ``model`` compiled when the settings ask for it (fused AdamW on CUDA).

    ``inputs`` is a list of inputs, one per step in turn (fresh pretraining masks, as the
    collator draws them), or one input for every step. ``regions`` as in
    :meth:`Settings.compiled`.
    """
    net = settings.compiled(model, regions)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, weight_decay=0.05, fused=settings.device.type == "cuda"
    )
    turns = itertools.cycle(inputs if isinstance(inputs, list) else [inputs])

    def step() -> None:
        if settings.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad(set_to_none=True)
        one_step(net, next(turns))
        optimizer.step()

    return time_steps(step, settings.warmup, settings.steps, settings.device)


def collator_masks(
    model: MEGForMaskedSignalModeling, settings: Settings, count: int = 4
) -> list[torch.Tensor]:
    """``count`` pretraining masks of the whole batch, drawn on the CPU as
    ``MEGDataCollator`` draws them in the data loader, then moved to the device."""
    generator = torch.Generator().manual_seed(0)
    valid = torch.ones(settings.batch, settings.sensors, dtype=torch.bool)
    return [
        model.draw_mask(valid, settings.patches, generator).to(settings.device)
        for _ in range(count)
    ]


def train_megfm(
    settings: Settings, inputs: dict, size: Size, mode: str, ratio: float, peak: float | None
) -> dict:
    """Pretraining-step figures of ``MEGForMaskedSignalModeling``."""
    row: dict[str, Any] = {}
    with _memory_window(settings, row):
        with settings.device:
            model = MEGForMaskedSignalModeling(megfm_config(size, mode, ratio)).train()
        row["parameters"] = sum(p.numel() for p in model.parameters())
        row["attn_implementation"] = model.config._attn_implementation

        def one_step(net: torch.nn.Module, batch: dict) -> None:
            with settings.autocast():
                loss = net(**batch, decode_visible=settings.decode_visible)
            loss.loss.backward()

        # The mask is an input, as in pretraining, where the collator draws it.
        batches = [{**inputs, "mask": mask} for mask in collator_masks(model, settings)]
        # Compiled as one static graph, the encoder covers the whole grid, as it does with
        # its gathering of the present tokens switched off: the work is counted that way.
        encoder = model.megfm.encoder
        whole_grid = settings.encodes_whole_grid(mode)
        if whole_grid:
            encoder.gather_present = False
        flops = count_flops(lambda: one_step(model, batch_of(batches[0], 1)))
        if whole_grid:
            encoder.gather_present = True
        row["decodes_every_token"] = settings.decode_visible
        row["encodes_whole_grid"] = whole_grid
        row["compile_scope"] = settings.megfm_compile_scope
        model.zero_grad(set_to_none=True)
        if settings.gradient_checkpointing:
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        seconds = time_training(settings, model, one_step, batches, regions=True)
    row.update(_figures(settings, seconds, flops, peak))
    return row


def train_patchtst(
    settings: Settings, past_values: torch.Tensor, size: Size, ratio: float, peak: float | None
) -> dict:
    """Pretraining-step figures of transformers' ``PatchTSTForPretraining``."""
    row: dict[str, Any] = {}
    with _memory_window(settings, row):
        config = patchtst_config(size, settings.sensors, settings.samples, ratio, masked=True)
        with settings.device:
            model = transformers.PatchTSTForPretraining(config).train()
        row["parameters"] = sum(p.numel() for p in model.parameters())
        row["attn_implementation"] = model.config._attn_implementation

        def one_step(net: torch.nn.Module, values: torch.Tensor) -> None:
            with settings.autocast():
                loss = net(past_values=values).loss
            loss.backward()

        flops = count_flops(lambda: one_step(model, past_values[:1]))
        model.zero_grad(set_to_none=True)
        # PatchTST does not support gradient checkpointing: it always keeps its activations.
        row["gradient_checkpointing"] = False
        seconds = time_training(settings, model, one_step, past_values)
    row.update(_figures(settings, seconds, flops, peak))
    return row


def features_megfm(
    settings: Settings, inputs: dict, size: Size, mode: str, peak: float | None
) -> dict:
    """Feature-extraction figures of ``MEGModel`` (no mask, no grad)."""
    row: dict[str, Any] = {}
    with _memory_window(settings, row):
        with settings.device:
            model = MEGModel(megfm_config(size, mode, 0.5)).eval()
        row["parameters"] = sum(p.numel() for p in model.parameters())
        net = settings.compiled(model, regions=True)

        def forward(module: torch.nn.Module, batch: dict) -> None:
            with torch.no_grad(), settings.autocast():
                module(**batch)

        flops = count_flops(lambda: forward(model, batch_of(inputs, 1)))
        seconds = time_steps(
            lambda: forward(net, inputs), settings.warmup, settings.steps, settings.device
        )
    row.update(_figures(settings, seconds, flops, peak))
    return row


def features_patchtst(
    settings: Settings, past_values: torch.Tensor, size: Size, peak: float | None
) -> dict:
    """Feature-extraction figures of transformers' ``PatchTSTModel`` (no mask, no grad)."""
    row: dict[str, Any] = {}
    with _memory_window(settings, row):
        config = patchtst_config(size, settings.sensors, settings.samples, 0.5, masked=False)
        with settings.device:
            model = transformers.PatchTSTModel(config).eval()
        row["parameters"] = sum(p.numel() for p in model.parameters())
        net = settings.compiled(model)

        def forward(module: torch.nn.Module, values: torch.Tensor) -> None:
            with torch.no_grad(), settings.autocast():
                module(past_values=values)

        flops = count_flops(lambda: forward(model, past_values[:1]))
        seconds = time_steps(
            lambda: forward(net, past_values), settings.warmup, settings.steps, settings.device
        )
    row.update(_figures(settings, seconds, flops, peak))
    return row


def train_luna(
    settings: Settings, values: torch.Tensor, size: Size, ratio: float, peak: float | None
) -> dict:
    """Pretraining-step figures of braindecode's LUNA: its masked reconstruction, with the
    loss on the hidden patches (LUNA's encoder keeps them, as mask tokens)."""
    row: dict[str, Any] = {}
    with _memory_window(settings, row):
        model = _luna(settings, size, row, classes=0).train()
        generator = torch.Generator().manual_seed(0)
        masks = [
            peers.luna_mask(*values.shape, ratio, generator).to(settings.device) for _ in range(4)
        ]
        # LUNA's channel-name embedding knows 90 EEG names and MEG sensors have none: every
        # sensor takes the first, which costs what any other would.
        names = torch.zeros(values.shape[:2], dtype=torch.long, device=settings.device)

        def one_step(net: torch.nn.Module, mask: torch.Tensor) -> None:
            n = mask.shape[0]
            with settings.autocast():
                reconstruction = net(values[:n], mask=mask, channel_names=names[:n])
            error = (reconstruction.float() - values[:n]) ** 2
            loss = (error * mask).sum() / mask.sum()
            loss.backward()

        flops = count_flops(lambda: one_step(model, masks[0][:1]))
        model.zero_grad(set_to_none=True)
        row["gradient_checkpointing"] = False
        seconds = time_training(settings, model, one_step, masks)
    row.update(_figures(settings, seconds, flops, peak, _luna_tokens_per_window(settings)))
    return row


def features_luna(settings: Settings, values: torch.Tensor, size: Size, peak: float | None) -> dict:
    """Feature-extraction figures of braindecode's LUNA: its forward through the temporal
    transformer and its attention-pooling head (no mask, no grad)."""
    row: dict[str, Any] = {}
    with _memory_window(settings, row):
        model = _luna(settings, size, row, classes=2).eval()
        net = settings.compiled(model)

        def forward(module: torch.nn.Module, batch: torch.Tensor) -> None:
            with torch.no_grad(), settings.autocast():
                module(batch)

        flops = count_flops(lambda: forward(model, values[:1]))
        seconds = time_steps(
            lambda: forward(net, values), settings.warmup, settings.steps, settings.device
        )
    row.update(_figures(settings, seconds, flops, peak, _luna_tokens_per_window(settings)))
    return row


def _luna(settings: Settings, size: Size, row: dict, classes: int) -> torch.nn.Module:
    """LUNA at ``size`` on the settings' device (``classes=0``: for pretraining); its
    parameter count goes into ``row``."""
    with settings.device:
        model = peers.luna_model(
            size.width, size.depth, size.heads, settings.sensors, settings.samples, classes
        )
    row["parameters"] = sum(p.numel() for p in model.parameters())
    row["patch_length"] = peers.LUNA_PATCH
    return model


def _luna_tokens_per_window(settings: Settings) -> int:
    """LUNA's tokens are its own: one per (sensor, patch of 40 samples)."""
    return settings.sensors * (settings.samples // peers.LUNA_PATCH)


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message
    )


def guarded(settings: Settings, label: dict, measure: Callable[[], dict]) -> dict:
    """Run one measurement; an out-of-memory or other failure becomes a row, not an abort."""
    failure: str | None = None
    try:
        figures = measure()
    except Exception as error:  # one failed configuration must not end the run
        if _is_oom(error):
            failure = "OOM"
        else:
            failure = "error"
            traceback.print_exc()
        figures = {"status": failure, "error": f"{type(error).__name__}: {str(error)[:500]}"}
    free_memory(settings.device, settings.compile)
    row = {**label, **figures}
    if failure is None:
        text = (
            f"{row['windows_per_s']:9.2f} windows/s  {row['tokens_per_s']:12.0f} tokens/s  "
            f"peak {_gib(row[_memory_key(settings.device.type)])}"
        )
        if row["mfu"] is not None:
            text += f"  MFU {row['mfu']:.1%}"
    else:
        text = row["error"] if failure == "error" else "OOM"
    name = " ".join(f"{key}={value}" for key, value in label.items())
    print(f"{name:<60} {text}", flush=True)
    return row


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _memory_key(kind: str) -> str:
    """The peak-memory figure to show: on a CPU, what a measurement added to the process."""
    return "peak_memory_bytes" if kind == "cuda" else "peak_memory_above_start_bytes"


def _gib(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def _cell(row: dict | None, key: str, spec: str) -> str:
    if row is None:
        return "-"
    if row.get("status") != "ok":
        return str(row.get("status"))
    value = row.get(key)
    if value is None:
        return "-"
    return _gib(value) if spec == "gib" else format(value, spec)


def _ratio(mine: dict | None, peer: dict | None) -> str:
    if not mine or not peer or mine.get("status") != "ok" or peer.get("status") != "ok":
        return "-"
    return f"{mine['windows_per_s'] / peer['windows_per_s']:.2f}"


def markdown(record: dict) -> str:
    """Markdown tables of a results record (training, then feature extraction)."""
    s = record["settings"]
    # A CPU peak is the whole process's resident set: show what the measurement added to it.
    mem = _memory_key(record["device"]["kind"])
    lines = [
        f"{record['device']['name']} ({record['device']['kind']}), batch {s['batch']}, "
        f"{s['sensors']} sensors x {s['samples']} samples ({s['tokens_per_window']} tokens), "
        f"{s['precision']}, compile={s.get('compile_mode') or s['compile']}"
        + (f" (megfm: {s['compile_scope']})" if s.get("compile_scope") else "")
        + ", "
        f"gradient checkpointing={s['gradient_checkpointing']}, "
        f"decode visible={s.get('decode_visible', False)}, median of {s['steps']} steps",
    ]
    if mem != "peak_memory_bytes":
        lines.append("peak memory: the process's peak RSS above its RSS when the measurement began")
    peak = record.get("bf16_matmul_peak")
    if peak:
        lines.append(f"measured bf16 matmul peak: {peak['tflops']:.0f} TFLOP/s (n={peak['n']})")
    luna = s.get("luna") or {}
    if luna.get("left_out"):
        lines.append(f"LUNA left out: {luna['left_out']}")
    patchtst, luna_rows = (
        _peer_rows(record["training"], "patchtst"),
        _peer_rows(record["training"], "luna"),
    )
    lines += [
        "",
        "Training step (forward, backward, AdamW):",
        "",
        "| size | mode | mask | megfm win/s | megfm tok/s | PatchTST win/s | megfm/PatchTST "
        "| LUNA win/s | megfm/LUNA | megfm peak mem | PatchTST peak mem | LUNA peak mem "
        "| megfm GFLOP/win | megfm MFU | PatchTST MFU | LUNA MFU |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in record["training"]:
        if row["model"] != "megfm":
            continue
        key = (row["size"], row["mask_ratio"])
        peer, other = patchtst.get(key), luna_rows.get(key)
        lines.append(
            f"| {row['size']} | {row['mode']} | {row['mask_ratio']:g} "
            f"| {_cell(row, 'windows_per_s', '.2f')} | {_cell(row, 'tokens_per_s', ',.0f')} "
            f"| {_cell(peer, 'windows_per_s', '.2f')} | {_ratio(row, peer)} "
            f"| {_cell(other, 'windows_per_s', '.2f')} | {_ratio(row, other)} "
            f"| {_cell(row, mem, 'gib')} | {_cell(peer, mem, 'gib')} | {_cell(other, mem, 'gib')} "
            f"| {_cell(row, 'gflops_per_window', '.1f')} | {_cell(row, 'mfu', '.1%')} "
            f"| {_cell(peer, 'mfu', '.1%')} | {_cell(other, 'mfu', '.1%')} |"
        )
    if not record["feature_extraction"]:  # --skip-features
        return "\n".join(lines)
    patchtst = _peer_rows(record["feature_extraction"], "patchtst")
    luna_rows = _peer_rows(record["feature_extraction"], "luna")
    lines += [
        "",
        "Feature extraction (encoder forward, no grad):",
        "",
        "| size | mode | megfm win/s | PatchTST win/s | megfm/PatchTST | LUNA win/s | megfm/LUNA "
        "| megfm peak mem | PatchTST peak mem | LUNA peak mem | megfm MFU | PatchTST MFU "
        "| LUNA MFU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in record["feature_extraction"]:
        if row["model"] != "megfm":
            continue
        key = (row["size"], None)
        peer, other = patchtst.get(key), luna_rows.get(key)
        lines.append(
            f"| {row['size']} | {row['mode']} | {_cell(row, 'windows_per_s', '.2f')} "
            f"| {_cell(peer, 'windows_per_s', '.2f')} | {_ratio(row, peer)} "
            f"| {_cell(other, 'windows_per_s', '.2f')} | {_ratio(row, other)} "
            f"| {_cell(row, mem, 'gib')} | {_cell(peer, mem, 'gib')} | {_cell(other, mem, 'gib')} "
            f"| {_cell(row, 'mfu', '.1%')} | {_cell(peer, 'mfu', '.1%')} "
            f"| {_cell(other, 'mfu', '.1%')} |"
        )
    return "\n".join(lines)


def _peer_rows(rows: list[dict], model: str) -> dict[tuple[str, float | None], dict]:
    """A peer's rows by (size, mask ratio); feature rows have no mask ratio (None)."""
    return {(r["size"], r.get("mask_ratio")): r for r in rows if r["model"] == model}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Unset shape and step flags take the reference values on CUDA and smaller CPU "
        "values otherwise: " + json.dumps(DEFAULTS),
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when present")
    parser.add_argument("--batch", type=int, help="windows per step")
    parser.add_argument("--sensors", type=int)
    parser.add_argument("--samples", type=int, help=f"a multiple of {PATCH_LENGTH}")
    parser.add_argument("--sizes", choices=("small", "base", "all"))
    parser.add_argument("--modes", nargs="+", choices=MODES)
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.75])
    parser.add_argument("--steps", type=int, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, help="untimed steps first")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument(
        "--compile-mode",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        help="torch.compile mode (implies --compile; default: default); reduce-overhead and "
        "max-autotune replay CUDA graphs",
    )
    parser.add_argument(
        "--compile-scope",
        choices=("regions", "whole"),
        default="regions",
        help="what of megfm to compile: its blocks (accelerate's compile_regions; the encoder "
        "on visible tokens and the decoder on hidden ones, as eagerly) or the whole model "
        "(latent: the hidden tokens chosen between two graphs, as eagerly; full, factorized: "
        "one static graph that encodes the whole grid); peers compile whole",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="megfm only")
    parser.add_argument(
        "--decode-visible",
        action="store_true",
        help="megfm pretraining steps decode every token, not only the hidden ones (the cost "
        "of the work that latent mode leaves out)",
    )
    parser.add_argument("--skip-features", action="store_true", help="training steps only")
    parser.add_argument("--skip-patchtst", action="store_true", help="no PatchTST rows")
    parser.add_argument("--skip-luna", action="store_true", help="no LUNA rows")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="keep the memory the process frees for its next tensors, as megfm pretrain "
        "and megfm features do (megfm_hf.memory); CPU peak memories then count what the "
        "process keeps",
    )
    parser.add_argument("--output", type=Path, help="default: results/training_<device>.json")
    parser.add_argument(
        "--print-table", type=Path, metavar="JSON", help="print the tables of a results file"
    )
    args = parser.parse_args(argv)
    if args.print_table:
        return args
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.samples % PATCH_LENGTH:
        parser.error(f"--samples {args.samples} is not a multiple of {PATCH_LENGTH}")
    if min(args.batch, args.sensors, args.samples, args.steps) < 1 or args.warmup < 0:
        parser.error("--batch, --sensors, --samples and --steps must be >= 1, --warmup >= 0")
    if not all(0 <= ratio < 1 for ratio in args.ratios):
        parser.error("--ratios must lie in [0, 1)")
    if args.compile_mode or args.compile:
        args.compile_mode = args.compile_mode or "default"
        # Compilation, and with CUDA graphs their recording, stay out of the timing.
        least = 3 if args.compile_mode in ("reduce-overhead", "max-autotune") else 2
        if args.warmup < least:
            print(f"--compile: warming up for {least} steps so that compiling is not timed")
            args.warmup = least
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.print_table:
        print(markdown(json.loads(args.print_table.read_text())))
        return
    kept = keep_freed_memory() if args.keep_freed_memory else False
    device = torch.device(args.device)
    settings = Settings(
        device=device,
        batch=args.batch,
        sensors=args.sensors,
        samples=args.samples,
        steps=args.steps,
        warmup=args.warmup,
        compile_mode=args.compile_mode,
        gradient_checkpointing=args.gradient_checkpointing,
        decode_visible=args.decode_visible,
        compile_scope=args.compile_scope,
    )
    sizes = list(SIZES.values()) if args.sizes == "all" else [SIZES[args.sizes]]
    output = args.output or RESULTS / f"training_{device_slug(device)}.json"
    cuda = device.type == "cuda"

    record: dict[str, Any] = {
        **record_header(
            "training",
            torch,
            transformers,
            **device_identity(device),
            device={
                "cpus_usable": len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")
                else None,
                "torch_threads": torch.get_num_threads(),
            },
            versions={"cuda": torch.version.cuda},
        ),
        "settings": {
            "batch": settings.batch,
            "sensors": settings.sensors,
            "samples": settings.samples,
            "patch_length": PATCH_LENGTH,
            "patches": settings.patches,
            "tokens_per_window": settings.tokens_per_window,
            "sizes": {size.name: vars(size) for size in sizes},
            "modes": args.modes,
            "mask_ratios": args.ratios,
            "steps": settings.steps,
            "warmup": settings.warmup,
            "compile": settings.compile,
            "compile_mode": settings.compile_mode,
            "compile_scope": settings.megfm_compile_scope,
            "mask": "drawn on the CPU as MEGDataCollator draws it, passed to the model as an "
            "input (4 masks in turn); PatchTST draws its own inside its forward",
            "gradient_checkpointing": settings.gradient_checkpointing,
            "decode_visible": settings.decode_visible,
            "precision": "bf16 autocast" if cuda else "float32",
            "optimizer": "AdamW (fused)" if cuda else "AdamW",
            "keep_freed_memory": kept,
        },
        "method": (
            "each figure is the median of the timed steps after the warm-up (CUDA events on a "
            "GPU); windows/s = batch / median step; tokens = sensors x patches; FLOPs counted by "
            "torch.utils.flop_counter on one eager step at batch 1, times the batch; MFU = "
            "achieved FLOP/s over the bf16 matmul peak measured in this run; peak memory is "
            "torch.cuda.max_memory_allocated on a GPU and the process's peak RSS (ru_maxrss) on "
            "a CPU, which includes the Python process itself (memory_before_bytes)"
        ),
        "cpu_peak_rss_resets": None if cuda else CPU_PEAK_RESETS,
        "bf16_matmul_peak": None,
        "training": [],
        "feature_extraction": [],
    }
    if cuda:
        record["device"]["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        record["device"]["memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
        record["bf16_matmul_peak"] = measure_matmul_peak(device)
        free_memory(device, compiled=False)
        print(f"bf16 matmul peak: {record['bf16_matmul_peak']['tflops']:.0f} TFLOP/s", flush=True)
    elif not CPU_PEAK_RESETS:
        print("note: cannot reset the peak RSS here; CPU peaks are the peak of the run so far")
    peak = record["bf16_matmul_peak"]["tflops"] if cuda else None

    inputs = make_inputs(settings.batch, settings.sensors, settings.samples, device)
    past_values = inputs["input_values"].transpose(1, 2).contiguous()
    print(
        f"{settings.batch} x {settings.sensors} sensors x {settings.samples} samples, "
        f"{settings.patches} patches of {PATCH_LENGTH}, on {record['device']['name']}",
        flush=True,
    )

    luna_left_out = "--skip-luna" if args.skip_luna else peers.luna_unavailable(settings.samples)
    record["settings"]["luna"] = {
        "braindecode": None if luna_left_out else peers.luna_version(),
        "left_out": luna_left_out,
    }
    if luna_left_out:
        print(f"LUNA left out: {luna_left_out}", flush=True)
    values = inputs["input_values"]

    def add(section: str, label: dict, measure: Callable[[], dict]) -> None:
        record[section].append(guarded(settings, label, measure))
        write_results(output, record, indent=1)

    for size in sizes:
        common = {"size": size.name, "width": size.width, "depth": size.depth, "heads": size.heads}
        for ratio in args.ratios:
            if not args.skip_patchtst:
                add(
                    "training",
                    {"model": "patchtst", **common, "mode": "channel", "mask_ratio": ratio},
                    lambda size=size, ratio=ratio: train_patchtst(
                        settings, past_values, size, ratio, peak
                    ),
                )
            if not luna_left_out:
                add(
                    "training",
                    {"model": "luna", **common, "mode": "queries", "mask_ratio": ratio},
                    lambda size=size, ratio=ratio: train_luna(settings, values, size, ratio, peak),
                )
            for mode in args.modes:
                add(
                    "training",
                    {"model": "megfm", **common, "mode": mode, "mask_ratio": ratio},
                    lambda size=size, mode=mode, ratio=ratio: train_megfm(
                        settings, inputs, size, mode, ratio, peak
                    ),
                )
        if args.skip_features:
            continue
        if not args.skip_patchtst:
            add(
                "feature_extraction",
                {"model": "patchtst", **common, "mode": "channel"},
                lambda size=size: features_patchtst(settings, past_values, size, peak),
            )
        if not luna_left_out:
            add(
                "feature_extraction",
                {"model": "luna", **common, "mode": "queries"},
                lambda size=size: features_luna(settings, values, size, peak),
            )
        for mode in args.modes:
            add(
                "feature_extraction",
                {"model": "megfm", **common, "mode": mode},
                lambda size=size, mode=mode: features_megfm(settings, inputs, size, mode, peak),
            )

    write_results(output, record, indent=1)
    print()
    print(markdown(record))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
