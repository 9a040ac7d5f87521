"""Error types mapped to the CLI's exit codes (2: usage or scenario, 3: internal)."""

from __future__ import annotations


class PrivlabError(Exception):
    """Base class for errors that privlab reports as one line."""

    exit_code = 3


class ScenarioError(PrivlabError):
    """A scenario, an override or a CLI argument is invalid: exit code 2, one line."""

    exit_code = 2


class ExpectationBreach(PrivlabError):
    """An expectation declared by the scenario failed: exit code 1."""

    exit_code = 1


class Diverged(PrivlabError):
    """A variant's loss became NaN or infinite: the runner stops that variant, marks it
    diverged in results.json and runs the others (it never reaches the CLI)."""

    def __init__(self, round_: int, loss: float, history: list) -> None:
        super().__init__(f"diverged at round {round_} (test loss {loss})")
        self.round = round_
        self.loss = loss
        self.history = history
        """The round records up to and including the one that diverged."""
