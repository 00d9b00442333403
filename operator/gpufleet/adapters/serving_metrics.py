"""Serving signals of one ModelDeployment from Prometheus (prometheus-api-client).

The queries are templates (string.Template: $namespace, $model, $pods) so
clusters whose label names differ can change them without code; the
defaults fit vLLM's own metrics scraped by a kube-prometheus-stack PodMonitor
(labels namespace, pod, model_name) and the dcgm-exporter chart with its pod
mapping (labels namespace, pod). GPU utilisation of MIG slices comes from
DCGM_FI_PROF_GR_ENGINE_ACTIVE: DCGM_FI_DEV_GPU_UTIL is not reported for them
(REFERENCE.md).

An empty answer is not zero: it means no series, which the planner must
treat as missing data (hold), never as an idle model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from string import Template
from typing import Any, Protocol

from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from requests import RequestException, Session
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


@dataclass(frozen=True)
class MetricQueries:
    waiting: str = 'sum(vllm:num_requests_waiting{namespace="$namespace",model_name="$model"})'
    running: str = 'sum(vllm:num_requests_running{namespace="$namespace",model_name="$model"})'
    kv_cache_usage: str = 'avg(vllm:kv_cache_usage_perc{namespace="$namespace",model_name="$model"})'
    gpu_utilization: str = 'avg(DCGM_FI_DEV_GPU_UTIL{namespace="$namespace",pod=~"$pods"}) / 100'
    mig_utilization: str = 'avg(DCGM_FI_PROF_GR_ENGINE_ACTIVE{namespace="$namespace",pod=~"$pods"})'
    # Replicas whose vLLM metrics Prometheus has, and the time of the oldest of their samples: a sum over
    # the replicas that report reads low when some do not, and Prometheus answers an instant query with
    # samples up to 5 minutes old (its lookback), stamped with the query's time.
    reporting: str = 'count(vllm:num_requests_running{namespace="$namespace",model_name="$model"})'
    oldest_sample: str = (
        'min(timestamp(vllm:num_requests_running{namespace="$namespace",model_name="$model"}))'
    )
    # Requests a gateway saw for the model (e.g. its request rate), the only signal that can wake a
    # model at zero replicas: with no pods there are no vLLM series. None: not configured.
    activation: str | None = None


@dataclass(frozen=True)
class ModelMetrics:
    sampled_at: datetime  # the oldest sample's time; the query's when there is none
    waiting: float | None
    running: float | None
    kv_cache_usage: float | None
    gpu_utilization: float | None
    error: str | None = None
    activation: float | None = None
    reporting_replicas: int | None = None  # replicas with vLLM series; None: not known


class MetricsReader(Protocol):
    def read(
        self, namespace: str, model: str, pods: Sequence[str], mig: bool, now: datetime
    ) -> ModelMetrics: ...


def _in_string(value: str) -> str:
    """`value` made safe inside a PromQL double-quoted string: a quote or backslash cannot end it early.

    Validation already limits servedName to safe characters; this holds for objects stored before that
    rule, and for whatever else reaches a template.
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _pod_regex(pods: Sequence[str]) -> str:
    # Exact names from the API server: a prefix match could take another model's pods.
    return "|".join(p.replace(".", "\\\\.") for p in pods) or "^$"


class PrometheusMetrics:
    def __init__(
        self,
        url: str,
        queries: MetricQueries | None = None,
        timeout_seconds: float = 5.0,
        connections: int = 10,
    ) -> None:
        self.url = url
        self.queries = queries or MetricQueries()
        self.timeout_seconds = timeout_seconds
        # One quick retry: an evaluation that cannot read its signals holds, and the next one
        # comes seconds later; a long retry loop would only delay the hold.
        retry = Retry(total=1, backoff_factor=0.1, status_forcelist=[502, 503, 504])
        self.session = session = Session()
        self._client = PrometheusConnect(
            url=url, disable_ssl=True, retry=retry, session=session, timeout=int(max(1, timeout_seconds))
        )
        # As many kept-alive connections as evaluations run at once (the client mounts a pool of 10):
        # a smaller pool reconnects on every query of the extra threads.
        pool = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=max(1, connections))
        session.mount(url, pool)

    def _scalar(self, template: str, values: dict[str, str]) -> float | None:
        query = Template(template).substitute(values)
        result: list[dict[str, Any]] = self._client.custom_query(
            query, params={"timeout": f"{int(self.timeout_seconds * 1000)}ms"}
        )
        if not result:
            return None
        return float(result[0]["value"][1])

    def read(self, namespace: str, model: str, pods: Sequence[str], mig: bool, now: datetime) -> ModelMetrics:
        values = {"namespace": _in_string(namespace), "model": _in_string(model), "pods": _pod_regex(pods)}
        try:
            gpu_query = self.queries.mig_utilization if mig else self.queries.gpu_utilization
            waiting = self._scalar(self.queries.waiting, values)
            running = self._scalar(self.queries.running, values)
            kv_cache_usage = self._scalar(self.queries.kv_cache_usage, values)
            gpu_utilization = self._scalar(gpu_query, values)
            reporting = self._scalar(self.queries.reporting, values)
            oldest = self._scalar(self.queries.oldest_sample, values)
            return ModelMetrics(
                sampled_at=now if oldest is None else datetime.fromtimestamp(oldest, UTC),
                waiting=waiting,
                running=running,
                kv_cache_usage=kv_cache_usage,
                gpu_utilization=gpu_utilization,
                activation=self._scalar(self.queries.activation, values) if self.queries.activation else None,
                reporting_replicas=None if reporting is None else int(reporting),
            )
        except (PrometheusApiClientException, RequestException, ValueError, KeyError) as error:
            message = f"Prometheus at {self.url}: {type(error).__name__}: {error}"
            return ModelMetrics(now, None, None, None, None, error=message[:500])
