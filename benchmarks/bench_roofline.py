"""The least time a training step can take on a GPU, from its kernels' arithmetic and memory.

``bench_training.py`` measures model-FLOP utilisation (MFU). This says how high it can go, and
why: one pretraining step (forward, backward, fused AdamW) is traced on the CPU under bf16
autocast, as it runs on a GPU, operator by operator. Every operator that runs a kernel (views
run none) is recorded with its FLOPs (matmuls and attention, counted as ``bench_training.py``
counts them) and the bytes it reads and writes (its tensors' sizes). On a GPU with a peak of
``P`` FLOP/s and a memory bandwidth of ``W`` bytes/s a kernel takes at least
``max(flops / P, bytes / W)`` (and a few microseconds however small it is), so

- **eager floor**: the sum over the step's operators, each its own kernel, as in eager PyTorch;
- **fused floor**: the sum over its matmuls and attention alone, as if every other operator
  (norms, activations, residual adds, casts) were fused into them, which ``torch.compile``
  approaches but does not reach;
- **MFU ceiling**: the step's FLOPs at the peak, over a floor. No schedule of these kernels,
  however well launched (CUDA graphs included), does better.

The step is traced at batch 2 and 3 and each operator's FLOPs and bytes are extrapolated to
``--batch`` (they grow linearly with the windows; the weights' share stays fixed). A breakdown
by module of the forward pass (the backward pass as a whole) shows where the memory traffic
goes.

    python benchmarks/bench_roofline.py [--gpus h100 h200] [--batch 32] [--models default ...]

Writes ``benchmarks/results/roofline.json`` and prints Markdown tables. Traced on two
CPU cores in about a minute per model; the figures are a model of the GPU, not a measurement:
``bench_training.py`` and ``bench_profile.py`` measure on the GPU itself.
"""

from __future__ import annotations

import argparse
import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import (
    flop_registry,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)
from torch.utils.module_tracker import ModuleTracker

from megfm_hf import MEGForMaskedSignalModeling

from bench_training import (
    PATCH_LENGTH,
    SIZES,
    make_inputs,
    megfm_config,
    patchtst_config,
)
from common import record_header, write_results

RESULTS = Path(__file__).parent / "results"
#: Windows per traced step. Both above 1: with one window, some reshapes are views that copy
#: with more (the operators differ), and the step's kernels are the ones of a real batch.
TRACED = (2, 3)


@dataclass(frozen=True)
class GPU:
    """A GPU's dense bf16 matmul peak and memory bandwidth (its data sheet's figures)."""

    name: str
    tflops: float
    bandwidth_tbs: float


GPUS = {
    "h100": GPU("NVIDIA H100 SXM", 989.4, 3.35),
    "h200": GPU("NVIDIA H200", 989.4, 4.8),
    "a100": GPU("NVIDIA A100 SXM 80GB", 312.0, 2.04),
}


@dataclass(frozen=True)
class Traced:
    """A model whose training step is traced (PatchTST when ``mode`` is None)."""

    label: str
    size: str
    mode: str | None
    mask_ratio: float = 0.5
    decode_visible: bool = False


MODELS = {
    "default": Traced("megfm default (latent 256 x 8)", "small", "latent"),
    "default-all": Traced(
        "megfm default, every token decoded (decode_visible=True)", "small", "latent",
        decode_visible=True,
    ),
    "full": Traced("megfm full 256 x 8", "small", "full"),
    "base": Traced("megfm latent 768 x 12", "base", "latent"),
    "base-full": Traced("megfm full 768 x 12", "base", "full"),
    "patchtst": Traced("PatchTST 256 x 8", "small", None),
}  # fmt: skip

