"""The deployment files in deploy/, checked offline: every Kubernetes manifest against the
Kubernetes OpenAPI schemas (``kubernetes-validate``, strict), the wiring between the objects
(probes on declared ports, Service selectors on real pods, ConfigMap / Secret keys that exist,
the gateway's addresses on the target's headless Service), and every container command and
compose command parsed by the real ``specgrove`` CLI with ``$(VAR)`` expanded as the kubelet
would. The kustomize overlays and components are rendered with ``kubectl kustomize`` when
kubectl is on PATH (it is on this project's machines), else those cases skip."""
from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the test extras: bash scripts/setup.sh")
kv = pytest.importorskip("kubernetes_validate",
                         reason="kubernetes-validate comes with the test extras: bash scripts/setup.sh")

from draft_service.factory import DRAFTER_KINDS, shipped_head  # noqa: E402
from specgrove.cli import main as cli_main  # noqa: E402
from specgrove.config import parse_drafter_option, parse_tree_option  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
# The oldest Kubernetes the manifests claim (native gRPC probes are GA from 1.27; 1.29 is the
# oldest release still patched by most managed offerings), and the newest schemas bundled.
K8S_VERSIONS = ("1.29.0", kv.utils.latest_version())
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
# What `kubectl apply -k` would render: the documented entry points, and the components on top
# of both bases (through a throwaway overlay).
RENDERED = {
    "k8s": "..",
    "cpu": "../cpu",
    "cpu+mtls+autoscaling": ("../cpu", ["../components/mtls", "../components/autoscaling"]),
    "gpu+mtls": ("../base", ["../components/mtls"]),
}


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def base_docs() -> list[dict]:
    """The base's resources as written (namespace not yet applied), from its kustomization."""
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [d for name in kust["resources"] for d in load_docs(BASE / name)]


def render(name: str, tmp_path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: the kustomize renderings are not checked")
    spec = RENDERED[name]
    if isinstance(spec, str):
        root = K8S if spec == ".." else K8S / spec.removeprefix("../")
    else:  # a throwaway overlay; kustomize takes relative paths only
        resources, components = spec

        def rel(p: str) -> str:
            return os.path.relpath(K8S / p.removeprefix("../"), tmp_path)

        root = tmp_path
        (root / "kustomization.yaml").write_text(yaml.safe_dump(
            {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
             "resources": [rel(resources)], "components": [rel(c) for c in components]}))
    out = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs):
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def schema_errors(docs: list[dict], version: str) -> list[str]:
    errors = []
    for doc in docs:
        try:
            kv.validate(doc, version, strict=True)
        except (kv.ValidationError, kv.SchemaNotFoundError) as exc:  # noqa: PERF203
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
    return errors


# --- $(VAR) expansion and the CLI -------------------------------------------------------------

_REF = re.compile(r"\$\((\w+)\)")


def container_env(docs: list[dict], container: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps / Secrets, then
    env (values, or the referenced ConfigMap / Secret key, which must exist)."""
    cms, secrets = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret")

    def data(obj: dict) -> dict[str, str]:
        return {**obj.get("data", {}), **obj.get("stringData", {})}

    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            name = src["configMapRef"]["name"]
            assert name in cms, f"envFrom names ConfigMap {name!r}, which is not declared"
            env.update(data(cms[name]))
        else:
            name = src["secretRef"]["name"]
            assert name in secrets, f"envFrom names Secret {name!r}, which is not declared"
            env.update(data(secrets[name]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]
        for kind, pool in (("configMapKeyRef", cms), ("secretKeyRef", secrets)):
            if kind in ref:
                name, key = ref[kind]["name"], ref[kind]["key"]
                assert name in pool, f"{var['name']}: {kind} to {name!r}, which is not declared"
                assert key in data(pool[name]), f"{var['name']}: key {key!r} is not in {name!r}"
                env[var["name"]] = data(pool[name])[key]
    return env


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion; a reference to a variable the container lacks stays literal
    in Kubernetes (and reaches the program as such), so here it is an error."""
    out = []
    for arg in args:
        missing = [m for m in _REF.findall(arg) if m not in env]
        assert not missing, f"{arg!r}: $({missing[0]}) is not in the container's environment"
        out.append(_REF.sub(lambda m: env[m.group(1)], arg))
    return out


def parse_cli(argv: list[str], env: dict[str, str] | None = None) -> tuple[str, dict]:
    """``argv`` (after ``specgrove``) parsed by the real CLI without running it: the subcommand
    and its parameters, with click's types, choices and environment variables applied. Options
    the command does not have, or bad values, raise click's UsageError / BadParameter."""
    name, *rest = argv
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env or {})  # the container's environment, the CLI's envvar= options read it
    try:
        with click.Context(cli_main, info_name="specgrove") as ctx:
            cmd = cli_main.get_command(ctx, name)
            if cmd is None:
                raise click.UsageError(f"no such command {name!r}")
            with cmd.make_context(name, rest, parent=ctx) as sub:
                return name, dict(sub.params)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def check_specgrove_values(name: str, params: dict) -> None:
    """Values the CLI takes as strings but parses later: drafters, trees, addresses."""
    for spec in params.get("drafters", ()):
        drafter, kind_spec = parse_drafter_option(spec)
        kind, _, arg = kind_spec.partition(":")
        assert kind in DRAFTER_KINDS, f"--drafter {spec}: unknown kind {kind!r}"
        if kind == "eagle" and arg and "/" not in arg:
            assert shipped_head(arg) is not None, f"--drafter {spec}: no head ships for {arg!r}"
    if "default_tree" in params:
        parse_tree_option(params["default_tree"])
    if name == "gateway":
        for key in ("target", "draft"):  # the CLI has checked each form (HOST:PORT, dns:NAME:PORT)
            assert params[key], f"no --{key}"


