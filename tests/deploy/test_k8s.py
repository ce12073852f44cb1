"""The Kubernetes manifests (deploy/k8s): every overlay renders with `kubectl kustomize`, every
object validates against the Kubernetes schemas offline (kubernetes-validate, pinned version,
strict: unknown fields are errors), and the rendered objects are read for what matters: probes,
requests and limits on every container, headless stage Services, HPAs and PDBs that point at
existing Deployments, and ports that agree between Deployments, Services, probes, scrape
annotations and the gateway's stage URLs.

    python -m pytest -q -rs tests/deploy/test_k8s.py
"""

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

kubectl = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(kubectl is None, reason="kubectl is not installed: the manifests are not rendered")


def render(overlay: pathlib.Path) -> list[dict]:
    out = subprocess.run([kubectl, "kustomize", str(overlay)], check=True, capture_output=True, text=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def overlays(tmp_path_factory) -> dict[str, list[dict]]:
    """cpu, gpu, and gpu with both optional components (in a copy, as kustomize wants relative paths)."""
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree)
    everything = tree / "overlays" / "everything"
    everything.mkdir()
    (everything / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../gpu]\n"
        "components: [../../components/servicemonitor, ../../components/custom-metrics-hpa]\n")
    return {name: render(tree / "overlays" / name) for name in ("cpu", "gpu", "everything")}


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


def problems(objects: list[dict]) -> list[str]:
    """Everything wrong with one rendered overlay, as readable lines (empty when all is well)."""
    found = []
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
            listen = env_of(c, config).get(f"UNCLIP_{component.upper()}_LISTEN", "")
            if not listen.endswith(f":{port}"):
                found.append(f"{where}: UNCLIP_{component.upper()}_LISTEN={listen!r} is not on port {port}")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                grpc = c.get(probe, {}).get("grpc")
                if grpc is None or grpc.get("port") != port:
                    found.append(f"{where}: {probe} is not a gRPC probe on {port}")
            annotations = d["spec"]["template"]["metadata"].get("annotations", {})
            if annotations.get("prometheus.io/port") != str(port) or annotations.get("prometheus.io/scrape") != "true":
                found.append(f"{where}: Prometheus scrape annotations missing or not on {port}")
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


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "everything"])
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


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "everything"])
def test_probes_resources_services_autoscalers_and_ports_agree(overlays, overlay):
    assert problems(overlays[overlay]) == []


def test_the_checks_catch_broken_manifests(overlays):
    """Each kind of mistake the structural test looks for is reported when made."""
    import copy

    def broken(change) -> list[str]:
        objects = copy.deepcopy(overlays["cpu"])
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
