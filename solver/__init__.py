"""EdgeShard's planner: pure functions from a cluster description to a plan."""

from .cluster import Cluster, Device, DeviceId, Form, Link, Model, Network, Unit, parse_cluster
from .errors import ClusterFileError, InfeasibleError, InvalidPlanError, SolverError
from .plan import OBJECTIVES, Cost, Objective, Plan, PlanId, Stage, evaluate
from .planner import EXACT, STRATEGIES, assess, plan, stage_ms

__all__ = [
    "EXACT",
    "OBJECTIVES",
    "STRATEGIES",
    "Cluster",
    "ClusterFileError",
    "Cost",
    "Device",
    "DeviceId",
    "Form",
    "InfeasibleError",
    "InvalidPlanError",
    "Link",
    "Model",
    "Network",
    "Objective",
    "Plan",
    "PlanId",
    "SolverError",
    "Stage",
    "Unit",
    "assess",
    "evaluate",
    "parse_cluster",
    "plan",
    "stage_ms",
]
