"""Serving signals of one ModelDeployment from Prometheus (prometheus-api-client).

One query per signal serves every model: the defaults aggregate `by (namespace, model_name)`
(vLLM's series) or `by (namespace, pod)` (DCGM's), and each model's reading is taken from the
answer, so an autoscale sweep costs the same handful of queries at 1 model or 1,000. A template
that names $namespace, $model or $pods (string.Template) is instead run once per model, as
before: clusters whose labels differ can write either kind. The defaults fit vLLM's own metrics
scraped by a kube-prometheus-stack PodMonitor (labels namespace, pod, model_name) and the
dcgm-exporter chart with its pod mapping (labels namespace, pod). GPU utilisation of MIG slices comes from
DCGM_FI_PROF_GR_ENGINE_ACTIVE: DCGM_FI_DEV_GPU_UTIL is not reported for them
(REFERENCE.md).

An empty answer is not zero: it means no series, which the planner must
treat as missing data (hold), never as an idle model.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from string import Template
from typing import Any, Final, Protocol

from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from requests import RequestException, Session
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


@dataclass(frozen=True)
class MetricQueries:
    waiting: str = "sum by (namespace, model_name) (vllm:num_requests_waiting)"
    running: str = "sum by (namespace, model_name) (vllm:num_requests_running)"
    kv_cache_usage: str = "avg by (namespace, model_name) (vllm:kv_cache_usage_perc)"
    gpu_utilization: str = "avg by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL) / 100"
    mig_utilization: str = "avg by (namespace, pod) (DCGM_FI_PROF_GR_ENGINE_ACTIVE)"
    # Replicas whose vLLM metrics Prometheus has, and the time of the oldest of their samples: a sum over
    # the replicas that report reads low when some do not, and Prometheus answers an instant query with
    # samples up to 5 minutes old (its lookback), stamped with the query's time.
    reporting: str = "count by (namespace, model_name) (vllm:num_requests_running)"
    oldest_sample: str = "min by (namespace, model_name) (timestamp(vllm:num_requests_running))"
    # Output tokens per second of each pod (vLLM's counter): the cost per token per revision.
    generation_tokens: str = "sum by (namespace, pod) (rate(vllm:generation_tokens_total[5m]))"
    # Requests a gateway saw for the model (e.g. its request rate), the only signal that can wake a
    # model at zero replicas: with no pods there are no vLLM series. None: not configured.
    activation: str | None = None


# The same signals asked for one model at a time (the defaults before they answered for the fleet):
# for clusters that must scope each query, and the baseline of hack/bench/autoscale_sweep.py.
PER_MODEL_QUERIES: Final = MetricQueries(
    waiting='sum(vllm:num_requests_waiting{namespace="$namespace",model_name="$model"})',
    running='sum(vllm:num_requests_running{namespace="$namespace",model_name="$model"})',
    kv_cache_usage='avg(vllm:kv_cache_usage_perc{namespace="$namespace",model_name="$model"})',
    gpu_utilization='avg(DCGM_FI_DEV_GPU_UTIL{namespace="$namespace",pod=~"$pods"}) / 100',
    mig_utilization='avg(DCGM_FI_PROF_GR_ENGINE_ACTIVE{namespace="$namespace",pod=~"$pods"})',
    reporting='count(vllm:num_requests_running{namespace="$namespace",model_name="$model"})',
    oldest_sample='min(timestamp(vllm:num_requests_running{namespace="$namespace",model_name="$model"}))',
)

# Signals read per pod (DCGM knows pods, not models); the others per model.
POD_SIGNALS: Final = frozenset({"gpu_utilization", "mig_utilization", "generation_tokens"})
MODEL_LABELS: Final = ("namespace", "model_name")
POD_LABELS: Final = ("namespace", "pod")


def setting(signal: str) -> str:
    """The environment variable that sets a signal's query (gpufleet.config: query_<signal>)."""
    return f"GPUFLEET_QUERY_{signal.upper()}"


def per_model(template: str) -> bool:
    """A template with placeholders is run for each model; one without answers for all of them."""
    return any(name in template for name in ("$namespace", "$model", "$pods"))


