"""The Helm chart (helm/localmoe), checked as helm-unittest would, in Python over `helm template`.

No cluster runs here, so three kinds of checks stand in for one:
- `helm lint --strict` and `helm template` of every CI values file (helm/localmoe/ci/*.yaml),
  each rendered once per module; every object Kubernetes has a schema for validated strictly by
  `kubernetes-validate` (1.29, the chart's kubeVersion floor, and the newest it knows). It has no
  schema for the Prometheus Operator's and KEDA's CRDs, so their shape is asserted here instead;
- assertions on the rendered objects: probes, grace periods, secrets, selectors, HPAs, refusals;
- the containers' commands run for real: the Triton CPU image's build steps (docker/
  triton-cpu.Dockerfile) fill a repository, the chart's Triton command serves it, the chart's
  gateway command (its ConfigMap, its env, its Secret) serves in front of it through `dns:///`,
  and the `helm test` pods' command passes against that gateway. Only ports, bind addresses and
  mount paths are substituted (`_Pod`), since those belong to the pod, not to the command.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import pytest
import yaml

from gateway.settings import Settings
from tests.support import REPO, answers_200, free_port, tool

CHART = REPO / "helm" / "localmoe"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
RELEASE = "lm"
NAMESPACE = "llm"
# The chart's kubeVersion floor, and the newest Kubernetes kubernetes-validate knows.
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
# Kinds kubernetes-validate has no schema for (CRDs); test_crd_objects_have_their_shape covers them.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject"}
BIN = Path(sys.executable).parent


# What `helm install` sees in a cluster with the Prometheus Operator (`monitoring.kind: auto`).
WITH_OPERATOR = "monitoring.coreos.com/v1/ServiceMonitor"


@functools.cache
def _render(
    values: tuple[str, ...] = (), sets: tuple[str, ...] = (), api_versions: tuple[str, ...] = ()
) -> tuple[dict, ...]:
    command = [tool("helm"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for api in api_versions:
        command += ["--api-versions", api]
    for path in values:
        command += ["-f", path]
    for item in sets:
        command += ["--set", item]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(values: str | Path | None = None, *sets: str, api: tuple[str, ...] = ()) -> list[dict]:
    """The chart's objects for a CI values file (a name in ci/, or None) and `--set`s, in a
    cluster serving the `api` versions besides the built-in ones."""
    files = () if values is None else (str(CHART / "ci" / f"{Path(values).stem}.yaml"),)
    return list(_render(files, tuple(sets), api))


def refusal(*sets: str) -> str:
    """`helm template`'s error for values it must refuse."""
    command = [tool("helm"), "template", RELEASE, str(CHART)]
    for item in sets:
        command += ["--set", item]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, f"rendered although it should refuse: {sets}"
    return result.stderr


def one(docs: list[dict], kind: str, suffix: str) -> dict:
    name = f"{RELEASE}-localmoe{suffix}"
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} *{suffix}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(workload: dict, name: str) -> dict:
    spec = (
        workload["spec"]["template"]["spec"] if "template" in workload["spec"] else workload["spec"]
    )
    for item in spec.get("containers", []) + spec.get("initContainers", []):
        if item["name"] == name:
            return item
    raise AssertionError(f"no container {name} in {workload['metadata']['name']}")


def gateway_config(docs: list[dict]) -> dict:
    return yaml.safe_load(one(docs, "ConfigMap", "-gateway")["data"]["config.yaml"])


def secret_values(docs: list[dict]) -> dict[tuple[str, str], str]:
    found = {}
    for doc in docs:
        if doc["kind"] == "Secret":
            for key, value in (doc.get("data") or {}).items():
                found[(doc["metadata"]["name"], key)] = base64.b64decode(value).decode()
            for key, value in (doc.get("stringData") or {}).items():
                found[(doc["metadata"]["name"], key)] = value
    return found


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    specs = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            specs.append((doc["metadata"]["name"], doc["spec"]["template"]))
        elif doc["kind"] == "Pod":
            specs.append((doc["metadata"]["name"], doc))
    return specs


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# --- lint, schemas, shapes -------------------------------------------------------------------


