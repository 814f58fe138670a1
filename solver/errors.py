"""The solver's exceptions: one root, each subclass says whose fault it is."""

from __future__ import annotations


class SolverError(Exception):
    """Root of every error the planner raises."""


class ClusterFileError(SolverError):
    """The cluster file is malformed; `field` names the offending entry."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


class InfeasibleError(SolverError):
    """No plan of the asked kind fits the devices' memory."""


class InvalidPlanError(SolverError):
    """A plan breaks the cost model's rules (coverage, one stage per device, memory, source)."""
