"""The Kubernetes manifests (deploy/k8s): every overlay renders with `kubectl kustomize`, every
object validates against the Kubernetes schemas offline (kubernetes-validate, pinned version,
strict: unknown fields are errors), and the rendered objects are read for what matters: probes,
requests and limits on every container, headless stage Services, HPAs and PDBs that point at
existing Deployments, ports that agree between Deployments, Services, probes, scrape
annotations and the gateway's stage URLs, a gateway liveness probe that does not follow the
stages, and, with the TLS component, every TLS file mounted from a Secret that
`scripts/tls-certs --k8s-secrets` makes, mutual TLS between the gateway and every stage, and
probes on the plaintext health port.

    python -m pytest -q -rs tests/deploy/test_k8s.py
"""

import base64
import pathlib
import shutil
import subprocess
import urllib.parse

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The Kubernetes version the manifests are checked against: native gRPC probes are GA since 1.27,
# policy/v1 PDBs since 1.21, autoscaling/v2 since 1.23.
KUBERNETES_VERSION = "1.31.0"
STAGES = {"clip": 50051, "prior": 50052, "decoder": 50053}
GATEWAY_PORT = 50050
OVERLAYS = ("cpu", "gpu", "everything", "tls")
# The files of a kubernetes.io/tls Secret (what scripts/tls-certs and cert-manager write).
TLS_SECRET_KEYS = {"tls.crt", "tls.key", "ca.crt"}

kubectl = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(kubectl is None, reason="kubectl is not installed: the manifests are not rendered")