# --- the checks, as functions so that the negative tests can run them on broken copies -------

def probe_port_errors(docs: list[dict]) -> list[str]:
    errors = []
    for wl in workloads(docs):
        spec = wl["spec"]["template"]["spec"]
        mounts_by_volume = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            ports = {p["containerPort"] for p in c.get("ports", [])} | {p["name"] for p in c.get("ports", []) if "name" in p}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind)
                where = f"{wl['metadata']['name']}/{c['name']} {kind}"
                if probe is None:
                    errors.append(f"{where}: missing")
                    continue
                handler = next(h for h in ("grpc", "httpGet", "tcpSocket", "exec") if h in probe)
                if handler == "exec":
                    errors += exec_probe_errors(where, probe["exec"]["command"], c, mounts_by_volume, docs)
                elif probe[handler]["port"] not in ports:
                    errors.append(f"{where}: port {probe[handler]['port']} is not a containerPort {sorted(map(str, ports))}")
    return errors


def exec_probe_errors(where, command, container, volumes, docs) -> list[str]:
    """An exec probe's script must be a file of a ConfigMap mounted where the command looks."""
    script = next((a for a in command if a.endswith(".py")), None)
    if script is None:
        return [f"{where}: exec probe runs no script: {command}"]
    cms = by_kind(docs, "ConfigMap")
    for mount in container.get("volumeMounts", []):
        vol = volumes.get(mount["name"], {})
        if "configMap" in vol and script.startswith(mount["mountPath"].rstrip("/") + "/"):
            cm = cms.get(vol["configMap"]["name"])
            if cm is None:
                return [f"{where}: ConfigMap {vol['configMap']['name']} is not declared"]
            if script.rsplit("/", 1)[1] not in cm.get("data", {}):
                return [f"{where}: {script} is not a key of ConfigMap {cm['metadata']['name']}"]
            return []
    return [f"{where}: {script} is on no mounted ConfigMap"]


def selector_errors(docs: list[dict]) -> list[str]:
    pods = [(wl, wl["spec"]["template"]["metadata"]["labels"], wl["spec"]["template"]["spec"]["containers"])
            for wl in workloads(docs)]
    errors = []
    for svc in by_kind(docs, "Service").values():
        sel = svc["spec"]["selector"]
        chosen = [(wl, cs) for wl, labels, cs in pods if sel.items() <= labels.items()]
        if not chosen:
            errors.append(f"Service {svc['metadata']['name']}: selector {sel} matches no pod template")
            continue
        for port in svc["spec"]["ports"]:
            declared = {v for _, cs in chosen for c in cs for p in c.get("ports", [])
                        for v in (p["containerPort"], p.get("name"))}
            if port.get("targetPort", port["port"]) not in declared:
                errors.append(f"Service {svc['metadata']['name']}: targetPort {port.get('targetPort')} "
                              "is not a port of the selected containers")
    for wl in workloads(docs):
        sel = wl["spec"]["selector"]["matchLabels"]
        if not sel.items() <= wl["spec"]["template"]["metadata"]["labels"].items():
            errors.append(f"{wl['kind']} {wl['metadata']['name']}: selector does not match its own pods")
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        sel = pdb["spec"]["selector"]["matchLabels"]
        if not any(sel.items() <= labels.items() for _, labels, _ in pods):
            errors.append(f"PodDisruptionBudget {pdb['metadata']['name']}: selects no pods")
    return errors


