"""The KubeRay manifests in k8s/ load, agree with each other and with the repo they deploy.

No cluster is needed: each manifest is parsed with PyYAML and checked for the structure KubeRay
(`ray.io/v1`) and Kubernetes act on: GPU requests equal to limits, a GPU-free head, a runtime_env
that is itself YAML, an entrypoint whose sweep file exists, and a Ray version equal to the pinned one.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
GPU = "nvidia.com/gpu"


def _load(name: str) -> list[dict[str, Any]]:
    with open(K8S / name, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _one(name: str, kind: str) -> dict[str, Any]:
    docs = [doc for doc in _load(name) if doc.get("kind") == kind]
    assert len(docs) == 1, f"k8s/{name}: expected one {kind}, found {len(docs)}"
    return docs[0]


def _raycluster() -> dict[str, Any]:
    return _one("raycluster.yaml", "RayCluster")


def _rayjob() -> dict[str, Any]:
    return _one("rayjob.yaml", "RayJob")


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    return [("RayCluster", _raycluster()["spec"]), ("RayJob", _rayjob()["spec"]["rayClusterSpec"])]


def _pods(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(group name, pod spec) for the head and every worker group."""
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return pods


def _pinned_ray_version() -> str:
    text = (ROOT / "requirements" / "cpu.in").read_text(encoding="utf-8")
    match = re.search(r"^ray\[[^\]]*\]==(\S+)", text, flags=re.MULTILINE)
    assert match, "requirements/cpu.in does not pin ray[...]==X"
    return match.group(1)


def _runtime_env() -> dict[str, Any]:
    text = _rayjob()["spec"]["runtimeEnvYAML"]
    assert isinstance(text, str), "runtimeEnvYAML must be a YAML string, not a mapping"
    env = yaml.safe_load(text)
    assert isinstance(env, dict)
    return env


def _entrypoint() -> list[str]:
    return shlex.split(_rayjob()["spec"]["entrypoint"])


@pytest.mark.parametrize(
    ("name", "kinds"),
    [
        ("raycluster.yaml", ["RayCluster"]),
        ("rayjob.yaml", ["RayJob"]),
        ("pvc.yaml", ["PersistentVolumeClaim"]),
    ],
)
def test_manifest_kinds_and_api_versions(name: str, kinds: list[str]) -> None:
    docs = _load(name)
    assert [doc["kind"] for doc in docs] == kinds
    for doc in docs:
        expected = "v1" if doc["kind"] == "PersistentVolumeClaim" else "ray.io/v1"
        assert doc["apiVersion"] == expected
        assert doc["metadata"]["name"]


def test_rayjob_submission_settings() -> None:
    spec = _rayjob()["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert spec["submitterConfig"] == {"backoffLimit": 2}
    assert spec["entrypointNumGpus"] == 0


def test_rayjob_cluster_is_the_standing_cluster() -> None:
    assert _rayjob()["spec"]["rayClusterSpec"] == _raycluster()["spec"]


def test_runtime_env_is_yaml_with_working_dir_and_no_pip() -> None:
    env = _runtime_env()
    assert re.match(r"^(https|s3|gs)://.+\.zip$", env["working_dir"]), "RayJob needs a remote zip URI"
    # pip cannot resolve the compressed-tensors pins of vllm and llmcompressor: the image carries the stack
    assert "pip" not in env
    assert env["env_vars"]["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "env_vars values must be strings"


def test_entrypoint_runs_a_sweep_that_exists() -> None:
    argv = _entrypoint()
    assert argv[:4] == ["python", "-m", "cluster", "run"]
    sweep, overrides = argv[4], argv[5:]
    assert sweep.startswith("sweeps/") and sweep.endswith(".yaml")
    assert (ROOT / sweep).is_file(), f"entrypoint names {sweep}, which is not in the repo"
    assert all("=" in arg and not arg.startswith("-") for arg in overrides), overrides


def test_output_root_is_the_shared_volume() -> None:
    overrides = dict(arg.split("=", 1) for arg in _entrypoint()[5:])
    pvc = _one("pvc.yaml", "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for kind, spec in _cluster_specs():
        for group, pod in _pods(spec):
            claims = {
                v["name"]: v["persistentVolumeClaim"]["claimName"]
                for v in pod.get("volumes", [])
                if "persistentVolumeClaim" in v
            }
            mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
            where = f"{kind} {group}"
            assert claims.get(mounts.get(overrides["output_root"])) == pvc["metadata"]["name"], where


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_head_has_no_gpu(kind: str) -> None:
    head = dict(_cluster_specs())[kind]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    for container in head["template"]["spec"]["containers"]:
        resources = container["resources"]
        assert GPU not in resources.get("requests", {}) and GPU not in resources.get("limits", {})
        assert {"cpu", "memory"} <= set(resources["requests"])
        assert {"cpu", "memory"} <= set(resources["limits"])


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_gpu_worker_groups(kind: str) -> None:
    spec = dict(_cluster_specs())[kind]
    assert spec["enableInTreeAutoscaling"] is True
    groups = spec["workerGroupSpecs"]
    assert len(groups) >= 2
    for group in groups:
        name = group["groupName"]
        assert 0 == group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], name
        pod = group["template"]["spec"]
        assert pod.get("nodeSelector") and pod.get("tolerations"), name
        for container in pod["containers"]:
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert GPU in requests and GPU in limits, name
            assert str(requests[GPU]) == str(limits[GPU]) and int(limits[GPU]) > 0, name
            assert "/dev/shm" in {m["mountPath"] for m in container["volumeMounts"]}, name
        shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        assert shm, f"{name}: vLLM needs a memory-backed /dev/shm"


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_ray_start_params_are_strings(kind: str) -> None:
    spec = dict(_cluster_specs())[kind]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values())


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_ray_version_matches_pin_and_images(kind: str) -> None:
    version = _pinned_ray_version()
    spec = dict(_cluster_specs())[kind]
    assert spec["rayVersion"] == version
    for group, pod in _pods(spec):
        for container in pod["containers"]:
            tag = container["image"].rpartition(":")[2]
            assert version in tag, f"{group}: image {container['image']} is not tagged Ray {version}"


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_hf_token_is_optional_secret(kind: str) -> None:
    for group, pod in _pods(dict(_cluster_specs())[kind]):
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            ref = env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "hf-token" and ref["optional"] is True, group


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_every_ray_pod_gets_the_serve_ingress_switches(kind: str) -> None:
    from serve.app import HAPROXY_ENV

    for group, pod in _pods(dict(_cluster_specs())[kind]):
        for container in pod["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert {k: env.get(k) for k in HAPROXY_ENV} == HAPROXY_ENV, group


def test_readme_names_the_head_service() -> None:
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    assert f"svc/{_raycluster()['metadata']['name']}-head-svc" in readme
    assert "kubectl apply -f k8s/pvc.yaml -f k8s/rayjob.yaml" in readme
