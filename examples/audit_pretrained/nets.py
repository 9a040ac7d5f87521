"""The architecture of the audited model: privlab imports this file (model.name = "python")."""

from torch import nn


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> nn.Module:
    """A one-hidden-layer perceptron; privlab passes the input shape and the class count."""
    width = 1
    for d in input_shape:
        width *= d
    return nn.Sequential(
        nn.Flatten(), nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )
