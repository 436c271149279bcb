"""What deploy/ ships is valid: the Kubernetes manifests against the Kubernetes API's schemas (strict), every
setting they and the Compose file pass is a real config key, and HAProxy accepts its configuration."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cascade.bench.balancer import haproxy_binary
from cascade.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30.0"
NOT_MANIFESTS = {"kustomization.yaml", "redis-cluster-values.yaml"}  # kustomize's and Helm's, not the API's
SECRET_PLACEHOLDERS = {  # what the secrets hold, in a valid form
    "REDIS_URL": "redis-cluster://redis-cluster:6379",
    "CASCADE_PRIVACY__PSEUDONYM_KEY": "a-pseudonym-key-of-at-least-16-bytes",
}


def _manifests() -> list[tuple[str, dict]]:
    return [
        (f"{path.name}#{i}", document)
        for path in sorted(K8S.glob("*.yaml"))
        if path.name not in NOT_MANIFESTS
        for i, document in enumerate(yaml.safe_load_all(path.read_text()))
        if document
    ]


@pytest.mark.parametrize("name, manifest", _manifests(), ids=[name for name, _ in _manifests()])
def test_each_manifest_is_valid_kubernetes(name, manifest):
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_kustomization_applies_every_manifest():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {path.name for path in K8S.glob("*.yaml")} - NOT_MANIFESTS


def _containers() -> list[tuple[str, dict]]:
    found = []
    for name, manifest in _manifests():
        spec = manifest.get("spec", {}).get("template", {}).get("spec", {})
        found += [(f"{name}/{container['name']}", container) for container in spec.get("containers", [])]
    return found


def _load_config_with(environment: dict[str, str], monkeypatch) -> None:
    for key in [key for key in __import__("os").environ if key.startswith("CASCADE_") or key == "REDIS_URL"]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    load_config()  # an unknown CASCADE_ key or a bad value is refused, naming it


def test_every_setting_the_manifests_pass_is_a_config_key_and_the_probes_reach_named_ports(
    monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)  # no cascade.toml of the checkout's
    containers = _containers()
    assert {name.split("/")[1] for name, _ in containers} == {"cascade", "features-load"}
    for _, container in containers:
        environment = {
            item["name"]: item.get("value", SECRET_PLACEHOLDERS.get(item["name"], ""))
            for item in container.get("env", [])
        }
        _load_config_with(environment, monkeypatch)
        ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                check = container[probe].get("grpc") or container[probe].get("httpGet")
                assert check["port"] in ports or check["port"] in ports.values(), (probe, check)
        if "grpc" in ports:
            assert environment["CASCADE_SERVING__PORT"] == str(ports["grpc"])
            assert environment["CASCADE_SERVING__METRICS_PORT"] == str(ports["metrics"])


def test_the_compose_file_passes_real_config_keys_and_its_balancer_config_is_accepted(monkeypatch, tmp_path):
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    monkeypatch.chdir(tmp_path)
    for name in ("features", "cascade"):
        environment = {key: str(value) for key, value in services[name]["environment"].items()}
        environment["CASCADE_PRIVACY__PSEUDONYM_KEY_FILE"] = str(tmp_path / "pseudonym.key")
        _load_config_with(environment, monkeypatch)
    balancer = services["balancer"]
    files = [
        DEPLOY / "haproxy" / Path(argument).name
        for argument in balancer["command"]
        if argument.endswith(".cfg")
    ]
    assert [path.name for path in files] == ["haproxy.cfg", "servers-compose.cfg"]
    check = subprocess.run(
        [haproxy_binary(), "-c", *(argument for path in files for argument in ("-f", str(path)))],
        env={key: str(value) for key, value in balancer["environment"].items()},
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
