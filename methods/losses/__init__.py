"""Loss terms (pure functions over tensors) and hash-center construction shared by the methods."""

from methods.losses.centers import (
    bernoulli_centers,
    hadamard_centers,
    hamming_distances,
    is_power_of_two,
    label_centers,
    make_hash_centers,
    sylvester_hadamard,
)
from methods.losses.terms import (
    bit_balance_loss,
    center_bce,
    center_bce_with_logits,
    logcosh,
    logcosh_quantization,
    pairwise_nll,
    quantization_loss,
    similarity_from_labels,
    square_quantization,
)

__all__ = [
    "bernoulli_centers",
    "bit_balance_loss",
    "center_bce",
    "center_bce_with_logits",
    "hadamard_centers",
    "hamming_distances",
    "is_power_of_two",
    "label_centers",
    "logcosh",
    "logcosh_quantization",
    "make_hash_centers",
    "pairwise_nll",
    "quantization_loss",
    "similarity_from_labels",
    "square_quantization",
    "sylvester_hadamard",
]
