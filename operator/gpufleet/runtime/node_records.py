"""Records a cloud signal on its Node before the SQS message that carried it is deleted.

The record (gpufleet.planning.nodes.signal_record_patch) is what a restarted
operator, or the next leader, reads back from the node watch: a warning is
never only in the memory of a process that may die. The taint list is replaced
whole by a merge patch, so the patch carries the resourceVersion read and a
concurrent writer (Karpenter, NTH, the node lifecycle controller) makes it a
409 that is read again and retried, never a lost taint.
"""

from __future__ import annotations

from gpufleet.adapters.kube import KubeApi, KubeError
from gpufleet.planning.failover import Doom
from gpufleet.planning.nodes import signal_record_patch

ATTEMPTS = 3


class NodeRecorder:
    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube

    def record(self, doom: Doom) -> None:
        """Raises KubeError when the API server cannot take it: the message must then stay queued."""
        for attempt in range(1, ATTEMPTS + 1):
            node = self.kube.get("v1", "Node", None, doom.node)
            if node is None:
                return  # the node is gone, and its pods with it: nothing left to warn about
            patch = signal_record_patch(node, doom)
            if patch is None:
                return  # recorded already (a duplicate message), or a sooner deadline is
            try:
                self.kube.patch("v1", "Node", None, doom.node, patch)
                return
            except KubeError as error:
                if error.status != 409 or attempt == ATTEMPTS:
                    raise
