"""advprune: neural networks that are sparse and adversarially robust at once."""

__version__ = "0.1.0"
