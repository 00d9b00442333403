"""The ModelDeployment API: pydantic models (the one source of the CRD schema) and validation.

Pure code: no cluster, cloud or metrics clients may be imported here
(enforced by import-linter).
"""

from gpufleet.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)
from gpufleet.api.validation import Problem, validate_manifest

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "Problem",
    "validate_manifest",
]
