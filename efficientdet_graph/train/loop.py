"""The training loop: any model spec, any graph; resumable, repeatable, distributed."""

from __future__ import annotations

import copy
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, EdgError, TrainingDiverged  # TrainingDiverged is re-exported here
from ..model import EfficientDet, create_model, save_atomic
from ..model.checkpoint import FORMAT, CheckpointError, model_from_checkpoint, read_checkpoint
from ..graph import graph_to_yaml
from .data import Augment, CocoDetection, DataError, EpochBatches, make_loader, num_categories, resolve_data
from .evaluate import evaluate
from .progress import MetricsLog, Progress, plot_curves
from .synthetic import make_synthetic
from .targets import DetectionLoss

__all__ = ["TrainConfig", "TrainingDiverged", "memory_format", "train", "train_step"]

DEFAULT_WORKERS = min(2, os.cpu_count() or 1)  # data loading processes; 0 loads in the training process


@dataclass(frozen=True)
class TrainConfig:
    model: str = "efficientdet-d0"
    data: str = "synthetic"
    out: str = "runs/train"
    epochs: int = 10
    batch_size: int = 16
    lr: float | None = None
    optimizer: str = "adamw"
    weight_decay: float | None = None
    warmup_epochs: float = 1.0
    # the backbone's learning rate as a multiple of lr, for the first backbone_lr_epochs
    # epochs (None: the whole run): below 1 keeps pretrained features from being overwritten
    # while the neck and heads are still random (measured: docs/reference-table.md)
    backbone_lr: float = 1.0
    backbone_lr_epochs: float | None = None
    ema_decay: float = 0.9998
    clip_grad: float = 10.0
    device: str = "auto"
    seed: int = 0
    image_size: int | None = None
    graph: str | None = None
    # the spec's feature-network depth and width, replaced (an ablation at matched FLOPs)
    fpn_repeat: int | None = None
    fpn_channels: int | None = None
    resume: bool = False
    freeze_bn: bool = False
    sync_bn: bool = False
    workers: int = DEFAULT_WORKERS
    eval_every: int = 1
    log_every: int = 10
    max_steps: int | None = None
    save_every: int | None = None  # steps between mid-epoch checkpoints (besides one per epoch)
    augment: Augment | None = Augment()  # None: no augmentation (letterboxed like evaluation)
    amp: str = "auto"  # auto (CUDA: bf16 where supported, else fp16; CPU: off) | off | bf16 | fp16
    class_names: tuple[str, ...] | None = None  # display names, in category-id order (default: the data's)
    train_data: tuple[str, str] | None = None  # (annotation file, image folder), instead of data's train split
    val_data: tuple[str, str] | None = None  # (annotation file, image folder), instead of data's val split
    # a checkpoint (an `edg train` last.pt) whose backbone weights start this run: a backbone
    # trained on the user's own data, where no downloaded pretrained weights exist
    init: str | None = None
    synthetic_train: int = 512
    synthetic_val: int = 128
    synthetic_classes: int = 3
    quiet: bool = False

    def __post_init__(self) -> None:
        # asdict() (checkpoints, results files) turns these into a dict and lists: take them back
        if isinstance(self.augment, dict):
            given = {k: tuple(v) if k == "scale" else v for k, v in self.augment.items()}
            object.__setattr__(self, "augment", Augment(**given))
        for key in ("class_names", "train_data", "val_data"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, tuple(getattr(self, key)))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


AMP_MODES = ("auto", "off", "bf16", "fp16")


