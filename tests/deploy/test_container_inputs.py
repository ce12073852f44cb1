"""Bad input to the containers: a missing model volume, an unreadable model, and a gateway whose
stages serve different models each stop the container with a non-zero exit and one clear ERROR
line (no panic, no backtrace); a gateway given a stage name that resolves to nothing keeps
resolving and answers NOT_SERVING meanwhile.

Skipped, saying why, without a Docker daemon or the unclip:cpu image (scripts/images).
"""

import os
import subprocess
import time
import uuid

import pytest

from test_compose_faults import IMAGE, ROOT, why_not

pytestmark = pytest.mark.skipif(why_not is not None, reason=f"container tests skipped: {why_not}")


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def assert_one_clear_error(out: subprocess.CompletedProcess, cause: str) -> None:
    logs = out.stdout + out.stderr
    errors = [line for line in logs.splitlines() if " ERROR " in line]
    assert out.returncode == 1, f"exit {out.returncode}: {logs[-2000:]}"
    assert len(errors) == 1 and cause in errors[0], logs[-2000:]
    assert "panicked" not in logs and "stack backtrace" not in logs, logs[-2000:]


@pytest.fixture
def network():
    name = f"unclip-inputs-{uuid.uuid4().hex[:8]}"
    docker("network", "create", name)
    started: list[str] = []
    yield name, started
    for container in started:
        docker("rm", "-f", container)
    docker("network", "rm", name)


def test_a_missing_model_volume_stops_the_stage_with_one_error_line():
    out = docker("run", "--rm", IMAGE, "unclip-decoder")
    assert_one_clear_error(out, "no manifest.json in /models")


def test_an_unreadable_model_stops_the_stage_with_one_error_line(tmp_path):
    # A manifest the service user (uid 10001) may not read.
    (tmp_path / "manifest.json").write_text("{}")
    os.chmod(tmp_path / "manifest.json", 0o600)
    os.chmod(tmp_path, 0o755)
    out = docker("run", "--rm", "--user", "10001:10001", "-v", f"{tmp_path}:/models:ro", IMAGE, "unclip-prior")
    assert_one_clear_error(out, "/models/manifest.json: Permission denied")


def test_a_gateway_over_stages_of_different_models_exits_with_one_error_line(network):
    net, started = network
    models = {"clip": "shapes", "prior": "shapes", "decoder": "karlo-tiny"}
    for stage, model in models.items():
        name = f"{net}-{stage}"
        assert docker("run", "-d", "--name", name, "--network", net, "--network-alias", stage,
                      "-v", f"{ROOT / 'models' / model}:/models:ro", IMAGE, f"unclip-{stage}").returncode == 0
        started.append(name)
    for name in started:
        end = time.monotonic() + 120
        while docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip() != "healthy":
            assert time.monotonic() < end, f"{name} never turned healthy"
            time.sleep(0.5)
    out = docker("run", "--rm", "--network", net, "-e", "UNCLIP_CLIP_URLS=http://clip:50051",
                 "-e", "UNCLIP_PRIOR_URLS=http://prior:50052", "-e", "UNCLIP_DECODER_URLS=http://decoder:50053",
                 IMAGE, "unclip-gateway")
    assert_one_clear_error(out, "the stages serve different models")


def test_a_gateway_keeps_resolving_a_stage_name_that_resolves_to_nothing(network):
    net, started = network
    name = f"{net}-gateway"
    docker("run", "-d", "--name", name, "--network", net, "-e", "UNCLIP_CLIP_URLS=http://clip:50051",
           "-e", "UNCLIP_PRIOR_URLS=http://prior:50052", "-e", "UNCLIP_DECODER_URLS=http://decoder:50053",
           IMAGE, "unclip-gateway")
    started.append(name)
    time.sleep(8)
    state = docker("inspect", "-f", "{{.State.Status}}", name).stdout.strip()
    assert state == "running", f"the gateway {state}: {docker('logs', name).stderr[-1000:]}"
    health = docker("exec", name, "unclip-healthcheck")
    assert health.returncode == 1 and "NOT_SERVING" in health.stderr, health.stderr
