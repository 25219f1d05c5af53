"""The training loop shared by every trained pipeline (supervised classifier, AFF-CL, SimCLR,
fine-tuning, segmenter).

Built on Lightning Fabric (``lightning_fabric``): mixed precision on CUDA (bf16 where the
GPU supports it, else fp16 with loss scaling), and several GPUs or processes through DDP
when started by ``torchrun`` (``torchrun --nproc_per_node N -m brainspineai train ...``;
every process trains on its own share of each epoch's permutation, ``batch_size`` is per
process, and only process 0 writes checkpoints, events and the model).

Per epoch it writes a checkpoint ``<out>.work/last.pt`` atomically (model, optimiser,
scheduler, random states, history and every extra stateful object such as the SupCon
memory queue); ``resume=True`` continues from it and refuses a checkpoint made with
another configuration, naming the settings that differ. Checkpoints are loaded with
``torch.load(weights_only=True)``, written under unique temporary names, and the run holds
a lock on ``<out>.work/lock`` (a second run on the same ``--out`` is refused); SIGTERM stops
it cleanly (see :mod:`brainspineai.checkpoint`). Progress: a tqdm bar on stderr, and events (JSON-ready dicts) to a
callable: ``{"event": "step", "pipeline", "epoch", "epochs", "step", "steps", "loss",
"eta_s"}`` every ``log_every`` steps, ``{"event": "epoch", ..., "metrics": {...}}`` after
each epoch (once its checkpoint is written), ``{"event": "resume", "pipeline", "epoch"}``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError


@dataclass
class CommonConfig:
    """Settings every training pipeline shares (rates per optimiser step, sizes in images).

    ``limit_per_class`` > 0 keeps a seeded random subset of at most that many images per
    class (quick runs); ``model_id`` defaults to the output folder's name; ``extra_card``
    is merged into the model card (e.g. a description); ``init_model`` (id or folder) starts
    from that model's weights and makes the result its next version (:mod:`brainspineai.retrain`).
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 5e-4
    val_fraction: float = 0.15
    seed: int = 0
    device: str = "auto"
    limit_per_class: int = 0
    model_id: str = ""
    extra_card: dict = field(default_factory=dict)
    init_model: str = ""  # start from this catalogue model's weights (see brainspineai.retrain)

    def check(self) -> None:
        """:raises InputError: naming the first setting out of range."""
        rules = [("epochs", self.epochs >= 1, ">= 1"), ("batch_size", self.batch_size >= 2, ">= 2 (batch norm)"),
                 ("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
                 ("limit_per_class", self.limit_per_class >= 0, ">= 0")]
        rules += [(name, ok, want) for name, ok, want in self.extra_rules()]
        for name, ok, want in rules:
            if not ok:
                raise InputError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be {want}")

    def extra_rules(self) -> list:
        return []


def make_fabric(device: str = "auto"):
    """A launched ``lightning_fabric.Fabric`` for ``device`` (``auto``, ``cpu``, ``cuda``,
    ``mps``); under ``torchrun`` it joins the process group (gloo on CPU, NCCL on CUDA)."""
    from lightning_fabric import Fabric
    from lightning_fabric.strategies import DDPStrategy

    from .device import resolve_device

    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    precision = precision_for(dev.type)
    strategy = DDPStrategy(find_unused_parameters=True) if world > 1 else "auto"
    fabric = Fabric(accelerator=dev.type, devices=local, num_nodes=max(1, world // local), strategy=strategy,
                    precision=precision)
    fabric.launch()
    return fabric


def precision_for(device_type: str) -> str:
    """Fabric precision used on a device type: bf16 (or fp16 with loss scaling) mixed
    precision on CUDA, float32 elsewhere."""
    import torch

    if device_type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


class QueueState:
    """Checkpoint adapter for pytorch-metric-learning's ``CrossBatchMemory``: its buffers
    plus the write position and the filled flag, which are plain attributes."""

    def __init__(self, memory):
        self.memory = memory

    def state_dict(self):
        m = self.memory
        return {"embedding_memory": m.embedding_memory.detach().cpu().clone(),
                "label_memory": m.label_memory.detach().cpu().clone(),
                "queue_idx": int(m.queue_idx), "has_been_filled": bool(m.has_been_filled)}

    def load_state_dict(self, state):
        m = self.memory
        m.embedding_memory = state["embedding_memory"].to(m.embedding_memory.device)
        m.label_memory = state["label_memory"].to(m.label_memory.device)
        m.queue_idx, m.has_been_filled = state["queue_idx"], state["has_been_filled"]


def fit(*, pipeline: str, fabric, model, optimizer, scheduler, n_train: int, batch_size: int, epochs: int,
        step_fn, eval_fn, out_dir, config: dict, seed: int, resume: bool = False, progress=None,
        stateful: dict | None = None, log_every: int = 10) -> dict:
    """Run the epochs.

    :param model, optimizer: already passed through ``fabric.setup``.
    :param scheduler: a per-step learning-rate scheduler (stepped after every optimiser step).
    :param n_train: number of training items; each epoch permutes ``range(n_train)``.
    :param step_fn: ``step_fn(indices: LongTensor, generator) -> (loss, logs)``, the forward
        pass and loss of one batch (backward and the optimiser step are done here); ``logs``
        maps names to detached scalar tensors, read only when a step event is emitted.
    :param eval_fn: ``eval_fn() -> dict`` of float metrics after each epoch (may be empty).
    :param config: JSON-ready configuration; a checkpoint is resumed only under the same one
        and the same process count (``device`` excepted; see :mod:`brainspineai.checkpoint`).
    :param stateful: extra objects with ``state_dict`` / ``load_state_dict`` to checkpoint
        (their states: tensors and plain values only, as the checkpoint is loaded with
        ``torch.load(weights_only=True)``).
    :returns: ``{"history": [per-epoch dicts], "train_seconds", "images_per_second"}``.
    :raises InputError: a checkpoint of another pipeline or configuration, an unreadable
        or unsafe checkpoint, another run holding ``<out>.work/lock``.
    :raises BrainSpineAIError: a checkpoint could not be written (the last good one is kept).
    :raises Terminated: SIGTERM (the checkpoint being written is removed, the last one kept).
    """
    from .checkpoint import run_lock

    with run_lock(out_dir, fabric.global_rank):
        return _fit(pipeline, fabric, model, optimizer, scheduler, n_train, batch_size, epochs, step_fn, eval_fn,
                    out_dir, config, seed, resume, progress, stateful or {}, log_every)


def _fit(pipeline, fabric, model, optimizer, scheduler, n_train, batch_size, epochs, step_fn, eval_fn, out_dir,
         config, seed, resume, progress, stateful, log_every) -> dict:
    import json

    import torch
    from tqdm.auto import tqdm

    from .checkpoint import CHECKPOINT_NAME, FORMAT, comparable_config, load_for_resume, work_dir, write_checkpoint

    ckpt_path = work_dir(out_dir) / CHECKPOINT_NAME
    rank, world = fabric.global_rank, fabric.world_size
    per_step = batch_size * world
    steps = steps_per_epoch(n_train, batch_size, world)
    gen = torch.Generator().manual_seed(seed)
    history, start_epoch, seconds_before, images_seen = [], 0, 0.0, 0
    comparable = comparable_config(config, world)

    ck = load_for_resume(out_dir, pipeline, config, world) if resume else None
    if ck is not None:  # pipeline and configuration checked before anything of it is used
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        for name, obj in stateful.items():
            obj.load_state_dict(ck["stateful"][name])
        start_epoch, history, seconds_before = int(ck["epoch"]), json.loads(ck["history"]), float(ck["train_seconds"])
        images_seen = int(ck.get("images_seen", 0))
        del ck
        if progress and rank == 0:
            progress({"event": "resume", "pipeline": pipeline, "epoch": start_epoch})

    t_start = time.time()
    steps_done_here, total_steps = 0, steps * epochs
    step = start_epoch * steps
    for epoch in range(start_epoch, epochs):
        model.train()
        perm = torch.randperm(n_train, generator=gen)
        losses = []
        bar = tqdm(range(steps), desc=f"{pipeline} epoch {epoch + 1}/{epochs}", leave=False,
                   disable=None if rank == 0 else True)
        for b in bar:
            chunk = perm[b * per_step:(b + 1) * per_step]
            idx = chunk[rank::world]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            loss, logs = step_fn(idx, gen)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
            scheduler.step()
            step += 1
            steps_done_here += 1
            images_seen += len(idx) * world
            losses.append(loss.detach())  # read back every log_every steps, not every step (GPU sync)
            if step % log_every == 0:
                recent = float(torch.stack(losses[-log_every:]).float().mean())
                bar.set_postfix(loss=f"{recent:.3f}")
                if progress and rank == 0:
                    eta = (time.time() - t_start) / steps_done_here * (total_steps - step)
                    progress({"event": "step", "pipeline": pipeline, "epoch": epoch + 1, "epochs": epochs,
                              "step": step, "steps": total_steps, "loss": recent,
                              **{k: float(v) for k, v in logs.items()}, "eta_s": round(eta, 1)})
        model.eval()
        metrics = eval_fn() if eval_fn else {}
        elapsed = seconds_before + time.time() - t_start
        rec = {"epoch": epoch + 1, "loss": float(torch.stack(losses).float().mean()) if losses else float("nan"),
               "lr": float(scheduler.get_last_lr()[0]), **metrics}
        history.append(rec)
        if rank == 0:
            # tensors and plain values only (loaded back with weights_only=True); config and history as JSON
            state = {"format": FORMAT, "pipeline": pipeline, "config": json.dumps(comparable, sort_keys=True),
                     "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "generator": gen.get_state(),
                     "torch_rng": torch.get_rng_state(), "epoch": epoch + 1, "history": json.dumps(history),
                     "train_seconds": float(elapsed), "images_seen": int(images_seen),
                     "stateful": {name: obj.state_dict() for name, obj in stateful.items()}}
            write_checkpoint(state, ckpt_path)
            del state
            eta = (time.time() - t_start) / max(1, epoch + 1 - start_epoch) * (epochs - epoch - 1)
            if progress:  # after the checkpoint: an epoch event means the epoch is saved
                progress({"event": "epoch", "pipeline": pipeline, "epoch": epoch + 1, "epochs": epochs, "step": step,
                          "steps": total_steps, "loss": rec["loss"], "metrics": metrics, "eta_s": round(eta, 1)})
        fabric.barrier()
    seconds = seconds_before + time.time() - t_start
    return {"history": history, "train_seconds": round(seconds, 1),
            "images_per_second": round(images_seen / seconds, 1) if seconds > 0 else None}


def one_cycle(optimizer, lr: float, epochs: int, steps_per_epoch: int):
    """AdamW-friendly one-cycle schedule (20% warm-up), stepped per optimiser step.

    Short runs: ``torch.optim.lr_scheduler.OneCycleLR`` divides by ``pct_start * total - 1``,
    which is 0 for 5 steps at 20% (ZeroDivisionError), so the warm-up is
    ``max(2, round(0.2 * total))`` steps (at most half the run); under 4 steps in all there
    is no cycle to make and the rate stays at ``lr``.
    """
    import torch

    total = max(1, epochs) * max(1, steps_per_epoch)
    if total < 4:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _constant_rate)
    pct = min(max(2, round(0.2 * total)) / total, 0.5)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=pct)


def _constant_rate(step: int) -> float:  # module-level so the scheduler's state pickles
    return 1.0


def steps_per_epoch(n_train: int, batch_size: int, world: int) -> int:
    """Optimiser steps per epoch in :func:`fit` (same rule)."""
    per_step = batch_size * world
    return max(1, n_train // per_step) if n_train >= per_step else 1


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

