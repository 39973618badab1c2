"""Project exceptions. Every error names the file, key or dataset it is about."""


class HashBenchError(Exception):
    """Base class of every error HashBench raises on purpose."""


class ConfigError(HashBenchError):
    """params.yaml (or an override) is invalid: the message names the key, the value and what is allowed."""


class DataError(HashBenchError):
    """A raw or prepared dataset is missing, corrupt or inconsistent: the message names the file."""


class MethodError(HashBenchError):
    """A method is unknown, not implemented, or cannot run on the given data."""


class TrainingError(HashBenchError):
    """A trial failed during training (for example a non-finite loss)."""


class MetricsError(HashBenchError):
    """Invalid input to a retrieval metric or index: the message names the argument and what is allowed."""