#: Where backward kernels are counted: the module hooks that name them in the forward pass
#: cannot follow the backward pass (a module whose inputs need no gradient never "leaves").
BACKWARD = "(backward, every module)"
#: Operators that run no kernel: views, metadata and allocation without a fill.
NO_KERNEL = {
    "view", "_unsafe_view", "_reshape_alias", "reshape", "t", "transpose", "permute", "expand",
    "select", "slice", "unsqueeze", "squeeze", "as_strided", "alias", "detach", "unbind",
    "split", "split_with_sizes", "chunk", "lift_fresh", "empty", "empty_like",
    "empty_strided", "new_empty", "new_empty_strided", "view_as", "unfold", "diagonal",
    "_local_scalar_dense", "is_same_size", "sym_size", "sym_stride", "sym_numel",
}  # fmt: skip
#: Operators whose FLOPs are the step's model FLOPs (the ones the fused floor keeps); every
#: scaled-dot-product attention is traced as ``fused_attention`` (:class:`_FusedAttention`).
MATMULS = {"mm", "addmm", "bmm", "baddbmm", "fused_attention", "fused_attention_backward"}


@dataclass
class Kernel:
    """One kernel-running operator of the step: what it computes and the memory it moves."""

    name: str
    module: str
    flops: float
    bytes: float

    def scaled(self, other: Kernel, windows: float) -> Kernel:
        """The operator at ``windows`` windows, from this trace at ``TRACED[0]`` windows and
        ``other`` at ``TRACED[1]``."""
        low, high = TRACED
        slope = (windows - low) / (high - low)
        return Kernel(
            self.name,
            self.module,
            max(self.flops + (other.flops - self.flops) * slope, 0.0),
            max(self.bytes + (other.bytes - self.bytes) * slope, 0.0),
        )


def _tensor_bytes(values: Any) -> int:
    """Bytes of the distinct tensors among ``values`` (a view counts as the elements it shows)."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    total = 0
    for value in tree_flatten(values)[0]:
        if not isinstance(value, torch.Tensor) or value.device.type == "meta":
            continue
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if key in seen:
            continue
        seen.add(key)
        total += value.numel() * value.element_size()
    return total


def _module_name(parents: set[str], root: str, depth: int = 3) -> str:
    """The deepest module running, named down to a list of layers or ``depth`` names."""
    name = max(parents, key=lambda parent: (parent.count("."), parent), default="Global")
    parts: list[str] = []
    for part in name.split(".")[1:]:  # (the first is the root's class)
        if part.isdigit() or len(parts) == depth:
            break
        parts.append(part)
    return ".".join(parts) or f"({root}'s own code)"


class KernelTrace(TorchDispatchMode):
    """Record every kernel-running operator dispatched inside the context (and its module)."""

    def __init__(self, tracker: ModuleTracker, root: str):
        super().__init__()
        self.tracker = tracker
        self.root = root
        self.kernels: list[Kernel] = []
        self.paused = False

    def record(self, name: str, flops: float, nbytes: float) -> None:
        """Add a kernel of the module running now (forward), or of the backward pass."""
        module = BACKWARD
        if torch._C._current_autograd_node() is None:
            module = _module_name(self.tracker.parents, self.root)
        self.kernels.append(Kernel(name, module, float(flops), float(nbytes)))

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Run operators without recording them (a kernel recorded whole computes them)."""
        paused, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = paused

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if self.paused or name in NO_KERNEL:
            return out
        flops = 0
        if func.overloadpacket in flop_registry:
            flops = flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
        self.record(name, flops, _tensor_bytes((args, kwargs)) + _tensor_bytes(out))
        return out