def render(overlay: pathlib.Path) -> list[dict]:
    out = subprocess.run([kubectl, "kustomize", str(overlay)], check=True, capture_output=True, text=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def overlays(tmp_path_factory) -> dict[str, list[dict]]:
    """cpu, gpu, gpu with both scaling components, and tls (cpu with the TLS component) (in a
    copy, as kustomize wants relative paths)."""
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree)
    everything = tree / "overlays" / "everything"
    everything.mkdir()
    (everything / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../gpu]\n"
        "components: [../../components/servicemonitor, ../../components/custom-metrics-hpa]\n")
    return {name: render(tree / "overlays" / name) for name in OVERLAYS}


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(deployment: dict) -> list[dict]:
    spec = deployment["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict, config: dict) -> dict[str, str]:
    """The container's environment: the ConfigMaps it loads, then its own env (which wins)."""
    env = {}
    for source in container.get("envFrom", []):
        env.update(config[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


# The environment variables that name a TLS file.
TLS_FILE_VARS = ("UNCLIP_TLS_CERT", "UNCLIP_TLS_KEY", "UNCLIP_TLS_CLIENT_CA",
                 "UNCLIP_STAGE_TLS_CA", "UNCLIP_STAGE_TLS_CERT", "UNCLIP_STAGE_TLS_KEY")


def tls_file_problems(where: str, container: dict, pod: dict, env: dict[str, str]) -> list[str]:
    """Every TLS file a container is given must be a file of a Secret mounted read-only (so a
    renewed Secret reaches the pod and nothing is in the image or a ConfigMap)."""
    found = []
    mounts = {m["mountPath"].rstrip("/"): m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for var in TLS_FILE_VARS:
        if var not in env:
            continue
        folder, _, file = env[var].rpartition("/")
        mount = mounts.get(folder)
        secret = volumes.get(mount["name"], {}).get("secret") if mount else None
        if secret is None or not mount.get("readOnly"):
            found.append(f"{where}: {var}={env[var]} is not in a read-only Secret volume")
            continue
        files = {item["path"] for item in secret["items"]} if "items" in secret else TLS_SECRET_KEYS
        if file not in files:
            found.append(f"{where}: {var}={env[var]}: the Secret {secret['secretName']} has no {file}")
    for a, b in (("UNCLIP_TLS_CERT", "UNCLIP_TLS_KEY"), ("UNCLIP_STAGE_TLS_CERT", "UNCLIP_STAGE_TLS_KEY")):
        if (a in env) != (b in env):
            found.append(f"{where}: {a} and {b} go together")
    return found


def mutual_tls_problems(envs: dict[str, dict[str, str]]) -> list[str]:
    """The gateway and the stages agree: TLS to every stage or to none, and when the gateway
    presents a client certificate, every stage requires one (so it answers only the gateway)."""
    found = []
    gateway = envs.get("gateway", {})
    for stage in STAGES:
        env = envs.get(stage)
        if env is None:
            continue
        if ("UNCLIP_TLS_CERT" in env) != ("UNCLIP_STAGE_TLS_CA" in gateway):
            found.append(f"{stage}: serves {'TLS' if 'UNCLIP_TLS_CERT' in env else 'plaintext'} but the gateway "
                         f"connects {'over TLS' if 'UNCLIP_STAGE_TLS_CA' in gateway else 'in plaintext'} "
                         "(UNCLIP_STAGE_TLS_CA)")
        if "UNCLIP_TLS_CLIENT_CA" in env and "UNCLIP_STAGE_TLS_CERT" not in gateway:
            found.append(f"{stage}: requires a client certificate (UNCLIP_TLS_CLIENT_CA) but the gateway presents "
                         "none (UNCLIP_STAGE_TLS_CERT)")
        if "UNCLIP_TLS_CLIENT_CA" not in env and "UNCLIP_STAGE_TLS_CERT" in gateway:
            found.append(f"{stage}: answers any client (no UNCLIP_TLS_CLIENT_CA) while the gateway presents a "
                         "client certificate: mutual TLS is off")
    return found


def problems(objects: list[dict]) -> list[str]:
    """Everything wrong with one rendered overlay, as readable lines (empty when all is well)."""
    found = []
    envs: dict[str, dict[str, str]] = {}  # component -> environment
    deployments = by_kind(objects, "Deployment")
    services = by_kind(objects, "Service")
    config = by_kind(objects, "ConfigMap")
    if not deployments:
        return ["no Deployments rendered"]

    for name, d in deployments.items():
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        if any(pod_labels.get(k) != v for k, v in d["spec"]["selector"]["matchLabels"].items()):
            found.append(f"Deployment {name}: selector does not match its pod labels")
        for c in containers(d):
            where = f"Deployment {name} container {c['name']}"
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    found.append(f"{where}: no {probe}")
            for side in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in c.get("resources", {}).get(side, {}):
                        found.append(f"{where}: no {resource} in resources.{side}")
        component = pod_labels.get("app.kubernetes.io/component")
        if component in STAGES or component == "gateway":
            port = STAGES.get(component, GATEWAY_PORT)
            spec = d["spec"]["template"]["spec"]
            (c,) = spec["containers"]
            where = f"Deployment {name}"
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            if ports.get("grpc") != port:
                found.append(f"{where}: grpc containerPort {ports.get('grpc')}, want {port}")
            env = env_of(c, config)
            envs[component] = env
            listen = env.get(f"UNCLIP_{component.upper()}_LISTEN", "")
            if not listen.endswith(f":{port}"):
                found.append(f"{where}: UNCLIP_{component.upper()}_LISTEN={listen!r} is not on port {port}")
            tls = "UNCLIP_TLS_CERT" in env
            # gRPC probes speak plaintext only: with TLS on the port they go to the plaintext
            # health-only port (--health-listen), which the kubelet must reach on the pod's IP.
            health_port = port
            if "UNCLIP_HEALTH_LISTEN" in env:
                host, _, number = env["UNCLIP_HEALTH_LISTEN"].rpartition(":")
                health_port = int(number)
                if host not in ("0.0.0.0", "[::]"):
                    found.append(f"{where}: UNCLIP_HEALTH_LISTEN={env['UNCLIP_HEALTH_LISTEN']!r} is not reachable "
                                 "by the kubelet (listen on 0.0.0.0)")
                if health_port not in ports.values():
                    found.append(f"{where}: the health port {health_port} is no containerPort")
            elif tls:
                found.append(f"{where}: TLS on {port} and no UNCLIP_HEALTH_LISTEN: gRPC probes speak plaintext only")
            grpc_probes = ["readinessProbe"]
            if component in STAGES:
                # A stage is NOT_SERVING only while it loads, drains or has lost an executor:
                # restarting it then is right.
                grpc_probes += ["startupProbe", "livenessProbe"]
            else:
                # The gateway's gRPC health follows its stages: were liveness to ask it, a stage
                # outage would restart gateway pods that are fine. GET /healthz answers while the
                # process runs.
                scheme = "HTTPS" if tls else "HTTP"
                for probe in ("startupProbe", "livenessProbe"):
                    get = c.get(probe, {}).get("httpGet") or {}
                    if (get.get("path"), get.get("port"), get.get("scheme", "HTTP")) != ("/healthz", port, scheme):
                        found.append(f"{where}: {probe} is not GET /healthz over {scheme} on {port} (gRPC health "
                                     "follows the stages: a stage outage would restart the gateway)")
            for probe in grpc_probes:
                grpc = c.get(probe, {}).get("grpc")
                if grpc is None or grpc.get("port") != health_port:
                    found.append(f"{where}: {probe} is not a gRPC probe on {health_port}")
            annotations = d["spec"]["template"]["metadata"].get("annotations", {})
            if annotations.get("prometheus.io/port") != str(port) or annotations.get("prometheus.io/scrape") != "true":
                found.append(f"{where}: Prometheus scrape annotations missing or not on {port}")
            if annotations.get("prometheus.io/scheme", "http") != ("https" if tls else "http"):
                found.append(f"{where}: prometheus.io/scheme is not {'https' if tls else 'http'} for /metrics on {port}")
            found += tls_file_problems(where, c, spec, env)
            # Drain: preStop pause + the service's own grace must fit in the pod's grace period.
            pause = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            pause_secs = int(pause[1]) if pause[:1] == ["sleep"] else None
            grace = int(env_of(c, config).get("UNCLIP_DRAIN_TIMEOUT_SECS", "30"))
            if pause_secs is None:
                found.append(f"{where}: no preStop pause")
            elif spec.get("terminationGracePeriodSeconds", 30) <= pause_secs + grace:
                found.append(f"{where}: terminationGracePeriodSeconds {spec.get('terminationGracePeriodSeconds', 30)} "
                             f"does not cover preStop {pause_secs} s + drain {grace} s")
            if component in STAGES:
                mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
                if not mounts.get("/models", {}).get("readOnly"):
                    found.append(f"{where}: the model volume is not mounted read-only at /models")

    for name, s in services.items():
        selector = s["spec"].get("selector", {})
        targets = [d for d in deployments.values()
                   if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())]
        if len(targets) != 1:
            found.append(f"Service {name}: selects {len(targets)} Deployments")
            continue
        component = selector.get("app.kubernetes.io/component")
        if "UNCLIP_TLS_CERT" in envs.get(component, {}) and any(
                p.get("appProtocol") == "kubernetes.io/h2c" for p in s["spec"]["ports"]):
            found.append(f"Service {name}: appProtocol kubernetes.io/h2c, but the pods serve TLS")
        if component in STAGES and s["spec"].get("clusterIP") != "None":
            found.append(f"Service {name}: a stage Service must be headless (clusterIP: None)")
        (c,) = targets[0]["spec"]["template"]["spec"]["containers"]
        named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        for p in s["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            port = named.get(target) if isinstance(target, str) else target
            if port not in named.values():
                found.append(f"Service {name}: targetPort {target!r} is no port of {targets[0]['metadata']['name']}")
            elif component in STAGES and p["port"] != port:
                # The gateway resolves the headless name to pod IPs: it connects to the Service's
                # port number on the pods, so it must be the container's.
                found.append(f"Service {name}: port {p['port']} differs from the pods' {port}")

    # The gateway's stage and Redis URLs name existing Services on their ports.
    gateway = next((d for d in deployments.values()
                    if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway"), None)
    if gateway is None:
        found.append("no gateway Deployment")
    else:
        env = env_of(gateway["spec"]["template"]["spec"]["containers"][0], config)
        for var, component in [("UNCLIP_CLIP_URLS", "clip"), ("UNCLIP_PRIOR_URLS", "prior"),
                               ("UNCLIP_DECODER_URLS", "decoder"), ("UNCLIP_REDIS_URL", "redis")]:
            for url in filter(None, env.get(var, "").split(",")):
                u = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
                s = services.get(u.hostname)
                if s is None:
                    found.append(f"gateway {var}: no Service {u.hostname}")
                elif u.port not in [p["port"] for p in s["spec"]["ports"]]:
                    found.append(f"gateway {var}: Service {u.hostname} has no port {u.port}")
                elif s["spec"]["selector"].get("app.kubernetes.io/component") != component:
                    found.append(f"gateway {var}: Service {u.hostname} does not select the {component} pods")
            if var not in env:
                found.append(f"gateway: {var} is not set")

    found += mutual_tls_problems(envs)

    for kind in ("HorizontalPodAutoscaler",):
        for name, h in by_kind(objects, kind).items():
            ref = h["spec"]["scaleTargetRef"]
            if ref.get("kind") != "Deployment" or ref.get("apiVersion") != "apps/v1" or ref["name"] not in deployments:
                found.append(f"HPA {name}: targets {ref}, which is not a Deployment here")
    scaled = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind(objects, "HorizontalPodAutoscaler").values()}
    budgets = by_kind(objects, "PodDisruptionBudget").values()
    for name, d in deployments.items():
        component = d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        if component in STAGES or component == "gateway":
            if name not in scaled:
                found.append(f"Deployment {name}: no HPA")
            labels = d["spec"]["template"]["metadata"]["labels"]
            if not any(all(labels.get(k) == v for k, v in b["spec"]["selector"]["matchLabels"].items()) for b in budgets):
                found.append(f"Deployment {name}: no PodDisruptionBudget selects its pods")
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(overlays, overlay):
    import kubernetes_validate

    checked = 0
    for obj in overlays[overlay]:
        what = f"{obj['kind']} {obj['metadata']['name']}"
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            # A CRD kubernetes-validate has no schema for: check its shape by hand.
            assert obj["kind"] == "ServiceMonitor" and obj["spec"]["endpoints"], what
            assert all(e["port"] == "grpc" and e["path"] == "/metrics" for e in obj["spec"]["endpoints"]), what
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{overlay}: {what}: {e.message} at {'/'.join(map(str, e.path))}")
        checked += 1
    assert checked >= 15, f"{overlay}: only {checked} objects rendered"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_resources_services_autoscalers_and_ports_agree(overlays, overlay):
    assert problems(overlays[overlay]) == []


def test_the_checks_catch_broken_manifests(overlays):
    """Each kind of mistake the structural test looks for is reported when made."""
    import copy

    def broken(change, overlay="cpu") -> list[str]:
        objects = copy.deepcopy(overlays[overlay])
        change(objects)
        return problems(objects)

    def deployment(objects, name):
        return by_kind(objects, "Deployment")[name]

    def first(objects, name):
        return deployment(objects, name)["spec"]["template"]["spec"]["containers"][0]

    assert any("no livenessProbe" in p for p in broken(lambda o: first(o, "unclip-decoder").pop("livenessProbe")))
    assert any("no memory in resources.limits" in p
               for p in broken(lambda o: first(o, "unclip-prior")["resources"]["limits"].pop("memory")))
    assert any("headless" in p for p in broken(lambda o: by_kind(o, "Service")["unclip-clip"]["spec"].pop("clusterIP")))
    assert any("HPA unclip-prior" in p
               for p in broken(lambda o: by_kind(o, "HorizontalPodAutoscaler")["unclip-prior"]["spec"]["scaleTargetRef"]
                               .update(name="unclip-priors")))
    assert any("UNCLIP_DECODER_URLS" in p
               for p in broken(lambda o: by_kind(o, "ConfigMap")["unclip-settings"]["data"]
                               .update(UNCLIP_DECODER_URLS="http://unclip-decoder:50052")))
    assert any("UNCLIP_PRIOR_LISTEN" in p
               for p in broken(lambda o: first(o, "unclip-prior")["env"][0].update(value="0.0.0.0:6000")))
    assert any("terminationGracePeriodSeconds" in p
               for p in broken(lambda o: deployment(o, "unclip-decoder")["spec"]["template"]["spec"]
                               .update(terminationGracePeriodSeconds=20)))
    # The gateway's liveness asking gRPC health, which follows the stages.
    assert any("unclip-gateway: livenessProbe is not GET /healthz" in p
               for p in broken(lambda o: first(o, "unclip-gateway").update(livenessProbe={"grpc": {"port": 50050}})))

    # With the TLS component.
    def env_var(objects, name, var) -> dict:
        return next(e for e in first(objects, name)["env"] if e["name"] == var)

    def drop_env(objects, name, *names):
        c = first(objects, name)
        c["env"] = [e for e in c["env"] if e["name"] not in names]

    assert broken(lambda o: None, "tls") == []
    assert any("decoder: answers any client" in p
               for p in broken(lambda o: drop_env(o, "unclip-decoder", "UNCLIP_TLS_CLIENT_CA"), "tls"))
    assert any("prior: serves plaintext but the gateway connects over TLS" in p
               for p in broken(lambda o: drop_env(o, "unclip-prior", "UNCLIP_TLS_CERT", "UNCLIP_TLS_KEY"), "tls"))
    assert any("UNCLIP_STAGE_TLS_CERT=/etc/unclip/stage-tls/tls.crt is not in a read-only Secret volume" in p
               for p in broken(lambda o: first(o, "unclip-gateway")["volumeMounts"].pop(), "tls"))
    assert any("the Secret unclip-clip-tls has no tls.pem" in p
               for p in broken(lambda o: env_var(o, "unclip-clip", "UNCLIP_TLS_CERT")
                               .update(value="/etc/unclip/tls/tls.pem"), "tls"))
    assert any("unclip-clip: readinessProbe is not a gRPC probe on 50060" in p
               for p in broken(lambda o: first(o, "unclip-clip")["readinessProbe"]["grpc"].update(port=50051), "tls"))
    assert any("not GET /healthz over HTTPS" in p
               for p in broken(lambda o: first(o, "unclip-gateway")["livenessProbe"]["httpGet"].pop("scheme"), "tls"))
    assert any("reachable by the kubelet" in p
               for p in broken(lambda o: env_var(o, "unclip-decoder", "UNCLIP_HEALTH_LISTEN")
                               .update(value="127.0.0.1:50060"), "tls"))
    assert any("no UNCLIP_HEALTH_LISTEN" in p
               for p in broken(lambda o: drop_env(o, "unclip-decoder", "UNCLIP_HEALTH_LISTEN"), "tls"))
    assert any("Service unclip-gateway: appProtocol" in p
               for p in broken(lambda o: by_kind(o, "Service")["unclip-gateway"]["spec"]["ports"][0]
                               .update(appProtocol="kubernetes.io/h2c"), "tls"))
    assert any("prometheus.io/scheme is not https" in p
               for p in broken(lambda o: deployment(o, "unclip-prior")["spec"]["template"]["metadata"]["annotations"]
                               .pop("prometheus.io/scheme"), "tls"))


def test_the_gpu_overlay_puts_prior_and_decoder_on_a_gpu_with_the_cuda_image(overlays):
    deployments = by_kind(overlays["gpu"], "Deployment")
    config = by_kind(overlays["gpu"], "ConfigMap")
    for name in ("unclip-prior", "unclip-decoder", "unclip-clip", "unclip-gateway"):
        (c,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        gpu = name in ("unclip-prior", "unclip-decoder")
        assert (c["resources"]["limits"].get("nvidia.com/gpu") == 1) == gpu, name
        assert c["image"] == ("unclip:cuda" if gpu else "unclip:cpu"), name
        assert env_of(c, config)["UNCLIP_DEVICE"] == ("cuda" if gpu else "cpu"), name
    # The cpu overlay has no GPU anywhere.
    assert "nvidia.com/gpu" not in yaml.safe_dump(overlays["cpu"])


openssl = shutil.which("openssl")


@pytest.mark.skipif(openssl is None, reason="openssl is not installed: scripts/tls-certs cannot run")
def test_the_tls_component_mounts_the_secrets_scripts_tls_certs_makes(overlays, tmp_path):
    """`scripts/tls-certs --k8s-secrets` makes exactly the Secrets the TLS component mounts, each
    valid, and certificates that fit: each stage's names the host the gateway dials and chains to
    the CA the gateway trusts; the gateway's client certificate chains to the CA every stage
    trusts; the gateway's own names its Service."""
    import kubernetes_validate

    out = subprocess.run([str(ROOT / "scripts" / "tls-certs"), "--dir", str(tmp_path / "tls"), "--namespace", "ml",
                          "--k8s-secrets"], check=True, capture_output=True, text=True)
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all(out.stdout) if d}
    for name, secret in secrets.items():
        kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
        assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == TLS_SECRET_KEYS, name

    deployments = by_kind(overlays["tls"], "Deployment")
    config = by_kind(overlays["tls"], "ConfigMap")
    mounted = {v["secret"]["secretName"] for d in deployments.values()
               for v in d["spec"]["template"]["spec"].get("volumes", []) if "secret" in v}
    assert mounted == set(secrets)

    def file_of(deployment: str, var: str) -> pathlib.Path:
        """The Secret file the deployment's `var` names, written out."""
        pod = deployments[deployment]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        folder, _, key = env_of(c, config)[var].rpartition("/")
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == folder)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        name = volume["secret"]["secretName"]
        path = tmp_path / name / key
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(base64.b64decode(secrets[name]["data"][key]))
        return path

    def verify(ca: pathlib.Path, cert: pathlib.Path, *options: str) -> None:
        done = subprocess.run([openssl, "verify", "-CAfile", str(ca), *options, str(cert)], capture_output=True, text=True)
        assert done.returncode == 0, f"{cert} against {ca} {options}: {done.stdout}{done.stderr}"

    gateway_env = env_of(deployments["unclip-gateway"]["spec"]["template"]["spec"]["containers"][0], config)
    stage_ca = file_of("unclip-gateway", "UNCLIP_STAGE_TLS_CA")
    client = file_of("unclip-gateway", "UNCLIP_STAGE_TLS_CERT")
    for stage in STAGES:
        host = urllib.parse.urlsplit(gateway_env[f"UNCLIP_{stage.upper()}_URLS"]).hostname
        verify(stage_ca, file_of(f"unclip-{stage}", "UNCLIP_TLS_CERT"), "-purpose", "sslserver", "-verify_hostname", host)
        verify(file_of(f"unclip-{stage}", "UNCLIP_TLS_CLIENT_CA"), client, "-purpose", "sslclient")
    gateway = file_of("unclip-gateway", "UNCLIP_TLS_CERT")
    for host in ("unclip-gateway", "unclip-gateway.ml.svc", "localhost"):
        verify(stage_ca, gateway, "-purpose", "sslserver", "-verify_hostname", host)
    # A stage's certificate is no client certificate: it cannot stand in for the gateway's.
    with pytest.raises(AssertionError):
        verify(stage_ca, file_of("unclip-clip", "UNCLIP_TLS_CERT"), "-purpose", "sslclient")
