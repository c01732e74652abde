"""The epoch loop both stages share: SGD + StepLR, AMP, DDP, evaluation, checkpoints, resume.

A stage supplies a :class:`Task` (its model, batches, loss and metrics); :func:`fit`
runs the paper's schedule (section IV-B) around it:

* per epoch: seed (seed, epoch, rank) -> train steps -> validation over every
  sample of the split (gathered from all ranks) -> StepLR step -> ``last.pt``
  (and ``best.pt`` on a new best validation loss) -> ``metrics.csv`` row ->
  early stopping after ``patience`` epochs without improvement;
* a non-finite training loss stops the run with :class:`NonFiniteLossError`
  naming the epoch and step; no checkpoint is written after it, so ``last.pt``
  stays the last good state;
* ``--resume`` restores model, optimiser, scheduler, AMP scaler, early-stopping
  state, counters and RNG states from ``last.pt`` and continues with the next
  epoch; because an epoch's data order and random draws depend only on (seed,
  epoch, rank), the resumed run ends with the weights an uninterrupted run has.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..errors import GPFError
from ..fsutil import atomic_write
from ..model.checkpoint import Checkpoint
from ..pipeline.progress import Progress
from .config import TrainConfig, to_dict
from .distributed import (DistContext, all_reduce_max, all_reduce_sum, gather_objects,
                                   gather_rows)
from .runlog import DataWaitTimer, MetricsCSV, RunLog, TensorBoard, epoch_summary
from .schedule import EarlyStopping, make_optimizer, make_scheduler
from .state import rng_state, seed_epoch, set_rng_state

LAST = "last.pt"
BEST = "best.pt"
METRICS = "metrics.csv"
LOG = "train.log"


class NonFiniteLossError(GPFError):
    """The loss (or the weights) became NaN or infinite; the message names where."""


@dataclass
class StepInfo:
    """What a test hook sees after each optimiser step."""
    epoch: int              # 1-based
    step: int               # 1-based step within the epoch
    global_step: int        # steps since the start of the run (all epochs)
    loss: torch.Tensor
    model: nn.Module        # the unwrapped model
    batch: Any = None       # the batch just trained on (as the task's loader yields it)


@dataclass
class TrainHooks:
    """Callbacks for tests and tools (e.g. raise after N steps to simulate a kill)."""
    after_step: Callable[[StepInfo], None] | None = None
    after_epoch: Callable[[dict], None] | None = None


@dataclass
class RunResult:
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    epochs_completed: int
    best_epoch: int | None          # 1-based
    best_val_loss: float
    stopped: str                    # 'max_epochs' | 'early_stopping' | 'nothing_to_do'
    history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Task(ABC):
    """What a stage gives the loop. ``forward`` arguments are the (maybe DDP-wrapped) model."""

    name: str = "train"
    model: nn.Module
    train_samples: int = 0          # samples per epoch over all ranks (for the progress total)

    def set_train_mode(self, model: nn.Module) -> None:
        """Put the model in training mode (stage 2 keeps its frozen peripheral in eval)."""
        model.train()

    @abstractmethod
    def train_batches(self, epoch: int) -> Iterable:
        """This rank's batches of 0-based ``epoch``; the order depends only on (seed, epoch)."""

    @abstractmethod
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, equal on every rank."""

    @abstractmethod
    def val_batches(self) -> Iterable:
        """This rank's share of the validation split (every sample once over all ranks)."""

    @abstractmethod
    def train_loss(self, forward: Callable, batch) -> tuple[torch.Tensor, int]:
        """(mean loss of the batch, samples in it)."""

    @abstractmethod
    def eval_outputs(self, forward: Callable, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions [B, ...], targets [B, ...]) of one validation batch."""

    @abstractmethod
    def val_metrics(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict:
        """``val_loss`` and the metrics of the whole validation split."""

    @abstractmethod
    def checkpoint(self) -> Checkpoint:
        """The stage's checkpoint (format, model config, weights, data facts) without the trainer state."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called on every rank after validation (e.g. to gather per-rank reports)."""


# ----------------------------------------------------------------------------- AMP