class FleetAnswerError(ValueError):
    """A fleet-wide query answered with series that do not say which model (or pod) they are."""


def by_labels(signal: str, result: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
    """A fleet-wide answer keyed by (namespace, model_name), or (namespace, pod) for per-pod signals.

    Series without those labels are no model's: DCGM reports idle GPUs without a pod, and `by (...)`
    groups them under empty labels. An answer of only such series for a model signal means the query
    lost the labels (no `by`), which is an error that names the setting."""
    labels = POD_LABELS if signal in POD_SIGNALS else MODEL_LABELS
    keyed: dict[tuple[str, str], float] = {}
    for series in result:
        metric = series.get("metric", {})
        if all(metric.get(label) for label in labels):
            keyed[(metric[labels[0]], metric[labels[1]])] = float(series["value"][1])
    if result and not keyed and signal not in POD_SIGNALS:
        raise FleetAnswerError(
            f"{setting(signal)} answered without the labels {', '.join(labels)} "
            f"({result[0].get('metric', {})}): aggregate it with `by ({', '.join(labels)})`, or use "
            "$namespace/$model/$pods to query each model on its own"
        )
    return keyed


def model_value(
    signal: str, answer: Mapping[tuple[str, str], float], namespace: str, model: str, pods: Sequence[str]
) -> float | None:
    """One model's value from a fleet-wide answer: its own series, or the mean over its pods' series.

    None when nothing in the answer is the model's: missing data, never zero."""
    if signal not in POD_SIGNALS:
        return answer.get((namespace, model))
    present = [answer[(namespace, pod)] for pod in pods if (namespace, pod) in answer]
    return sum(present) / len(present) if present else None


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

    def _query(self, query: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._client.custom_query(
            query, params={"timeout": f"{int(self.timeout_seconds * 1000)}ms"}
        )
        return result

    def _scalar(self, template: str, values: dict[str, str]) -> float | None:
        result = self._query(Template(template).substitute(values))
        if not result:
            return None
        return float(result[0]["value"][1])

    def sweep(self) -> SweepReader:
        """A reader for one autoscale sweep: each fleet-wide query runs once, when a model first needs it."""
        return SweepReader(self)

    def read(self, namespace: str, model: str, pods: Sequence[str], mig: bool, now: datetime) -> ModelMetrics:
        """One model on its own (a sweep of one)."""
        return self.sweep().read(namespace, model, pods, mig, now)


# A canary's figures, per pod over a window (the analysis loop adds the pods of each revision). The
# names are vLLM 0.34.0's: http_requests_total from prometheus-fastapi-instrumentator's defaults
# (vllm/entrypoints/serve/instrumentator/metrics.py), the histograms from vllm/v1/metrics/loggers.py.
CANARY_REQUESTS = (
    'sum by (pod, status) (increase(http_requests_total{namespace="$namespace",pod=~"$pods",'
    'handler=~"/v1/completions|/v1/chat/completions"}[$window]))'
)
CANARY_HISTOGRAMS = {
    "ttft": 'sum by (pod, le) (increase(vllm:time_to_first_token_seconds_bucket{namespace="$namespace",'
    'pod=~"$pods"}[$window]))',
    "itl": 'sum by (pod, le) (increase(vllm:inter_token_latency_seconds_bucket{namespace="$namespace",'
    'pod=~"$pods"}[$window]))',
}


@dataclass
class PodFigures:
    """One pod's increases over a window: completion requests, the 5xx among them, histogram buckets."""

    requests: float = 0.0
    errors: float = 0.0
    ttft: dict[float, float] | None = None
    itl: dict[float, float] | None = None


def canary_pod_figures(
    source: PrometheusMetrics, namespace: str, pods: Sequence[str], window_seconds: float
) -> dict[str, PodFigures]:
    """Per pod (only pods with series): what the analysis judges. Raises on a Prometheus error."""
    values = {
        "namespace": _in_string(namespace),
        "pods": _pod_regex(pods),
        "window": f"{max(1, math.ceil(window_seconds))}s",
    }
    found: dict[str, PodFigures] = {}
    for series in source._query(Template(CANARY_REQUESTS).substitute(values)):
        metric, value = series.get("metric", {}), float(series["value"][1])
        pod = metric.get("pod")
        if not pod or math.isnan(value):
            continue
        figures = found.setdefault(pod, PodFigures())
        figures.requests += value
        if str(metric.get("status", "")).startswith("5"):
            figures.errors += value
    for key, template in CANARY_HISTOGRAMS.items():
        for series in source._query(Template(template).substitute(values)):
            metric, value = series.get("metric", {}), float(series["value"][1])
            pod, le = metric.get("pod"), metric.get("le")
            if not pod or le is None or math.isnan(value):
                continue
            figures = found.setdefault(pod, PodFigures())
            buckets = getattr(figures, key)
            if buckets is None:
                buckets = {}
                setattr(figures, key, buckets)
            buckets[float(le)] = buckets.get(float(le), 0.0) + value
    return found


class SweepReader:
    """One sweep's view of Prometheus. Fleet-wide answers are shared by every model of the sweep (and
    a failed one is every model's error: all hold); per-model templates are queried for each model."""

    def __init__(self, source: PrometheusMetrics) -> None:
        self.source = source
        self._answers: dict[str, dict[tuple[str, str], float] | Exception] = {}
        self._lock = threading.Lock()

    @property
    def queries_made(self) -> int:
        return len(self._answers)

    def _fleet(self, signal: str, template: str) -> dict[tuple[str, str], float]:
        with self._lock:  # evaluations run in threads: the first asks, the others wait for its answer
            if signal not in self._answers:
                try:
                    self._answers[signal] = by_labels(signal, self.source._query(template))
                except (PrometheusApiClientException, RequestException, ValueError, KeyError) as error:
                    self._answers[signal] = error
            answer = self._answers[signal]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _signal(
        self, signal: str, values: dict[str, str], namespace: str, model: str, pods: Sequence[str]
    ) -> float | None:
        template = getattr(self.source.queries, signal)
        if per_model(template):
            return self.source._scalar(template, values)
        return model_value(signal, self._fleet(signal, template), namespace, model, pods)

    def pod_values(self, signal: str, namespace: str, pods: Sequence[str]) -> dict[str, float]:
        """A per-pod signal for the given pods (only those with a series); raises on a Prometheus error."""
        template = getattr(self.source.queries, signal)
        if per_model(template):
            values = {"namespace": _in_string(namespace), "model": "", "pods": _pod_regex(pods)}
            rows = self.source._query(Template(template).substitute(values))
            answer = {
                (str(r["metric"].get("namespace", namespace)), str(r["metric"].get("pod", ""))): float(
                    r["value"][1]
                )
                for r in rows
            }
        else:
            answer = self._fleet(signal, template)
        return {pod: answer[(namespace, pod)] for pod in pods if (namespace, pod) in answer}

    def read(self, namespace: str, model: str, pods: Sequence[str], mig: bool, now: datetime) -> ModelMetrics:
        values = {"namespace": _in_string(namespace), "model": _in_string(model), "pods": _pod_regex(pods)}

        def signal(name: str) -> float | None:
            return self._signal(name, values, namespace, model, pods)

        try:
            reporting = signal("reporting")
            oldest = signal("oldest_sample")
            return ModelMetrics(
                sampled_at=now if oldest is None else datetime.fromtimestamp(oldest, UTC),
                waiting=signal("waiting"),
                running=signal("running"),
                kv_cache_usage=signal("kv_cache_usage"),
                gpu_utilization=signal("mig_utilization" if mig else "gpu_utilization"),
                activation=signal("activation") if self.source.queries.activation else None,
                reporting_replicas=None if reporting is None else int(reporting),
            )
        except FleetAnswerError as error:
            return ModelMetrics(now, None, None, None, None, error=str(error)[:500])
        except (PrometheusApiClientException, RequestException, ValueError, KeyError) as error:
            message = f"Prometheus at {self.source.url}: {type(error).__name__}: {error}"
            return ModelMetrics(now, None, None, None, None, error=message[:500])
