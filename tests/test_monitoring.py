"""The monitoring in deploy/ against a real Prometheus: a gateway stack on tiny models serves
real requests (speculative with two drafters, and not), a Prometheus server on loopback scrapes
it every second with the scrape jobs of deploy/prometheus/ (the compose one as it is; the
Kubernetes one with file-based discovery standing in for the Kubernetes API, so its relabelling
runs), and then every PromQL expression of the Grafana dashboard, every template variable, and
the prometheus-adapter queries behind the HPA examples must return data through Prometheus's
HTTP API. Without a ``prometheus`` binary (Debian's package; scripts/setup.sh installs it when
CI=true and it runs as root) those tests skip; the static checks run anyway."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from gateway.metrics import GatewayMetrics
from specgrove.service import free_ports
from tests.gateway_stack import running_stack
from tests.polling import wait_until

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the test extras: bash scripts/setup.sh")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "specgrove.json"
ADAPTER = DEPLOY / "k8s" / "components" / "autoscaling" / "prometheus-adapter-values.yaml"
PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary on PATH (Debian: apt-get install prometheus; "
                               "scripts/setup.sh installs it when CI=true and run as root)")
# Grafana derives $__rate_interval from the scrape interval and the panel's step; here the
# window covers the whole run, so the result does not depend on how the test was timed.
RATE_WINDOW = "2m"
POD = "specgrove-gateway-5d8f7c9b6-x2k4q"  # the pod name the stand-in discovery reports


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict) -> list[dict]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def expressions(dash: dict) -> list[tuple[str, str]]:
    return [(f"{p['title']} / {t['refId']}", t["expr"]) for p in panels(dash) for t in p["targets"]]


def substitute(expr: str) -> str:
    """Grafana's variables as a dashboard with every option selected would send them."""
    out = (expr.replace("$__rate_interval", RATE_WINDOW)
           .replace("$job", ".+").replace("$drafter", ".+"))
    assert "$" not in out, f"a template variable the test does not know: {expr}"
    return out


