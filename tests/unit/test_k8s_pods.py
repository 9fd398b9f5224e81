"""The Ray pods that k8s/README.md applies: hardened, GPU groups Ray can place cells on, a code sandbox.

Checked for the RayCluster and the RayJob alike (their cluster specs are equal): every pod runs
non-root with no capabilities, no privilege escalation and the default seccomp profile, and mounts a
service account token only where the autoscaler needs it; every Ray container carries the variables
Ray Serve reads in every process; each GPU group advertises the accelerator type Ray gives its GPU
(`accelerator_type:RTX-A6000` for the A6000); the `code-sandbox` group runs under gVisor with neither
secrets nor the results volume. Also: GPU requests, /dev/shm, a GPU-free head, the Ray version pin.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest

from tests import k8s_docs as docs

pytestmark = pytest.mark.unit

GPU = "nvidia.com/gpu"
KINDS = ["RayCluster", "RayJob"]
PRODUCT_LABEL = "nvidia.com/gpu.product"


def _spec(kind: str) -> dict[str, Any]:
    return dict(docs.cluster_specs())[kind]


def _gpu_groups(kind: str) -> list[dict[str, Any]]:
    return [g for g in _spec(kind)["workerGroupSpecs"] if not docs.is_sandbox(g)]


def _sandbox(kind: str) -> dict[str, Any]:
    (group,) = [g for g in _spec(kind)["workerGroupSpecs"] if docs.is_sandbox(g)]
    return group


def _ray_accelerator_type(gpu_name: str) -> str | None:
    """The accelerator type Ray derives from a GPU's name (`NVIDIA RTX A6000` -> `RTX-A6000`)."""
    from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager

    return NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(gpu_name)


def _accelerator_types(group: dict[str, Any]) -> list[str]:
    return [k.split(":", 1)[1] for k in group.get("resources", {}) if k.startswith("accelerator_type:")]


def _entrypoint() -> list[str]:
    return shlex.split(docs.one("RayJob")["spec"]["entrypoint"])


def _all_pods() -> list[tuple[str, dict[str, Any]]]:
    """Every pod template that runs: the Ray pods of both manifests and the RayJob's submitter."""
    found = [
        (f"{kind} {group}", pod) for kind, spec in docs.cluster_specs() for group, pod in docs.pods(spec)
    ]
    return [*found, ("RayJob submitter", docs.one("RayJob")["spec"]["submitterPodTemplate"]["spec"])]


# --- hardening ----------------------------------------------------------------------------------


def test_every_pod_runs_non_root_with_the_default_seccomp_profile() -> None:
    for where, pod in _all_pods():
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0, where
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
        assert not [v for v in pod.get("volumes", []) if "hostPath" in v], where


def test_every_container_drops_all_capabilities_and_cannot_escalate() -> None:
    autoscaler = [("autoscaler", spec["autoscalerOptions"]) for _, spec in docs.cluster_specs()]
    containers = [(where, c) for where, pod in _all_pods() for c in pod["containers"]] + autoscaler
    for where, container in containers:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False, where
        assert ctx["capabilities"] == {"drop": ["ALL"]}, where
        assert not ctx.get("privileged"), where


def test_only_the_head_mounts_a_service_account_token() -> None:
    for where, pod in _all_pods():
        # the head's autoscaler sidecar scales the cluster through the Kubernetes API
        expected = where.endswith(" head")
        assert pod["automountServiceAccountToken"] is expected, where


# --- what every Ray process reads ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_ray_pod_gets_the_serve_variables(kind: str) -> None:
    from serve.app import ray_env

    wanted = ray_env("haproxy")
    assert {"RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"} <= set(wanted)
    for group, pod in docs.pods(_spec(kind)):
        for container in pod["containers"]:
            env = {name: e.get("value") for name, e in docs.env(container).items()}
            assert {k: env.get(k) for k in wanted} == wanted, group


@pytest.mark.parametrize("kind", KINDS)
def test_pods_that_download_models_get_the_optional_tokens_and_the_shared_volume(kind: str) -> None:
    pvc = docs.one("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    output_root = dict(arg.split("=", 1) for arg in _entrypoint()[5:])["output_root"]
    for name, group in docs.groups(_spec(kind)):
        if docs.is_sandbox(group):
            continue
        pod = group["template"]["spec"]
        for container in pod["containers"]:
            env = docs.env(container)
            ref = env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "hf-token" and ref["optional"] is True, name
            key = env["QS_SERVE_API_KEY"]["valueFrom"]["secretKeyRef"]  # serve.api_key_env names it
            assert (key["name"], key["key"], key["optional"]) == ("quantsweep-serve", "api_key", True), name
            assert env["HF_HOME"]["value"].startswith(output_root + "/"), name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in volumes}
            assert claims.get(mounts.get(output_root)) == pvc["metadata"]["name"], name


