"""The HTTP API fuzzed from its own OpenAPI document with schemathesis, against a daemon in its
own process (the tiny model, its context cut to 64 tokens so every completion is short): no
server errors, every response as documented (status, content type, body schema), invalid
requests refused, valid ones accepted. Bounded: a fixed seed and a few examples per operation.

Left out: /api/syscalls/{name}, which would run arbitrary syscalls as the operator (sleep for a
day, mcp.mount of made-up commands; the syscalls themselves are fuzzed at the dispatch level in
test_fuzz_syscalls.py), the endless /api/live feed, and the `ignored_auth` check, whose wrong
tokens the daemon rightly starts answering with 429 (test_http.py covers 401s and the limit)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from daemon_util import DaemonProcess, short_home

CONTEXT = 64


def test_schemathesis_against_the_openapi_document(tiny_backend, tmp_path):
    model_dir = short_home() / "tiny-llama-64"
    tiny_backend.model.config.max_position_embeddings = CONTEXT
    try:
        tiny_backend.model.save_pretrained(model_dir)
    finally:
        tiny_backend.model.config.max_position_embeddings = 4096
    tiny_backend.tokenizer.save_pretrained(model_dir)
    daemon = DaemonProcess(short_home(), "--no-persist", "--http", "127.0.0.1:0", "--model", str(model_dir)).start()
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    config = tmp_path / "schemathesis.toml"
    # A schema-valid prompt can still be longer than the model's context: OpenAI answers that
    # with 400 context_length_exceeded, and so does llmos (the tiny context makes it common).
    config.write_text('[[operations]]\ninclude-path = "/v1/chat/completions"\n'
                      'checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]\n')
    try:
        base = daemon.info["http"].removesuffix("/v1")
        run = subprocess.run(
            [st, "--config-file", str(config), "run", f"{base}/openapi.json", "--header", f"Authorization: Bearer {daemon.token}",
             "--checks", "all", "--exclude-checks", "ignored_auth", "--max-examples", "12", "--seed", "7",
             "--workers", "1", "--phases", "coverage,fuzzing", "--request-timeout", "120", "--max-response-time", "120", "--no-shrink", "--max-failures", "5",
             "--exclude-path-regex", "^/api/(syscalls|live)", "--output-truncate", "false"],
            capture_output=True, text=True, timeout=600, env=dict(os.environ, NO_COLOR="1", SCHEMATHESIS_TELEMETRY="false"),
            cwd=tmp_path,  # its cache folder goes there, not into the checkout
        )
        alive = daemon.proc.poll() is None
    finally:
        daemon.stop()
    if run.returncode != 0:
        report = tmp_path / "schemathesis.txt"
        report.write_text(run.stdout + run.stderr)
        raise AssertionError(f"schemathesis found failures (whole report: {report}):\n" + _failures(run.stdout))
    assert alive
    assert "/v1/chat/completions" in run.stdout or "6 selected" in run.stdout


def _failures(out: str) -> str:
    """The failures' section of schemathesis's report, without the fuzzed bodies that fill it."""
    keep = [line[:300] for line in out.splitlines() if line.strip() and not line.lstrip().startswith(("curl ", "`{", "`data"))]
    return "\n".join(keep)[-8000:]