class _FusedAttention(torch.autograd.Function):
    """Scaled-dot-product attention recorded as the GPU runs it: one fused kernel each way.

    On a CPU, attention whose additive mask needs a gradient (megfm's learned spatial priors)
    falls back to separate matmul and softmax operators; on a GPU, PyTorch's memory-efficient
    kernel runs it whole (flash attention when there is no mask). Forward, it reads queries,
    keys, values and the mask and writes the output and the rows' log-sum-exp; backward, it
    also reads the output and its gradient and writes the gradients of its inputs.
    """

    @staticmethod
    def forward(ctx, trace, query, key, value, mask, scale):
        with trace.pause():
            out = _SDPA(query, key, value, attn_mask=mask, scale=scale)
        ctx.trace, ctx.scale = trace, scale
        ctx.save_for_backward(query, key, value, mask, out)
        logsumexp = query.numel() // query.shape[-1] * 4
        trace.record(
            "fused_attention",
            sdpa_flop_count(query.shape, key.shape, value.shape),
            _tensor_bytes((query, key, value, mask, out)) + logsumexp,
        )
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value, mask, out = ctx.saved_tensors
        inputs = (query, key, value, mask)
        wanted = [ctx.needs_input_grad[i + 1] and x is not None for i, x in enumerate(inputs)]
        with ctx.trace.pause(), torch.enable_grad():
            leaves = [x.detach().requires_grad_(w) if x is not None else None
                      for x, w in zip(inputs, wanted, strict=True)]  # fmt: skip
            again = _SDPA(*leaves[:3], attn_mask=leaves[3], scale=ctx.scale)
            needed = [leaf for leaf, w in zip(leaves, wanted, strict=True) if w]
            found = iter(torch.autograd.grad(again, needed, grad))
        grads = [next(found) if w else None for w in wanted]
        logsumexp = query.numel() // query.shape[-1] * 4
        ctx.trace.record(
            "fused_attention_backward",
            sdpa_backward_flop_count(grad.shape, query.shape, key.shape, value.shape),
            _tensor_bytes((query, key, value, mask, out, grad))
            + logsumexp
            + _tensor_bytes([g for g in grads if g is not None]),
        )
        return (None, *grads, None)


_SDPA = F.scaled_dot_product_attention


@contextlib.contextmanager
def fused_attention(trace: KernelTrace) -> Iterator[None]:
    """Route ``F.scaled_dot_product_attention`` through :class:`_FusedAttention`."""

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                  scale=None, enable_gqa=False):  # fmt: skip
        if dropout_p or is_causal or enable_gqa:
            raise ValueError("the trace counts attention without dropout, causal mask or GQA")
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # (as an additive mask)
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill(
                ~attn_mask, torch.finfo(query.dtype).min
            )
        return _FusedAttention.apply(trace, query, key, value, attn_mask, scale)

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _SDPA


def adamw_kernel(model: torch.nn.Module) -> Kernel:
    """Fused AdamW over float32 weights: reads weight, gradient and both moments, writes three."""
    numel = sum(parameter.numel() for parameter in model.parameters())
    return Kernel("fused_adamw", "optimizer", 0.0, 7.0 * 4 * numel)


def trace_step(step: Callable[[], None], root: str) -> list[Kernel]:
    """The kernels of one call of ``step`` (forward and backward)."""
    with ModuleTracker() as tracker, KernelTrace(tracker, root) as trace:
        with fused_attention(trace):
            step()
    return trace.kernels


def megfm_step(
    size: str, mode: str, ratio: float, windows: int, decode_visible: bool = False
) -> tuple[Callable, torch.nn.Module]:
    """A pretraining step of megfm at the reference shape over ``windows`` windows."""
    torch.manual_seed(0)
    model = MEGForMaskedSignalModeling(megfm_config(SIZES[size], mode, ratio)).train()
    inputs = make_inputs(windows, 306, 1000, torch.device("cpu"))
    valid = torch.ones(windows, 306, dtype=torch.bool)
    mask = model.draw_mask(valid, 1000 // PATCH_LENGTH, torch.Generator().manual_seed(0))
    batch = {**inputs, "mask": mask}

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch, decode_visible=decode_visible).loss
        loss.backward()

    return step, model


def patchtst_step(size: str, ratio: float, windows: int) -> tuple[Callable, torch.nn.Module]:
    """A pretraining step of transformers' ``PatchTSTForPretraining`` at the reference shape."""
    torch.manual_seed(0)
    config = patchtst_config(SIZES[size], 306, 1000, ratio, masked=True)
    model = transformers.PatchTSTForPretraining(config).train()
    values = torch.randn(windows, 1000, 306, generator=torch.Generator().manual_seed(0))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(past_values=values).loss
        loss.backward()

    return step, model


