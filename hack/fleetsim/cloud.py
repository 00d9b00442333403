"""The simulated cloud's API: EC2 instances and EventBridge events, in a local moto server.

Everything here talks to a moto server on a loopback address and nowhere else:
`require_loopback` refuses any other endpoint, every client gets the endpoint
and dummy credentials explicitly (so no environment, profile or instance role
can point boto3 at real AWS), and tests start their own server.

Interruption sequence (REFERENCE.md "Spot interruption signals"), played by the
simulator's main loop with `interruption_timeline`:
  1. optionally, an "EC2 Instance Rebalance Recommendation" some time before;
  2. "EC2 Spot Instance Interruption Warning" (the 2-minute notice);
  3. after the notice: the instance is terminated in EC2, "EC2 Instance
     State-change Notification" events say shutting-down, then terminated, and
     the simulator deletes the Node object (a real node disappears when its
     instance is gone).
Consumers (gpufleet, or Karpenter/NTH semantics) read `detail.instance-id` and
map it to a node through spec.providerID `aws:///<zone>/<instance-id>`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, Literal, Self
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from fleetsim.clock import SimClock
from fleetsim.local import free_port, stop_process
from fleetsim.pools import Pool

# moto's default account id (also the one AWS documentation examples use).
DEFAULT_ACCOUNT: Final = "123456789012"
DUMMY_CREDENTIALS: Final[dict[str, str]] = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "aws_session_token": "testing",
}
DEFAULT_QUEUE: Final = "gpufleet-interruptions"
# REFERENCE.md: the interruption notice arrives 2 minutes before stop/terminate.
SPOT_NOTICE_S: Final = 120.0

SPOT_WARNING: Final = "EC2 Spot Instance Interruption Warning"
REBALANCE: Final = "EC2 Instance Rebalance Recommendation"
STATE_CHANGE: Final = "EC2 Instance State-change Notification"


_LOOPBACK: Final = ipaddress.IPv4Network("127.0.0.0/8")


def require_loopback(endpoint_url: str) -> str:
    """Return `endpoint_url` if it is http://127.x.y.z[:port]; raise ValueError otherwise."""
    parts = urlsplit(endpoint_url)
    host = parts.hostname or ""
    try:
        loopback = parts.scheme == "http" and ipaddress.IPv4Address(host) in _LOOPBACK
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"refusing AWS endpoint {endpoint_url!r}: only a local moto server at http://127.x.y.z:PORT "
            "is allowed (never real AWS)"
        )
    return endpoint_url


def client(service: str, endpoint_url: str, region: str) -> Any:
    """A boto3 client for the local moto server only: endpoint and dummy credentials are explicit."""
    return boto3.session.Session(region_name=region, **DUMMY_CREDENTIALS).client(
        service,
        endpoint_url=require_loopback(endpoint_url),
        # proxies={}: an HTTP(S)_PROXY in the environment must not carry loopback traffic elsewhere.
        config=Config(
            retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=30, proxies={}
        ),
    )


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LoopbackServer:
    """A local AWS-compatible server as a subprocess on a loopback port, with its own log file."""

    name = "server"

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.endpoint_url = require_loopback(f"http://{host}:{self.port}")
        self.log_path = log
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Self:
        if self._process is not None:
            return self
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        # Nothing in the server's environment may route it elsewhere; it needs no credentials.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._process = subprocess.Popen(
            self.command(),
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                raise RuntimeError(f"{self.name} exited with {code}; see {self.log_path or 'its output'}")
            if self._answers():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} on {self.endpoint_url} did not answer within {timeout}s")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            with _NO_PROXY.open(f"{self.endpoint_url}/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is serving
        except OSError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process, 10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MotoServer(LoopbackServer):
    """`python -m moto.server`: SQS, EC2 and the rest, in memory."""

    name = "moto server"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]