def command_errors(docs: list[dict]) -> list[str]:
    errors = []
    for wl in workloads(docs):
        for c in wl["spec"]["template"]["spec"]["containers"]:
            where = f"{wl['metadata']['name']}/{c['name']}"
            if c.get("command") != ["specgrove"]:
                errors.append(f"{where}: command {c.get('command')} is not ['specgrove']")
                continue
            try:
                env = container_env(docs, c)
                name, params = parse_cli(expand(c["args"], env), env)
                check_specgrove_values(name, params)
            except (AssertionError, click.ClickException, ValueError) as exc:
                errors.append(f"{where}: {exc}")
    return errors


def all_errors(docs: list[dict]) -> list[str]:
    return probe_port_errors(docs) + selector_errors(docs) + command_errors(docs)


def container(docs: list[dict], kind: str, name: str) -> dict:
    return by_kind(docs, kind)[name]["spec"]["template"]["spec"]["containers"][0]


def parsed(docs: list[dict], kind: str, name: str) -> dict:
    c = container(docs, kind, name)
    env = container_env(docs, c)
    return parse_cli(expand(c["args"], env), env)[1]


# --- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_file_passes_the_kubernetes_schemas(version):
    files = sorted(p for p in K8S.rglob("*.yaml")
                   if p.name not in ("kustomization.yaml", "prometheus-adapter-values.yaml"))
    assert {p.relative_to(K8S).as_posix() for p in files} >= {
        "base/target.yaml", "base/draft.yaml", "base/gateway.yaml", "base/configmap.yaml",
        "base/secret.yaml", "base/pdb.yaml", "components/mtls/tls-secret.yaml",
        "components/autoscaling/hpa.yaml"}
    errors = [e for p in files for e in schema_errors(load_docs(p), version)]
    assert not errors, "\n".join(errors)


def test_the_schema_check_is_strict():
    """A misspelt field or a wrong type fails: the validation above is not a formality."""
    docs = base_docs()
    broken = copy.deepcopy(by_kind(docs, "StatefulSet")["specgrove-target"])
    c = broken["spec"]["template"]["spec"]["containers"][0]
    c["readinesProbe"] = c.pop("readinessProbe")
    assert schema_errors([broken], K8S_VERSIONS[0])
    broken = copy.deepcopy(by_kind(docs, "Deployment")["specgrove-gateway"])
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    assert schema_errors([broken], K8S_VERSIONS[0])


def test_base_wiring_probes_selectors_commands():
    docs = base_docs()
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} >= {
        ("StatefulSet", "specgrove-target"), ("Service", "specgrove-target"),
        ("Deployment", "specgrove-draft"), ("Service", "specgrove-draft"),
        ("Deployment", "specgrove-gateway"), ("Service", "specgrove-gateway"),
        ("ConfigMap", "specgrove-config"), ("Secret", "specgrove-secrets")}
    errors = all_errors(docs)
    assert not errors, "\n".join(errors)


def test_the_wiring_checks_catch_mistakes():
    """Each check fails on a copy with the mistake it exists for."""
    docs = base_docs()

    def broken(mutate) -> list[dict]:
        copy_ = copy.deepcopy(docs)
        mutate(copy_)
        return copy_

    def gw(d):
        return container(d, "Deployment", "specgrove-gateway")

    def target(d):
        return container(d, "StatefulSet", "specgrove-target")

    cases = {
        "probe port": (lambda d: target(d)["livenessProbe"]["grpc"].update(port=50099), probe_port_errors),
        "selector": (lambda d: by_kind(d, "Service")["specgrove-draft"]["spec"]["selector"]
                     .update({"app.kubernetes.io/component": "drafts"}), selector_errors),
        "flag": (lambda d: gw(d)["args"].append("--max-batches"), command_errors),
        "choice": (lambda d: by_kind(d, "ConfigMap")["specgrove-config"]["data"]
                   .update(SPECGROVE_DTYPE="float8"), command_errors),
        "subcommand": (lambda d: gw(d)["args"].__setitem__(0, "gateways"), command_errors),
        "variable": (lambda d: gw(d)["args"].append("$(SPECGROVE_NO_SUCH_KEY)"), command_errors),
        "secret key": (lambda d: gw(d)["env"][0]["valueFrom"]["secretKeyRef"].update(key="API_KEYS"),
                       command_errors),
        "drafter": (lambda d: by_kind(d, "ConfigMap")["specgrove-config"]["data"]
                    .update(SPECGROVE_DRAFTER="fast=wizard"), command_errors),
        "tree": (lambda d: by_kind(d, "ConfigMap")["specgrove-config"]["data"]
                 .update(SPECGROVE_DEFAULT_TREE="8:x"), command_errors),
    }
    for what, (mutate, check) in cases.items():
        assert check(broken(mutate)), f"the {what} mistake went unnoticed"


