"""Every table of the Cormorant database, importable from one place."""

from cormorant.common.db.models.auth import PREFIX_LENGTH, AdminKey, EndpointToken
from cormorant.common.db.models.automation import (
    ActionKind,
    Comparison,
    ExportFormat,
    FeedbackLoop,
    FeedbackRun,
    Flow,
    FlowRun,
    RunStatus,
    RunTrigger,
    ScheduleKind,
    Severity,
    Trigger,
)
from cormorant.common.db.models.batch import BatchJob, JobStatus
from cormorant.common.db.models.datasets import Dataset, DatasetVersion
from cormorant.common.db.models.endpoints import (
    Endpoint,
    EndpointKind,
    EndpointStatus,
    ModelVersion,
    Replica,
    ReplicaState,
    Rollout,
    RolloutStatus,
    Traffic,
    TrafficChange,
    VersionStatus,
)
from cormorant.common.db.models.logs import Metric, Prediction
from cormorant.common.db.models.triggers import FiringStatus, TriggerFiring, TriggerState

__all__ = [
    "PREFIX_LENGTH",
    "ActionKind",
    "AdminKey",
    "BatchJob",
    "Comparison",
    "Dataset",
    "DatasetVersion",
    "Endpoint",
    "EndpointKind",
    "EndpointStatus",
    "EndpointToken",
    "ExportFormat",
    "FeedbackLoop",
    "FeedbackRun",
    "FiringStatus",
    "Flow",
    "FlowRun",
    "JobStatus",
    "Metric",
    "ModelVersion",
    "Prediction",
    "Replica",
    "ReplicaState",
    "Rollout",
    "RolloutStatus",
    "RunStatus",
    "RunTrigger",
    "ScheduleKind",
    "Severity",
    "Traffic",
    "TrafficChange",
    "Trigger",
    "TriggerFiring",
    "TriggerState",
    "VersionStatus",
]
