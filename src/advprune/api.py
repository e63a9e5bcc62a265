"""The Python API on the user's own network: adversarial_train, prune, export, evaluate.

`model` is any `nn.Module` that maps [0, 1] images to logits (residual additions and BatchNorm
included); data is an `(images, labels)` pair of tensors (float in [0, 1], or uint8), an
`ImageDataset`, or a `torch.utils.data.DataLoader` (its batches are gathered into memory once:
advprune keeps data resident as tensors). Every function returns a plain `nn.Module` of the user's
own class (masks folded into the weights, gates folded) or a results dict, and runs the same
pipelines as the CLI — into `run_dir` when one is given, else into a temporary directory.

    import advprune
    robust = advprune.adversarial_train(model, train_data, eps=0.1, objective="trades", epochs=10)
    pruned = advprune.prune(robust, train_data, method="mad", sparsity=0.9, eps=0.1,
                            finetune_epochs=5)            # any registered method, anpvs included
    small = advprune.export(pruned)                       # physically smaller where structured
    print(advprune.evaluate(small, test_data, eps=0.1, attacks=["clean", "pgd", "autoattack"]))
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advprune.core.config import closest
from advprune.core.device import resolve_device
from advprune.core.errors import ConfigError, DataError
from advprune.data import DatasetSpec, ImageDataset
from advprune.data.dataset import channel_statistics
from advprune.masks.export import remove_unread_units
from advprune.masks.gated import find_gates, fold_gates
from advprune.methods import PruneSettings, get_method
from advprune.models.factory import architecture, with_layers_around
from advprune.models.features import trace_layer_chains
from advprune.models.input_check import check_images, check_network_and_data, check_parameters
from advprune.models.output_index import OutputIndex
from advprune.pipelines import Source, prune_run, train_phase
from advprune.training.config import CUSTOM_DATASET, TrainConfig
from advprune.training.trainer import TrainingData

Data = (
    tuple[torch.Tensor, torch.Tensor] | ImageDataset | Iterable[tuple[torch.Tensor, torch.Tensor]]
)
INPUT_SHAPE = "advprune_input_shape"  # set on returned models, so `export` can trace them


def as_dataset(data: Data, name: str = CUSTOM_DATASET) -> ImageDataset:
    """An `ImageDataset` from a tensor pair, an `ImageDataset` or an iterable of batches."""
    if isinstance(data, ImageDataset):
        return data
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return ImageDataset.from_tensors(data[0], data[1], name)
    if isinstance(data, Iterable):
        batches = list(data)
        if not batches or not all(len(batch) >= 2 for batch in batches):
            raise DataError("a DataLoader for advprune must yield (images, labels) batches")
        images = torch.cat([batch[0] for batch in batches])
        labels = torch.cat([batch[1] for batch in batches])
        return ImageDataset.from_tensors(images, labels, name)
    raise DataError(
        f"cannot read data of type {type(data).__name__}; pass (images, labels) tensors, an "
        "ImageDataset or a DataLoader of (images, labels) batches"
    )


def _training_data(train_data: Data, test_data: Data | None, eps: float) -> TrainingData:
    """The caller's data with a spec describing it: no augmentation, the given ε as its standard
    ε, and the training images' per-channel mean/std as its statistics (`normalize="dataset"`)."""
    train = as_dataset(train_data)
    test = as_dataset(test_data) if test_data is not None else train
    check_images(train.images, "training")
    check_images(test.images, "test")
    channels, height, width = train.images.shape[1:]
    if height != width:
        raise DataError(f"images are {height}×{width}; advprune's models take square images")
    classes = max(train.num_classes, test.num_classes)
    statistics = channel_statistics(train.images)
    spec = DatasetSpec(CUSTOM_DATASET, classes, channels, height, *statistics, 0, False, eps)
    train, test = (dataclasses.replace(split, num_classes=classes) for split in (train, test))
    return TrainingData(spec, train, test)


def _model_name(model: nn.Module) -> str:
    """The import path of the model's class, as a run records a network outside the zoo."""
    cls = type(model)
    return f"{cls.__module__}:{cls.__qualname__}"


