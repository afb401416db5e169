"""The Kubernetes manifests in deploy/k8s, checked without a cluster: every object against the
schemas of one Kubernetes version (unknown fields fail), the kustomization against the
directory, and everything they say about Mémoire against the code — settings that exist, the
binaries, subcommands, ports and HTTP paths the processes really serve, a native sidecar whose
gRPC stays on loopback, and a configuration the server accepts."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from repo_facts import ROOT, binaries, default_addr, http_routes, server_subcommands, settings

# The oldest Kubernetes whose native sidecars (init containers with restartPolicy: Always) are
# on by default; its schemas also reject fields added after it.
K8S_VERSION = "1.29"
K8S = ROOT / "deploy" / "k8s"
SERVER = Path(os.environ.get("MEMOIRE_SERVER_BIN", ROOT / "target" / "debug" / "memoire-server"))
# Marks every Secret value that must be replaced before use.
PLACEHOLDER = "REPLACE-ME"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def manifests() -> list[tuple[str, dict]]:
    """(file name, object) for every object of every manifest in deploy/k8s."""
    return [(path.name, doc)
            for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def objects(kind: str) -> list[dict]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def one(kind: str, name: str) -> dict:
    found = [o for o in objects(kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_templates() -> dict[str, dict]:
    """Each workload's pod template, by workload name."""
    return {doc["metadata"]["name"]: doc["spec"]["template"]
            for _, doc in manifests() if doc["kind"] in ("Deployment", "Job")}


def containers(pod: dict) -> list[dict]:
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


def memoire_containers() -> list[tuple[str, dict]]:
    """(workload, container) for every container that runs the Mémoire image."""
    return [(name, c) for name, pod in pod_templates().items() for c in containers(pod)
            if c["image"].split(":")[0] == "memoire"]


def image_environment() -> dict[str, str]:
    """The variables the Dockerfile's ENV bakes into the image."""
    return dict(re.findall(r"(MEMOIRE_[A-Z_]+)=(\S+)", (ROOT / "Dockerfile").read_text()))


def environment(container: dict) -> dict[str, str]:
    """A Mémoire container's variables as it sees them: the image's, then envFrom in order,
    then env."""
    env = image_environment()
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(one("Secret", source["secretRef"]["name"])["stringData"])
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    return env


def sidecar() -> dict:
    app = one("Deployment", "example-app")["spec"]["template"]["spec"]
    found = [c for c in app.get("initContainers", []) if c["name"] == "memoire"]
    assert found, "example-app has no init container named memoire"
    return found[0]


def listen_setting(container: dict) -> str:
    """The setting whose address a Mémoire container's HTTP endpoint listens on."""
    return {"memoire-server": "http_addr", "memoire-worker": "worker_http_addr"}[container["command"][0]]


def host_port(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"{container['name']}: no port named {port}"
    return named[port]


def test_every_manifest_is_valid_for_the_named_kubernetes_version():
    docs = manifests()
    assert docs, "no manifests in deploy/k8s"
    errors = []
    for file, doc in docs:
        what = f"{file}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            used = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{what}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{what}: {e.message}")
        else:
            # validate() falls back to the newest bundled version not newer than the one asked.
            assert used == K8S_VERSION, f"{what} was checked against {used}, not {K8S_VERSION}"
    assert not errors, "\n".join(errors)


def test_the_kustomization_lists_every_manifest_and_names_the_image():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    on_disk = {p.name for p in K8S.iterdir() if p.name != "kustomization.yaml"}
    assert set(listed) == on_disk, (
        f"not listed: {sorted(on_disk - set(listed))}; listed but missing: {sorted(set(listed) - on_disk)}")
    # Every Mémoire container uses the image the `images:` entry rewrites, so one override
    # moves them all.
    names = {i["name"] for i in kustomization["images"]}
    assert names == {"memoire"}
    assert {c["image"] for _, c in memoire_containers()} == {"memoire:latest"}
    assert {w for w, _ in memoire_containers()} == {"example-app", "memoire-worker", "memoire-migrate"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_base_and_an_overlay_moves_every_memoire_image(tmp_path):
    def build(directory: Path) -> list[dict]:
        out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]

    assert len(build(K8S)) == len(manifests())
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S, tmp_path)],
        "images": [{"name": "memoire", "newName": "example.test/memoire", "newTag": "1.2.3"}]}))
    images = {c["name"]: c["image"] for d in build(tmp_path) if d["kind"] in ("Deployment", "Job")
              for c in containers(d["spec"]["template"])}
    assert images == {"memoire": "example.test/memoire:1.2.3", "worker": "example.test/memoire:1.2.3",
                      "migrate": "example.test/memoire:1.2.3", "app": "busybox:1.36"}


