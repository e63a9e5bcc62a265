"""The trainer: one loop for every objective and method, on one process or many (torchrun + DDP),
with atomic checkpoints every N steps and exact resume.

Reproducibility: epoch e's data order and augmentation come from (seed, e) alone; when the epoch
starts, the attacks' generator is seeded from (seed, e) and each rank's global generators from
(seed, e, rank). A checkpoint stores the position (epoch, batch) and the state of every generator,
so a run resumed from any checkpoint — at an epoch end or mid-epoch — computes exactly what the
uninterrupted run would have.

Under torchrun, `batch_size` is the global batch: each of the N ranks takes batch_size / N examples
of every global batch (BatchLoader shards one global order), draws the attacks' random starts for
the global batch and keeps its rows, DDP averages the gradients, and rank 0 alone writes files and
logs. So N changes the result only by floating-point summation order (and through any dropout).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from advprune.attacks import pgd
from advprune.core import distributed, interrupts
from advprune.core.device import autocast, resolve_device
from advprune.core.distributed import Distributed
from advprune.core.errors import CheckpointError, ConfigError, DataError, TrainingError
from advprune.core.run_dir import RunDir, undone_on_failure
from advprune.core.seeding import rng_state, seed_everything, set_rng_state
from advprune.data import (
    IMAGE_FOLDER,
    BatchLoader,
    DatasetSpec,
    ImageDataset,
    get_spec,
    image_folder_spec,
    load_dataset,
)
from advprune.models import architecture, create_model
from advprune.models.input_check import (
    check_images,
    check_labels,
    check_network_and_data,
    check_parameters,
)
from advprune.models.serialization import load_model, load_state_strict, save_model
from advprune.training.checkpoint import RankState, load_training_state, save_training_state
from advprune.training.config import CUSTOM_DATASET, TrainConfig
from advprune.training.keep import KeptEpoch, selection_split
from advprune.training.method import StepContext, TrainingMethod
from advprune.training.objectives import OBJECTIVE_FUNCTIONS, AttackSettings, ObjectiveOutput
from advprune.training.run_log import RunLog
from advprune.training.schedule import learning_rate

MONITOR_ATTACK_STEPS = 10
# A global batch that 1, 2, 4 or 8 ranks split evenly. The monitor's PGD-10 costs 15 % less CPU
# time at 256 than at 512 (LeNet-5-Caffe, one thread: the activations stay in cache); the
# random starts are drawn in example order either way, so the batch size changes no number.
MONITOR_BATCH_SIZE = 256
PROGRESS_EVERY = 20  # steps between progress-bar and TensorBoard updates (each syncs the device)
STOP_CHECK_EVERY = 10  # under torchrun: steps between the ranks' agreement on a stop request


@dataclass
class TrainingData:
    spec: DatasetSpec
    train: ImageDataset
    test: ImageDataset


def load_training_data(config: TrainConfig) -> TrainingData:
    load = partial(
        load_dataset,
        config.dataset,
        data_dir=config.data_dir,
        download=config.download,
        test_fraction=config.test_fraction,
    )
    if config.dataset == CUSTOM_DATASET:
        raise ConfigError(
            "dataset 'custom' names images passed in Python, which this run was not given; pass "
            "--dataset imagefolder --data-dir DIR for your own images, or the tensors to "
            "advprune.adversarial_train"
        )
    train, test = load("train", limit=config.limit_train), load("test", limit=config.limit_test)
    if config.dataset == IMAGE_FOLDER:
        spec = image_folder_spec(train, config.eps)
        check_same_images(train, test)
    else:
        spec = get_spec(config.dataset)
    if config.flip is not None:  # a method's official code may flip where we would not (SVHN)
        spec = dataclasses.replace(spec, flip=config.flip)
    return TrainingData(spec, train, test)


def check_same_images(train: ImageDataset, test: ImageDataset) -> None:
    """Test images the network cannot take would fail only at the first evaluation."""
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(
            f"{train.name}: test images are {tuple(test.images.shape[1:])} (C, H, W), train "
            f"images {tuple(train.images.shape[1:])}; convert both splits to one size and mode"
        )


def build_optimizer(config: TrainConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def epoch_seed(seed: int, epoch: int, stream: str) -> int:
    """The seed of a random stream ("attack", "rank0", ...) in `epoch`, hashed so that nearby
    seeds, epochs and streams give unrelated numbers."""
    key = hashlib.blake2b(f"{seed}:{epoch}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(key, "little") >> 1


@dataclass
class EpochSums:
    """Sums behind an epoch's logged train loss and accuracy (this rank's share of them)."""

    loss: torch.Tensor
    correct: torch.Tensor
    seen: int = 0

    @classmethod
    def zeros(cls, device: torch.device) -> EpochSums:
        return cls(torch.zeros((), device=device), torch.zeros((), device=device))

    def add(self, out: ObjectiveOutput, y: torch.Tensor) -> None:
        self.loss += out.loss.detach().float() * len(y)
        self.correct += (out.logits.detach().argmax(1) == y).sum()
        self.seen += len(y)

    def values(self) -> dict[str, float]:
        return {"loss": self.loss.item(), "correct": self.correct.item(), "seen": self.seen}

    @classmethod
    def from_values(cls, values: dict[str, float], device: torch.device) -> EpochSums:
        sums = cls.zeros(device)
        sums.loss.fill_(values["loss"])
        sums.correct.fill_(values["correct"])
        sums.seen = int(values["seen"])
        return sums

    def over_all_ranks(self) -> tuple[float, float]:
        """(mean loss, accuracy) over every rank's examples."""
        if not distributed.current().enabled:
            return self.loss.item() / self.seen, self.correct.item() / self.seen
        seen = torch.tensor(float(self.seen), device=self.loss.device)
        total = torch.stack([self.loss, self.correct, seen]).double()
        loss, correct, seen = distributed.all_reduce_sum(total).tolist()
        return loss / seen, correct / seen


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    data: TrainingData | None = None,
    model: nn.Module | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    initial_weights: dict[str, torch.Tensor] | None = None,
    method: TrainingMethod | None = None,
    flag_prefix: str = "",
) -> nn.Module:
    """Train `config` into `run_dir`; returns the trained model (eval mode, on the run's device).

    The run directory ends with config.yaml, metrics.jsonl (one JSON line per epoch),
    checkpoint.safetensors (training state) and model.safetensors (final weights + architecture).
    The network is `config.model` built from the zoo, or a copy of `model` (the caller's own
    nn.Module, recorded under the name `config.model`); fine-tuning starts from
    `initial_weights`. `method` decides what one step does (plain training by default; masked
    fine-tuning, gates, scores for the pruning methods); its state is checkpointed with the
    training state and its metadata stored with the model. A first epoch that ends at chance
    stops the run with a `TrainingError` (its checkpoint kept) unless `config.allow_chance`.
    Launched by torchrun, every rank calls this and rank 0 writes; the directory is locked while
    it does. `flag_prefix` spells the hints' flags as the command that runs the phase has them
    ("finetune-": `--finetune-lr`).

    Example:
        model = train(TrainConfig(dataset="fashion-mnist", eps=0.1, epochs=2), "runs/at")
    """
    config.validate()
    device = resolve_device(config.device)
    ddp = distributed.initialize(config.backend, device)
    check_distributed(config, ddp, device)
    progress, log = distributed.main_output(progress, log)
    # A start that fails (bad data, a batch larger than it) leaves no empty folder behind.
    with undone_on_failure(run_dir) if ddp.is_main else contextlib.nullcontext():
        run = RunDir.create(run_dir) if ddp.is_main else RunDir(Path(run_dir))
        with run.locked() if ddp.is_main else contextlib.nullcontext():
            training = _Training(config, run, ddp, device, progress, log, flag_prefix)
            training.prepare(resume, data, model, initial_weights, method or TrainingMethod())
            return training.run()


