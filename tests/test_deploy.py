"""deploy/: the real promtool/amtool checks, the YAML structure of compose and Kubernetes
manifests, the rules and routing on the real Prometheus and Alertmanager, and that every
metric the rules and the dashboard name is one detector/obs/metrics.py exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from detector.obs.metrics import Metrics

try:  # tests/ is on sys.path under pytest's default import mode; else tests is a package
    import services as svc
except ImportError:  # pragma: no cover
    from tests import services as svc

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
AM_YML = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
WAIT = 20.0


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a test dependency
        if svc.in_ci():
            pytest.fail("pyyaml missing: it is a test dependency")
        pytest.skip("pyyaml not installed")
    return yaml


def load_yaml(path: Path) -> Any:
    return _yaml().safe_load(path.read_text())


def load_all(path: Path) -> list[Any]:
    return [d for d in _yaml().safe_load_all(path.read_text()) if d is not None]


def run_tool(*argv: str) -> str:
    svc.require_binary(argv[0])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


# -- promtool / amtool ---------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    out = run_tool("promtool", "check", "config", "deploy/prometheus/prometheus.yml")
    assert "SUCCESS" in out


def test_promtool_check_rules() -> None:
    out = run_tool("promtool", "check", "rules", "deploy/prometheus/rules.yml")
    n_rules = sum(len(g["rules"]) for g in load_yaml(RULES)["groups"])
    assert f"SUCCESS: {n_rules} rules found" in out


def test_promtool_test_rules() -> None:
    out = run_tool("promtool", "test", "rules", "deploy/prometheus/rules_test.yml")
    assert "SUCCESS" in out


def test_every_rule_has_a_unit_test() -> None:
    alerts = {r["alert"] for g in load_yaml(RULES)["groups"] for r in g["rules"]}
    tested = {case["alertname"] for t in load_yaml(DEPLOY / "prometheus" / "rules_test.yml")
              ["tests"] for case in t.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert alerts == tested


def test_amtool_check_config() -> None:
    out = run_tool("amtool", "check-config", "deploy/alertmanager/alertmanager.yml")
    assert "SUCCESS" in out


@pytest.mark.parametrize(("labels", "receiver"), [
    (["sev=sev1", "severity=critical", "tenant=acme"], "pager"),
    (["sev=sev2", "severity=critical"], "ml-oncall"),
    (["sev=sev3", "severity=warning"], "ml-team"),
    (["sev=sev4", "severity=info"], "ml-team"),
    (["component=detector", "severity=critical", "alertname=DetectorNoInput"], "pager"),
    (["component=detector", "severity=warning", "alertname=DetectorDeadLetterRate"],
     "detector-ops"),
])
def test_amtool_routes(labels: list[str], receiver: str) -> None:
    out = run_tool("amtool", "config", "routes", "test",
                   "--config.file=deploy/alertmanager/alertmanager.yml", *labels)
    assert out.splitlines()[0].strip() == receiver


# -- metric names in rules and dashboards --------------------------------------------------------

_PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                 "group_right", "bool", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL (or Grafana templating) expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    # label_values(metric, label): the metric is the first argument.
    names = set(re.findall(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,", expr))
    expr = re.sub(r"label_values\([^)]*\)", " ", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\w+", " ", expr)  # Grafana variables
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(\s*\()?", expr):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                    "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "info": ("_info",)}[family.type]
        names.update(family.name + s for s in suffixes)
    return names


def rule_exprs() -> list[str]:
    return [r["expr"] for g in load_yaml(RULES)["groups"] for r in g["rules"]]


def dashboard_exprs(path: Path) -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                promql = key in {"expr", "definition"} or (key == "query" and "(" in str(value))
                if promql and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(path.read_text()))
    return found


def test_promql_name_parser() -> None:
    expr = ('sum by (sink, dropped_severity) (label_replace(increase(detector_sink_dropped_total'
            '{severity="sev1"}[10m]), "x", "$1", "severity", "(.*)")) > 0 and on(job) '
            'histogram_quantile(0.99, rate(foo_bucket[5m])) or label_values(bar_total, instance)')
    assert promql_metric_names(expr) == {"detector_sink_dropped_total", "foo_bucket", "bar_total"}


def test_rules_name_only_exported_metrics() -> None:
    exported = exported_names()
    used = set().union(*(promql_metric_names(e) for e in rule_exprs()))
    assert {"detector_last_consumed_timestamp_seconds", "detector_events_rejected_total",
            "detector_consumer_lag_messages", "detector_sink_failures_total"} <= used
    assert used - exported == set()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_names_only_exported_metrics(path: Path) -> None:
    exported = exported_names()
    exprs = dashboard_exprs(path)
    assert len(exprs) >= 10
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert len(used) >= 10
    assert used - exported == set()


def test_dashboard_is_provisioned() -> None:
    assert DASHBOARDS, "no dashboard JSON"
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "detector.yml")
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    ds = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert ds["datasources"][0]["uid"] == "prometheus"
    dash = json.loads(DASHBOARDS[0].read_text())
    assert dash["uid"] and dash["panels"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


# -- compose, Kubernetes, Dockerfile -------------------------------------------------------------


def test_compose_structure() -> None:
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert {"kafka", "detector-1", "detector-2", "prometheus", "alertmanager", "grafana"} <= set(
        services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert "zookeeper" not in json.dumps(compose).lower()
    for name in ("detector-1", "detector-2"):
        worker = services[name]
        assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
        assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert worker["environment"]["DETECTOR_ALERTMANAGER_URLS"].startswith(
            "http://alertmanager:")
    prom_targets = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"][0]
    assert set(prom_targets["static_configs"][0]["targets"]) == {"detector-1:9464",
                                                                "detector-2:9464"}
    # Every bind-mounted host path exists (relative to deploy/, where the file lives).
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source


def k8s_docs() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in load_all(path):
            docs[doc["kind"]] = doc
    return docs


def test_k8s_manifests() -> None:
    docs = k8s_docs()
    assert {"Kustomization", "Namespace", "Deployment", "Service", "ServiceMonitor",
            "PrometheusRule"} <= set(docs)
    kust = docs["Kustomization"]
    for resource in kust["resources"]:
        assert (DEPLOY / "k8s" / resource).is_file(), resource
    files = kust["configMapGenerator"][0]["files"]
    source = Path(os.path.normpath(DEPLOY / "k8s" / files[0].split("=", 1)[1]))
    assert source == ROOT / "config" / "detector.toml"
    if not source.exists():
        pytest.fail(f"{source} (the ConfigMap's source) is missing")

    deploy = docs["Deployment"]
    pod = deploy["spec"]["template"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    container = spec["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v} == {
        kust["configMapGenerator"][0]["name"]}
    assert any(m["mountPath"] == "/etc/detector" for m in container["volumeMounts"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    service = docs["Service"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["name"] for p in service["spec"]["ports"]} == {"metrics"}
    assert service["spec"]["ports"][0]["port"] == ports["metrics"] == 9464

    monitor = docs["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_prometheusrule_carries_the_same_rules() -> None:
    assert k8s_docs()["PrometheusRule"]["spec"]["groups"] == load_yaml(RULES)["groups"]


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all(f.endswith("-slim") for f in froms)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in {"root", "0"}
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    assert entry is not None
    assert json.loads(entry.group(1)) == ["detector", "run", "--config",
                                          "/etc/detector/detector.toml"]
    assert re.search(r"^RUN pip install", text, re.M)
    for src in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, re.M):
        for item in src.split():
            if item == "README.md" and not (ROOT / item).exists():
                continue  # pyproject's readme: the image build needs it once it is written
            assert (ROOT / item).exists(), item


# -- the real Prometheus and Alertmanager with the deploy configs --------------------------------


@pytest.mark.integration
def test_real_prometheus_loads_and_evaluates_the_rules() -> None:
    config = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - "{rules_dir}/rules.yml"
"""
    with svc.prometheus(config, rule_files={"rules.yml": RULES.read_text()}) as prom:
        def evaluated() -> list[dict[str, Any]] | None:
            groups = svc.http_json(f"{prom.url}/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if rules and all(r["health"] == "ok" for r in rules) else None

        rules = svc.wait_until(evaluated, timeout=WAIT, what="every rule evaluated without error")
        assert len(rules) == sum(len(g["rules"]) for g in load_yaml(RULES)["groups"])
        # With no detector scraped, exactly the absence alert is pending.
        query = urllib.parse.quote('ALERTS{alertname="DetectorAbsent"}')
        svc.wait_until(
            lambda: svc.http_json(f"{prom.url}/api/v1/query?query={query}")["data"]["result"],
            timeout=WAIT, what="DetectorAbsent pending")


def _test_alertmanager_config(hook_url: str) -> str:
    """deploy/alertmanager/alertmanager.yml with every webhook pointed at ``hook_url`` (same
    path) and short timers; routing and inhibition untouched."""
    yaml = _yaml()
    config = yaml.safe_load(AM_YML.read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = hook_url + urllib.parse.urlsplit(hook["url"]).path

    def shorten(route: dict[str, Any]) -> None:
        for key, value in (("group_wait", "1s"), ("group_interval", "1s")):
            if key in route or route is config["route"]:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    return str(yaml.safe_dump(config))


@pytest.mark.integration
def test_real_alertmanager_routes_sev1_to_pager_and_inhibits_lower_severities() -> None:
    from detector.config import AlertmanagerConfig
    from detector.sinks.alertmanager import AlertmanagerSink, Tuning

    acme = {"tenant": "acme", "app": "support-agent", "environment": "production"}
    globex = {"tenant": "globex", "app": "support-agent", "environment": "production"}
    with svc.RecordingServer() as hook, svc.alertmanager(_test_alertmanager_config(hook.url)) as am:
        config = AlertmanagerConfig(urls=[am.url], cohort_labels=list(acme))
        # Alertmanager notifies a new group at once when its alert started more than
        # group_wait ago, racing its inhibitor; so the sev1 goes first and is seen, and the
        # sev3s start now (group_wait applies), as when a cohort escalates in production.
        now = datetime.now(UTC)
        with AlertmanagerSink(config, tuning=Tuning(poll_s=0.05)) as sink:
            sink.emit(svc.sample_alert(id="p1", severity="sev1", cohort=acme))
            assert sink.flush(WAIT)
            svc.wait_until(lambda: svc.http_json(f"{am.url}/api/v2/alerts"), timeout=WAIT,
                           what="sev1")
            for alert_id, cohort in (("p3", acme), ("o3", globex)):
                sink.emit(svc.sample_alert(id=alert_id, severity="sev3", signal="refusal_rate",
                                           cohort=cohort, starts_at=now))
            assert sink.flush(WAIT)

        def states() -> dict[tuple[str, str], dict[str, Any]] | None:
            got = {(a["labels"]["tenant"], a["labels"]["sev"]): a["status"]
                   for a in svc.http_json(f"{am.url}/api/v2/alerts")}
            return got if len(got) == 3 and got[("acme", "sev3")]["state"] == "suppressed" \
                else None

        got = svc.wait_until(states, timeout=WAIT, what="inhibition applied")
        assert got[("acme", "sev1")]["state"] == "active"
        assert got[("acme", "sev3")]["inhibitedBy"]
        assert got[("globex", "sev3")]["state"] == "active"  # another cohort: not inhibited

        def received() -> dict[str, set[tuple[str, str]]] | None:
            by_path: dict[str, set[tuple[str, str]]] = {}
            for path, body, _h in list(hook.requests):
                for a in json.loads(body)["alerts"]:
                    by_path.setdefault(path, set()).add((a["labels"]["tenant"],
                                                         a["labels"]["sev"]))
            return by_path if len(by_path) == 2 else None

        by_path = svc.wait_until(received, timeout=WAIT, what="notifications")
    assert by_path == {"/alertmanager/page": {("acme", "sev1")},
                       "/alertmanager/ml-team": {("globex", "sev3")}}


# -- the image's wheel, built from the build context the Dockerfile sees ------------------------


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides.

    >>> _dockerignore_excludes(["**", "!detector/**", "**/*.so"], "detector/core/_tally.so")
    True
    >>> _dockerignore_excludes(["**", "!detector/**", "**/*.so"], "detector/core/events.py")
    False
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def _glob_regex(glob: str) -> re.Pattern[str]:
    out = ""
    for piece in re.split(r"(\*\*/?|\*|\?)", glob):
        if piece in ("**", "**/"):
            out += "(?:.*/)?" if piece == "**/" else ".*"
        elif piece == "*":
            out += "[^/]*"
        elif piece == "?":
            out += "[^/]"
        else:
            out += re.escape(piece)
    return re.compile(out)


def _build_stage_context(dest: Path) -> None:
    """Copy what the Dockerfile's build stage COPYs, as the dockerignore lets it into the
    context, into ``dest`` (the build stage's WORKDIR)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    stage = re.split(r"^FROM\s", text, flags=re.M)[1]   # the first (build) stage
    ignore = [ln.strip() for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if ln.strip() and not ln.lstrip().startswith("#")]
    copies = re.findall(r"^COPY\s+(?!--)(.+)$", stage, re.M)
    assert copies, "the build stage copies nothing"
    for line in copies:
        *srcs, target = line.split()
        into_dir = target.endswith("/") or len(srcs) > 1
        for src in srcs:
            base = ROOT / src
            files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                if _dockerignore_excludes(ignore, rel):
                    continue
                if base.is_file():
                    out = dest / target / f.name if into_dir else dest / target
                else:
                    out = dest / target / f.relative_to(base)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(f.read_bytes())


def test_image_wheel_has_the_c_counting(tmp_path: Path) -> None:
    """The image must count in C: the wheel built from the Dockerfile's build context holds
    detector/core/_tally*.so (it is optional for pip, so a missing file or compiler is silent)."""
    text = (DEPLOY / "Dockerfile").read_text()
    build, runtime = re.split(r"^FROM\s", text, flags=re.M)[1:3]
    assert re.search(r"apt-get install .*\bgcc\b", build.replace("\\\n", " "))
    assert "gcc" not in runtime and "build-essential" not in runtime
    assert re.search(r"^RUN pip wheel .*\.\s*$", build, re.M)
    src = tmp_path / "src"
    _build_stage_context(src)
    assert not list(src.rglob("*.so")), "a host-built extension leaked into the build context"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--wheel-dir",
         str(tmp_path / "wheels"), str(src)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "wheels").glob("ai_misbehaviour_detector-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(re.fullmatch(r"detector/core/_tally[^/]*\.so", n) for n in names), names


# -- the documented Kubernetes command ----------------------------------------------------------

K8S_COMMAND = (
    "kubectl kustomize --load-restrictor LoadRestrictionsNone deploy/k8s | kubectl apply -f -")


def _documented_kubectl_commands() -> list[str]:
    found = []
    for readme in (ROOT / "docs" / "operations.md", DEPLOY / "README.md"):
        found += [c.strip() for c in re.findall(r"`?(kubectl [^`\n]+)`?", readme.read_text())]
    return found


def test_readmes_give_a_kubectl_command_that_exists() -> None:
    commands = _documented_kubectl_commands()
    assert commands.count(K8S_COMMAND) == 2, commands
    # `kubectl apply -k` has no --load-restrictor flag: only `kubectl kustomize` does.
    assert not [c for c in commands if re.search(r"apply\b.*--load-restrictor", c)], commands


def test_documented_kubectl_command_runs() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed (the text is checked by the test above)")
    for command in set(_documented_kubectl_commands()):
        for part in command.split(" | "):
            argv = part.split()
            if argv[1] == "kustomize":   # runs offline: render the manifests
                proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                                      timeout=60, check=False)
                assert proc.returncode == 0, proc.stderr
                kinds = set(re.findall(r"^kind: (\S+)", proc.stdout, re.M))
                assert {"ConfigMap", "Deployment", "Service"} <= kinds, kinds
            else:   # needs a cluster: check only that kubectl knows every flag
                proc = subprocess.run([*argv, "--help"], capture_output=True, text=True,
                                      timeout=60, check=False)
                assert proc.returncode == 0, f"{part}: {proc.stderr}"