def _wrapped(model: nn.Module, config: TrainConfig, spec: DatasetSpec) -> nn.Sequential:
    """The caller's network behind its normalisation (identity unless `normalize` says
    otherwise) and `OutputIndex` if asked: the layout of a run of `--model pkg:Class`, whose
    run directories `load_model` rebuilds from the class's import path."""
    recorded = architecture(config.model, spec, config.normalize, config.output_index)
    return with_layers_around(
        copy.deepcopy(model), recorded["mean"], recorded["std"], output_index=config.output_index
    )


def _returned(wrapped: nn.Module, shape: Sequence[int]) -> nn.Module:
    """The caller's own class again (the wrapper's body), in eval mode, on the CPU or its device;
    behind its `Normalize` when that is not the identity, as the network was trained so."""
    model = wrapped.body
    if not wrapped.normalize.is_identity():
        model = nn.Sequential(OrderedDict(normalize=wrapped.normalize, body=model))
    model = model.eval()
    setattr(model, INPUT_SHAPE, tuple(shape))
    return model


@contextlib.contextmanager
def _run_dir(run_dir: str | Path | None) -> Iterator[Path]:
    if run_dir is not None:
        yield Path(run_dir)
        return
    with tempfile.TemporaryDirectory(prefix="advprune-") as folder:
        yield Path(folder) / "run"


def _train_config(
    model: nn.Module,
    eps: float,
    data: TrainingData,
    settings: dict[str, Any],
    source: str = "adversarial_train",
) -> TrainConfig:
    """The run's settings; the data is recorded by the files it was read from where it was
    (`load_dataset`), so that `advprune eval RUN_DIR` can read its test split again."""
    values = {"dataset": CUSTOM_DATASET, "model": _model_name(model), "eps": eps}
    values.update({k: v for k, v in (data.train.source or {}).items() if v is not None})
    values.update(monitor_examples=0, checkpoint_every=0)
    return TrainConfig.from_dict({**values, **settings}, source=f"{source} arguments")


def adversarial_train(
    model: nn.Module,
    train_data: Data,
    *,
    eps: float,
    objective: str = "pgd-at",
    epochs: int = 10,
    test_data: Data | None = None,
    run_dir: str | Path | None = None,
    progress: bool = False,
    **settings: Any,
) -> nn.Module:
    """Train a copy of `model` with an adversarial objective; returns the trained copy.

    `settings` are `advprune train` settings (optimizer, lr, batch_size, attack_steps, …).

    Example:
        robust = adversarial_train(MyCNN(), (x, y), eps=0.1, objective="trades", epochs=10)
    """
    data = _training_data(train_data, test_data, eps)
    config = _train_config(model, eps, data, {"objective": objective, "epochs": epochs, **settings})
    check_parameters(model)
    wrapped = _wrapped(model, config, data.spec)
    with _run_dir(run_dir) as folder:
        trained = train_phase(
            config, folder, model=wrapped, data=data, progress=progress, log=_quiet(progress)
        )
    return _returned(trained, data.train.images.shape[1:])


