"""Prompt tuning versus full fine-tuning of the same network on the same batch.

For one model, measures the training step time (forward, the method's loss, backward, AdamW step)
and the peak memory of

- prompt tuning: the model as rsprompt builds it (frozen encoder, trainable prompts + decoder);
- full fine-tuning: the very same network with every parameter trainable,

each in its own process (clean peak memory: CUDA peak allocated, or the process's peak RSS on the
CPU), prints them side by side with the ratio, and the checkpoint size of both (rsprompt's
``model.ckpt`` versus the full state dict that fine-tuning must save).

Besides the peak memory of the process, it counts the bytes autograd saves for the backward pass
in one step (saved activations: deterministic, unlike the RSS on a shared machine).

``--precision`` runs forward and loss under autocast (``auto`` resolves as ``rsprompt``:
bf16 where the hardware has it); ``--checkpoint-frozen`` recomputes the frozen encoder's blocks in
the backward pass (prompt tuning only: full fine-tuning has no frozen part). ``--frozen-bf16``
stores the frozen parameters and buffers in bfloat16 while the trainable modules stay float32
(prompt tuning only; needs ``--precision bf16``, since autocast casts each op's inputs to one
dtype); it also reports how far that step's loss and gradients are from the float32-stored one.

Example::

    python scripts/bench_train.py --method mobanet --encoder resnet18 --size 128 --batch 4
    python scripts/bench_train.py --method mobanet --encoder vit_small_patch14_dinov2 --size 266 \
        --batch 4 --precision bf16 --checkpoint-frozen
    python scripts/bench_train.py --method mobanet --encoder vit_small_patch14_dinov2 --size 266 \
        --batch 4 --precision bf16 --frozen-bf16 --device cuda
    python scripts/bench_train.py --method dplnet --encoder mit_b0 --size 256 --batch 4
    python scripts/bench_train.py --method gopt --encoder vit_base_patch16_224 --device cuda
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _build(args: argparse.Namespace):
    from rsprompt.engine.checkpoint import build_seeded

    return build_seeded(
        args.method,
        args.encoder,
        args.num_classes,
        args.aux_channels,
        None,
        0,
        **json.loads(args.model_kwargs),
    )


def _step(model: Any, image: Any, aux: Any, target: Any, dev: Any, precision: str) -> Any:
    from rsprompt.engine.precision import autocast

    with autocast(dev, precision):
        out = model(image, aux)
        out = out if isinstance(out, dict) else {"logits": out}
        return model.compute_loss(out, target)["loss"]


def _saved_bytes(model: Any, image: Any, aux: Any, target: Any, dev: Any, precision: str) -> int:
    """Bytes autograd saves for the backward pass of one step."""
    import torch

    sizes: dict[int, int] = {}

    def pack(t: Any) -> Any:
        sizes[id(t)] = t.numel() * t.element_size()  # a tensor saved twice counts once
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _step(model, image, aux, target, dev, precision)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(sizes.values())


def _store_frozen_bf16(model: Any) -> int:
    """Cast every module whose own parameters are all frozen to bfloat16; returns the count.

    Trainable modules (prompts, adapters, decoder) and their buffers stay float32.
    """
    import torch

    cast = 0
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            for p in own:
                p.data = p.data.to(torch.bfloat16)
            for name, b in module.named_buffers(recurse=False):
                if b.is_floating_point():
                    setattr(module, name, b.to(torch.bfloat16))
            cast += 1
    return cast


def _grad_error(model: Any, image: Any, aux: Any, target: Any, dev: Any, precision: str) -> dict:
    """Loss and gradient of one step with float32-stored versus bf16-stored frozen weights."""
    import copy

    import torch

    def grads(m: Any) -> tuple[float, list[Any]]:
        torch.manual_seed(1)  # same random masks/dropout in both steps
        loss = _step(m, image, aux, target, dev, precision)
        loss.backward()
        out = [p.grad.detach().float().clone() for p in m.parameters() if p.requires_grad]
        m.zero_grad(set_to_none=True)
        return float(loss), out

    ref_loss, ref = grads(model)
    low = copy.deepcopy(model)
    cast = _store_frozen_bf16(low)
    loss, got = grads(low)
    num = sum(float((a - b).norm() ** 2) for a, b in zip(got, ref, strict=True)) ** 0.5
    den = sum(float(b.norm() ** 2) for b in ref) ** 0.5
    del low
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "modules": cast,
        "loss_delta": abs(loss - ref_loss),
        "grad_rel_error": num / max(den, 1e-30),
    }


def _run(mode: str, args: argparse.Namespace, queue: Any) -> None:
    import torch

    from rsprompt.engine.checkpoint import save_model_checkpoint
    from rsprompt.engine.precision import resolve_precision
    from rsprompt.models.checkpointing import set_frozen_checkpointing

    torch.manual_seed(0)
    dev = torch.device(args.device)
    precision = resolve_precision(args.precision, dev)
    model = _build(args)
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif args.checkpoint_frozen:
        set_frozen_checkpointing(model)
    model.to(dev).train()
    g = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(dev)
    aux = torch.randn(args.batch, max(1, model.aux_channels), args.size, args.size, generator=g).to(
        dev
    )
    aux = aux if model.aux_channels else None
    target = torch.randint(0, args.num_classes, (args.batch, args.size, args.size), generator=g).to(
        dev
    )
    params = [p for p in model.parameters() if p.requires_grad]
    error = None
    if args.frozen_bf16 and mode == "prompt":
        error = _grad_error(model, image, aux, target, dev, precision)
        _store_frozen_bf16(model)
    opt = torch.optim.AdamW(params, lr=1e-4)
    saved = _saved_bytes(model, image, aux, target, dev, precision)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(args.warmup + args.steps):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        loss = _step(model, image, aux, target, dev, precision)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt"
        if mode == "prompt":
            save_model_checkpoint(path, model, {"method": args.method})
        else:
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)
        size = path.stat().st_size
    queue.put(
        {
            "mode": mode,
            "step_s": statistics.median(times),
            "peak_bytes": peak,
            "saved_bytes": saved,
            "precision": precision,
            "trainable": sum(p.numel() for p in params),
            "ckpt_bytes": size,
            "frozen_bf16_error": error,
        }
    )


def _measure(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(mode, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="mobanet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--num-classes", type=int, default=6)
    parser.add_argument("--aux-channels", type=int, default=None)
    parser.add_argument("--model-kwargs", default="{}", help="JSON options for build_model.")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--precision", default="32", help="auto, 32, bf16 or 16 (autocast).")
    parser.add_argument(
        "--checkpoint-frozen",
        action="store_true",
        help="Prompt tuning recomputes the frozen blocks in the backward pass.",
    )
    parser.add_argument(
        "--frozen-bf16",
        action="store_true",
        help="Prompt tuning stores the frozen parameters in bfloat16 (needs --precision bf16).",
    )
    args = parser.parse_args()
    if args.frozen_bf16 and args.precision != "bf16":
        parser.error("--frozen-bf16 needs --precision bf16 (autocast casts every op's inputs)")
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    prompt = _measure("prompt", args)
    full = _measure("full", args)
    ckpt = ", frozen blocks checkpointed" if args.checkpoint_frozen else ""
    ckpt += ", frozen weights stored in bf16" if args.frozen_bf16 else ""
    print(
        f"{args.method} on {args.encoder}, batch {args.batch}×{args.size}², {args.device}, "
        f"precision {prompt['precision']}{ckpt}"
    )
    print(f"{'':<22}{'prompt tuning':>18}{'full fine-tuning':>20}{'prompt / full':>16}")
    rows = [
        (
            "trainable params",
            f"{prompt['trainable']:,}",
            f"{full['trainable']:,}",
            prompt["trainable"] / full["trainable"],
        ),
        (
            "step time",
            f"{prompt['step_s'] * 1e3:,.1f} ms",
            f"{full['step_s'] * 1e3:,.1f} ms",
            prompt["step_s"] / full["step_s"],
        ),
        (
            "peak memory" + (" (RSS)" if args.device == "cpu" else ""),
            _mb(prompt["peak_bytes"]),
            _mb(full["peak_bytes"]),
            prompt["peak_bytes"] / full["peak_bytes"],
        ),
        (
            "saved activations",
            _mb(prompt["saved_bytes"]),
            _mb(full["saved_bytes"]),
            prompt["saved_bytes"] / full["saved_bytes"],
        ),
        (
            "checkpoint size",
            _mb(prompt["ckpt_bytes"]),
            _mb(full["ckpt_bytes"]),
            prompt["ckpt_bytes"] / full["ckpt_bytes"],
        ),
    ]
    for name, a, b, ratio in rows:
        print(f"{name:<22}{a:>18}{b:>20}{ratio:>15.3g}×")
    err = prompt["frozen_bf16_error"]
    if err is not None:
        print(
            f"frozen weights of {err['modules']} modules in bf16 vs float32 (same step, bf16 "
            "autocast): |Δloss| "
            f"{err['loss_delta']:.2e}, gradient relative error {err['grad_rel_error']:.2e}"
        )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