def traced_kernels(key: str, windows: int) -> list[Kernel]:
    """The kernels of a step of model ``key`` at ``windows`` windows, from two traces."""
    spec = MODELS[key]
    traces = []
    for traced in TRACED:
        if spec.mode is None:
            step, model = patchtst_step(spec.size, spec.mask_ratio, traced)
        else:
            step, model = megfm_step(
                spec.size, spec.mode, spec.mask_ratio, traced, spec.decode_visible
            )
        step()  # (first call: lazily built buffers stay out of the trace)
        model.zero_grad(set_to_none=True)
        traces.append(trace_step(step, type(model).__name__))
    one, two = traces
    if [kernel.name for kernel in one] != [kernel.name for kernel in two]:
        raise RuntimeError(f"{key}: the step runs other operators at batch {TRACED}")
    return [a.scaled(b, windows) for a, b in zip(one, two, strict=True)] + [adamw_kernel(model)]


@dataclass
class Floors:
    """The least time of a step's kernels on one GPU (seconds) and what they compute."""

    flops: float
    bytes: float
    kernels: int
    compute_s: float
    eager_s: float
    fused_s: float
    fused_bytes: float
    modules: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self, windows: int) -> dict[str, Any]:
        return {
            "tflop_per_step": self.flops / 1e12,
            "gflop_per_window": self.flops / windows / 1e9,
            "gb_per_step": self.bytes / 1e9,
            "fused_gb_per_step": self.fused_bytes / 1e9,
            "kernels_per_step": self.kernels,
            "compute_floor_ms": self.compute_s * 1e3,
            "eager_floor_ms": self.eager_s * 1e3,
            "fused_floor_ms": self.fused_s * 1e3,
            "eager_mfu_ceiling": self.compute_s / self.eager_s,
            "fused_mfu_ceiling": self.compute_s / self.fused_s,
            "eager_windows_per_s_ceiling": windows / self.eager_s,
            "fused_windows_per_s_ceiling": windows / self.fused_s,
            "modules": self.modules,
        }


def floors(kernels: list[Kernel], gpu: GPU, kernel_us: float) -> Floors:
    """Sum each kernel's floor, ``max(flops / peak, bytes / bandwidth, kernel_us)``."""
    peak, bandwidth, least = gpu.tflops * 1e12, gpu.bandwidth_tbs * 1e12, kernel_us * 1e-6

    def floor(kernel: Kernel) -> float:
        return max(kernel.flops / peak, kernel.bytes / bandwidth, least)

    matmuls = [kernel for kernel in kernels if kernel.name in MATMULS]
    modules: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for kernel in kernels:
        row = modules[kernel.module]
        row["kernels"] += 1
        row["gflop"] += kernel.flops / 1e9
        row["gb"] += kernel.bytes / 1e9
        row["floor_ms"] += floor(kernel) * 1e3
    flops = sum(kernel.flops for kernel in kernels)
    return Floors(
        flops=flops,
        bytes=sum(kernel.bytes for kernel in kernels),
        kernels=len(kernels),
        compute_s=flops / peak,
        eager_s=sum(map(floor, kernels)),
        fused_s=sum(map(floor, matmuls)) + floor(kernels[-1]),  # (+ the optimizer)
        fused_bytes=sum(kernel.bytes for kernel in matmuls) + kernels[-1].bytes,
        modules={name: dict(row) for name, row in modules.items()},
    )


