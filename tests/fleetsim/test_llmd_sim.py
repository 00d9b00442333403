"""The second engine without a cluster: the fleet file's `engine:`, the calibration from fleetsim's engine
profile, the llm-d-inference-sim command line a pod's arguments map to, and the forwarder."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from fleetsim.clock import SimClock
from fleetsim.kubelet import _default_server, listening_addresses, server_factory_for
from fleetsim.llmd_sim import (
    MAX_WAITING_QUEUE,
    TRUNCATION_BIAS_REAL_S,
    Forwarder,
    LlmdSimServer,
    calibrate,
    command,
    read_gauges,
    resolution_simulated_s,
)
from fleetsim.pools import ENGINES, parse_fleet
from fleetsim.vllm_model import Engine, EngineProfile, profile_for

POOL = {
    "name": "a100",
    "instance_type": "p4de.24xlarge",
    "zone": "us-east-1a",
    "capacity_type": "on-demand",
    "count": 1,
    "max_count": 1,
}
PROFILE = EngineProfile(
    kv_cache_tokens=160_000,
    prefill_tokens_per_s=10_000.0,
    decode_step_base_s=0.02,
    decode_step_per_seq_s=0.001,
    max_model_len=4096,
    max_num_seqs=8,
    model_id="meta-llama/Meta-Llama-3-8B-Instruct",
)


def _flags(args: list[str]) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in args[1:] if a.startswith("--") and "=" in a)


def _ns(flag: str) -> int:
    assert flag.endswith("ns"), flag
    return int(flag.removesuffix("ns"))


# --- the fleet file --------------------------------------------------------------------------------------


def test_a_fleet_runs_fleetsims_engine_unless_it_says_otherwise() -> None:
    assert parse_fleet({"pools": [POOL]}).engine == "fleetsim"
    assert parse_fleet({"engine": "llm-d-inference-sim", "pools": [POOL]}).engine == "llm-d-inference-sim"
    assert ENGINES == ("fleetsim", "llm-d-inference-sim")


def test_an_unknown_engine_is_refused_naming_the_field_and_the_choices() -> None:
    with pytest.raises(ValueError, match="invalid fleet") as refused:
        parse_fleet({"engine": "vllm", "pools": [POOL]})
    line = next(
        line.strip() for line in str(refused.value).splitlines() if line.strip().startswith("engine:")
    )
    assert "'fleetsim'" in line
    assert "'llm-d-inference-sim'" in line


def test_the_engine_picks_the_kubelets_server_factory() -> None:
    assert server_factory_for("fleetsim") is _default_server
    assert server_factory_for("llm-d-inference-sim") == LlmdSimServer.factory
    with pytest.raises(ValueError, match="unknown engine 'vllm'"):
        server_factory_for("vllm")


# --- calibration -----------------------------------------------------------------------------------------


def test_calibration_is_fleetsims_step_at_a_batch_of_one_and_at_a_full_batch() -> None:
    calibration = calibrate(PROFILE)
    assert calibration.prefill_overhead_s == pytest.approx(0.02)
    assert calibration.prefill_per_token_s == pytest.approx(1e-4)
    assert calibration.inter_token_s == pytest.approx(0.021)
    # At 8 running: (0.02 + 8 × 0.001) / (0.02 + 0.001).
    assert calibration.time_factor_under_load == pytest.approx(0.028 / 0.021)
    assert calibration.kv_cache_blocks == 10_000  # 160,000 tokens in blocks of 16


def test_calibrated_ttft_and_inter_token_latency_match_fleetsims_engine_alone() -> None:
    profile = profile_for(
        "meta-llama/Meta-Llama-3-8B-Instruct", 1, "NVIDIA-A100-SXM4-80GB", max_model_len=4096, max_num_seqs=4
    )
    calibration = calibrate(profile)
    engine = Engine(profile)
    engine.submit("r", 256, 3, 0.0)
    first = engine.step(0.0)
    second = engine.step(first.end)
    assert first.first_tokens[0].ttft == pytest.approx(
        calibration.prefill_overhead_s + 256 * calibration.prefill_per_token_s
    )
    # fleetsim's decode step also reads the KV of the context (257 tokens here): under 1 % of it.
    assert second.duration == pytest.approx(calibration.inter_token_s, rel=0.01)


# --- the command line ------------------------------------------------------------------------------------


def test_the_command_maps_the_pods_vllm_arguments_and_scales_latencies_to_real_time() -> None:
    clock = SimClock(10.0)
    args = command("/bin/llmd", 18123, "llama", PROFILE, clock)
    flags = _flags(args)
    assert args[0] == "/bin/llmd"
    assert "--force-dummy-tokenizer" in args  # otherwise it fetches a tokenizer from the Hub
    assert "--enable-kvcache" in args
    assert flags["port"] == "18123"
    assert flags["model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert flags["served-model-name"] == "llama"
    assert (flags["max-num-seqs"], flags["max-model-len"]) == ("8", "4096")
    assert flags["max-waiting-queue-length"] == str(MAX_WAITING_QUEUE)
    assert (flags["kv-cache-size"], flags["block-size"]) == ("10000", "16")
    assert flags["zmq-endpoint"] == ""
    bias_ns = TRUNCATION_BIAS_REAL_S * 1e9
    # Simulated seconds / 10, plus the half millisecond that turns its truncation into rounding.
    assert _ns(flags["prefill-overhead"]) == round(0.002 * 1e9 + bias_ns)
    assert _ns(flags["prefill-time-per-token"]) == round(1e-5 * 1e9)
    assert _ns(flags["inter-token-latency"]) == round(0.0021 * 1e9 + bias_ns)
    assert float(flags["time-factor-under-load"]) == pytest.approx(0.028 / 0.021, abs=1e-6)
    assert "--lora-modules" not in args
    assert "max-loras" not in flags
    assert resolution_simulated_s(clock) == pytest.approx(0.01)


def test_lora_adapters_are_served_under_their_names_for_the_base_model() -> None:
    args = command("/bin/llmd", 18123, "llama", PROFILE, SimClock(), ["support", "legal"])
    assert _flags(args)["max-loras"] == "2"
    modules = [json.loads(a) for a in args[args.index("--lora-modules") + 1 :]]
    assert [m["name"] for m in modules] == ["support", "legal"]
    assert {m["base_model_name"] for m in modules} == {"meta-llama/Meta-Llama-3-8B-Instruct"}


def test_its_gauges_are_read_from_the_exposition() -> None:
    exposition = "\n".join(
        [
            "# HELP vllm:num_requests_running Number of requests currently running on GPU.",
            'vllm:num_requests_running{model_name="llama"} 3',
            'vllm:num_requests_waiting{model_name="llama"} 7',
            'vllm:num_requests_waiting{model_name="support"} 1',
            'vllm:kv_cache_usage_perc{model_name="llama"} 0.25',
        ]
    )
    assert read_gauges(exposition) == (3.0, 8.0)
    assert read_gauges("") == (0.0, 0.0)


def test_the_fault_of_refusing_scrapes_is_not_pretended() -> None:
    server = LlmdSimServer("127.2.250.1", 8000, "llama", PROFILE, SimClock())
    assert server.refuse_scrapes is False
    with pytest.raises(NotImplementedError):
        server.refuse_scrapes = True
    # It drains on SIGTERM for 30 s of wall clock whatever the pod's flags: in simulated seconds.
    assert LlmdSimServer("127.2.250.1", 8000, "l", PROFILE, SimClock(4.0)).sigterm_drain_seconds == 120.0


# --- the forwarder ---------------------------------------------------------------------------------------


def _free_pod_address() -> str:
    in_use = listening_addresses()
    while True:
        address = f"127.2.{random.randrange(200, 250)}.{random.randrange(2, 250)}"
        if address not in in_use:
            return address


async def _forward() -> dict[str, Any]:
    received: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(1 << 16)
        received.append(data)
        writer.write(data.upper() + b"x" * 200_000)  # more than one read's worth back
        await writer.drain()
        await reader.read()  # until the client goes away

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    address = _free_pod_address()
    forwarder = Forwarder(address, 8000, port)
    await forwarder.start()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, 8000), 5)
        writer.write(b"hello")
        reply = await asyncio.wait_for(reader.readexactly(5 + 200_000), 5)
        await forwarder.stop()  # the pod is gone: the connection is cut
        cut = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        refused = False
        try:
            await asyncio.wait_for(asyncio.open_connection(address, 8000), 5)
        except OSError:
            refused = True
        return {"received": received, "head": reply[:5], "length": len(reply), "cut": cut, "refused": refused}
    finally:
        await forwarder.stop()
        server.close()
        await server.wait_closed()


def test_the_forwarder_splices_both_ways_and_stop_cuts_connections() -> None:
    result = asyncio.run(_forward())
    assert result["received"] == [b"hello"]
    assert (result["head"], result["length"]) == (b"HELLO", 200_005)
    assert result["cut"] == b""
    assert result["refused"]