class ElasticMQServer(LoopbackServer):
    """ElasticMQ (hack/install-elasticmq.sh): an SQS-compatible server that stays fast with tens of
    thousands of messages queued, where moto's SQS scans every message on every call."""

    name = "ElasticMQ"

    def __init__(self, jars: Path, work: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(port, host, work / "elasticmq.log")
        self.jars = jars
        self.config = work / "elasticmq.conf"

    def command(self) -> list[str]:
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            'include classpath("application.conf")\n'
            f'node-address {{ protocol = http, host = "{self.host}", port = {self.port}, '
            'context-path = "" }\n'
            f'rest-sqs {{ enabled = true, bind-port = {self.port}, bind-hostname = "{self.host}", '
            "sqs-limits = strict }\n"
            "rest-stats { enabled = false }\n"
        )
        return ["java", f"-Dconfig.file={self.config}", "-cp", f"{self.jars}/*", "org.elasticmq.server.Main"]


def _utc(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("event time must be timezone-aware (UTC)")
    # EventBridge writes whole seconds in UTC: "2021-02-18T19:49:35Z".
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CloudEvents:
    """EC2 instances in moto and the EventBridge events AWS sends about them, delivered to SQS."""

    def __init__(
        self,
        endpoint_url: str,
        region: str,
        queue_name: str = DEFAULT_QUEUE,
        account: str = DEFAULT_ACCOUNT,
    ) -> None:
        self.endpoint_url = require_loopback(endpoint_url)
        self.region = region
        self.account = account
        self.queue_name = queue_name
        # Clients only: no request is made until a method is called (callers run those in a thread).
        self.ec2 = client("ec2", endpoint_url, region)
        self.sqs = client("sqs", endpoint_url, region)
        self._queue_url: str | None = None
        self._image_id: str | None = None

    def create_queue(self) -> str:
        """Create the interruption queue (idempotent, like SQS CreateQueue) and return its URL."""
        if self._queue_url is None:
            self._queue_url = str(self.sqs.create_queue(QueueName=self.queue_name)["QueueUrl"])
        return self._queue_url

    @property
    def queue_url(self) -> str:
        return self.create_queue()

    def reset_queue(self) -> str:
        """Create the queue again, after the moto server restarted and forgot it."""
        self._queue_url = None
        return self.create_queue()

    def image_id(self) -> str:
        """An x86_64 Amazon Linux 2 AMI from moto's built-in catalog (moto knows no EKS GPU AMI)."""
        if self._image_id is None:
            images = (
                self.ec2.describe_images(
                    Owners=["amazon"],
                    Filters=[
                        {"Name": "name", "Values": ["amzn2-ami-hvm-*-x86_64-*"]},
                        {"Name": "architecture", "Values": ["x86_64"]},
                    ],
                )["Images"]
                or self.ec2.describe_images(Owners=["amazon"])["Images"]
            )
            if not images:
                raise RuntimeError("moto offers no AMI to launch from")
            self._image_id = max(images, key=lambda image: image.get("Name", ""))["ImageId"]
        return self._image_id

    def launch_instance(self, pool: Pool, node_name: str | None = None) -> str:
        """RunInstances for one node of `pool`; returns moto's instance id (i-...).

        moto assigns its own private address (from its default VPC); nothing uses it: the Node's
        InternalIP is a 127.x address the simulator allocates.
        """
        tags = [
            {"Key": "karpenter.sh/nodepool", "Value": pool.name},
            {"Key": "fleetsim.gpufleet.io/pool", "Value": pool.name},
        ]
        if node_name:
            tags.append({"Key": "Name", "Value": node_name})
        request: dict[str, Any] = {
            "ImageId": self.image_id(),
            "InstanceType": pool.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "Placement": {"AvailabilityZone": pool.zone},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
        }
        if pool.capacity_type == "spot":
            request["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        instance_id: str = self.ec2.run_instances(**request)["Instances"][0]["InstanceId"]
        return instance_id

    def describe_instance(self, instance_id: str) -> dict[str, Any]:
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        instance: dict[str, Any] = reservations[0]["Instances"][0]
        return instance

    def terminate_instance(self, instance_id: str) -> str:
        """TerminateInstances; returns the new state name (shutting-down, then terminated in moto)."""
        result = self.ec2.terminate_instances(InstanceIds=[instance_id])
        state: str = result["TerminatingInstances"][0]["CurrentState"]["Name"]
        return state

    # --- EventBridge events, exact shapes of the AWS documentation examples ---------------------

    def _event(
        self, detail_type: str, resources: list[str], detail: dict[str, str], when: datetime
    ) -> dict[str, Any]:
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": detail_type,
            "source": "aws.ec2",
            "account": self.account,
            "time": _utc(when),
            "region": self.region,
            "resources": resources,
            "detail": detail,
        }

    def _instance_arn(self, instance_id: str) -> str:
        return f"arn:aws:ec2:{self.region}:{self.account}:instance/{instance_id}"

    def _send(self, event: dict[str, Any]) -> dict[str, Any]:
        # EventBridge's SQS target delivers the event JSON itself as the message body.
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(event))
        return event

    def warning_event(
        self,
        instance_id: str,
        zone: str,
        when: datetime,
        action: Literal["terminate", "stop", "hibernate"] = "terminate",
    ) -> dict[str, Any]:
        # The ARN has the zone in place of the region and no account, as in AWS's own example:
        # REFERENCE.md warns the format is inconsistent; consumers must read detail.instance-id.
        resources = [f"arn:aws:ec2:{zone}:instance/{instance_id}"]
        detail = {"instance-id": instance_id, "instance-action": action}
        return self._event(SPOT_WARNING, resources, detail, when)

    def rebalance_event(self, instance_id: str, when: datetime) -> dict[str, Any]:
        detail = {"instance-id": instance_id}
        return self._event(REBALANCE, [self._instance_arn(instance_id)], detail, when)

    def send_all(self, events: list[dict[str, Any]]) -> None:
        """Deliver events in order, ten per SendMessageBatch call (SQS's limit), as a backlog builds up."""
        for start in range(0, len(events), 10):
            entries = [
                {"Id": str(i), "MessageBody": json.dumps(event)}
                for i, event in enumerate(events[start : start + 10])
            ]
            failed = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries).get("Failed")
            if failed:
                raise RuntimeError(f"SQS refused {len(failed)} message(s): {failed[0]}")

    def spot_interruption_warning(
        self,
        instance_id: str,
        zone: str,
        when: datetime,
        action: Literal["terminate", "stop", "hibernate"] = "terminate",
    ) -> dict[str, Any]:
        return self._send(self.warning_event(instance_id, zone, when, action))

    def rebalance_recommendation(self, instance_id: str, zone: str, when: datetime) -> dict[str, Any]:
        # `zone` is kept for symmetry with the warning; this event's ARN carries region + account.
        del zone
        return self._send(self.rebalance_event(instance_id, when))

    def state_change(self, instance_id: str, state: str, when: datetime) -> dict[str, Any]:
        detail = {"instance-id": instance_id, "state": state}
        return self._send(self._event(STATE_CHANGE, [self._instance_arn(instance_id)], detail, when))