def markdown(record: dict[str, Any]) -> str:
    """The record as Markdown: per GPU one row per model, then the first model's modules."""
    settings = record["settings"]
    lines = [
        f"Floors of a training step (forward, backward, fused AdamW), batch {settings['batch']}, "
        f"306 sensors x 1000 samples, bf16, at least {settings['kernel_us']:g} us a kernel",
    ]
    for gpu in record["gpus"]:
        lines += [
            "",
            f"{gpu['name']} ({gpu['tflops']:g} TFLOP/s bf16, {gpu['bandwidth_tbs']:g} TB/s):",
            "",
            "| model | TFLOP/step | GB moved (eager) | kernels | compute floor | eager floor "
            "| eager MFU ceiling | fused floor | fused MFU ceiling | windows/s ceiling "
            "(eager / fused) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in gpu["models"]:
            lines.append(
                f"| {row['label']} | {row['tflop_per_step']:.2f} | {row['gb_per_step']:.1f} "
                f"| {row['kernels_per_step']:,} | {row['compute_floor_ms']:.2f} ms "
                f"| {row['eager_floor_ms']:.2f} ms | {row['eager_mfu_ceiling']:.0%} "
                f"| {row['fused_floor_ms']:.2f} ms | {row['fused_mfu_ceiling']:.0%} "
                f"| {row['eager_windows_per_s_ceiling']:,.0f} / "
                f"{row['fused_windows_per_s_ceiling']:,.0f} |"
            )
    gpu = record["gpus"][0]
    first = gpu["models"][0]
    modules = sorted(first["modules"].items(), key=lambda item: -item[1]["floor_ms"])
    total = first["eager_floor_ms"]
    lines += [
        "",
        f"{first['label']} on {gpu['name']}: where the eager floor goes (the forward pass by "
        "module)",
        "",
        "| module | kernels | GFLOP | GB moved | floor | share |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in modules:
        lines.append(
            f"| {name} | {row['kernels']:,.0f} | {row['gflop']:,.0f} | {row['gb']:.2f} "
            f"| {row['floor_ms']:.2f} ms | {row['floor_ms'] / total:.0%} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", nargs="+", choices=list(GPUS), default=["h100", "h200"])
    parser.add_argument(
        "--peak-tflops", type=float, help="instead of the data sheet's bf16 peak (one GPU)"
    )
    parser.add_argument(
        "--bandwidth-tbs", type=float, help="instead of the data sheet's bandwidth (one GPU)"
    )
    parser.add_argument("--kernel-us", type=float, default=2.0, help="least time of a kernel")
    parser.add_argument("--batch", type=int, default=32, help="windows per step")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        default=["default", "default-all", "full", "base", "patchtst"],
    )
    parser.add_argument("--output", type=Path, help="default: results/roofline.json")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.kernel_us < 0:
        parser.error("--batch must be >= 1 and --kernel-us >= 0")
    for name in ("peak_tflops", "bandwidth_tbs"):
        value = getattr(args, name)
        option = f"--{name.replace('_', '-')}"
        if value is not None and value <= 0:
            parser.error(f"{option} must be > 0")
        if value is not None and len(args.gpus) > 1:
            parser.error(f"{option} describes one GPU: name it alone with --gpus")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    gpus = [
        GPU(
            GPUS[key].name,
            args.peak_tflops or GPUS[key].tflops,
            args.bandwidth_tbs or GPUS[key].bandwidth_tbs,
        )
        for key in args.gpus
    ]
    rows: dict[str, list[dict[str, Any]]] = {key: [] for key in args.gpus}
    for model in args.models:
        kernels = traced_kernels(model, args.batch)
        for key, gpu in zip(args.gpus, gpus, strict=True):
            row = {"model": model, "label": MODELS[model].label}
            row.update(floors(kernels, gpu, args.kernel_us).as_dict(args.batch))
            rows[key].append(row)
            print(
                f"{row['label']} on {gpu.name}: {row['tflop_per_step']:.2f} TFLOP, "
                f"{row['gb_per_step']:.1f} GB, {row['kernels_per_step']:,} kernels per step; "
                f"MFU ceiling {row['eager_mfu_ceiling']:.0%} eager, "
                f"{row['fused_mfu_ceiling']:.0%} fused",
                flush=True,
            )
    record = {
        **record_header("roofline", torch, transformers),
        "settings": {
            "batch": args.batch,
            "sensors": 306,
            "samples": 1000,
            "patch_length": PATCH_LENGTH,
            "kernel_us": args.kernel_us,
            "traced": f"CPU, bf16 autocast, batch {TRACED}, extrapolated per operator",
        },
        "gpus": [
            {"preset": key, **vars(gpu), "models": rows[key]}
            for key, gpu in zip(args.gpus, gpus, strict=True)
        ],
    }
    table = markdown(record)
    record["markdown"] = table
    print("\n" + table)
    output = args.output or RESULTS / "roofline.json"
    write_results(output, record)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
