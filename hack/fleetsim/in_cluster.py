"""A process with a pod's credentials and nothing else, on the local control plane.

Some programs only know `rest.InClusterConfig()` (aws-node-termination-handler), and the gpufleet chart runs
the operator that way too: a service account token and the cluster's CA under
/var/run/secrets/kubernetes.io/serviceaccount, KUBERNETES_SERVICE_HOST/PORT in the environment, no
kubeconfig. Here the process gets a private mount namespace (`unshare --mount`, no root-owned files touched on
the machine) in which a tmpfs covers /run (/var/run is a link to it) and the three files are copied in.
Used by hack/fleetsim/nth.py and tests/integration/test_in_cluster.py.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

from fleetsim.local import ControlPlane

# client-go reads /var/run/secrets/...; on Debian /var/run is a link to /run, which the tmpfs covers.
ACCOUNT = "/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True)
class PodCredentials:
    """`folder` holds token, ca.crt and namespace; host and port are the API server's."""

    folder: Path
    host: str
    port: str

    def env(self) -> dict[str, str]:
        return {"KUBERNETES_SERVICE_HOST": self.host, "KUBERNETES_SERVICE_PORT": self.port}

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run with the files where a pod has them, in a mount namespace of its own."""
        if shutil.which("unshare") is None:
            raise RuntimeError("unshare (util-linux) is needed to give a process a pod's /run")
        script = (
            f"mount -t tmpfs tmpfs /run && mkdir -p {ACCOUNT} "
            f"&& cp {shlex.quote(str(self.folder))}/* {ACCOUNT}/ && exec {shlex.join(argv)}"
        )
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def pod_credentials(
    plane: ControlPlane, namespace: str, service_account: str, folder: Path, duration: str = "2h"
) -> PodCredentials:
    """A token of `service_account` (which must exist), the cluster's CA and the namespace in `folder`."""
    token = plane.kubectl(
        "create", "token", service_account, "-n", namespace, f"--duration={duration}"
    ).stdout.strip()
    config = yaml.safe_load(plane.kubeconfig.read_text())
    context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
    server = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "token").write_text(token)
    (folder / "namespace").write_text(namespace)
    shutil.copy(plane.kubeconfig.parent / server["certificate-authority"], folder / "ca.crt")
    address = urlparse(server["server"])
    return PodCredentials(folder, str(address.hostname), str(address.port))