def amp_mode(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast type ``mode`` means on ``device`` (None: full precision)."""
    if mode not in AMP_MODES:
        raise ConfigError(f"--amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--amp bf16: this GPU does not support bfloat16; use --amp fp16 or off")
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"--amp {mode}: mixed precision is supported on CUDA and CPU, not {device.type}")
    return torch.bfloat16 if mode == "bf16" else torch.float16


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on the CPU, where oneDNN's convolutions are much faster in that layout
    (benchmarks/README.md, the training step); on GPUs it is not measured yet: unchanged."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


class _Ema:
    """Exponential moving average of weights and buffers, with TF's warm-up of the decay."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self._pairs: tuple | None = None

    def _tensors(self, model: nn.Module) -> tuple:
        """The averaged and the copied tensors of both models, listed once: ``state_dict()``
        builds a new dict every call, and one ``_foreach`` kernel per list beats a loop."""
        if self._pairs is None or self._pairs[0] is not model:
            ema, live = self.model.state_dict(), model.state_dict()
            floats = [k for k, v in ema.items() if v.dtype.is_floating_point]
            others = [k for k, v in ema.items() if not v.dtype.is_floating_point]
            self._pairs = (model, [ema[k] for k in floats], [live[k].detach() for k in floats],
                           [ema[k] for k in others], [live[k].detach() for k in others])
        return self._pairs[1:]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        ema_f, live_f, ema_o, live_o = self._tensors(model)
        torch._foreach_lerp_(ema_f, live_f, 1 - d)  # e + (1 - d)(m - e) = d e + (1 - d) m
        for e, m in zip(ema_o, live_o):
            e.copy_(m)


def _data_paths(cfg: TrainConfig) -> Path:
    if cfg.data != "synthetic" or cfg.train_data:
        return Path(cfg.data)
    root = Path(cfg.out) / "data"
    marker = root / "val" / "annotations.json"
    if not marker.exists():
        make_synthetic(root, cfg.synthetic_train, cfg.synthetic_val, cfg.image_size or 128,
                       cfg.synthetic_classes, cfg.seed)
    return root


def _split(cfg: TrainConfig, root: Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of a split: as the config names it, else found under ``root``."""
    given = cfg.train_data if split == "train" else cfg.val_data
    return (Path(given[0]), Path(given[1])) if given else resolve_data(root, split)


def _build(cfg: TrainConfig, num_classes: int) -> EfficientDet:
    overrides = {"num_classes": num_classes}
    if cfg.image_size:
        overrides["image_size"] = cfg.image_size
    if cfg.graph:
        overrides["graph"] = cfg.graph
    for key in ("fpn_repeat", "fpn_channels"):
        if getattr(cfg, key) is not None:
            overrides[key] = getattr(cfg, key)
    return create_model(cfg.model, **overrides)


def _init_backbone(model: EfficientDet, path: str) -> None:
    """Copy the backbone weights of checkpoint ``path`` into ``model`` (strict: every
    backbone tensor, of the same shape), as timm's pretrained weights would be."""
    ckpt = read_checkpoint(path)
    weights = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(weights, dict):
        raise CheckpointError(f"--init {path}: not an efficientdet-graph checkpoint (no state_dict)")
    ours = model.backbone.state_dict()
    theirs = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    wrong = sorted(k for k in ours if k not in theirs or getattr(theirs[k], "shape", None) != ours[k].shape)
    if wrong:
        raise CheckpointError(f"--init {path}: its backbone does not fit this model's ({len(wrong)} of {len(ours)} "
                              f"tensors missing or of another shape, e.g. {wrong[0]!r}); it needs the same backbone "
                              f"({model.spec.backbone.name if model.spec.backbone else 'default'})")
    model.backbone.load_state_dict({k: theirs[k] for k in ours})


def _param_groups(model: EfficientDet, backbone_lr: float) -> list[dict]:
    """One group, or the backbone's then the rest's where the backbone has its own rate (a
    run of one group resumes as it was saved: the optimizer state keeps the groups' layout)."""
    if backbone_lr == 1.0:
        return [{"params": list(model.parameters())}]
    backbone = {id(p) for p in model.backbone.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) in backbone]},
            {"params": [p for p in model.parameters() if id(p) not in backbone]}]


