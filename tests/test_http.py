"""The daemon's HTTP door on the tiny model: the OpenAPI document, /metrics, the console's
syscall endpoint, connection admission (unauthenticated connections cannot crowd out
authenticated ones) and failed logins (audited, rate-limited)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import trio
from conftest import prog
from daemon_util import daemon_with

from llmos.servers import http as http_mod

QUESTION = [{"role": "user", "content": "Count to three."}]


def base(d) -> str:
    return f"http://127.0.0.1:{d.http_port}"


def auth(d) -> dict[str, str]:
    return {"Authorization": f"Bearer {d.token}"}


def test_openapi_metrics_and_console_api(tiny_backend):
    async def main():
        async with daemon_with(tiny_backend, http=("127.0.0.1", 0)) as d:
            name = d.kernel.backend.name

            def use():
                with httpx.Client(base_url=base(d), headers=auth(d), timeout=60) as c:
                    doc = httpx.get(f"{base(d)}/openapi.json").json()
                    unauth_metrics = httpx.get(f"{base(d)}/metrics").status_code
                    body = {"model": name, "messages": QUESTION, "max_tokens": 8, "temperature": 0}
                    done = c.post("/v1/chat/completions", json=body).json()
                    streamed = c.post("/v1/chat/completions", json={**body, "stream": True}).text
                    pid = c.post("/api/syscalls/proc.spawn", json={"program": prog("exiter")}).json()["result"]["pid"]
                    ps = c.post("/api/syscalls/proc.ps").json()["result"]["procs"]
                    nosys = c.post("/api/syscalls/no.such", json={})
                    einval = c.post("/api/syscalls/proc.nice", json={"pid": pid, "nice": 99})
                    with c.stream("POST", "/api/syscalls/sleep", json={"seconds": 0.01},
                                  headers={"accept": "text/event-stream"}) as r:
                        events = [line for line in r.iter_lines() if line.startswith("event:")]
                    for _ in range(300):  # (its worker starts in the background: wait for its first call)
                        quota = c.get(f"/api/procs/{pid}/quota").json()
                        if quota["used"]["syscalls"] >= 1:
                            break
                        time.sleep(0.1)
                    with c.stream("GET", "/api/live") as r:
                        live = []
                        for line in r.iter_lines():
                            if line.startswith("data:"):
                                live.append(json.loads(line[5:]))
                            if len(live) == 2:
                                break
                    time.sleep(1.2)  # a telemetry sample after the completions
                    metrics = c.get("/metrics").text
                    page = httpx.get(f"{base(d)}/")
                    script = httpx.get(f"{base(d)}/console/app.js")
                return doc, unauth_metrics, done, streamed, pid, ps, nosys, einval, events, quota, live, metrics, page, script

            return await trio.to_thread.run_sync(use)

    doc, unauth_metrics, done, streamed, pid, ps, nosys, einval, events, quota, live, metrics, page, script = trio.run(main)
    paths = doc["paths"]
    assert {"/v1/chat/completions", "/v1/models", "/metrics", "/api/syscalls/{name}", "/health"} <= set(paths)
    assert doc["components"]["schemas"]["CompletionRequest"]["properties"]["model"]["enum"] == ["tiny-llama"]
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert unauth_metrics == 401
    assert done["object"] == "chat.completion" and done["usage"]["completion_tokens"] >= 1
    assert streamed.rstrip().endswith("data: [DONE]") and '"chat.completion.chunk"' in streamed
    assert any(p["pid"] == pid and p["name"] == "exiter" for p in ps)
    assert any(p["name"] == "console" for p in ps)  # the console's calls come from its session process
    assert nosys.status_code == 404 and nosys.json()["error"]["errno"] == "ENOSYS"
    assert einval.status_code == 400 and einval.json()["error"]["errno"] == "EINVAL"
    assert events == ["event: result"]
    assert quota["pid"] == pid and quota["used"]["syscalls"] >= 1 and "max_tokens" in quota["quota"]
    assert isinstance(live[0], list) and {"stat", "procs", "sample"} <= set(live[1])
    for line in ("llmos_tokens_generated_total", "llmos_ttft_seconds_bucket", "llmos_inter_token_latency_seconds_count",
                 'llmos_syscalls_total{result="OK",syscall="llm.chat"}', 'llmos_syscalls_total{result="ENOSYS",syscall="(no such syscall)"}',
                 'llmos_processes{state="ZOMBIE"}', "llmos_batch_occupancy", "llmos_waiting_sequences",
                 "llmos_kv_bytes", "llmos_kv_evictions_total", "llmos_prefix_cache_hits_total", "llmos_preemptions_total",
                 "llmos_prefix_cache_retired_bytes", "llmos_prefix_cache_adopted_total",
                 "llmos_memory_page_faults_total", "llmos_tokens_per_second", "llmos_http_auth_failures_total 1.0"):
        assert line in metrics, line
    ttft_count = next(line for line in metrics.splitlines() if line.startswith("llmos_ttft_seconds_count"))
    assert float(ttft_count.split()[-1]) >= 2  # one per completion
    lookups = next(line for line in metrics.splitlines() if line.startswith("llmos_prefix_cache_lookups_total"))
    assert float(lookups.split()[-1]) >= 2  # every prompt looks in the prefix cache
    assert page.status_code == 200 and "app.js" in page.text and page.headers["referrer-policy"] == "no-referrer"
    assert script.status_code == 200 and "sessionStorage" in script.text


def test_unauthenticated_connections_give_way(tiny_backend, monkeypatch):
    monkeypatch.setattr(http_mod, "AUTH_DEADLINE", 1.0)

    async def main():
        async with daemon_with(tiny_backend, http=("127.0.0.1", 0), max_clients=3) as d:

            def use():
                idle = [socket.create_connection(("127.0.0.1", d.http_port)) for _ in range(3)]  # fill every slot
                time.sleep(0.2)
                ok = httpx.get(f"{base(d)}/v1/models", headers=auth(d)).status_code  # takes an idle one's place
                t0 = time.monotonic()
                closed = []
                for s in idle:
                    s.settimeout(5)
                    try:
                        closed.append(s.recv(10) == b"")
                    except OSError:
                        closed.append(True)
                waited = time.monotonic() - t0
                # Every slot authenticated: a newcomer is refused with 503, not queued.
                with httpx.Client(headers=auth(d)) as a, httpx.Client(headers=auth(d)) as b, httpx.Client(headers=auth(d)) as c:
                    kept = [x.get(f"{base(d)}/v1/models").status_code for x in (a, b, c)]
                    refused = httpx.get(f"{base(d)}/v1/models", headers=auth(d)).status_code
                for s in idle:
                    s.close()
                return ok, closed, waited, kept, refused

            return await trio.to_thread.run_sync(use)

    ok, closed, waited, kept, refused = trio.run(main)
    assert ok == 200
    assert all(closed) and waited < 3  # dropped at their deadline (or to make room), not after 30 s
    assert kept == [200, 200, 200] and refused == 503


def test_a_long_stream_outlives_the_read_timeout_and_a_stalled_body_does_not(tiny_backend, monkeypatch):
    """The client of a streamed completion sends nothing while it streams: that must not end the
    connection (hypercorn's read timeout did, at 30 s). A body that stops coming gets 408."""
    monkeypatch.setattr(http_mod, "READ_TIMEOUT", 1.0)

    async def main():
        async with daemon_with(tiny_backend, http=("127.0.0.1", 0)) as d:

            def use():
                request = {"model": d.kernel.backend.name, "messages": [{"role": "user", "content": "go on"}],
                           "max_tokens": 400, "ignore_eos": True, "stream": True}
                started, chunks, done = time.monotonic(), 0, False
                with httpx.stream("POST", f"{base(d)}/v1/chat/completions", json=request, headers=auth(d), timeout=60) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            chunks += 1
                            time.sleep(0.006)  # a slow reader: the stream lasts well past the timeout (>= 2.4 s)
                        done = done or line == "data: [DONE]"
                took = time.monotonic() - started
                s = socket.create_connection(("127.0.0.1", d.http_port))
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: " + auth(d)["Authorization"].encode()
                          + b"\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
                s.settimeout(5)
                reply = s.recv(200)
                s.close()
                return took, chunks, done, reply

            return await trio.to_thread.run_sync(use)

    took, chunks, done, reply = trio.run(main)
    assert took > 2.0 and chunks > 300 and done
    assert reply.startswith(b"HTTP/1.1 408")


def test_failed_logins_are_audited_and_rate_limited(tiny_backend, tmp_path, monkeypatch):
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("LLMOS_AUDIT_LOG", str(audit))

    async def main():
        async with daemon_with(tiny_backend, http=("127.0.0.1", 0)) as d:

            def use():
                wrong = {"Authorization": "Bearer guess"}
                codes = [httpx.get(f"{base(d)}/v1/models", headers=wrong).status_code for _ in range(http_mod.AUTH_FAILURES + 3)]
                locked = httpx.get(f"{base(d)}/metrics", headers=wrong)
                right = httpx.get(f"{base(d)}/v1/models", headers=auth(d)).status_code
                return codes, locked, right

            return await trio.to_thread.run_sync(use)

    codes, locked, right = trio.run(main)
    n = http_mod.AUTH_FAILURES
    assert codes == [401] * n + [429] * 3
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    assert locked.json()["error"]["code"] == "too_many_auth_failures"
    assert right == 200  # the operator is never locked out
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    auth_lines = [line for line in lines if line["syscall"] == "auth"]
    assert [line["result"] for line in auth_lines] == ["EPERM"] * n + ["EAGAIN"]  # one line for the lockout, not one per try
    assert auth_lines[0]["args"]["door"] == "http" and auth_lines[0]["args"]["path"] == "/v1/models"
