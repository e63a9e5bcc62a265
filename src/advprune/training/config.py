"""The typed training configuration: one `Config`, the same keys as flags, recipes and YAML."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from advprune.core.config import Config, setting
from advprune.core.device import PRECISIONS
from advprune.core.distributed import BACKENDS
from advprune.core.errors import ConfigError
from advprune.data import CUSTOM_DATASET, IMAGE_FOLDER, dataset_names, get_spec
from advprune.models import check_model_name
from advprune.models.factory import check_normalize_for, default_normalize
from advprune.models.normalization import check_normalize
from advprune.models.registry import is_import_path
from advprune.training.keep import KEEP_METRICS, KEEPS, check_keep

OBJECTIVES = ("standard", "pgd-at", "trades", "mart", "mixed-at", "fast-at")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")


def check_eps(eps: float, flag: str = "--eps") -> None:
    """ε is an L∞ radius in [0, 1] pixel units: 8 (meaning 8/255) would attack anything."""
    if not (math.isfinite(eps) and 0 <= eps <= 1):
        raise ConfigError(
            f"ε = {eps:g} is outside [0, 1]: ε is in [0, 1] pixels; for 8/255 pass 0.0314 or "
            f"{flag} 8/255"
        )


def check_positive_counts(config: Config, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = getattr(config, key)
        if value is not None and value < 1:
            raise ConfigError(
                f"{key} must be ≥ 1, got {value}; pass --{key.replace('_', '-')} 1 or more"
            )


def check_milestones(milestones: list[float] | None) -> None:
    if milestones is not None and any(not 0 < m < 1 for m in milestones):
        raise ConfigError(
            f"milestones are fractions of training in (0, 1), got {milestones}; pass e.g. "
            "--milestones 0.5 0.75"
        )


@dataclass
class TrainConfig(Config):
    """One training run. `eps=None` becomes the dataset's standard ε on validation, so a saved
    config always states the ε it trained at.

    Example:
        config = TrainConfig.from_dict({"dataset": "fashion-mnist", "eps": "8/255"})
    """

    EXECUTION_KEYS = frozenset(
        {"device", "data_dir", "download", "backend", "checkpoint_every", "tensorboard"}
        | {"allow_chance"}
    )
    UNLISTED_CHOICES: ClassVar[dict[str, frozenset[str]]] = {"dataset": frozenset({CUSTOM_DATASET})}

    dataset: str = setting(
        "fashion-mnist",
        "dataset to train on (imagefolder: your images in --data-dir DIR/train/CLASS/*.png)",
        choices=dataset_names,
    )
    model: str = setting(
        "lenet5-caffe", "network: a zoo name (`advprune list models`) or module.path:Factory"
    )
    normalize: str | None = setting(
        None,
        "input normalisation in front of the network: dataset (the dataset's per-channel "
        "mean/std), none ([0, 1] pixels as they are) or MEAN,STD (one pair for every channel, "
        "or C means then C stds); default: dataset for zoo networks that normalise, none for "
        "your own network (--model pkg:Class, the Python API) and vgg16-bn/resnet18",
    )
    output_index: int | None = setting(
        None,
        "your network's forward returns a tuple: use output N of it as the logits (0 for "
        "(logits, features))",
    )
    objective: str = setting("pgd-at", "training objective", choices=OBJECTIVES)
    eps: float | None = setting(
        None, "L∞ radius in [0, 1] pixels, e.g. 0.1 or 8/255 (default: the dataset's standard ε)"
    )
    attack_steps: int = setting(10, "PGD steps of the training attack")
    attack_step_size: float | None = setting(None, "PGD step (default: 2.5·ε/steps)")
    beta: float = setting(6.0, "weight of the KL term of TRADES and MART")
    epochs: int = setting(10, "training epochs")
    batch_size: int = setting(128, "global batch size (split over torchrun processes)")
    optimizer: str = setting("sgd", "optimizer", choices=OPTIMIZERS)
    lr: float = setting(0.1, "peak learning rate")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(5e-4, "L2 weight decay")
    schedule: str = setting("step", "learning-rate schedule", choices=SCHEDULES)
    milestones: list[float] = setting(
        help="step schedule: decay points as fractions of training", factory=lambda: [0.5, 0.75]
    )
    gamma: float = setting(0.1, "step schedule: factor at each milestone")
    init: str | None = setting(
        None, "start from the weights of this finished run (e.g. a standard-trained one)"
    )
    seed: int = setting(0, "seed of the weights, the data order and the attacks")
    flip: bool | None = setting(
        None, "random horizontal flips in training (default: the dataset's; SVHN's is off)"
    )
    limit_train: int | None = setting(None, "use only the first N training examples")
    limit_test: int | None = setting(None, "use only the first N test examples")
    monitor_examples: int = setting(256, "test examples attacked (PGD-10) after each epoch")
    monitor_clean_examples: int = setting(
        2000, "test examples classified clean after each epoch (±2 pp at 2,000: chance shows)"
    )
    keep: str = setting(
        "last",
        "the weights the run ends with: the last epoch's; best-validation: the epoch of best "
        "--keep-metric accuracy on --keep-examples training images held out of training; "
        "best-test: that on the test split, as the official HYDRA/HARP/MAD code keep "
        "model_best (the test set then picks the model: its figures are optimistic)",
        choices=KEEPS,
    )
    keep_metric: str = setting(
        "pgd10",
        "what --keep best-* ranks epochs by: PGD-10 or clean accuracy",
        choices=KEEP_METRICS,
    )
    keep_examples: int = setting(1000, "images --keep best-* ranks epochs on")
    data_dir: str | None = setting(
        None,
        "where the dataset files are (standard formats), or imagefolder's folder: "
        "DIR/train/CLASS/*.png and DIR/test/CLASS/*.png",
    )
    test_fraction: float | None = setting(
        None,
        "imagefolder without DIR/test: hold out this fraction of each class as the test split "
        "(the same images every time)",
    )
    download: bool = setting(False, "fetch a missing dataset (with checksums)")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto")
    precision: str = setting("fp32", "compute precision", choices=PRECISIONS)
    channels_last: bool = setting(False, "channels-last memory layout (faster convs)")
    compile: bool = setting(False, "torch.compile the model")
    checkpoint_every: int = setting(500, "steps between mid-epoch checkpoints (0: epoch ends)")
    tensorboard: bool = setting(False, "also write TensorBoard event files to RUN_DIR/tensorboard")
    sync_batchnorm: bool = setting(False, "under torchrun on GPUs: BN statistics over all ranks")
    backend: str | None = setting(
        None, "torchrun process group (default: nccl on GPUs, gloo on CPU)", choices=BACKENDS
    )
    allow_chance: bool = setting(
        False, "keep training when the first epoch ends at chance (default: stop with an error)"
    )

    def validate(self) -> TrainConfig:
        """Reject values that cannot work, with the option name in the message; fill in ε."""
        super().validate()
        self._check_data()
        if self.eps is None:
            if self.dataset == CUSTOM_DATASET:
                raise ConfigError("a dataset passed in Python has no standard ε; pass eps")
            if self.dataset == IMAGE_FOLDER:
                raise ConfigError(
                    "your own images have no standard ε; pass --eps, e.g. 8/255 for photos"
                )
            self.eps = get_spec(self.dataset).default_eps
        check_eps(self.eps)
        check_model_name(self.model)
        self._check_network_options()
        check_positive_counts(
            self,
            (
                "epochs",
                "batch_size",
                "attack_steps",
                "limit_train",
                "limit_test",
                "monitor_clean_examples",
            ),
        )
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"checkpoint_every must be ≥ 0 steps, got {self.checkpoint_every}; pass e.g. "
                "--checkpoint-every 500, or 0 to checkpoint at epoch ends only"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be > 0, got {self.lr}; pass e.g. --lr 0.1 (SGD)")
        check_milestones(self.milestones)
        check_keep(self.keep, self.keep_examples)
        return self

    def _check_data(self) -> None:
        if self.dataset == IMAGE_FOLDER and self.data_dir is None:
            raise ConfigError(
                "--dataset imagefolder reads your images from a folder; pass --data-dir DIR "
                "(DIR/train/CLASS/*.png, DIR/test/CLASS/*.png)"
            )
        if self.test_fraction is None:
            return
        if self.dataset != IMAGE_FOLDER:
            raise ConfigError(
                f"--test-fraction splits an image folder, but the dataset is {self.dataset}, "
                "which has its own test split; drop --test-fraction"
            )
        if not 0 < self.test_fraction < 1:
            raise ConfigError(
                f"test_fraction must be in (0, 1), got {self.test_fraction:g}; pass e.g. "
                "--test-fraction 0.2"
            )

    def _check_network_options(self) -> None:
        """Fill in `normalize` by the one rule (`default_normalize`); refuse what cannot apply."""
        if self.normalize is None:
            self.normalize = default_normalize(self.model)
        check_normalize(self.normalize)
        check_normalize_for(self.model, self.normalize)
        if self.output_index is not None and not is_import_path(self.model):
            raise ConfigError(
                f"--output-index is for a network of your own whose forward returns a tuple; "
                f"{self.model} returns its logits: drop --output-index"
            )