def exported_names() -> set[str]:
    """Every series name the gateway's registry can export (labelled children or not)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {fam.name + s for fam in GatewayMetrics().registry.collect() for s in suffixes[fam.type]}


# --- static checks (no Prometheus needed) -----------------------------------------------------

def test_dashboard_uses_only_exported_metrics_and_is_well_formed():
    dash = dashboard()
    exported = exported_names()
    used = {m for _, e in expressions(dash) for m in re.findall(r"specgrove:[a-z0-9_:]+", e)}
    assert used and used <= exported, f"not exported by gateway/metrics.py: {used - exported}"
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            used_in_var = set(re.findall(r"specgrove:[a-z0-9_:]+", var["definition"]))
            assert used_in_var <= exported, var["name"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels(dash):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
    # The panels the dashboard exists for, by the metric each one reads.
    needed = {"generation_tokens_total", "time_to_first_token_seconds_bucket",
              "time_per_output_token_seconds_bucket", "spec_decode_num_accepted_tokens_per_pos_total",
              "kv_cache_usage_perc", "num_requests_running", "num_requests_waiting", "service_serving"}
    assert {n.removeprefix("specgrove:") for n in used} >= needed
    # No two panels overlap on Grafana's 24-column grid.
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine and g["x"] + g["w"] <= 24, p["title"]
        cells |= mine


def test_grafana_provisioning_matches_compose_and_prometheus():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    by_target = {target: source for source, target in (v.split(":")[:2] for v in compose["grafana"]["volumes"])}
    prov = DEPLOY / by_target["/etc/grafana/provisioning"]
    (ds,) = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    prom_port = compose["prometheus"]["ports"][0].split(":")[1]
    assert ds["type"] == "prometheus" and ds["url"] == f"http://prometheus:{prom_port}"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert ds["jsonData"]["timeInterval"] == prom["global"]["scrape_interval"]
    (provider,) = yaml.safe_load((prov / "dashboards" / "specgrove.yml").read_text())["providers"]
    dash_dir = DEPLOY / by_target[provider["options"]["path"]]
    assert (dash_dir / DASHBOARD.name).samefile(DASHBOARD)
    assert compose["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == \
        f"{provider['options']['path']}/{DASHBOARD.name}"


@needs_prometheus
def test_prometheus_configs_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool next to prometheus")
    out = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# --- against a real Prometheus ----------------------------------------------------------------

class Prometheus:
    def __init__(self, config: dict, workdir: Path) -> None:
        (self.port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.logfile = workdir / "prometheus.log"
        try:
            wait_until(self._ready, 60, f"Prometheus ready at {self.url}", every_s=0.2)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {self.proc.returncode}: {self.logfile.read_text()}")
        try:
            return httpx.get(self.url + "/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params) -> dict:
        r = httpx.get(self.url + "/api/v1/" + path, params=params, timeout=30)
        body = r.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return data["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def scrape_config(stack: dict, workdir: Path) -> dict:
    """deploy/prometheus's two jobs, pointed at the live gateway and scraping every second."""
    http = stack["http"].removeprefix("http://")
    http_port = http.rsplit(":", 1)[1]
    grpc_port = stack["grpc"].rsplit(":", 1)[1]

    compose = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (compose_job,) = compose["scrape_configs"]
    compose_job = {**compose_job, "job_name": "compose", "static_configs": [{"targets": [http]}]}

    k8s = yaml.safe_load((DEPLOY / "prometheus" / "kubernetes.yml").read_text())
    (k8s_job,) = k8s["scrape_configs"]
    assert "kubernetes_sd_configs" in k8s_job
    # What Kubernetes' pod discovery reports: the gateway pod once per declared container port
    # (http and grpc), with its annotations from deploy/k8s (the port is the live one here), and
    # the target pod, which is not annotated and must be dropped.
    gw = next(d for d in yaml.safe_load_all((DEPLOY / "k8s" / "base" / "gateway.yaml").read_text())
              if d["kind"] == "Deployment")["spec"]["template"]["metadata"]
    assert gw["annotations"]["prometheus.io/port"] == "8000"  # the manifest's own port, replaced below

    def meta(pod: str, component: str, annotations: dict) -> dict:
        labels = {"__meta_kubernetes_namespace": "specgrove", "__meta_kubernetes_pod_name": pod,
                  "__meta_kubernetes_pod_label_app_kubernetes_io_component": component}
        for key, value in annotations.items():
            labels["__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
        return labels

    ann = {**gw["annotations"], "prometheus.io/port": http_port}
    groups = [{"targets": [f"127.0.0.1:{port}"], "labels": meta(POD, "gateway", ann)}
              for port in (grpc_port, http_port)]
    groups.append({"targets": ["127.0.0.1:9"], "labels": meta("specgrove-target-0", "target", {})})
    (workdir / "pods.json").write_text(json.dumps(groups))
    k8s_job = {key: value for key, value in k8s_job.items() if key != "kubernetes_sd_configs"}
    k8s_job.update(job_name="kubernetes", file_sd_configs=[{"files": [str(workdir / "pods.json")]}])
    return {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [compose_job, k8s_job]}


def send_load(http: str, model: str, rounds: int) -> None:
    """Real requests over several scrapes, so every counter rises between samples: speculative
    with the model drafter (the target's own weights: most drafts accepted) and with n-gram
    lookup, the gateway's default speculation, and speculation off; greedy and sampled."""
    bodies = [
        {"speculation": {"drafter": "small", "tree": {"nodes": 6, "depth": 3}}, "temperature": 0},
        {"speculation": {"drafter": "lookup"}, "temperature": 0},
        {"temperature": 0.8, "seed": 7},
        {"speculation": {"drafter": "none"}, "temperature": 0},
    ]
    with httpx.Client(timeout=60) as client:
        for i in range(rounds):
            for body in bodies:
                r = client.post(http + "/v1/completions", json={
                    "model": model, "prompt": f"the quick brown fox {i} the quick brown fox", "max_tokens": 12,
                    **body})
                assert r.status_code == 200, r.text
            time.sleep(1.1)


@pytest.fixture(scope="module")
def scraped(tiny_dirs, tmp_path_factory):
    if PROMETHEUS is None:
        pytest.skip(needs_prometheus.kwargs["reason"])
    workdir = tmp_path_factory.mktemp("prometheus")
    # The "small" drafter is the target model itself, so its drafts are accepted.
    with running_stack(tiny_dirs["llama"], tiny_dirs["llama"]) as stack:
        prom = Prometheus(scrape_config(stack, workdir), workdir)
        try:
            # Both jobs scraping before the first request: counters born later still start low.
            wait_until(lambda: len(prom.query("up == 1")) == 2, 30, "both scrape jobs up")
            send_load(stack["http"], stack["model"], rounds=5)
            final = httpx.get(stack["http"] + "/metrics", timeout=10).text
            (total,) = re.findall(r"^specgrove:generation_tokens_total (\S+)$", final, re.M)
            wait_until(lambda: {float(s["value"][1]) for s in prom.query("specgrove:generation_tokens_total")}
                       == {float(total)}, 30, "Prometheus to scrape the final counts")
            yield prom, stack
        finally:
            prom.stop()


@needs_prometheus
def test_every_dashboard_expression_returns_data(scraped):
    prom, _ = scraped
    empty, nan = [], []
    results = {}
    for where, expr in expressions(dashboard()):
        result = prom.query(substitute(expr))
        results[where] = result
        if not result:
            empty.append(f"{where}: {expr}")
        elif not any(math.isfinite(float(s["value"][1])) for s in result):
            nan.append(f"{where}: {expr} -> {result}")
    assert not empty, "no data:\n" + "\n".join(empty)
    assert not nan, "only NaN / Inf:\n" + "\n".join(nan)

    def by(panel: str, label: str) -> dict[str, float]:
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in results[panel]}

    # The values mean what the panels say (both scrape jobs see the same gateway).
    tau = by("Mean acceptance length by drafter / A", "drafter")
    assert {"small", "lookup", "none"} <= set(tau)
    assert tau["small"] > 1.5 and tau["none"] == 1.0
    health = by("Services / B", "service")
    assert health == {"target": 1.0, "draft": 1.0}
    positions = {(s["metric"]["drafter"], s["metric"]["position"]) for s in
                 results["Acceptance by draft position / A"]}
    assert {("small", "0"), ("small", "1")} <= positions
    assert all(0 < float(s["value"][1]) <= 1 for s in results["Acceptance by draft position / A"])
    assert by("Throughput / A", "")[""] > 0


