"""The Compose TLS overlay (deploy/compose/compose.tls.yaml), checked offline: `compose config`
merges it with compose.yaml (no daemon, no image, no container), and in the result every stage
serves TLS and requires a client certificate, the gateway serves TLS and presents its client
certificate to the stages, every TLS file is a Compose secret mounted where its variable says,
the health check asks the plaintext health-only port, and the files come from
`scripts/tls-certs` with certificates that fit: each stage's names the host in the gateway's
stage URL and chains to the CA the gateway trusts, the gateway's client certificate chains to
the CA the stages trust, the gateway's names localhost for the published port.

    python -m pytest -q -rs tests/deploy/test_compose_tls.py
"""

import pathlib
import shutil
import subprocess
import urllib.parse

import pytest
import yaml

from test_compose_faults import compose_command

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"
STAGES = ("clip", "prior", "decoder")
openssl = shutil.which("openssl")

pytestmark = [
    pytest.mark.skipif(compose_command() is None, reason="no Docker Compose (docker compose or docker-compose)"),
    pytest.mark.skipif(openssl is None, reason="openssl is not installed: scripts/tls-certs cannot run"),
]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[dict, pathlib.Path]:
    """The merged configuration with certificates made by scripts/tls-certs in a temporary folder."""
    tls = tmp_path_factory.mktemp("compose") / "tls"
    subprocess.run([str(ROOT / "scripts" / "tls-certs"), "--dir", str(tls)], check=True, capture_output=True)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "UNCLIP_TLS_DIR": str(tls)}
    out = subprocess.run([*compose_command(), "-f", str(COMPOSE / "compose.yaml"), "-f", str(COMPOSE / "compose.tls.yaml"),
                          "-p", "unclip-tls-check", "config"], check=True, capture_output=True, text=True, env=env)
    return yaml.safe_load(out.stdout), tls


def secret_file(config: dict, service: str, path: str) -> pathlib.Path:
    """The host file mounted at `path` (under /run/secrets) in `service`."""
    assert path.startswith("/run/secrets/"), f"{service}: {path} is not a Compose secret"
    target = path.removeprefix("/run/secrets/")
    for entry in config["services"][service].get("secrets", []):
        entry = entry if isinstance(entry, dict) else {"source": entry}
        if entry.get("target", entry["source"]) == target:
            return pathlib.Path(config["secrets"][entry["source"]]["file"])
    raise AssertionError(f"{service}: no secret mounted at {path}")


def verify(ca: pathlib.Path, cert: pathlib.Path, *options: str) -> None:
    done = subprocess.run([openssl, "verify", "-CAfile", str(ca), *options, str(cert)], capture_output=True, text=True)
    assert done.returncode == 0, f"{cert} against {ca} {options}: {done.stdout}{done.stderr}"


def test_every_service_serves_tls_and_the_stages_answer_only_the_gateway(rendered):
    config, tls = rendered
    services = config["services"]
    gateway = services["gateway"]["environment"]
    for name in (*STAGES, "gateway"):
        env = services[name]["environment"]
        for var in ("UNCLIP_TLS_CERT", "UNCLIP_TLS_KEY"):
            assert secret_file(config, name, env[var]).parent == tls, (name, var)
        # The image's health check (unclip-healthcheck) speaks plaintext: it asks the health-only port.
        assert env["UNCLIP_HEALTH_ADDR"] == env["UNCLIP_HEALTH_LISTEN"] == "127.0.0.1:50060", name
        assert services[name]["healthcheck"]["test"] == ["CMD", "unclip-healthcheck"], name
    stage_ca = secret_file(config, "gateway", gateway["UNCLIP_STAGE_TLS_CA"])
    client = secret_file(config, "gateway", gateway["UNCLIP_STAGE_TLS_CERT"])
    assert secret_file(config, "gateway", gateway["UNCLIP_STAGE_TLS_KEY"]).name == "gateway-client.key"
    assert client.name == "gateway-client.crt"
    for stage in STAGES:
        env = services[stage]["environment"]
        host = urllib.parse.urlsplit(gateway[f"UNCLIP_{stage.upper()}_URLS"]).hostname
        cert = secret_file(config, stage, env["UNCLIP_TLS_CERT"])
        assert cert.name == f"{stage}.crt" and secret_file(config, stage, env["UNCLIP_TLS_KEY"]).name == f"{stage}.key"
        verify(stage_ca, cert, "-purpose", "sslserver", "-verify_hostname", host)
        verify(secret_file(config, stage, env["UNCLIP_TLS_CLIENT_CA"]), client, "-purpose", "sslclient")
    # Clients dial the published loopback port.
    port = services["gateway"]["ports"][0]
    published = port["host_ip"] if isinstance(port, dict) else str(port).split(":")[0]
    assert published == "127.0.0.1"
    gateway_cert = secret_file(config, "gateway", gateway["UNCLIP_TLS_CERT"])
    for host in ("localhost", "gateway"):
        verify(stage_ca, gateway_cert, "-purpose", "sslserver", "-verify_hostname", host)
    verify(stage_ca, gateway_cert, "-purpose", "sslserver", "-verify_ip", "127.0.0.1")


def test_renewing_keeps_the_ca_and_rewrites_the_files_in_place(rendered):
    """A second run keeps the CA (clients keep trusting) and writes new certificates into the same
    files (a single-file bind mount keeps showing a file replaced by a rename)."""
    _, tls = rendered
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in tls.iterdir()}
    subprocess.run([str(ROOT / "scripts" / "tls-certs"), "--dir", str(tls)], check=True, capture_output=True)
    after = {p.name: (p.stat().st_ino, p.read_bytes()) for p in tls.iterdir()}
    assert after.keys() == before.keys()
    assert after["ca.crt"] == before["ca.crt"] and after["ca.key"] == before["ca.key"]
    for name in ("clip.crt", "clip.key", "gateway.crt", "gateway-client.key"):
        assert after[name][0] == before[name][0], f"{name} was replaced, not rewritten"
        assert after[name][1] != before[name][1], f"{name} was not renewed"
    verify(tls / "ca.crt", tls / "decoder.crt", "-purpose", "sslserver", "-verify_hostname", "decoder")
