"""HashBench pipeline: configuration, data, training, evaluation, tracking and reporting."""

__version__ = "0.1.0"
