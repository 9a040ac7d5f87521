"""A small next-word model for token-id inputs (the federated keyboard of the source brief).

Embedding of each of the `context` previous tokens, concatenated (or run through a GRU), then a
hidden layer and a softmax over the vocabulary. The embedding matters for privacy: with plain
SGD its rows change only for words in the batch, so one client's update names the words its
user typed (Melis et al. 2019, "Exploiting Unintended Feature Leakage in Collaborative
Learning", IEEE S&P, Section V-A).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from privlab.errors import ScenarioError
from privlab.scenario import validate_params


class NextWordParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    embed_dim: int = Field(default=32, gt=0, le=4096)
    hidden: int = Field(default=128, gt=0, le=65536)
    encoder: Literal["concat", "gru"] = "concat"


class NextWordModel(nn.Module):
    def __init__(self, vocab: int, context: int, p: NextWordParams) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, p.embed_dim)
        self.encoder = p.encoder
        if p.encoder == "gru":
            self.gru = nn.GRU(p.embed_dim, p.hidden, batch_first=True)
            width = p.hidden
        else:
            width = p.embed_dim * context
        self.hidden = nn.Linear(width, p.hidden)
        self.out = nn.Linear(p.hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embedding(x.long())  # token ids arrive as floats (privlab's data contract)
        h = self.gru(e)[0][:, -1] if self.encoder == "gru" else e.flatten(1)
        return self.out(torch.relu(self.hidden(h)))


def build_next_word(params: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    p = validate_params(NextWordParams, params, "model.params")
    if len(input_shape) != 1:
        raise ScenarioError(
            f"model.name: 'next_word' needs token windows of shape (context,), got {input_shape}"
        )
    return NextWordModel(num_classes, input_shape[0], p)