# --- head and GPU groups ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_head_has_no_gpu_and_no_cpus_to_schedule(kind: str) -> None:
    head = _spec(kind)["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0" and head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    for container in head["template"]["spec"]["containers"]:
        resources = container["resources"]
        assert GPU not in resources.get("requests", {}) and GPU not in resources.get("limits", {})
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(
            resources["limits"]
        )


@pytest.mark.parametrize("kind", KINDS)
def test_gpu_worker_groups(kind: str) -> None:
    spec = _spec(kind)
    assert spec["enableInTreeAutoscaling"] is True
    assert len(_gpu_groups(kind)) >= 3
    for group in spec["workerGroupSpecs"]:
        assert 0 == group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], group[
            "groupName"
        ]
    for group in _gpu_groups(kind):
        name, pod = group["groupName"], group["template"]["spec"]
        assert pod.get("nodeSelector", {}).get(PRODUCT_LABEL) and pod.get("tolerations"), name
        for container in pod["containers"]:
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert str(requests[GPU]) == str(limits[GPU]) and int(limits[GPU]) > 0, name
            assert "/dev/shm" in {m["mountPath"] for m in container["volumeMounts"]}, name
        shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        assert shm, f"{name}: vLLM needs a memory-backed /dev/shm"


@pytest.mark.parametrize("kind", KINDS)
def test_each_gpu_group_advertises_the_accelerator_type_ray_gives_its_gpu(kind: str) -> None:
    for group in _gpu_groups(kind):
        # GPU feature discovery's product label is the GPU's name with '-' for ' '
        product = group["template"]["spec"]["nodeSelector"][PRODUCT_LABEL]
        assert _accelerator_types(group) == [_ray_accelerator_type(product.replace("-", " "))], group[
            "groupName"
        ]
        assert group["resources"] == {f"accelerator_type:{_accelerator_types(group)[0]}": "1"}
        # KubeRay refuses resources set both here and in rayStartParams
        assert not {"num-cpus", "num-gpus", "memory", "resources"} & set(group.get("rayStartParams", {}))
    assert {t for g in _gpu_groups(kind) for t in _accelerator_types(g)} >= {"H100", "A100", "RTX-A6000"}


def test_every_gpu_in_conf_hardware_has_a_group() -> None:
    from cluster.config.loader import load_catalog

    offered = {t for g in _gpu_groups("RayCluster") for t in _accelerator_types(g)}
    for name, hw in load_catalog().hardware.items():
        if hw.kind != "gpu":
            continue
        wanted = hw.accelerator_type or _ray_accelerator_type(hw.device)
        assert wanted == _ray_accelerator_type(hw.device), f"conf/hardware.yaml {name}: {wanted}"
        assert wanted in offered, f"conf/hardware.yaml {name} ({hw.device} -> {wanted}) has no worker group"


# --- the code sandbox ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_code_sandbox_group_runs_under_gvisor_with_nothing_to_steal(kind: str) -> None:
    group = _sandbox(kind)
    pod = group["template"]["spec"]
    # only work that asks for code_sandbox lands here: the group offers Ray no CPUs of its own
    assert group["resources"]["CPU"] == "0" and int(group["resources"][docs.SANDBOX]) >= 1
    assert pod["runtimeClassName"] == "gvisor"
    assert pod["automountServiceAccountToken"] is False
    assert not [v for v in pod.get("volumes", []) if set(v) - {"name", "emptyDir"}], "only scratch volumes"
    for container in pod["containers"]:
        assert GPU not in container["resources"]["limits"]
        secrets = {"HF_TOKEN", "HF_HOME", "QS_SERVE_API_KEY"}
        assert not secrets & set(docs.env(container)), "no secrets, no model cache"
        assert not container.get("envFrom") and not container.get("volumeMounts")


@pytest.mark.parametrize("kind", KINDS)
def test_ray_version_matches_pin_and_images(kind: str) -> None:
    text = (docs.ROOT / "requirements" / "cpu.in").read_text(encoding="utf-8")
    match = re.search(r"^ray\[[^\]]*\]==(\S+)", text, flags=re.MULTILINE)
    assert match, "requirements/cpu.in does not pin ray[...]==X"
    spec = _spec(kind)
    assert spec["rayVersion"] == match.group(1)
    for group, pod in docs.pods(spec):
        for container in pod["containers"]:
            assert f"ray{match.group(1)}" in container["image"].rpartition(":")[2], (
                f"{group}: {container['image']}"
            )


@pytest.mark.parametrize("kind", KINDS)
def test_ray_start_params_are_strings(kind: str) -> None:
    for group, spec in docs.groups(_spec(kind)):
        assert all(isinstance(v, str) for v in spec.get("rayStartParams", {}).values()), group
        assert all(isinstance(v, str) for v in spec.get("resources", {}).values()), group