def check_training_data(
    model: nn.Module, data: TrainingData, device: torch.device, *, api: bool = False
) -> None:
    """The user's network and both splits on one batch, before the run writes anything."""
    classes = data.spec.num_classes
    check_network_and_data(model, data.train, classes, device, split="training", api=api)
    check_images(data.test.images, "test")
    check_labels(data.test.labels, classes, "test")


def load_init_weights(init: str) -> dict[str, torch.Tensor]:
    """The weights of the finished run `init` (a plain, ungated model)."""
    run = RunDir.existing(init)
    if not run.model.exists():
        raise run.unfinished_error("--init")
    model, _ = load_model(run.model)
    return model.state_dict()


def check_distributed(config: TrainConfig, ddp: Distributed, device: torch.device) -> None:
    if not ddp.enabled:
        return
    if config.batch_size % ddp.world_size:
        raise ConfigError(
            f"--batch-size {config.batch_size} is the global batch and must split evenly over "
            f"{ddp.world_size} processes; use a multiple of {ddp.world_size}"
        )
    if config.sync_batchnorm and device.type != "cuda":
        raise ConfigError("--sync-batchnorm needs CUDA devices; drop it for CPU runs")


class _Training:
    """One call of `train`: the objects it builds, then the epoch loop over them."""

    def __init__(
        self,
        config: TrainConfig,
        run: RunDir,
        ddp: Distributed,
        device: torch.device,
        progress: bool,
        log: Callable[[str], None],
        flag_prefix: str = "",
    ) -> None:
        self.config, self.run_dir, self.ddp, self.device = config, run, ddp, device
        self.progress, self.log, self.flag_prefix = progress, log, flag_prefix
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.start_batch = 0, 0
        self.resumed_rank: RankState | None = None
        self.kept: KeptEpoch | None = None

    def prepare(
        self,
        resume: bool,
        data: TrainingData | None,
        model: nn.Module | None,
        initial_weights: dict[str, torch.Tensor] | None,
        method: TrainingMethod,
    ) -> None:
        """Everything that can fail on bad input happens here, before the run writes a file."""
        self._check_run_dir(resume)
        config = self.config
        self.data = data or load_training_data(config)
        train, self.selection = selection_split(
            self.data.train, self.data.test, config.keep, config.keep_examples
        )
        self.data = dataclasses.replace(self.data, train=train)
        # Whole global batches only: the loader pads shards to equal length by wrapping around,
        # and the padding must never reach a step.
        self.steps_per_epoch = len(self.data.train) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{len(self.data.train)} training examples give no full batch of "
                f"{config.batch_size}; lower --batch-size or raise --limit-train"
            )
        self.method = method
        seed_everything(config.seed)
        built = self._build_model(model, initial_weights)
        check_training_data(
            built, self.data, self.device, api=self.data.spec.name == CUSTOM_DATASET
        )
        self.model = method.prepare(built)
        self.attack_generator = torch.Generator(self.device)
        self.optimizer = build_optimizer(config, method.weight_parameters(self.model))
        self.loader = BatchLoader(
            self.data.train,
            self.data.spec,
            config.batch_size // self.ddp.world_size,
            shuffle=True,
            augment=True,
            device=self.device,
            seed=config.seed,
            drop_last=True,
            rank=self.ddp.rank,
            world_size=self.ddp.world_size,
        )
        if resume:
            self._load_checkpoint()
        step_model = torch.compile(self.model) if config.compile else self.model
        self.step_model = distributed.wrap(step_model, self.device, method.find_unused_parameters)

    def _check_run_dir(self, resume: bool) -> None:
        run = self.run_dir
        if self.ddp.is_main and not resume and (run.checkpoint.exists() or run.model.exists()):
            raise ConfigError(
                f"{run.path} already holds a run; pass --resume to continue it or choose another "
                "--run-dir"
            )
        if resume and not run.checkpoint.exists():
            raise ConfigError(f"nothing to resume in {run.path}: no {run.checkpoint.name}")

    def _build_model(
        self, model: nn.Module | None, initial_weights: dict[str, torch.Tensor] | None
    ) -> nn.Module:
        """A copy of the caller's `model`, or the zoo's `config.model`, on the run's device."""
        config = self.config
        self.architecture = architecture(
            config.model, self.data.spec, config.normalize, config.output_index
        )
        model = copy.deepcopy(model) if model is not None else create_model(**self.architecture)
        check_parameters(model)  # before `to`, which cannot copy a meta tensor
        if initial_weights is None and config.init is not None:
            initial_weights = load_init_weights(config.init)
        if initial_weights is not None:
            load_state_strict(model, initial_weights, "the initial weights")
        model = model.to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if config.sync_batchnorm and self.ddp.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def _load_checkpoint(self) -> None:
        """Weights, optimizer and method state from the checkpoint; where and how to go on."""
        run, config = self.run_dir, self.config
        state = load_training_state(run.checkpoint, self.model, self.optimizer)
        saved = TrainConfig.from_dict(state.metadata["config"], source=str(run.checkpoint))
        config.check_resume(saved, f"--resume: the checkpoint in {run.path}")
        self.start_epoch = state.metadata["epoch"]
        self.start_batch = state.metadata.get("batch", 0)
        self.history = state.metadata["history"]
        if self.start_batch:
            if len(state.ranks) != self.ddp.world_size:
                raise CheckpointError(
                    f"the checkpoint in {run.path} was written mid-epoch by {len(state.ranks)} "
                    f"process(es), this run has {self.ddp.world_size}; resume it with as many "
                    f"(torchrun --nproc-per-node {len(state.ranks)})"
                )
            self.resumed_rank = state.ranks[self.ddp.rank]
        self.kept, own = KeptEpoch.split_from(
            state.extra, state.metadata.get("kept"), str(run.checkpoint)
        )
        self.method.load_state_dict(own, self.model)
        self.log(
            f"resuming {run.path} at epoch {self.start_epoch + 1}/{config.epochs}, batch "
            f"{self.start_batch}/{self.steps_per_epoch}"
        )

    def run(self) -> nn.Module:
        config, steps_per_epoch = self.config, self.steps_per_epoch
        if self.ddp.is_main:
            config.save(self.run_dir.config)
        self.run_log = RunLog(
            self.run_dir,
            enabled=self.ddp.is_main,
            tensorboard=config.tensorboard,
            resume_step=self.start_epoch * steps_per_epoch + self.start_batch,
        )
        try:
            with interrupts.deferred():
                for epoch in range(self.start_epoch, config.epochs):
                    if self.method.complete:
                        break
                    self._epoch(epoch)
        finally:
            self.run_log.close()
        model = self.model.eval()
        kept = self._restore_kept()
        if self.ddp.is_main:
            self.method.finish(model, self.run_dir.path)
        model = self.method.trained_model(model)
        if self.ddp.is_main:
            save_model(
                self.run_dir.model,
                model,
                {
                    "architecture": self.architecture,
                    "config": config.to_dict(),
                    "eps": config.eps,
                    "method": {"name": config.objective, **self.method.metadata()},
                    **kept,
                    **self._class_names(),
                },
            )
        distributed.barrier()
        return model

    def _restore_kept(self) -> dict[str, Any]:
        """Under `--keep best-*`, the kept epoch's weights and method state back in the model;
        what the model file records of it."""
        config = self.config
        if self.selection is None:
            return {}
        kept = self.kept
        if kept is None:
            self.log(f"no epoch could be kept under --keep {config.keep}: the run ends as it is")
            return {"kept": {"rule": config.keep, "epoch": None}}
        load_state_strict(self.model, kept.model, "the kept epoch's weights")
        self.method.load_state_dict(kept.method, self.model)
        self.log(
            f"keeping epoch {kept.epoch} of {config.epochs} (--keep {config.keep}: "
            f"{config.keep_metric} accuracy {kept.score:.4f} on {len(self.selection)} images)"
        )
        return {
            "kept": {
                "rule": config.keep,
                "metric": config.keep_metric,
                "examples": len(self.selection),
                **kept.summary(),
            }
        }

    def _class_names(self) -> dict[str, list[str]]:
        """The class names where the data has them (an image folder's), so that `eval` can
        check that a folder it is given numbers the classes the same way."""
        names = self.data.train.class_names
        return {"class_names": list(names)} if names else {}

    def _epoch(self, epoch: int) -> None:
        config, steps_per_epoch = self.config, self.steps_per_epoch
        attack = AttackSettings(
            config.eps,
            config.attack_steps,
            config.attack_step_size,
            self.attack_generator,
            (self.ddp.rank, self.ddp.world_size),
        )
        objective = OBJECTIVE_FUNCTIONS[config.objective]

        def run_objective(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
            with autocast(self.device, config.precision):
                return objective(net, x, y, attack, config.beta)

        start_batch, sums = self._start_epoch(epoch)
        self.model.train()
        started = time.perf_counter()
        bar = tqdm(
            islice(self.loader.epoch(epoch, start_batch), steps_per_epoch - start_batch),
            initial=start_batch,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        lr = config.lr
        for step, (x, y) in enumerate(bar, start=start_batch):
            lr = self._set_learning_rate(epoch, step)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            context = StepContext(
                run_objective,
                epoch,
                step,
                steps_per_epoch,
                lr,
                len(self.data.train),
                attack,
                self.flag_prefix,
            )
            out = self.method.step(self.step_model, x, y, self.optimizer, context)
            sums.add(out, y)
            self._after_step(epoch, step, out, lr, sums, bar)
        bar.close()
        self._end_epoch(epoch, lr, sums, time.perf_counter() - started)

    def _start_epoch(self, epoch: int) -> tuple[int, EpochSums]:
        """The first batch and the running sums: from the checkpoint when resuming mid-epoch,
        else fresh, with every generator seeded from (seed, epoch)."""
        config = self.config
        if epoch == self.start_epoch and self.resumed_rank is not None:
            tensors, values = self.resumed_rank.tensors, self.resumed_rank.values
            set_rng_state(tensors, values["rng"], self.device)
            self.attack_generator.set_state(tensors["attack"])
            return self.start_batch, EpochSums.from_values(values["sums"], self.device)
        seed_everything(epoch_seed(config.seed, epoch, f"rank{self.ddp.rank}"))
        self.attack_generator.manual_seed(epoch_seed(config.seed, epoch, "attack"))
        return 0, EpochSums.zeros(self.device)

    def _set_learning_rate(self, epoch: int, step: int) -> float:
        config = self.config
        progress = (epoch + step / self.steps_per_epoch) / config.epochs
        lr = learning_rate(config.lr, config.schedule, progress, config.milestones, config.gamma)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _after_step(
        self, epoch: int, step: int, out: ObjectiveOutput, lr: float, sums: EpochSums, bar: Any
    ) -> None:
        """Progress, TensorBoard and the periodic mid-epoch checkpoint."""
        global_step = epoch * self.steps_per_epoch + step + 1
        last = step + 1 == self.steps_per_epoch
        # A short epoch updates the bar ten times, so it never shows the first batch's figures
        # for the whole epoch; the figures are the epoch's so far.
        every = max(1, min(PROGRESS_EVERY, self.steps_per_epoch // 10))
        if (step % every == 0 or last) and self.progress and self.ddp.is_main:
            bar.set_postfix(
                loss=f"{sums.loss.item() / sums.seen:.3f}",
                acc=f"{sums.correct.item() / sums.seen:.3f}",
            )
        if step % PROGRESS_EVERY == 0 and self.ddp.is_main:
            self.run_log.step(global_step, {"batch_loss": out.loss.item(), "lr": lr})
        every = self.config.checkpoint_every
        if step + 1 == self.steps_per_epoch:
            return  # the epoch's end checkpoints, and stops if asked
        if every and global_step % every == 0:
            self._save_checkpoint(epoch, step + 1, sums)
        if self._stop_requested(global_step):
            self._save_checkpoint(epoch, step + 1, sums)
            self.log(f"stopped at epoch {epoch + 1} step {step + 1}; checkpoint saved")
            raise KeyboardInterrupt

    def _stop_requested(self, global_step: int | None = None) -> bool:
        """Ctrl-C or SIGTERM since the last step; under torchrun every rank stops at the same
        step (they agree every STOP_CHECK_EVERY steps, and at epoch ends: `global_step` None),
        or the checkpoint's gather would hang."""
        if not self.ddp.enabled:
            return interrupts.requested()
        if global_step is not None and global_step % STOP_CHECK_EVERY:
            return False
        flag = torch.tensor(float(interrupts.requested()), device=self.device)
        return distributed.all_reduce_sum(flag).item() > 0

    def _end_epoch(self, epoch: int, lr: float, sums: EpochSums, seconds: float) -> None:
        """Log the epoch, checkpoint it, and stop a run that is not learning."""
        train_loss, train_accuracy = sums.over_all_ranks()
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "seconds": seconds,
            **monitor(self.model, self.data, self.config, self.device, epoch),
            **self._score_for_keeping(epoch),
        }
        self.method.epoch_ended(self.model, record)
        self.history.append(record)
        self.log(format_record(record))
        self.run_log.epoch((epoch + 1) * self.steps_per_epoch, self.history)
        self._save_checkpoint(epoch + 1, 0, EpochSums.zeros(self.device))
        if self._stop_requested():
            self.log(f"stopped after epoch {epoch + 1}; checkpoint saved")
            raise KeyboardInterrupt
        if epoch == 0:
            check_learning(
                record, self.data.spec.num_classes, self.config, self.run_dir, self.flag_prefix
            )

    def _score_for_keeping(self, epoch: int) -> dict[str, float]:
        """Under `--keep best-*`: the epoch's accuracy on the selection images, and a copy of
        its state when it is the best so far (the first of equals, as the official code's
        strict `>` keeps). Every epoch is attacked with the same random starts."""
        config = self.config
        if self.selection is None:
            return {}
        attack = None
        if config.keep_metric == "pgd10":
            attack = monitor_attack(config.eps, config.seed, 0, "keep", self.device)
        self.model.eval()
        score = sharded_accuracy(self.model, self.selection, attack, self.device)
        if self.method.may_keep() and (self.kept is None or score > self.kept.score):
            state = self.method.state_dict()
            self.kept = KeptEpoch.copy_of(epoch + 1, score, self.model, state)
        where = "validation" if config.keep == "best-validation" else "test"
        name = f"keep_{where}_{config.keep_metric}"
        return {f"{name}_accuracy": score, f"{name}_examples": len(self.selection)}

    def _save_checkpoint(self, epoch: int, batch: int, sums: EpochSums) -> None:
        """Rank 0 writes the state after `batch` batches of `epoch`, with every rank's part."""
        tensors, rng_values = rng_state(self.device)
        tensors["attack"] = self.attack_generator.get_state()
        mine = RankState(tensors, {"rng": rng_values, "sums": sums.values()})
        ranks = distributed.all_gather_objects(mine)
        if not self.ddp.is_main:
            return
        metadata = {
            "epoch": epoch,
            "batch": batch,
            "history": self.history,
            "config": self.config.to_dict(),
        }
        extra = self.method.state_dict()
        if self.kept is not None:
            metadata["kept"] = self.kept.summary()
            extra.update(self.kept.tensors())
        save_training_state(
            self.run_dir.checkpoint,
            self.model,
            self.optimizer,
            metadata,
            extra=extra,
            ranks=ranks,
        )


def monitor(
    model: nn.Module, data: TrainingData, config: TrainConfig, device: torch.device, epoch: int
) -> dict[str, float]:
    """Test accuracy after an epoch: clean and PGD-10, each on the test split's first examples.

    A health check and a progress line, not the run's result (`advprune eval` is): its clean half
    on all 10,000 images cost 3 % of a 12,800-image epoch, on 2,000 it sees chance just as well.
    The attack's random starts come from (seed, epoch), not from the training's generators.
    """
    model.eval()
    clean = data.test.take(min(config.monitor_clean_examples, len(data.test)))
    record: dict[str, float] = {
        "test_clean_accuracy": sharded_accuracy(model, clean, None, device),
        "test_clean_examples": len(clean),
    }
    if config.monitor_examples and config.objective != "standard":
        subset = data.test.take(min(config.monitor_examples, len(data.test)))
        attack = monitor_attack(config.eps, config.seed, epoch, "monitor", device)
        record["test_pgd10_accuracy"] = sharded_accuracy(model, subset, attack, device)
        record["test_pgd10_examples"] = len(subset)
    return record


def monitor_attack(
    eps: float, seed: int, epoch: int, stream: str, device: torch.device
) -> Callable[..., torch.Tensor]:
    """PGD-10 in the run's ε, its random starts drawn from (seed, epoch, stream) for the global
    batch, so that no rank count and no training state changes them."""
    generator = torch.Generator(device).manual_seed(epoch_seed(seed, epoch, stream))
    ddp = distributed.current()
    return partial(
        pgd,
        eps=eps,
        steps=MONITOR_ATTACK_STEPS,
        generator=generator,
        noise_shard=(ddp.rank, ddp.world_size),
    )


def sharded_accuracy(
    model: nn.Module,
    dataset: ImageDataset,
    attack: Callable[..., torch.Tensor] | None,
    device: torch.device,
) -> float:
    """Accuracy over `dataset`, each rank classifying its rows of every global batch.

    The rows are BatchLoader's shards, and `attack` draws its random starts for the global batch
    (`noise_shard`), so the result does not depend on the number of ranks.
    """
    ddp = distributed.current()
    loader = BatchLoader(
        dataset,
        None,
        -(-MONITOR_BATCH_SIZE // ddp.world_size),
        shuffle=False,
        augment=False,
        device=device,
        rank=ddp.rank,
        world_size=ddp.world_size,
    )
    examples = len(range(ddp.rank, len(dataset), ddp.world_size))  # the rest is padding
    correct = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    for x, y in loader.epoch(0):
        if attack is not None:
            x = attack(model, x, y)
        with torch.no_grad():
            hits = model(x).argmax(1) == y
        correct += hits[: max(0, examples - seen)].sum()
        seen += len(y)
    return distributed.all_reduce_sum(correct).item() / len(dataset)


def check_learning(
    record: dict[str, Any],
    num_classes: int,
    config: TrainConfig,
    run: RunDir,
    flag_prefix: str = "",
) -> None:
    """Stop a run whose first epoch ends at chance, on the training batches and on clean test
    images alike (a PGD-AT run's adversarial train accuracy alone can be low while it learns)."""
    chance = 1.5 / num_classes
    at_chance = record["train_accuracy"] < chance and record["test_clean_accuracy"] < chance
    if not at_chance or config.allow_chance:
        return
    raise TrainingError(
        f"the first epoch ended at chance (train {record['train_accuracy']:.3f}, clean test "
        f"{record['test_clean_accuracy']:.3f}): the model is not learning; try a lower "
        f"--{flag_prefix}lr, a trained start, or a smaller --{flag_prefix}eps (the checkpoint in "
        f"{run.path} is kept; --allow-chance trains on anyway)"
    )


def format_record(record: dict) -> str:
    """One line per epoch; each test accuracy says how many test images it is measured on."""
    parts = [f"epoch {record['epoch']}"]
    for key, value in record.items():
        if key.endswith("accuracy"):
            name = key.removesuffix("_accuracy")
            examples = record.get(f"{name}_examples")
            parts.append(f"{name} {value:.4f}" + (f" (on {examples})" if examples else ""))
    parts.append(f"loss {record['train_loss']:.4f}")
    parts.append(f"{record['seconds']:.0f}s")
    return "  ".join(parts)
