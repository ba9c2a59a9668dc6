"""The serving load benchmark's client and figures, against a stand-in server."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["serve_load"]


class StandIn(BaseHTTPRequestHandler):
    """Answers /recommend with `k` items and fixed timings, /events with 200,
    and user 13 with a 500."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the service's uvicorn

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, answer = 200, {"accepted": 1}
        if self.path == "/recommend":
            stage = "two_tower" if body["user_id"] < 10_000_000 else "popularity"
            answer = {
                "items": [{"item_id": i, "stage": stage} for i in range(body["k"])],
                "timings_ms": {"store": 0.5, "recall": 1.0, "rank": 3.0, "total": 4.5},
            }
            if body["user_id"] == 13:
                status, answer = 500, {"detail": "boom"}
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def port():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_plan_is_on_schedule_and_mixes_calls(bench):
    calls = bench.plan(
        400, 100.0, [1, 2, 3], ["a", "b"], unknown_share=0.1, events_share=0.2
    )
    assert [c.at for c in calls[:3]] == [0.0, 0.01, 0.02]
    events = [c for c in calls if c.path == "/events"]
    assert 40 < len(events) < 120
    recommends = [json.loads(c.body) for c in calls if c.path == "/recommend"]
    unknown = [r for r in recommends if r["user_id"] >= bench.UNKNOWN_BASE]
    assert 10 < len(unknown) < 70
    assert {r["k"] for r in recommends} == {bench.K}
    batch = json.loads(events[0].body)["events"]
    assert [e["type"] for e in batch] == ["impression"] * 10 + ["click"]
    assert bench.plan(400, 100.0, [1, 2, 3], ["a"]) == bench.plan(
        400, 100.0, [1, 2, 3], ["a"]
    )


def test_load_is_counted_and_timed(bench, port):
    calls = bench.plan(60, 200.0, [1, 2, 13], [7], events_share=0.1, seed=3)
    client = bench.Client(port, "token", threads=4)
    answers, seconds = client.run(calls)
    client.close()
    assert 60 / 200 <= seconds < 5
    result = bench.summarise(answers, seconds, 200.0)
    failed = sum(json.loads(c.body).get("user_id") == 13 for c in calls)
    assert failed > 0
    assert result["errors"] == failed
    assert result["requests"] == 60
    assert result["short_feeds"] == 0
    assert result["two_tower_feeds"] + result["popularity_feeds"] == sum(
        a.path == "/recommend" and a.status == 200 for a in answers
    )
    assert result["server_stages_ms"]["rank"]["p50"] == 3.0
    e2e = result["recommend_ms"]
    assert 0 < e2e["p50"] <= e2e["p90"] <= e2e["p99"] <= e2e["max"]
    outside = result["outside_stages_ms"]["p50"]
    assert outside == pytest.approx(e2e["p50"] - 4.5, abs=0.011)
    row = bench.table(
        [{"backend": "stand-in", "cpu_ms_per_request": {"service": 1.0}, **result}]
    ).splitlines()[-1]
    assert row.split()[0] == "stand-in" and row.split()[2] == str(failed)


def test_an_unreachable_service_is_an_error_not_a_crash(bench):
    client = bench.Client(bench.free_port(), "token", threads=2)
    answers, _ = client.run(bench.plan(3, 100.0, [1], [7], events_share=0.0))
    client.close()
    assert [a.status for a in answers] == [0, 0, 0]
    assert all(a.error for a in answers)