def test_every_memoire_variable_is_a_real_setting():
    known = settings()
    problems = []
    # Every key of the ConfigMap and Secret becomes a variable through envFrom: a misspelt one
    # (MEMORIE_...) would be ignored without a word, so each must be a setting.
    for kind, field in (("ConfigMap", "data"), ("Secret", "stringData")):
        for o in objects(kind):
            assert set(o) & {"data", "stringData", "binaryData"} == {field}, f"{kind}s here use {field}"
            problems += [f"{kind} {o['metadata']['name']}: {k}" for k in o[field] if k not in known]
    for workload, pod in pod_templates().items():
        for c in containers(pod):
            for e in c.get("env", []):
                if e["name"].startswith("MEMOIRE_") and e["name"] not in known:
                    problems.append(f"{workload}/{c['name']}: {e['name']}")
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                one("ConfigMap" if "configMapRef" in source else "Secret", ref["name"])
    assert not problems, f"not settings (config/src/lib.rs SETTINGS): {problems}"


def test_commands_and_probes_are_what_the_binaries_serve():
    routes, subcommands = http_routes(), server_subcommands()
    for workload, c in memoire_containers():
        what = f"{workload}/{c['name']}"
        binary, *args = c["command"]
        assert binary in binaries(), f"{what} runs {binary}, which the app crate does not build"
        if binary == "memoire-server":
            assert len(args) == 1 and args[0] in subcommands, f"{what}: {args} (has {subcommands})"
        else:
            assert args == [], f"{what}: memoire-worker takes no subcommand"
        if workload == "memoire-migrate":
            assert args == ["migrate"]
            continue
        # A long-running process: it listens on its setting's default port, on every interface
        # so the kubelet and Prometheus reach it.
        env = environment(c)
        key = listen_setting(c)
        host, port = host_port(env[f"MEMOIRE_{key.upper()}"])
        assert port == default_addr(key)[1], f"{what}: {key} moved off its default port"
        assert ipaddress.ip_address(host).is_unspecified, f"{what}: {key} must not be loopback"
        assert [p["containerPort"] for p in c["ports"]] == [port], f"{what} declares {c['ports']}"
        assert set(PROBES) <= set(c), f"{what} lacks a probe"
        grpc_host, grpc_port = host_port(env.get("MEMOIRE_GRPC_ADDR", "%s:%d" % default_addr("grpc_addr")))
        for kind in PROBES:
            probe = c[kind]
            if "httpGet" in probe:
                path = probe["httpGet"]["path"]
                assert path in routes, f"{what} {kind}: {path} is not served (only {routes})"
                assert port_number(c, probe["httpGet"]["port"]) == port, f"{what} {kind}: not the HTTP port"
            elif "exec" in probe:
                assert probe["exec"]["command"] == ["memoire-server", "probe"], f"{what} {kind}"
                assert binary == "memoire-server", f"{what}: `probe` asks a server's gRPC health"
            elif "grpc" in probe:
                # The kubelet dials the pod's IP: a loopback-only gRPC port is out of its reach.
                assert not ipaddress.ip_address(grpc_host).is_loopback, f"{what} {kind}: gRPC is loopback-only"
                assert probe["grpc"]["port"] == grpc_port
            else:
                pytest.fail(f"{what} {kind}: {probe}")
        # Liveness must not depend on Postgres: an outage would restart every pod.
        assert c["livenessProbe"].get("httpGet", {}).get("path") == "/healthz", f"{what}: liveness asks /healthz"
        annotations = pod_templates()[workload]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port), f"{what}: Prometheus scrapes another port"
        assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in routes


def test_the_built_server_has_the_subcommands_the_manifests_run():
    if not SERVER.exists():
        pytest.skip(f"{SERVER} is not built")
    help_text = subprocess.run([str(SERVER), "--help"], capture_output=True, text=True, timeout=30).stdout
    used = set()
    for _, c in memoire_containers():
        exec_probes = [c[k]["exec"]["command"] for k in PROBES if "exec" in c.get(k, {})]
        used |= {cmd[1] for cmd in [c["command"], *exec_probes] if cmd[0] == "memoire-server"}
    assert used >= {"serve", "migrate", "probe"}
    for sub in used:
        assert re.search(rf"^\s+{sub}\b", help_text, re.M), f"memoire-server has no subcommand {sub}"


def test_memoire_runs_as_a_native_sidecar_with_grpc_on_loopback():
    c = sidecar()
    assert c.get("restartPolicy") == "Always", "a native sidecar is an init container with restartPolicy Always"
    assert c["command"] == ["memoire-server", "serve"]
    env = environment(c)
    host, port = host_port(env["MEMOIRE_GRPC_ADDR"])
    assert ipaddress.ip_address(host).is_loopback, "gRPC must listen on loopback only"
    assert port == default_addr("grpc_addr")[1]
    assert port not in [p["containerPort"] for p in c.get("ports", [])], "the gRPC port is not exposed"
    # The worker runs apart, in its own Deployment.
    assert env["MEMOIRE_WORKER_EMBEDDED"] == "false"
    assert env["MEMOIRE_MIGRATE_ON_START"] == "false", "the migration Job migrates"
    app = one("Deployment", "example-app")["spec"]["template"]["spec"]["containers"]
    assert any(e["value"] == env["MEMOIRE_GRPC_ADDR"] for a in app for e in a.get("env", [])), \
        "the application is pointed at the sidecar's gRPC address"