@needs_prometheus
def test_dashboard_variables_find_their_values(scraped):
    prom, _ = scraped
    found = {}
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        selector, label = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"]).groups()
        series = prom.api("series", **{"match[]": substitute(selector)})
        found[var["name"]] = {s[label] for s in series if label in s}
    assert found["job"] == {"compose", "kubernetes"}
    assert {"small", "lookup", "none"} <= found["drafter"]


@needs_prometheus
def test_kubernetes_relabelling_keeps_one_target_per_annotated_pod(scraped):
    prom, _ = scraped
    active = [t for t in prom.api("targets")["activeTargets"] if t["labels"]["job"] == "kubernetes"]
    assert len(active) == 1, active  # the gateway's two container ports are one target; the target pod none
    labels = active[0]["labels"]
    assert labels["namespace"] == "specgrove" and labels["pod"] == POD and labels["component"] == "gateway"
    assert active[0]["scrapeUrl"].endswith("/metrics") and active[0]["health"] == "up"


@needs_prometheus
def test_prometheus_adapter_queries_return_the_queue(scraped):
    """The adapter rules behind the HPA examples, expanded as prometheus-adapter expands them
    for a request about our pod (custom) and our namespace (external)."""
    prom, _ = scraped
    rules = yaml.safe_load(ADAPTER.read_text())["rules"]
    hpas = list(yaml.safe_load_all((ADAPTER.parent / "hpa.yaml").read_text()))
    wanted = {m[m["type"].lower()]["metric"]["name"] for h in hpas for m in h["spec"]["metrics"]}
    requests = {"custom": ('namespace="specgrove",pod=~"%s"' % POD, "pod"),
                "external": ('namespace="specgrove"', "namespace")}
    for kind, (matchers, group_by) in requests.items():
        (rule,) = rules[kind]
        assert prom.api("series", **{"match[]": rule["seriesQuery"]}), rule["seriesQuery"]
        series = rule["seriesQuery"].split("{")[0]
        assert re.fullmatch(rule["name"]["matches"], series) and rule["name"]["as"] in wanted
        query = (rule["metricsQuery"].replace("<<.Series>>", series)
                 .replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", group_by))
        result = prom.query(query)
        assert len(result) == 1 and set(result[0]["metric"]) == {group_by}, (kind, query, result)
        assert float(result[0]["value"][1]) == 0.0  # nothing waits once the load is over
