"""advprune: neural networks that are sparse and adversarially robust at once.

The Python API works on any `nn.Module` (see `advprune.api`):

    import advprune
    robust = advprune.adversarial_train(model, (x, y), eps=0.1, epochs=10)
    pruned = advprune.prune(robust, (x, y), method="mad", sparsity=0.9, eps=0.1)
    print(advprune.evaluate(advprune.export(pruned), (x_test, y_test), eps=0.1))
"""

__version__ = "0.1.0"

_API = ("adversarial_train", "evaluate", "export", "prune")


def __getattr__(name: str):
    """The API functions, imported on first use so that `import advprune` stays light."""
    if name in _API:
        from advprune import api

        return getattr(api, name)
    raise AttributeError(f"module 'advprune' has no attribute {name!r}")


__all__ = ["__version__", *_API]