@dataclass(frozen=True)
class TimelineStep:
    """One step of an interruption: sleep `delay_real_s` after the previous step, then do `action`."""

    delay_real_s: float
    action: Literal["rebalance-recommendation", "interruption-warning", "terminate"]
    at_simulated_s: float  # offset from the first step, for logs


def interruption_timeline(
    clock: SimClock, notice_s: float = SPOT_NOTICE_S, rebalance_lead_s: float | None = None
) -> list[TimelineStep]:
    """The steps of one spot interruption, delays already scaled to real seconds.

    `rebalance_lead_s`: send a rebalance recommendation this many simulated seconds before the
    warning (AWS: it can come earlier than, or together with, the notice); None: no rebalance.
    "terminate" means: terminate the instance, publish state-change events, delete the Node.
    """
    if notice_s < 0 or (rebalance_lead_s is not None and rebalance_lead_s < 0):
        raise ValueError("notice_s and rebalance_lead_s must be >= 0")
    steps: list[TimelineStep] = []
    at = 0.0
    if rebalance_lead_s is not None:
        steps.append(TimelineStep(0.0, "rebalance-recommendation", at))
        at += rebalance_lead_s
    steps.append(TimelineStep(clock.real(at), "interruption-warning", at))
    steps.append(TimelineStep(clock.real(notice_s), "terminate", at + notice_s))
    return steps