def _lr_lambdas(cfg: TrainConfig, total: int, warmup: int, steps_per_epoch: int) -> list:
    """Each group's multiple of lr by step: the backbone's scaled by ``backbone_lr`` for its
    first ``backbone_lr_epochs`` epochs, then as the rest."""
    f = _lr_lambda(total, warmup)
    if cfg.backbone_lr == 1.0:
        return [f]
    until = total if cfg.backbone_lr_epochs is None else round(cfg.backbone_lr_epochs * steps_per_epoch)
    return [lambda step: f(step) * (cfg.backbone_lr if step < until else 1.0), f]


def _lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Warm-up in steps, at most a fifth of the run: a one-epoch run still decays."""
    return min(int(warmup_epochs * steps_per_epoch), total_steps // 5)


def train(cfg: TrainConfig) -> dict:
    """Train, evaluate every ``eval_every`` epochs, checkpoint every epoch; returns a summary."""
    started = not dist.is_initialized()
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (how schedulers preempt) and SIGINT: finish the step, save, stop
        _STOP.clear()
        for sig in (signal.SIGTERM, signal.SIGINT):
            handlers[sig] = signal.signal(sig, lambda signum, frame: _STOP.append(signum))
    try:
        return _train(cfg)
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
        if started and dist.is_initialized():
            dist.destroy_process_group()


_STOP: list[int] = []  # signals received during training


def _train(cfg: TrainConfig) -> dict:
    rank, world = _distributed()
    main = rank == 0
    device = _device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if cfg.workers < 0:
        raise ConfigError(f"workers must be >= 0 (0: load data in the training process), got {cfg.workers}")
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes")
    out = Path(cfg.out)
    if main:  # only rank 0 writes the synthetic set; the others wait, then find it
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".edg-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise EdgError(f"--out {out}: cannot write there ({e.strerror or e})") from None
        for stale in out.glob(".last.pt.*"):  # temp files of a save that a kill interrupted
            stale.unlink(missing_ok=True)
        root = _data_paths(cfg)
    if world > 1:
        dist.barrier()
        root = _data_paths(cfg)

    torch.manual_seed(cfg.seed)
    ckpt_path = out / "last.pt"
    resumed = read_checkpoint(ckpt_path) if cfg.resume and ckpt_path.exists() else None
    if cfg.resume and resumed is None and main:
        print(f"no checkpoint at {ckpt_path}; starting from scratch")
    if resumed is not None:
        model = model_from_checkpoint(resumed, ckpt_path)
        if not isinstance(resumed.get("train_state"), dict):
            raise CheckpointError(f"{ckpt_path}: no training state (written by save_model?); --resume needs the "
                                  "last.pt of an `edg train` run, or start a new run in another --out folder")
    else:
        model = _build(cfg, num_categories(_split(cfg, root, "train")[0]))
        if cfg.init:
            _init_backbone(model, cfg.init)
    size = model.spec.image_size
    train_ann, train_img = _split(cfg, root, "train")
    train_set = CocoDetection(train_ann, train_img, size, train=True, augment=cfg.augment)
    val_set = None
    try:
        val_ann, val_img = _split(cfg, root, "val")
        val_set = CocoDetection(val_ann, val_img, size, train=False)
    except DataError as e:
        if main:
            print(f"no validation split ({e}); training without evaluation")
    if train_set.num_classes != model.spec.num_classes:
        raise DataError(f"the data has {train_set.num_classes} classes, the model {model.spec.num_classes}")
    model.class_names = [str(train_set.category_names[c]) for c in train_set.category_ids]
    if cfg.class_names is not None:
        if len(cfg.class_names) != train_set.num_classes:
            raise DataError(f"class_names lists {len(cfg.class_names)} name(s), but {train_ann} has "
                            f"{train_set.num_classes} categories ({', '.join(model.class_names)}); give one name "
                            "per category, in category-id order")
        model.class_names = [str(n) for n in cfg.class_names]
    if main and not cfg.quiet:
        print(f"train data: {train_set.report}")
        if val_set is not None:
            print(f"val data:   {val_set.report}")

    if cfg.sync_bn and world > 1:
        if device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm only works on GPU modules "
                           "(on CPUs, use a larger per-process batch or --freeze-bn)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=memory_format(device))
    ema = _Ema(model, cfg.ema_decay)
    batches = EpochBatches(len(train_set), cfg.batch_size, cfg.seed, rank, world)
    loader = make_loader(train_set, batches, cfg.workers, pin_memory=device.type == "cuda")
    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch == 0:
        raise DataError(f"{len(train_set)} training images are fewer than one batch of {cfg.batch_size}")
    total_steps = steps_per_epoch * cfg.epochs
    if not (cfg.backbone_lr >= 0 and math.isfinite(cfg.backbone_lr)):
        raise ConfigError(f"backbone_lr is a multiple of lr, >= 0 (0: frozen backbone), got {cfg.backbone_lr}")
    epochs = cfg.backbone_lr_epochs
    if epochs is not None and not (epochs >= 0 and math.isfinite(epochs)):
        raise ConfigError(f"backbone_lr_epochs must be a number of epochs >= 0, got {cfg.backbone_lr_epochs}")
    if cfg.optimizer == "sgd":
        lr = cfg.lr or 0.08 * cfg.batch_size / 64
        opt = torch.optim.SGD(_param_groups(model, cfg.backbone_lr), lr=lr, momentum=0.9,
                              weight_decay=4e-5 if cfg.weight_decay is None else cfg.weight_decay)
    elif cfg.optimizer == "adamw":
        lr = cfg.lr or 2e-3
        opt = torch.optim.AdamW(_param_groups(model, cfg.backbone_lr), lr=lr,
                                weight_decay=0.01 if cfg.weight_decay is None else cfg.weight_decay, foreach=True)
    else:
        raise ConfigError(f"--optimizer must be sgd or adamw, got {cfg.optimizer!r}")
    warmup = warmup_steps(cfg.warmup_epochs, steps_per_epoch, total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambdas(cfg, total_steps, warmup, steps_per_epoch))
    start_epoch, step = 0, 0
    if resumed is not None:
        state = resumed["train_state"]
        was = state.get("config", {}).get("optimizer")
        if was and was != cfg.optimizer:
            raise ConfigError(f"{ckpt_path} was trained with --optimizer {was}; resume with the same optimizer "
                           "or start a new run in another --out folder")
        try:
            model.load_state_dict(state["model"])
            ema.model.load_state_dict(resumed["state_dict"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start_epoch, step = int(state["epoch"]), int(state["step"])
        except (KeyError, RuntimeError, TypeError, ValueError, IndexError) as e:
            raise CheckpointError(f"{ckpt_path}: training state does not fit this run "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
        if main:
            print(f"resumed from {ckpt_path}: epoch {start_epoch}, step {step}")
        was_lr = state.get("config", {}).get("lr")
        if cfg.lr is not None and cfg.lr != was_lr:
            # asked for explicitly (e.g. after a divergence): the same schedule from a new peak
            sched.base_lrs = [cfg.lr for _ in opt.param_groups]
            for group, f in zip(opt.param_groups, sched.lr_lambdas):
                group["initial_lr"] = cfg.lr
                group["lr"] = cfg.lr * f(sched.last_epoch)
            if main:
                print(f"resumed with --lr {cfg.lr} (the run had {was_lr or 'the default'})")
    log = MetricsLog(out / "metrics.jsonl", enabled=main)
    if resumed is not None:
        log.truncate_after(step)
    elif main and log.path.exists():
        log.path.unlink()
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    loss_fn = DetectionLoss(model.anchors, model.spec.num_classes)
    amp_dtype = amp_mode(cfg.amp, device)
    use_amp = amp_dtype is not None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    summary: dict = {"epochs": cfg.epochs, "steps_per_epoch": steps_per_epoch}
    last_eval: dict = {}

    # persistent loader workers stop here, whatever ends the run: a killed one left
    # registered would make torch's SIGCHLD handler raise later, anywhere in the process
    try:
        for epoch in range(start_epoch, cfg.epochs):
            net.train()
            if cfg.freeze_bn:
                for mod in net.modules():
                    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                        mod.eval()
            # a run saved mid-epoch (by --max-steps) goes on with that epoch's next batch
            first = step - epoch * steps_per_epoch if step > epoch * steps_per_epoch else 0
            batches.set_epoch(epoch, first)
            batch_iter = iter(loader) if first < steps_per_epoch else iter(())
            bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", enabled=main and not cfg.quiet)
            t0, seen, epoch_loss = time.perf_counter(), 0, 0.0
            waited = busy = 0.0  # seconds blocked on the data / of whole steps, since the last log line
            for i in range(first, steps_per_epoch):
                if (cfg.max_steps is not None and step >= cfg.max_steps) or _STOP:
                    break
                t_wait = time.perf_counter()
                images, targets = next(batch_iter)
                t_step = time.perf_counter()
                waited += t_step - t_wait
                images = images.to(device, non_blocking=True, memory_format=memory_format(device))
                report, applied = train_step(net, loss_fn, opt, sched, scaler, ema, images, targets, step,
                                             clip_grad=cfg.clip_grad, world=world, amp_dtype=amp_dtype if use_amp else None)
                if not applied:
                    raise TrainingDiverged(
                        f"the loss became {report[0].item()} at step {step + 1} (epoch {epoch + 1}); stopped. "
                        f"The last good checkpoint is {ckpt_path if ckpt_path.exists() else '(none yet)'}; "
                        "try a lower --lr")
                step += 1
                if main and cfg.save_every and step % cfg.save_every == 0 and i < steps_per_epoch - 1:
                    _save(ckpt_path, model, ema, opt, sched, epoch, step, cfg)  # --resume goes on mid-epoch
                seen += images.shape[0] * world
                value = report[0].item()
                epoch_loss += value
                now = time.perf_counter()
                busy += now - t_wait
                speed = seen / (now - t0)
                bar.update(1, loss=value, **{"img/s": speed})
                if step % cfg.log_every == 0 or i == steps_per_epoch - 1:
                    # data_wait: the share of the steps since the last line spent waiting for batches
                    log.write(type="step", epoch=epoch + 1, step=step, loss=value, cls=report[1].item(),
                              box_weighted=loss_fn.cfg.box_weight * report[2].item(), lr=sched.get_last_lr()[0],
                              img_per_s=speed, data_wait=round(waited / busy, 4) if busy > 0 else 0.0)
                    waited = busy = 0.0
            bar.close()
            done = ((cfg.max_steps is not None and step >= cfg.max_steps) or _STOP) and step < (epoch + 1) * steps_per_epoch
            if done:
                summary["stopped_at_step"] = step
                if _STOP:
                    summary["interrupted"] = signal.Signals(_STOP[0]).name
                if main:  # a stopped run keeps what it trained; --resume goes on mid-epoch
                    _save(ckpt_path, model, ema, opt, sched, epoch, step, cfg)
                    plot_curves(log.read(), out / "curves.png")
                break
            record = {"type": "epoch", "epoch": epoch + 1, "step": step,
                      "loss": epoch_loss / max(1, seen // cfg.batch_size), "img_per_s": seen / (time.perf_counter() - t0)}
            if main:  # before evaluating: an evaluation failure must not lose the epoch
                _save(ckpt_path, model, ema, opt, sched, epoch + 1, step, cfg)
            if main and val_set is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                last_eval = evaluate(ema.model, val_set, cfg.batch_size, str(device),
                                     out / "predictions_val.json" if epoch + 1 == cfg.epochs else None)
                record.update(last_eval)
                if not cfg.quiet:
                    print(f"epoch {epoch + 1}: loss {record['loss']:.4f}, val mAP {last_eval['map']:.3f}, "
                          f"mAP@0.5 {last_eval['map50']:.3f}")
            if main:
                log.write(**record)
                plot_curves(log.read(), out / "curves.png")
            if _STOP:
                summary.update(stopped_at_step=step, interrupted=signal.Signals(_STOP[0]).name)
                break
            if world > 1:
                dist.barrier()
    finally:
        loader.close()
    if main and resumed is not None and start_epoch >= cfg.epochs and log.path.exists():
        plot_curves(log.read(), out / "curves.png")  # a kill may have come between the last save and the plot
    summary.update(step=step, **last_eval)
    if main:  # only files this run wrote (or a resumed one before it)
        for key, path in (("checkpoint", ckpt_path), ("curves", out / "curves.png")):
            if path.exists():
                summary[key] = str(path)
    return summary


def train_step(net: nn.Module, loss_fn: DetectionLoss, opt: torch.optim.Optimizer, sched, scaler, ema: _Ema | None,
               images: torch.Tensor, targets: list[dict], step: int, *, clip_grad: float, world: int = 1,
               amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, bool]:
    """One optimisation step of ``train`` (``benchmarks/bench_train_step.py`` times this very
    function): forward, anchor matching, loss, backward, clipping, optimizer, schedule, EMA.
    Returns [loss, cls, box] averaged over the processes, and whether the step was applied:
    a non-finite loss changes nothing."""
    model = net.module if hasattr(net, "module") else net
    device = images.device
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        cls_out, box_out = net(images)
    hw = tuple(images.shape[-2:])
    # matched once: the positives normalise the loss (over all processes) and come from the matching
    assignment = loss_fn.assign(targets, [tuple(c.shape[-2:]) for c in cls_out], device, hw)
    pos_total = assignment.positives
    if world > 1:
        pos_total = pos_total.clone()
        dist.all_reduce(pos_total)
    losses = loss_fn(cls_out, box_out, positives_total=pos_total, world_size=world, assignment=assignment)
    loss = losses["loss"]
    report = torch.stack([loss.detach(), losses["cls"].detach(), losses["box"].detach()]) / world
    if world > 1:
        dist.all_reduce(report)
    if not torch.isfinite(report).all():
        return report, False
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(opt)
    scaler.update()
    sched.step()
    if ema is not None:
        ema.update(model, step + 1)
    return report, True


MAX_SANE_WEIGHT = 1e6  # finite losses can hide exploded weights (1e18 passes isfinite)


def _save(path: Path, model: EfficientDet, ema: _Ema, opt, sched, epoch: int, step: int, cfg: TrainConfig) -> None:
    plain = model.module if hasattr(model, "module") else model
    with torch.no_grad():
        worst = max((p.detach().abs().max().item() for p in plain.parameters() if p.numel()), default=0.0)
    if not math.isfinite(worst) or worst > MAX_SANE_WEIGHT:
        raise TrainingDiverged(
            f"the weights exploded (largest |w| = {worst:.3g}) by step {step}; not saved over the last good "
            f"checkpoint {path if path.exists() else '(none yet)'}. Continue from it with --resume and a lower --lr")
    try:
        _save_unchecked(path, model, ema, opt, sched, epoch, step, cfg)
    except (OSError, RuntimeError) as e:  # a full disk shows up as torch's "inline_container" RuntimeError
        free = ""
        try:
            free = f"; {shutil.disk_usage(path.parent).free // 2**20} MiB free on that disk"
        except OSError:
            pass
        why = getattr(e, "strerror", None) or str(e).splitlines()[0][:200]
        raise EdgError(f"{path}: could not save the checkpoint ({why}{free}); the previous one, if any, "
                       "is unchanged") from None


def _save_unchecked(path: Path, model: EfficientDet, ema: _Ema, opt, sched, epoch: int, step: int,
                    cfg: TrainConfig) -> None:
    plain = model.module if hasattr(model, "module") else model
    save_atomic({
        "format": FORMAT,
        "spec": plain.spec.model_dump(mode="json"),
        "graph": graph_to_yaml(plain.graph),
        "state_dict": ema.model.state_dict(),  # what eval / predict use
        **({"class_names": list(plain.class_names)} if plain.class_names else {}),
        "train_state": {"model": plain.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "epoch": epoch, "step": step,
                        "config": asdict(cfg)},
    }, path)


