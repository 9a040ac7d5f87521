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
