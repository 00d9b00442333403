"""The verb and resource each API request is counted under (gpufleet_kube_requests_total), named as the
API server's own apiserver_request_total names them, so the two can be set side by side."""

from __future__ import annotations

import pytest

from gpufleet.adapters.kube import _resource, _verb


@pytest.mark.parametrize(
    ("method", "path", "content_type", "verb", "resource"),
    [
        ("GET", "/api/v1/namespaces/ml/pods", "application/json", "list", "pods"),
        ("GET", "/api/v1/pods", "application/json", "list", "pods"),
        ("GET", "/api/v1/nodes/n1", "application/json", "get", "nodes"),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/ml/deployments/d",
            "application/apply-patch+yaml",
            "apply",
            "deployments",
        ),
        (
            "PATCH",
            "/apis/gpufleet.io/v1alpha1/namespaces/ml/modeldeployments/m/status",
            "application/merge-patch+json",
            "patch",
            "modeldeployments/status",
        ),
        ("POST", "/api/v1/namespaces/ml/pods/p/eviction", "application/json", "create", "pods/eviction"),
        ("POST", "/api/v1/namespaces/ml/events", "application/json", "create", "events"),
        ("DELETE", "/api/v1/namespaces/ml/pods/status", "application/json", "delete", "pods"),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/x/leases/l", "application/json", "update", "leases"),
    ],
)
def test_requests_are_counted_by_the_api_servers_verb_and_resource(
    method: str, path: str, content_type: str, verb: str, resource: str
) -> None:
    assert _verb(method, path, content_type) == verb
    assert _resource(path) == resource