def test_pods_run_unprivileged_with_bounded_resources():
    uid = int(re.search(r"^USER (\d+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1))
    for workload, pod in pod_templates().items():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, workload
        assert spec["securityContext"]["runAsUser"] == uid, f"{workload}: not the Dockerfile's user {uid}"
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, workload
        assert spec["automountServiceAccountToken"] is False, workload
        for c in containers(pod):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, f"{workload}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, f"{workload}/{c['name']}"
            assert sc["capabilities"]["drop"] == ["ALL"], f"{workload}/{c['name']}"
            assert "add" not in sc["capabilities"], f"{workload}/{c['name']}"
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), f"{workload}/{c['name']}"
            assert "memory" in c["resources"]["limits"], f"{workload}/{c['name']}"
    for file in ("app-deployment.yaml", "worker-deployment.yaml"):
        assert "# sized from measured RSS: see docs/kubernetes.md" in (K8S / file).read_text(), file


def test_the_secret_holds_marked_placeholders():
    secret = one("Secret", "memoire")["stringData"]
    assert set(secret) == {"MEMOIRE_DATABASE_URL", "MEMOIRE_REDIS_URL", "MEMOIRE_ADMIN_KEY",
                           "MEMOIRE_PAGE_TOKEN_SECRET"}
    for key in ("MEMOIRE_DATABASE_URL", "MEMOIRE_ADMIN_KEY", "MEMOIRE_PAGE_TOKEN_SECRET"):
        assert PLACEHOLDER in secret[key], f"{key} must be a marked placeholder"
    # No secret in the ConfigMap.
    for key in one("ConfigMap", "memoire")["data"]:
        assert not re.search(r"URL|KEY|SECRET", key), f"{key} belongs in the Secret"


def test_the_server_refuses_the_placeholders_and_accepts_the_configuration_once_set():
    if not SERVER.exists():
        pytest.skip(f"{SERVER} is not built")

    def check_config(env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run([str(SERVER), "check-config"], env={"PATH": os.environ["PATH"], **env},
                              capture_output=True, text=True, timeout=30)

    def replaced(env: dict[str, str]) -> dict[str, str]:
        return {k: v.replace(PLACEHOLDER, "0123456789abcdef0123456789abcdef") for k, v in env.items()}

    env = environment(sidecar())
    refused = check_config(env)
    assert refused.returncode != 0, "a forgotten placeholder must stop the server"
    assert "admin_key" in refused.stderr and "page_token_secret" in refused.stderr, refused.stderr
    out = check_config(replaced(env))
    assert out.returncode == 0, out.stderr
    for line in ('grpc_addr = "127.0.0.1:50051"', 'http_addr = "0.0.0.0:9464"', "worker_embedded = false",
                 "migrate_on_start = false"):
        assert line in out.stdout, f"{line} not in:\n{out.stdout}"
    assert "0123456789abcdef" not in out.stdout, "secrets are hidden"
    worker = next(c for w, c in memoire_containers() if w == "memoire-worker")
    out = check_config(replaced(environment(worker)))
    assert out.returncode == 0, out.stderr
    assert 'worker_http_addr = "0.0.0.0:9465"' in out.stdout


def test_worker_scaling_and_network_policies_select_the_pods_they_mean():
    pods = pod_templates()

    def selects(selector: dict, workload: str) -> bool:
        labels = pods[workload]["metadata"]["labels"]
        return all(labels.get(k) == v for k, v in selector["matchLabels"].items())

    worker = one("Deployment", "memoire-worker")
    assert "replicas" not in worker["spec"], "the HPA owns the worker's replica count"
    assert selects(worker["spec"]["selector"], "memoire-worker")
    hpa = one("HorizontalPodAutoscaler", "memoire-worker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "memoire-worker"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    pdb = one("PodDisruptionBudget", "memoire-worker")
    assert [w for w in pods if selects(pdb["spec"]["selector"], w)] == ["memoire-worker"]

    metrics_port = {w: c["ports"][0]["containerPort"] for w, c in memoire_containers() if c.get("ports")}
    for policy in objects("NetworkPolicy"):
        name = policy["metadata"]["name"]
        spec = policy["spec"]
        selected = [w for w in pods if selects(spec["podSelector"], w)]
        assert len(selected) == 1, f"NetworkPolicy {name} selects {selected}"
        workload = selected[0]
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}, name
        # Ingress: only the metrics port, only from the monitoring namespace.
        ingress = spec.get("ingress", [])
        expected = [metrics_port[workload]] if workload in metrics_port else []
        assert [p["port"] for rule in ingress for p in rule["ports"]] == expected, name
        for rule in ingress:
            assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "monitoring"}}}], name
        egress = {(p.get("protocol", "TCP"), p["port"]) for rule in spec["egress"] for p in rule["ports"]}
        needed = {("TCP", 5432), ("UDP", 53), ("TCP", 53)}
        if workload != "memoire-migrate":
            needed.add(("TCP", 6379))
        assert egress == needed, f"NetworkPolicy {name} allows {egress}"
    covered = {w for p in objects("NetworkPolicy") for w in pods if selects(p["spec"]["podSelector"], w)}
    assert covered == set(pods), f"pods without a NetworkPolicy: {set(pods) - covered}"