def test_lint_strict_passes_for_the_defaults_and_every_ci_values_file() -> None:
    for values in [None, *CI_VALUES]:
        command = [tool("helm"), "lint", "--strict", str(CHART)]
        command += [] if values is None else ["-f", str(values)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{values}: {result.stdout}{result.stderr}"


def test_packaged_chart_carries_its_files_and_not_the_ci_values(tmp_path: Path) -> None:
    import tarfile

    result = subprocess.run(
        [tool("helm"), "package", str(CHART), "-d", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (archive,) = tmp_path.glob("localmoe-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert "localmoe/files/smoke.py" in names and "localmoe/values.schema.json" in names
    assert "localmoe/files/rules/localmoe.rules.yaml" in names
    assert any(n.startswith("localmoe/files/dashboards/") for n in names)
    assert not any(n.startswith("localmoe/ci/") for n in names)


def test_every_ci_values_file_is_there() -> None:
    assert {p.stem for p in CI_VALUES} >= {
        "cpu",
        "gpu-tp2",
        "external-redis",
        "production-jwks",
        "everything",
    }


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_manifests_validate_strictly_against_kubernetes_schemas(values: Path) -> None:
    for doc in render(values):
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                assert doc["kind"] in CRD_KINDS, f"no schema for {doc['kind']} {doc['apiVersion']}"
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} ({version}) {path}: {exc}")


def test_crd_objects_have_their_shape() -> None:
    docs = render("everything") + render("cpu", api=(WITH_OPERATOR,))
    monitors = [d for d in docs if d["kind"] in ("ServiceMonitor", "PodMonitor")]
    assert {d["kind"] for d in monitors} == {"ServiceMonitor", "PodMonitor"}
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        assert set(spec) <= {"namespaceSelector", "selector", "endpoints", "podMetricsEndpoints"}
        endpoints = spec[
            "endpoints" if monitor["kind"] == "ServiceMonitor" else "podMetricsEndpoints"
        ]
        selected = [
            d
            for d in docs
            if d["kind"] == ("Service" if monitor["kind"] == "ServiceMonitor" else "Deployment")
            and matches(spec["selector"], _labels_of(d))
        ]
        assert selected, f"{monitor['metadata']['name']} selects nothing"
        ports = {p["name"] for d in selected for p in _ports_of(d)}
        for endpoint in endpoints:
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
            assert re.fullmatch(r"\d+s", endpoint["interval"])
    rule = one(render("everything"), "PrometheusRule", "")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for item in group["rules"]:
            assert item["expr"] and (("alert" in item) != ("record" in item))
    scaled = one(render(None, "triton.autoscaling.keda.enabled=true"), "ScaledObject", "-triton")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-localmoe-triton"
    trigger = scaled["spec"]["triggers"][0]
    promql_parser.parse(trigger["metadata"]["query"])
    assert (
        trigger["type"] == "prometheus" and 'request_type="waiting"' in trigger["metadata"]["query"]
    )
    assert not [
        d
        for d in render(None, "triton.autoscaling.keda.enabled=true")
        if d["kind"] == "HorizontalPodAutoscaler"
    ]


def _labels_of(doc: dict) -> dict:
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["metadata"]["labels"]
    return doc["metadata"]["labels"]


def _ports_of(doc: dict) -> list[dict]:
    if doc["kind"] == "Service":
        return doc["spec"]["ports"]
    return [p for c in doc["spec"]["template"]["spec"]["containers"] for p in c["ports"]]


def test_monitors_by_default_only_where_the_prometheus_operator_is_installed() -> None:
    def monitors(docs: list[dict]) -> list[str]:
        return sorted(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceMonitor")

    assert monitors(render("cpu")) == []
    assert monitors(render("cpu", api=(WITH_OPERATOR,))) == [
        f"{RELEASE}-localmoe-gateway",
        f"{RELEASE}-localmoe-triton",
    ]
    # Asked for by name, they are rendered regardless (the install then needs the CRDs).
    assert len(monitors(render("production-jwks"))) == 2


def test_rule_file_is_the_prometheus_rule_and_every_dashboard_a_configmap() -> None:
    docs = render("everything")
    rule_file = yaml.safe_load((CHART / "files/rules/localmoe.rules.yaml").read_text())
    assert one(docs, "PrometheusRule", "")["spec"]["groups"] == rule_file["groups"]
    dashboards = sorted((CHART / "files/dashboards").glob("*.json"))
    assert dashboards, "no dashboards in helm/localmoe/files/dashboards"
    maps = {
        key: doc
        for doc in docs
        if doc["kind"] == "ConfigMap" and "-dashboard-" in doc["metadata"]["name"]
        for key in doc["data"]
    }
    assert sorted(maps) == [p.name for p in dashboards]
    for path in dashboards:
        doc = maps[path.name]
        assert json.loads(doc["data"][path.name]) == json.loads(path.read_text())
        assert doc["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert doc["metadata"]["namespace"] == "monitoring"
        assert doc["metadata"]["annotations"]["grafana_folder"] == "LocalMoE"
    # Off by default; nothing of them without the switches.
    assert not [
        d
        for d in render("cpu")
        if d["kind"] == "PrometheusRule" or "-dashboard-" in d["metadata"]["name"]
    ]


# --- what users complained about -------------------------------------------------------------


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_gateway_probes_and_grace_period_cover_the_drain(values: Path) -> None:
    docs = render(values)
    deployment = one(docs, "Deployment", "-gateway")
    gateway = container(deployment, "gateway")
    ports = {p["name"] for p in gateway["ports"]}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert gateway["startupProbe"]["httpGet"]["path"] == "/health/live" and "http" in ports
    sleep = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) >= 5
    drain = gateway_config(docs)["drain_timeout_s"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(sleep[1]) + drain, (grace, sleep, drain)
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_triton_startup_probe_allows_a_long_model_load_and_liveness_waits_for_it() -> None:
    for values, at_least in (("gpu-tp2", 1800), ("cpu", 120)):
        triton = container(one(render(values), "Deployment", "-triton"), "triton")
        startup = triton["startupProbe"]
        assert startup["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        assert startup["periodSeconds"] * startup["failureThreshold"] >= at_least, values
        assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert "initialDelaySeconds" not in triton["livenessProbe"]  # the startup probe gates it


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_triton_outlives_the_gateways_rediscovery_on_scale_down(values: Path) -> None:
    docs = render(values)
    triton = container(one(docs, "Deployment", "-triton"), "triton")
    sleep = int(triton["lifecycle"]["preStop"]["exec"]["command"][1])
    settings = gateway_config(docs)["triton"]
    assert sleep > settings["dns_interval_s"] + settings["health_interval_s"]


def test_gpu_profile_with_tensor_parallel_two() -> None:
    docs = render("gpu-tp2")
    triton = one(docs, "Deployment", "-triton")
    spec, main = triton["spec"]["template"]["spec"], container(triton, "triton")
    assert main["image"].startswith("nvcr.io/nvidia/tritonserver:") and main["image"].endswith(
        "-trtllm-python-py3"
    )
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 2
    command = main["command"]
    assert command[:2] == ["mpirun", "--allow-run-as-root"] and command.count("tritonserver") == 2
    ranks = " ".join(command[2:]).split(" : ")
    assert "--grpc-port=8001" in ranks[0] and "--load-model=tensorrt_llm" in ranks[1]
    # A surged pod would need two more free GPUs; replace one pod at a time instead.
    assert triton["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in main["volumeMounts"]
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert one(docs, "PersistentVolumeClaim", "-models")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    gateway = one(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]
    models = [v for v in gateway["volumes"] if v["name"] == "models"]
    assert models[0]["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}


def test_gpu_tritonserver_flags_are_tritonserver_options() -> None:
    # No GPU image here, but pytriton's tritonserver (2.51) is: every flag the chart passes must
    # be one of its options (NVIDIA's images are newer and keep them).
    from gateway.local.triton import server_environment, tritonserver_binary

    result = subprocess.run(
        [str(tritonserver_binary()), "--help"],
        env=server_environment(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    options = set(re.findall(r"^\s+(--[a-z0-9-]+)", result.stdout + result.stderr, re.MULTILINE))
    assert "--model-repository" in options
    for tp in (1, 2):
        docs = render("gpu-tp2", f"triton.gpu.tensorParallel={tp}")
        command = container(one(docs, "Deployment", "-triton"), "triton")["command"]
        flags = {
            w.split("=")[0] for w in command[command.index("tritonserver") :] if w.startswith("--")
        }
        assert flags - {"--allow-run-as-root"} <= options, flags - options


def test_readwriteonce_model_claim_runs_one_pod_with_recreate() -> None:
    triton = one(
        render(
            None,
            "triton.profile=gpu",
            "triton.modelStorage.accessMode=ReadWriteOnce",
            "gateway.tokenizer.source=none",
        ),
        "Deployment",
        "-triton",
    )
    assert triton["spec"]["replicas"] == 1 and triton["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_no_secret_value_is_inlined_anywhere_but_in_a_secret(values: Path) -> None:
    docs = render(values)
    _assert_secrets_only_in_secrets(docs)


def test_an_external_redis_url_with_a_password_lives_in_a_secret_only() -> None:
    docs = render(
        None,
        "redis.mode=external",
        "redis.external.url=redis://:hunter2-s3cret@redis.example:6379/0",
    )
    assert any(v.endswith("redis.example:6379/0") for v in secret_values(docs).values())
    outside = [d for d in docs if d["kind"] != "Secret"]
    assert "hunter2-s3cret" not in yaml.safe_dump_all(outside)
    env = container(one(docs, "Deployment", "-gateway"), "gateway")["env"]
    assert next(e for e in env if e["name"] == "LOCALMOE_REDIS_URL")["valueFrom"]["secretKeyRef"]
    _assert_secrets_only_in_secrets(docs)


PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"


def test_public_key_and_jwks_url_reach_the_gateway_through_secrets(tmp_path: Path) -> None:
    values = tmp_path / "keys.yaml"
    values.write_text(
        yaml.safe_dump({"auth": {"jwtSecret": {"create": False}, "publicKey": {"pem": PEM}}})
    )
    docs = list(_render((str(values),)))
    assert secret_values(docs)[(f"{RELEASE}-localmoe-public-key", "public.pem")] == PEM
    deployment = one(docs, "Deployment", "-gateway")
    auth = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "auth")
    assert auth["projected"]["sources"] == [
        {
            "secret": {
                "name": f"{RELEASE}-localmoe-public-key",
                "items": [{"key": "public.pem", "path": "public.pem"}],
            }
        }
    ]
    mount = next(m for m in container(deployment, "gateway")["volumeMounts"] if m["name"] == "auth")
    assert f"{mount['mountPath']}/public.pem" == gateway_config(docs)["auth"]["jwt_public_key_file"]
    _assert_secrets_only_in_secrets(docs)

    docs = render(None, "auth.jwtSecret.create=false", "auth.jwksUrlSecret.existingSecret=idp")
    env = container(one(docs, "Deployment", "-gateway"), "gateway")["env"]
    assert env == [
        {
            "name": "LOCALMOE_AUTH__JWKS_URL",
            "valueFrom": {"secretKeyRef": {"name": "idp", "key": "jwks-url"}},
        }
    ]
    assert "jwks_url" not in gateway_config(docs)["auth"]


def _assert_secrets_only_in_secrets(docs: list[dict]) -> None:
    secrets = [v for v in secret_values(docs).values() if len(v) >= 8]
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = yaml.safe_dump(doc)
        for value in secrets:
            assert value not in text, (
                f"a Secret's value appears in {doc['kind']}/{doc['metadata']['name']}"
            )
    for name, spec in pod_specs(docs):
        pod = spec["spec"]
        for item in pod.get("containers", []) + pod.get("initContainers", []):
            for env in item.get("env") or []:
                if re.search(r"SECRET|TOKEN|PASSWORD|REDIS_URL", env["name"]):
                    assert "value" not in env, f"{name}: {env['name']} is a plain value"
                    assert "secretKeyRef" in env["valueFrom"], f"{name}: {env['name']}"
    config = next((gateway_config(docs) for d in docs if d["kind"] == "ConfigMap"), {})
    assert "jwt_secret" not in config.get("auth", {})


def test_network_policies_let_only_the_gateway_reach_triton_grpc_and_redis() -> None:
    docs = render("everything")
    pods = {name: spec["metadata"]["labels"] for name, spec in pod_specs(docs)}
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    gateway = f"{RELEASE}-localmoe-gateway"
    for target, port in (("triton", "grpc"), ("redis", "redis")):
        policy = policies[f"{RELEASE}-localmoe-{target}"]
        protected = [n for n, labels in pods.items() if matches(policy["podSelector"], labels)]
        assert protected == [f"{RELEASE}-localmoe-{target}"], protected
        rule = next(r for r in policy["ingress"] if {"port": port, "protocol": "TCP"} in r["ports"])
        allowed = [
            n
            for n, labels in pods.items()
            for f in rule["from"]
            if "podSelector" in f and matches(f["podSelector"], labels)
        ]
        assert allowed == [gateway], allowed
        assert all("namespaceSelector" not in f for f in rule["from"])
        workload = one(docs, "Deployment" if target == "triton" else "StatefulSet", f"-{target}")
        assert port in {
            p["name"]
            for c in workload["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
    metrics = next(
        r
        for r in policies[f"{RELEASE}-localmoe-triton"]["ingress"]
        if r["ports"][0]["port"] == "metrics"
    )
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert len(policies[f"{RELEASE}-localmoe-redis"]["ingress"]) == 1  # no metrics, no one else
    tests = [n for n, labels in pods.items() if "-test-" in n]
    assert tests and not any(matches(policies[gateway]["podSelector"], pods[n]) for n in tests)


def test_hpas_target_workloads_that_exist_with_metrics_the_adapter_rules_serve() -> None:
    docs = render("everything")
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert len(hpas) == 2
    rules = yaml.safe_load(one(docs, "ConfigMap", "-prometheus-adapter")["data"]["config.yaml"])[
        "rules"
    ]
    served = {rule["name"]["as"] for rule in rules}
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        workload = one(docs, target["kind"], target["name"][len(RELEASE) + len("-localmoe") :])
        assert "replicas" not in workload["spec"], "the HPA owns the replica count"
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in served
    triton_metrics = {
        m["pods"]["metric"]["name"]
        for h in hpas
        if h["metadata"]["name"].endswith("-triton")
        for m in h["spec"]["metrics"]
    }
    assert triton_metrics == {"localmoe_engine_requests_waiting", "triton_queue_compute_ratio"}
    for rule in rules:
        # What the adapter sends Prometheus for one pod's metric must parse as PromQL.
        series = rule["seriesQuery"].split("{")[0].strip("'")
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod="{RELEASE}-x"')
            .replace("<<.GroupBy>>", "pod")
        )
        promql_parser.parse(query)
        promql_parser.parse(rule["seriesQuery"])
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        assert (
            "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        )


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            (
                "triton.profile=gpu",
                "triton.modelStorage.accessMode=ReadWriteOnce",
                "triton.replicas=2",
            ),
            "ReadWriteOnce can be mounted by one pod only",
        ),
        (
            (
                "triton.profile=gpu",
                "triton.modelStorage.accessMode=ReadWriteOnce",
                "gateway.tokenizer.source=none",
                "triton.autoscaling.enabled=true",
            ),
            "up to 4 Triton pods",
        ),
        (
            ("triton.profile=gpu", "triton.modelStorage.accessMode=ReadWriteOnce"),
            "cannot share with the Triton pod",
        ),
        (
            ("triton.profile=gpu", "triton.gpu.tensorParallel=2", "triton.gpu.shm.enabled=false"),
            "needs triton.gpu.shm.enabled=true",
        ),
        (("mode=production", "auth.jwtSecret.create=false"), "mode=production needs a JWT key"),
        (
            ("auth.jwksUrl=https://idp.example/jwks.json", "auth.jwtSecret.existingSecret=hs"),
            "at most one JWT key source",
        ),
        (("auth.metrics=true",), "set monitoring.bearerTokenSecret.name"),
        (("triton.autoscaling.enabled=true", "triton.autoscaling.keda.enabled=true"), "choose one"),
        (("redis.mode=external",), "needs redis.external.url or redis.external.existingSecret"),
        (("gateway.replica=3",), "additional properties 'replica' not allowed"),
        (("triton.profile=tpu",), "triton/profile"),
    ],
    ids=[
        "rwo-replicas",
        "rwo-hpa",
        "rwo-tokenizer",
        "tp-without-shm",
        "production-no-key",
        "two-keys",
        "metrics-token",
        "hpa-and-keda",
        "redis-no-url",
        "misspelt-key",
        "unknown-profile",
    ],
)
def test_impossible_combinations_are_refused_with_what_to_change(
    sets: tuple[str, ...], message: str
) -> None:
    assert message in refusal(*sets)


def test_each_refused_combination_renders_once_fixed() -> None:
    render(
        None,
        "triton.profile=gpu",
        "triton.modelStorage.accessMode=ReadWriteOnce",
        "gateway.tokenizer.source=none",
    )
    render(None, "triton.profile=gpu", "triton.gpu.tensorParallel=2")
    render(None, "mode=production")  # the generated HS256 secret is a key
    # The generated HS256 secret steps aside for another key source.
    docs = render(None, "auth.jwksUrl=https://idp.example/jwks.json")
    assert not secret_values(docs) and "env" not in container(
        one(docs, "Deployment", "-gateway"), "gateway"
    )
    render(None, "auth.metrics=true", "monitoring.bearerTokenSecret.name=scrape")
    render(None, "redis.mode=external", "redis.external.existingSecret=redis")


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_the_rendered_gateway_config_is_a_valid_settings_file(values: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(one(render(values), "ConfigMap", "-gateway")["data"]["config.yaml"])
    settings = Settings(config_file=config)
    assert settings.triton.urls == [f"dns:///{RELEASE}-localmoe-triton-headless:8001"]
    assert settings.host == "0.0.0.0" and settings.drain_timeout_s > 0


def test_helm_test_pods_list_models_chat_and_stream() -> None:
    docs = render("cpu")
    pods = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Pod"}
    assert sorted(pods) == [f"{RELEASE}-localmoe-test-{c}" for c in ("chat", "models", "stream")]
    script = one(docs, "ConfigMap", "-tests")["data"]["smoke.py"]
    assert script.strip() == (CHART / "files/smoke.py").read_text().strip()
    for name, pod in pods.items():
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        command = pod["spec"]["containers"][0]["command"]
        assert command == [
            "python",
            "/etc/localmoe-tests/smoke.py",
            name.rsplit("-", 1)[1],
            f"http://{RELEASE}-localmoe-gateway:80",
        ]
    # With a JWKS the chart cannot mint a token: the pods take the one in tests.tokenSecret.
    for pod in (d for d in render("production-jwks") if d["kind"] == "Pod"):
        env = pod["spec"]["containers"][0]["env"]
        assert env == [
            {
                "name": "TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "localmoe-test-token", "key": "token"}},
            }
        ]
    jwks_only = ("auth.jwtSecret.create=false", "auth.jwksUrl=https://idp.example/jwks.json")
    assert not [d for d in render(None, *jwks_only) if d["kind"] == "Pod"]


# --- the commands, for real ------------------------------------------------------------------


def _dockerfile(name: str) -> list[tuple[str, str]]:
    """(instruction, argument) pairs of docker/<name>, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "docker" / name).read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, argument = line.partition(" ")
            found.append((instruction.upper(), argument.strip()))
    return found


def _run_lines(name: str) -> list[list[str]]:
    args = {
        a.split("=", 1)[0]: a.split("=", 1)[1]
        for i, a in _dockerfile(name)
        if i == "ARG" and "=" in a
    }
    lines = []
    for instruction, argument in _dockerfile(name):
        if instruction == "RUN":
            for part in argument.split("&&"):
                words = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], part))
                lines.append(words)
    return lines


def _exec_form(name: str, instruction: str) -> list[str]:
    return next(json.loads(a) for i, a in _dockerfile(name) if i == instruction)


def test_dockerfiles_install_what_make_install_installs() -> None:
    makefile = (REPO / "Makefile").read_text()
    torch_pin = re.search(r'"(torch==[\d.]+)"', makefile).group(1)
    for name, expected in (
        ("gateway.Dockerfile", {"."}),
        ("triton-cpu.Dockerfile", {torch_pin, ".[cpu]"}),
    ):
        installs = {
            w
            for line in _run_lines(name)
            if line[:2] == ["pip", "install"]
            for w in line[2:]
            if not w.startswith("-") and "://" not in w
        }
        assert installs == expected, name
        assert all(
            i[0] == "FROM" and "python:3.11" in i[1] for i in _dockerfile(name) if i[0] == "FROM"
        )


class _Pod:
    """Runs a rendered container's command here: the pod's mount paths become local folders,
    its ports free ones, its bind address 127.0.0.1; nothing else changes."""

    def __init__(self, mounts: dict[str, Path], ports: dict[str, int]) -> None:
        self.mounts, self.ports = mounts, ports

    def args(self, command: list[str]) -> list[str]:
        out = []
        for i, word in enumerate(command):
            if i > 0 and command[i - 1] in self.ports:
                word = str(self.ports[command[i - 1]])
            elif word == "0.0.0.0":
                word = "127.0.0.1"
            for mount, local in sorted(self.mounts.items(), key=lambda m: -len(m[0])):
                if word == mount or word.startswith(mount + "/"):
                    word = str(local) + word[len(mount) :]
                    break
            if i == 0 and (BIN / word).exists():
                word = str(BIN / word)
            out.append(word)
        return out

    def env(self, item: dict, docs: list[dict], **extra: str) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LOCALMOE_")}
        environ["PATH"] = f"{BIN}{os.pathsep}{environ.get('PATH', '')}"
        secrets = secret_values(docs)
        for env in item.get("env") or []:
            if "value" in env:
                environ[env["name"]] = env["value"]
            else:
                ref = env["valueFrom"]["secretKeyRef"]
                environ[env["name"]] = secrets[(ref["name"], ref["key"])]
        environ.update(extra)
        return environ


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    return process.returncode


def _wait_200(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"exited with {process.returncode} before {url} answered:\n"
                + log.read_text()[-3000:]
            )
        if answers_200(url):
            return
        time.sleep(0.2)
    pytest.fail(f"{url} not 200 after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def image_home(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Triton CPU image's LOCALMOE_HOME, made by its Dockerfile's `localmoe` lines.

    `localmoe build tiny` finds the session's model already in place (a link to it) instead of
    training one for two minutes: test_build_tiny covers the training. `build repository` runs
    as written."""
    home = tmp_path_factory.mktemp("image") / "opt-localmoe"
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny-moe").symlink_to(tiny_model_dir)
    pod = _Pod({"/opt/localmoe": home}, {})
    lines = [line for line in _run_lines("triton-cpu.Dockerfile") if line[0] == "localmoe"]
    assert [line[:3] for line in lines] == [
        ["localmoe", "build", "tiny"],
        ["localmoe", "build", "repository"],
    ]
    for line in lines:
        env = pod.env({}, [], LOCALMOE_HOME=str(home))  # the image's ENV
        result = subprocess.run(
            pod.args(line), env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{line}: {result.stdout}{result.stderr}"
    config = (home / "repository/cpu/tensorrt_llm/config.pbtxt").read_text()
    assert re.search(r'key: "num_threads"\s*value: \{\s*string_value: "1"', config)
    return home


def test_chart_init_containers_run_the_dockerfile_build_lines() -> None:
    triton = one(render(None, "triton.cpu.model=initContainer"), "Deployment", "-triton")
    init = [c["command"] for c in triton["spec"]["template"]["spec"]["initContainers"]]
    assert init == [line for line in _run_lines("triton-cpu.Dockerfile") if line[0] == "localmoe"]
    chart_triton = container(one(render("cpu"), "Deployment", "-triton"), "triton")["command"]
    entrypoint = _exec_form("triton-cpu.Dockerfile", "ENTRYPOINT")
    # The chart's command is the image's entrypoint with its ports spelled out.
    assert [w for w in chart_triton if w not in entrypoint] == [
        "--http-port",
        "8000",
        "--grpc-port",
        "8001",
        "--metrics-port",
        "8002",
    ]


@pytest.mark.slow
def test_gateway_builds_the_same_tokenizer_when_triton_builds_its_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # triton.cpu.model=initContainer: the model exists only inside the Triton pod, so the gateway's
    # init container builds the tokenizer itself, without training weights (8 s, not 2 min).
    deployment = one(render(None, "triton.cpu.model=initContainer"), "Deployment", "-gateway")
    init = container(deployment, "tokenizer")
    pod = _Pod({"/tokenizer": tmp_path}, {})
    result = subprocess.run(
        pod.args(init["command"]), env=pod.env(init, []), capture_output=True, timeout=300
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (tmp_path / "tiny-moe" / name).read_bytes() == (tiny_model_dir / name).read_bytes()


@pytest.fixture(scope="module")
def chart_stack(
    image_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The cpu values' Triton and gateway containers running here, the gateway in front of the
    Triton through the chart's own `dns:///` URL (its host made `localhost`)."""
    docs = render("cpu")
    root = tmp_path_factory.mktemp("pods")
    ports = {"--http-port": free_port(), "--grpc-port": free_port(), "--metrics-port": free_port()}
    triton_spec = container(one(docs, "Deployment", "-triton"), "triton")
    triton_pod = _Pod({"/opt/localmoe": image_home, "/tmp": root}, ports)
    triton_log = root / "triton.log"
    env = triton_pod.env(triton_spec, docs, LOCALMOE_HOME=str(image_home))  # + the image's ENV
    triton = _start(triton_pod.args(triton_spec["command"]), env, triton_log)
    gateway = None
    try:
        http = f"http://127.0.0.1:{ports['--http-port']}"
        started = time.monotonic()
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            _wait_200(http + triton_spec[probe]["httpGet"]["path"], triton, triton_log)
        print(f"chart's Triton command ready in {time.monotonic() - started:.1f}s", flush=True)
        deployment = one(docs, "Deployment", "-gateway")
        # The init container fills the tokenizer volume from the image.
        tokenizer = root / "tokenizer"
        tokenizer.mkdir()
        init = container(deployment, "tokenizer")
        init_pod = _Pod({"/opt/localmoe": image_home, "/tokenizer": tokenizer}, {})
        subprocess.run(init_pod.args(init["command"]), check=True, timeout=60)
        assert (tokenizer / "tiny-moe" / "tokenizer.json").read_bytes() == (
            image_home / "models/tiny-moe/tokenizer.json"
        ).read_bytes()

        spec = container(deployment, "gateway")
        config = root / "config.yaml"
        config.write_text(one(docs, "ConfigMap", "-gateway")["data"]["config.yaml"])
        port = free_port()
        gateway_pod = _Pod({"/etc/localmoe/config.yaml": config}, {"--port": port})
        # Environment beats the config file: the pod's address, and the headless Service's name
        # made `localhost` in the chart's own `dns:///` URL.
        url = yaml.safe_load(config.read_text())["triton"]["urls"][0]
        local_url = re.sub(r"dns:///[^:]+:\d+", f"dns:///localhost:{ports['--grpc-port']}", url)
        env = gateway_pod.env(
            spec,
            docs,
            LOCALMOE_HOST="127.0.0.1",
            LOCALMOE_PORT=str(port),
            LOCALMOE_TRITON__URLS=local_url,
            LOCALMOE_AUTH__DEV_SECRET_FILE=str(root / "jwt-secret"),
        )
        gateway_log = root / "gateway.log"
        gateway = _start(gateway_pod.args(spec["command"]), env, gateway_log)
        base = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            _wait_200(base + spec[probe]["httpGet"]["path"], gateway, gateway_log, timeout=60)
        print(f"chart's gateway command ready in {time.monotonic() - started:.1f}s", flush=True)
        yield {
            "docs": docs,
            "url": base,
            "root": root,
            "config": config,
            "gateway": gateway,
            "triton": triton,
            "metrics": ports["--metrics-port"],
            "grpc": ports["--grpc-port"],
        }
    finally:
        if gateway is not None:
            _stop(gateway)
        _stop(triton)


def test_chart_triton_and_gateway_commands_serve_for_real(chart_stack: dict[str, Any]) -> None:
    metrics = f"http://127.0.0.1:{chart_stack['metrics']}/metrics"
    assert answers_200(metrics) and answers_200(chart_stack["url"] + "/metrics")
    assert chart_stack["gateway"].poll() is None and chart_stack["triton"].poll() is None


@pytest.mark.parametrize("check", ["models", "chat", "stream"])
def test_helm_test_pod_commands_pass_against_the_chart_gateway(
    chart_stack: dict[str, Any], check: str
) -> None:
    docs, root = chart_stack["docs"], chart_stack["root"]
    pod = one(docs, "Pod", f"-test-{check}")
    script = root / "smoke.py"
    script.write_text(one(docs, "ConfigMap", "-tests")["data"]["smoke.py"])
    spec = pod["spec"]["containers"][0]
    runner = _Pod(
        {"/etc/localmoe-tests": root, "/etc/localmoe/config.yaml": chart_stack["config"]}, {}
    )
    command = runner.args(spec["command"])
    command[0] = sys.executable
    command[-1] = chart_stack["url"]  # the gateway Service's address, here
    env = runner.env(spec, docs, LOCALMOE_CONFIG_FILE=str(chart_stack["config"]))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: ")


def test_gateway_dockerfile_command_serves(chart_stack: dict[str, Any], tmp_path: Path) -> None:
    # The image's default command has no config file: the chart's env (its HS256 secret), and
    # the running Triton's address.
    port = free_port()
    pod = _Pod({}, {"--port": port})
    spec = container(one(chart_stack["docs"], "Deployment", "-gateway"), "gateway")
    env = pod.env(
        spec,
        chart_stack["docs"],
        LOCALMOE_TRITON__URLS=f"127.0.0.1:{chart_stack['grpc']}",
        LOCALMOE_AUTH__DEV_SECRET_FILE=str(tmp_path / "secret"),
    )
    log = tmp_path / "gateway.log"
    process = _start(pod.args(_exec_form("gateway.Dockerfile", "CMD")), env, log)
    try:
        _wait_200(f"http://127.0.0.1:{port}/health/ready", process, log, timeout=60)
    finally:
        assert _stop(process) == 0