@dataclass
class Amp:
    enabled: bool
    dtype: torch.dtype | None
    device_type: str
    scaler: Any = None              # torch.amp.GradScaler for fp16

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward_step(self, loss, optimizer) -> None:
        """``loss.backward()`` and ``optimizer.step()``, through the fp16 loss scaler when there is one."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()

    @property
    def label(self) -> str:
        return "off" if not self.enabled else str(self.dtype).replace("torch.", "")


def resolve_amp(flag: bool | None, device: torch.device) -> Amp:
    """AMP on CUDA by default: bf16 where supported, fp16 with a GradScaler otherwise; CPU: off
    unless asked (then bf16)."""
    enabled = device.type == "cuda" if flag is None else bool(flag)
    if not enabled:
        return Amp(False, None, device.type)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Amp(True, torch.bfloat16, "cuda")
        return Amp(True, torch.float16, "cuda", torch.amp.GradScaler("cuda"))
    return Amp(True, torch.bfloat16, device.type)


# ----------------------------------------------------------------------------- helpers

def to_cpu(obj):
    """A copy of ``obj`` with every tensor moved to the CPU (for checkpoints)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return [to_cpu(v) for v in obj]
    return obj


def plain(obj):
    """``obj`` with str subclasses (e.g. ``torch.__version__``, a TorchVersion) turned into str and
    numpy scalars into Python numbers, so ``torch.load(weights_only=True)`` accepts the file."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj) if type(obj) in (list, tuple) else [plain(v) for v in obj]
    if hasattr(obj, "item") and hasattr(obj, "dtype"):     # numpy scalar
        return obj.item()
    return obj


def nonfinite_weights(model: nn.Module) -> list[str]:
    """Names of parameters and buffers holding NaN or inf."""
    bad = []
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(name)
    return bad


def _copy_atomic(src: Path, dst: Path) -> None:
    with open(src, "rb") as source:
        atomic_write(dst, lambda handle: shutil.copyfileobj(source, handle))


class _LossWatch:
    """Collects per-step losses and checks them for NaN/inf every ``interval`` steps.

    On a GPU a check is a device sync, hence the interval; all ranks agree on
    the first bad step (MAX all-reduce of its negation).
    """

    NONE = 2 ** 62

    def __init__(self, ctx: DistContext, interval: int):
        self.ctx = ctx
        self.interval = interval
        self.pending: list[tuple[int, int, torch.Tensor]] = []

    def add(self, step: int, global_step: int, loss: torch.Tensor) -> None:
        self.pending.append((step, global_step, loss.detach()))

    def due(self) -> bool:
        return len(self.pending) >= self.interval

    def check(self, epoch: int) -> None:
        first = self.NONE
        local = None
        if self.pending:
            values = torch.stack([p[2].float() for p in self.pending])
            finite = torch.isfinite(values).cpu()
            if not bool(finite.all()):
                index = int((~finite).nonzero()[0])
                local = self.pending[index]
                first = local[1]
        self.pending.clear()
        flag = all_reduce_max(self.ctx, torch.tensor([-first], dtype=torch.long))
        first_global = -int(flag[0])
        if first_global < self.NONE:
            where = (f"epoch {epoch}, step {local[0]} of the epoch (global step {first_global})"
                     if local is not None and local[1] == first_global
                     else f"epoch {epoch}, global step {first_global} (on another rank)")
            value = f" ({float(local[2])})" if local is not None and local[1] == first_global else ""
            raise NonFiniteLossError(
                f"the training loss became non-finite{value} at {where}; training stopped and "
                "nothing was saved after the last good checkpoint. Lower --lr, check the data, "
                "or try --no-amp, then --resume the run or start it afresh.")


# ----------------------------------------------------------------------------- the loop

class Trainer:
    """Runs :class:`Task` ``task`` under config ``cfg`` into ``run_dir``."""

    def __init__(self, task: Task, cfg: TrainConfig, ctx: DistContext, run_dir: Path, *,
                 hooks: TrainHooks | None = None, log: RunLog | None = None,
                 resume_state: Checkpoint | None = None):
        self.task, self.cfg, self.ctx = task, cfg, ctx
        self.run_dir = Path(run_dir)
        self.hooks = hooks or TrainHooks()
        self.log = log or RunLog(None, enabled=False)
        self.model = task.model
        self.amp = resolve_amp(cfg.amp, ctx.device)
        self.optimizer = make_optimizer(self.model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg.lr_step, cfg.lr_gamma)
        self.stopper = EarlyStopping(cfg.patience)
        self.start_epoch = 0            # 0-based index of the next epoch
        self.global_step = 0
        self.history: list[dict] = []
        if resume_state is not None:
            self._restore(resume_state)
        self.forward = self._wrap(self.model)
        self.metrics = MetricsCSV(self.run_dir / METRICS, enabled=ctx.is_main)
        self.tensorboard = TensorBoard(self.run_dir / "tensorboard", enabled=ctx.is_main and cfg.tensorboard)

    # -- setup
    def _wrap(self, model: nn.Module):
        forward = model
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            forward = DDP(model, device_ids=device_ids)
        if self.cfg.compile:
            forward = torch.compile(forward)
        return forward

    def _restore(self, state: Checkpoint) -> None:
        train = state.train
        self.model.load_state_dict(state.state_dict)
        self.optimizer.load_state_dict(train["optimizer"])
        self.scheduler.load_state_dict(train["scheduler"])
        if self.amp.scaler is not None and train.get("scaler"):
            self.amp.scaler.load_state_dict(train["scaler"])
        self.stopper.load_state_dict(train["early_stopping"])
        self.start_epoch = int(train["epoch"])
        self.global_step = int(train["step"])
        self.history = list(train.get("history", []))
        rng = train.get("rng", {})
        if self.ctx.rank < len(rng.get("ranks", [])):
            set_rng_state(rng["ranks"][self.ctx.rank])

    # -- one epoch
    def _train_epoch(self, epoch: int) -> dict:
        task, cfg, ctx = self.task, self.cfg, self.ctx
        task.set_train_mode(self.model)
        steps = task.steps_per_epoch()
        if cfg.limit_train_batches:
            steps = min(steps, cfg.limit_train_batches)
        batch_total = steps * cfg.batch_size
        if task.train_samples:
            batch_total = min(batch_total, task.train_samples)
        progress = Progress(batch_total, f"{task.name} epoch {epoch + 1}/{cfg.epochs}", unit="img",
                            enabled=cfg.progress and ctx.is_main)
        watch = _LossWatch(ctx, 1 if ctx.device.type == "cpu" else cfg.log_interval)
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        samples = 0
        timer = DataWaitTimer()
        step = 0
        for batch in timer.iterate(task.train_batches(epoch)):
            with self.amp.autocast():
                loss, n = task.train_loss(self.forward, batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.amp.backward_step(loss, self.optimizer)
            step += 1
            self.global_step += 1
            loss_sum += loss.detach().double() * n
            samples += n
            watch.add(step, self.global_step, loss)
            if watch.due():
                watch.check(epoch + 1)
            if self.hooks.after_step is not None:
                self.hooks.after_step(StepInfo(epoch + 1, step, self.global_step, loss.detach(), self.model,
                                              batch))
            progress.update(n * ctx.world_size, **{"data-wait": f"{timer.fraction:.0%}"})
            if step >= steps:           # --limit-train-batches (the loader ends by itself otherwise)
                break
        watch.check(epoch + 1)
        self._sync_buffers()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        elapsed = timer.elapsed_s
        wait_fraction = timer.fraction
        progress.close()
        totals = all_reduce_sum(ctx, torch.tensor([float(loss_sum), float(samples), wait_fraction],
                                                  dtype=torch.float64))
        total_samples = float(totals[1])
        return {"train_loss": float(totals[0]) / total_samples if total_samples else math.nan,
                "samples_per_s": total_samples / elapsed if elapsed > 0 else math.nan,
                "data_wait": float(totals[2]) / ctx.world_size, "steps": step}

    @torch.no_grad()
    def _sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BN running statistics).

        DDP broadcasts buffers at the start of each forward, so after the last
        step of an epoch they differ by that step's update; validation and the
        checkpoint must see one model.
        """
        if not self.ctx.distributed:
            return
        import torch.distributed as dist

        for buffer in self.model.buffers():
            dist.broadcast(buffer, src=0)

    @torch.no_grad()
    def _validate(self) -> dict:
        """Metrics over the whole validation split; the unwrapped model (ranks may see
        different numbers of batches, so no collective may run per batch)."""
        self.model.eval()
        predictions, targets = [], []
        with self.amp.autocast():
            for batch in self.task.val_batches():
                pred, target = self.task.eval_outputs(self.model, batch)
                predictions.append(pred.detach().float())
                targets.append(target.detach().float())
        pred = torch.cat(predictions) if predictions else torch.zeros(0)
        target = torch.cat(targets) if targets else torch.zeros(0)
        pred, target = gather_rows(self.ctx, pred), gather_rows(self.ctx, target)
        if pred.shape[0] == 0:
            raise GPFError("the validation split is empty: early stopping and best.pt need it; "
                           "keep a validation split (e.g. --val-size) when making the data")
        return self.task.val_metrics(pred, target)

    # -- checkpoints
    def _checkpoint(self, epoch_done: int, rng_states: list[dict]) -> Checkpoint:
        checkpoint = self.task.checkpoint()
        checkpoint.config = plain(to_dict(self.cfg))
        checkpoint.train = plain({
            "epoch": epoch_done,
            "step": self.global_step,
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "scheduler": to_cpu(self.scheduler.state_dict()),
            "scaler": self.amp.scaler.state_dict() if self.amp.scaler is not None else None,
            "early_stopping": self.stopper.state_dict(),
            "rng": {"ranks": rng_states},
            "history": self.history,
            "world_size": self.ctx.world_size,
        })
        for name in ("model_config", "meta", "dataset", "shards"):
            setattr(checkpoint, name, plain(getattr(checkpoint, name)))
        return checkpoint

    def _save(self, epoch_done: int, improved: bool) -> None:
        from ..model.checkpoint import save_checkpoint

        bad = nonfinite_weights(self.model)
        if bad:
            raise NonFiniteLossError(
                f"after epoch {epoch_done} the weights hold NaN/inf ({', '.join(bad[:5])}"
                f"{' ...' if len(bad) > 5 else ''}); nothing was saved, {self.run_dir / LAST} is the "
                "last good state. Lower --lr or try --no-amp.")
        rng_states = gather_objects(self.ctx, rng_state())   # every rank takes part
        if not self.ctx.is_main:
            return
        save_checkpoint(self.run_dir / LAST, self._checkpoint(epoch_done, rng_states))
        if improved:
            _copy_atomic(self.run_dir / LAST, self.run_dir / BEST)

    # -- the run
    def fit(self) -> RunResult:
        cfg, ctx = self.cfg, self.ctx
        if self.start_epoch:
            self.metrics.truncate_after(self.start_epoch)
            self.log(f"resuming after epoch {self.start_epoch} (global step {self.global_step})")
        stopped = "max_epochs"
        if self.stopper.should_stop or self.start_epoch >= cfg.epochs:
            stopped = "nothing_to_do"
            self.log(f"nothing to do: {self.start_epoch} of {cfg.epochs} epochs done"
                     + (", early stopping already reached" if self.stopper.should_stop else ""))
        else:
            self.log(f"{self.task.name}: {self.task.steps_per_epoch()} steps/epoch x batch {cfg.batch_size} "
                     f"({ctx.world_size} process{'es' if ctx.world_size > 1 else ''}, {ctx.device}, "
                     f"AMP {self.amp.label})")
        for epoch in range(self.start_epoch if stopped != "nothing_to_do" else cfg.epochs, cfg.epochs):
            seed_epoch(cfg.seed, epoch, ctx.rank)
            lr = self.optimizer.param_groups[0]["lr"]
            started = time.perf_counter()
            train = self._train_epoch(epoch)
            val = self._validate()
            self.task.on_epoch_end(epoch + 1)
            val_loss = float(val["val_loss"])
            if not math.isfinite(val_loss):
                raise NonFiniteLossError(
                    f"the validation loss is {val_loss} after epoch {epoch + 1}; nothing was saved "
                    f"after the last good checkpoint ({self.run_dir / LAST}). Lower --lr or try --no-amp.")
            self.scheduler.step()
            improved = self.stopper.update(val_loss, epoch + 1)
            row = {"epoch": epoch + 1, "train_loss": train["train_loss"], **val, "lr": lr,
                   "samples_per_s": train["samples_per_s"], "data_wait": train["data_wait"],
                   "epoch_s": time.perf_counter() - started}
            self.history.append(plain(row))
            self._save(epoch + 1, improved)
            self.metrics.append(row)
            self.tensorboard.scalars(row, epoch + 1)
            self.log(epoch_summary(row) + ("  (best)" if improved else ""))
            if self.hooks.after_epoch is not None:
                self.hooks.after_epoch(row)
            if self.stopper.should_stop:
                stopped = "early_stopping"
                self.log(f"early stopping: no validation-loss improvement for {self.stopper.bad_epochs} "
                         f"epochs (best {self.stopper.best:.4f} at epoch {self.stopper.best_epoch})")
                break
        self.tensorboard.close()
        epochs_done = self.history[-1]["epoch"] if self.history else 0
        return RunResult(
            run_dir=self.run_dir,
            best_checkpoint=self.run_dir / BEST if (self.run_dir / BEST).exists() else None,
            last_checkpoint=self.run_dir / LAST if (self.run_dir / LAST).exists() else None,
            epochs_completed=int(epochs_done), best_epoch=self.stopper.best_epoch if self.stopper.best_epoch > 0 else None,
            best_val_loss=self.stopper.best, stopped=stopped, history=list(self.history))


def images_to_device(images: torch.Tensor, device: torch.device, normalize: Callable,
                     channels_last: bool) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> normalised float on ``device`` (non-blocking copy; pinned on CUDA)."""
    x = normalize(images.to(device, non_blocking=True))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