def test_secrets_reach_the_cli_through_its_environment_variables():
    """The Secret's keys are the variables click reads for --api-key, --admin-key and
    --service-token: the parsed options hold the Secret's values, and no secret is in argv."""
    docs = base_docs()
    secret = by_kind(docs, "Secret")["specgrove-secrets"]["stringData"]
    assert all(v.startswith("PLACEHOLDER") for v in secret.values())  # marked, not passed off as real
    gw = parsed(docs, "Deployment", "specgrove-gateway")
    assert gw["api_keys"] == (secret["SPECGROVE_API_KEYS"],)
    assert gw["admin_keys"] == (secret["SPECGROVE_ADMIN_KEYS"],)
    for kind, name in (("Deployment", "specgrove-gateway"), ("Deployment", "specgrove-draft"),
                       ("StatefulSet", "specgrove-target")):
        assert parsed(docs, kind, name)["service_token"] == secret["SPECGROVE_SERVICE_TOKEN"], name
        args = " ".join(container(docs, kind, name)["args"])
        assert not any(v in args for v in secret.values())


def test_gateway_finds_every_target_and_draft_pod_through_headless_services():
    """--target / --draft are dns:NAME:PORT over headless Services (one address per pod: the
    gateway places sequences itself), at the ports the pods serve on; several pods of each."""
    docs = base_docs()
    gw = parsed(docs, "Deployment", "specgrove-gateway")
    for option, kind, name in (("target", "StatefulSet", "specgrove-target"),
                               ("draft", "Deployment", "specgrove-draft")):
        (address,) = gw[option]
        assert address.startswith("dns:"), address
        host, port = address.removeprefix("dns:").rsplit(":", 1)
        svc = by_kind(docs, "Service")[host]
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
        workload = by_kind(docs, kind)[name]
        assert svc["spec"]["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        assert int(port) in {p["port"] for p in svc["spec"]["ports"]}
        assert int(port) == parsed(docs, kind, name)["port"]
        assert workload["spec"]["replicas"] >= 2
    assert by_kind(docs, "StatefulSet")["specgrove-target"]["spec"]["serviceName"] == "specgrove-target"
    # One gateway, no surge: two gateways on the same targets would collide (docs/deploy.md).
    gw_dep = by_kind(docs, "Deployment")["specgrove-gateway"]
    assert gw_dep["spec"]["replicas"] == 1 and gw_dep["spec"]["strategy"]["type"] == "Recreate"


def test_probes_speak_grpc_health_and_http_health():
    docs = base_docs()
    services = {"specgrove-target": "specgrove.v1.TargetService", "specgrove-draft": "specgrove.v1.DraftService"}
    from specgrove.pb.v1 import draft_pb2, target_pb2

    real = {target_pb2.DESCRIPTOR.services_by_name["TargetService"].full_name,
            draft_pb2.DESCRIPTOR.services_by_name["DraftService"].full_name}
    for wl in workloads(docs):
        c = wl["spec"]["template"]["spec"]["containers"][0]
        name = wl["metadata"]["name"]
        if name in services:
            ports = parsed(docs, wl["kind"], name)["port"]
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert c[kind]["grpc"] == {"port": ports, "service": services[name]}
                assert c[kind]["grpc"]["service"] in real
            # Long enough to load a model: minutes, not the default 30 s.
            assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 600
        else:
            http = parsed(docs, wl["kind"], name)["port"]
            assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": http}
            assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": http}
            assert c["livenessProbe"]["httpGet"]["port"] == http


def test_gpu_limit_matches_tensor_parallel_ranks_and_image_tag_matches_the_version():
    docs = base_docs()
    c = container(docs, "StatefulSet", "specgrove-target")
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == parsed(docs, "StatefulSet", "specgrove-target")["tp"]
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    (version,) = re.findall(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert kust["images"] == [{"name": "specgrove", "newTag": version}]
    assert {c["image"] for wl in workloads(docs) for c in wl["spec"]["template"]["spec"]["containers"]} == {"specgrove"}


def test_gateway_scrape_annotations_name_its_metrics_port():
    docs = base_docs()
    pod = by_kind(docs, "Deployment")["specgrove-gateway"]["spec"]["template"]
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert int(ann["prometheus.io/port"]) == parsed(docs, "Deployment", "specgrove-gateway")["port"]


@pytest.mark.parametrize("name", list(RENDERED))
def test_rendered_overlays_validate_and_wire_up(name, tmp_path):
    docs = render(name, tmp_path)
    for version in K8S_VERSIONS:
        errors = schema_errors(docs, version)
        assert not errors, "\n".join(errors)
    errors = all_errors(docs)
    assert not errors, "\n".join(errors)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"specgrove"}
    target = container(docs, "StatefulSet", "specgrove-target")
    device = parsed(docs, "StatefulSet", "specgrove-target")["device"]
    gpus = target["resources"]["limits"].get("nvidia.com/gpu")
    if name.startswith("cpu"):
        assert gpus is None and device == "cpu"
    else:
        assert gpus is not None and device == "auto"
    if "mtls" in name:
        secret = by_kind(docs, "Secret")["specgrove-tls"]
        for wl in workloads(docs):
            c = wl["spec"]["template"]["spec"]["containers"][0]
            params = parsed(docs, wl["kind"], wl["metadata"]["name"])
            vols = {v["name"]: v for v in wl["spec"]["template"]["spec"]["volumes"]}
            mounts = {m["mountPath"]: vols[m["name"]] for m in c["volumeMounts"]}
            for flag in ("tls_cert", "tls_key", "tls_ca"):
                folder, _, key = params[flag].rpartition("/")
                assert mounts[folder]["secret"]["secretName"] == "specgrove-tls"
                assert key in secret["stringData"]
            if wl["metadata"]["name"] != "specgrove-gateway":
                assert all("exec" in c[p] and "grpc" not in c[p]
                           for p in ("startupProbe", "readinessProbe", "livenessProbe"))
    if "autoscaling" in name:
        hpas = by_kind(docs, "HorizontalPodAutoscaler")
        for hpa in hpas.values():
            ref = hpa["spec"]["scaleTargetRef"]
            assert ref["name"] in by_kind(docs, ref["kind"])


def test_compose_commands_parse_with_the_cli():
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    ours = {name: s for name, s in services.items() if s.get("image", "").startswith("specgrove")}
    assert set(ours) == {"target", "draft", "gateway"}
    parsed_ = {}
    for name, svc in ours.items():
        sub, params = parse_cli(svc["command"], svc.get("environment", {}))
        assert sub == name
        check_specgrove_values(sub, params)
        parsed_[name] = params
    gw = parsed_["gateway"]
    assert gw["target"] == (f"target:{parsed_['target']['port']}",)
    assert gw["draft"] == (f"draft:{parsed_['draft']['port']}",)
    assert f"{gw['port']}:{gw['port']}" in services["gateway"]["ports"][0]
    # Prometheus scrapes the gateway's port; Grafana's mounts are the files in deploy/.
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"gateway:{gw['port']}"]
    for svc in ("prometheus", "grafana"):
        for volume in services[svc]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / "deploy" / source).exists(), volume
    assert {"jaeger", "prometheus", "grafana"} <= set(services)