def prune(
    model: nn.Module,
    train_data: Data,
    *,
    method: str,
    eps: float,
    sparsity: float | None = None,
    test_data: Data | None = None,
    run_dir: str | Path | None = None,
    progress: bool = False,
    **settings: Any,
) -> nn.Module:
    """Prune a trained `model` with a registered method and fine-tune it; returns the pruned copy.
    A method that trains from the initialization (robustbird, flyingbird) takes `model` as its
    initialization and its training phase is the whole training.

    `settings` are flat keys of the method's settings (`finetune_epochs`, `mask_steps`, …), of
    `PruneSettings` (`scheme`, `seed`, …), or of the training `model` came from (`attack_steps`,
    `objective`, …), which a method's phase inherits where it sets nothing itself.

    Example:
        pruned = prune(robust, (x, y), method="hydra", sparsity=0.9, eps=0.1, score_epochs=2)
        sparse = prune(MyCNN(), (x, y), method="flyingbird", sparsity=0.9, eps=0.1,
                       finetune_epochs=10)
    """
    cls = get_method(method)
    own = {k: v for k, v in settings.items() if k in cls.Settings.field_names()}
    generic = {k: v for k, v in settings.items() if k in PruneSettings.field_names()}
    trained = {k: v for k, v in settings.items() if k not in own and k not in generic}
    known = cls.Settings.field_names() | PruneSettings.field_names() | TrainConfig.field_names()
    unknown = sorted(trained.keys() - known)
    if unknown:
        key = unknown[0]
        raise ConfigError(f"unknown setting {key!r} in prune arguments{closest(key, known)}")
    prune_settings = PruneSettings.from_dict(
        {**generic, "method": method, "sparsity": sparsity}, source="prune arguments"
    )
    data = _training_data(train_data, test_data, eps)
    config = _train_config(model, eps, data, trained, source="prune")
    check_parameters(model)
    wrapped = _wrapped(model, config, data.spec)
    source = Source(wrapped, config, _weights_key(wrapped))
    with _run_dir(run_dir) as folder:
        pruned = prune_run(
            prune_settings,
            cls(cls.Settings.from_dict(own, source="prune arguments")),
            folder,
            source=source,
            data=data,
            export=False,  # the caller exports the returned model with `export`
            progress=progress,
            log=_quiet(progress),
        )
    shape = data.train.images.shape[1:]
    if find_gates(pruned):
        example = torch.zeros(2, *shape, device=next(pruned.parameters()).device)
        pruned = fold_gates(pruned, example)
    return _returned(pruned, shape)


def export(model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
    """A physically smaller copy of `model`: every channel or unit no layer reads (the zeros a
    structured method or ANP-VS's gates left) removed, outputs unchanged. `example` is one input
    batch; a model returned by `prune` knows its input shape.

    Example:
        small = export(pruned)   # fewer channels after anpvs or --structure channels
    """
    if example is None:
        shape = getattr(model, INPUT_SHAPE, None)
        if shape is None:
            raise ConfigError("pass example= (a batch of inputs) to trace the model's layers")
        example = torch.zeros(2, *shape, device=next(model.parameters()).device)
    smaller = fold_gates(model, example) if find_gates(model) else copy.deepcopy(model).eval()
    chains = trace_layer_chains(smaller, example)
    output = next(name for name, chain in chains.items() if chain.is_output)
    remove_unread_units(smaller, example, output)
    setattr(smaller, INPUT_SHAPE, tuple(example.shape[1:]))
    return smaller.eval()


def evaluate(
    model: nn.Module,
    test_data: Data,
    *,
    eps: float,
    attacks: str | Sequence[str] = ("clean", "pgd"),
    device: str = "auto",
    output_index: int | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Accuracy of `model` (eval mode) under each attack at L∞ radius `eps`, as `advprune eval`
    measures it; `attacks` is a list of names or a comma list ("clean,pgd"); `output_index`
    picks the logits from a forward that returns a tuple; `settings` are evaluation settings
    (pgd_steps, autoattack_limit, seed, …).

    Example:
        evaluate(small, (x_test, y_test), eps=0.1, attacks=["clean", "pgd", "autoattack"])
    """
    from advprune.evaluation import EvalConfig, evaluate_model

    names = attacks if isinstance(attacks, str) else ",".join(attacks)
    values = {"attacks": names, "device": device, **settings}
    config = EvalConfig.from_dict(values, source="evaluate arguments")
    check_parameters(model)
    test = as_dataset(test_data)
    where = resolve_device(device)
    model = model.to(where)
    if output_index is not None:
        model = nn.Sequential(OrderedDict(body=model, output=OutputIndex(output_index)))
    check_network_and_data(model, test, test.num_classes, where, api=True)
    return evaluate_model(model, test, eps, config, device=where, log=lambda _: None)


def _weights_key(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _quiet(progress: bool):
    return print if progress else (lambda _: None)