def test_mtls_exec_probe_checks_health_over_mutual_tls(tmp_path):
    """components/mtls/grpc_health_check.py against a real gRPC server that requires client
    certificates: exit 0 only while SERVING; the plaintext check a native probe would make fails."""
    import sys

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from specgrove import certs
    from specgrove.service import GrpcService
    from tests.grpc_harness import ServerLoop

    made = certs.generate(tmp_path, ["specgrove-target-0.specgrove-target"])
    mounted = tmp_path / "mounted"  # laid out as the Secret volume is: tls.crt, tls.key, ca.crt
    mounted.mkdir()
    for key, src in (("tls.crt", made.node.cert), ("tls.key", made.node.key), ("ca.crt", made.ca)):
        (mounted / key).write_bytes(Path(src).read_bytes())
    script = K8S / "components" / "mtls" / "grpc_health_check.py"
    service = "specgrove.v1.TargetService"

    def probe(port: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), str(port), service], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "SPECGROVE_PROBE_TLS_DIR": str(mounted)})

    async def start():  # the gRPC server belongs to the loop it is made in
        server = GrpcService([service])
        return server, await server.start("127.0.0.1", 0, made.node)

    loop = ServerLoop()
    server, port = loop.run(start())
    try:
        loading = probe(port)
        assert loading.returncode == 1 and "NOT_SERVING" in loading.stdout
        loop.run(server.set_serving())
        ready = probe(port)
        assert ready.returncode == 0 and ready.stdout.strip() == "SERVING", ready.stderr
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:  # what the kubelet's grpc probe does
            with pytest.raises(grpc.RpcError):
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        (mounted / "tls.crt").write_bytes(Path(made.client.cert).read_bytes())  # key no longer matches
        assert probe(port).returncode == 1
    finally:
        loop.run(server.stop(0))
        loop.close()
