"""The KubeRay manifests that k8s/README.md applies are what KubeRay v1.6.2 accepts, as written.

No cluster is needed. Every document the README's `kubectl apply -k` commands bring in is checked
against the CRD schemas in k8s/crds/, including fields a schema does not list (the API server would
silently drop them; tests/k8s_schema.py). The rest checks the job itself: one image name set in one
place and no placeholders, a RayJob that retries and resumes, a runtime_env that is YAML, and an
entrypoint whose sweep ships in the image. Pod-level checks are in test_k8s_pods.py.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests import k8s_docs as docs
from tests.k8s_schema import crd_schema, problems, schema_errors

pytestmark = pytest.mark.unit

K8S = docs.K8S
# Kinds the README's apply commands may create that have no CRD in k8s/crds/ (core Kubernetes types).
CORE_KINDS = {"PersistentVolumeClaim"}
PLACEHOLDERS = re.compile(r"YOUR_|COMMIT_SHA|CHANGE_?ME|example\.com|<[a-z-]+>", re.IGNORECASE)
IMAGE_PROJECT_DIR = "/opt/quantsweep"  # where k8s/Dockerfile puts the project (test_k8s_image.py)


def _images(value: Any) -> list[str]:
    """Every `image` of a container anywhere in a document."""
    if isinstance(value, list):
        return [image for item in value for image in _images(item)]
    if not isinstance(value, dict):
        return []
    own = [value["image"]] if "image" in value and "name" in value else []
    return own + [image for key, sub in value.items() if key != "image" for image in _images(sub)]


def _entrypoint() -> list[str]:
    return shlex.split(docs.one("RayJob")["spec"]["entrypoint"])


# --- what the README applies, against the CRD schemas -------------------------------------------


def test_readme_applies_the_rayjob_or_the_raycluster_with_the_volume() -> None:
    readme = docs.README.read_text(encoding="utf-8")
    assert "kubectl apply -k k8s/rayjob" in readme and "kubectl apply -k k8s/raycluster" in readme
    kinds = sorted(doc["kind"] for _, doc in docs.applied_docs())
    assert kinds == ["PersistentVolumeClaim", "RayCluster", "RayJob"]
    for overlay in ("rayjob", "raycluster"):
        assert docs.kustomization(K8S / overlay)["components"] == ["../common"]


def test_every_applied_manifest_matches_the_kuberay_crds() -> None:
    found = []
    for source, doc in docs.applied_docs():
        if doc["kind"] in CORE_KINDS:
            assert doc["apiVersion"] == "v1", source
            continue
        assert doc["apiVersion"] == "ray.io/v1", source
        found += [f"{source}: {doc['kind']} {doc['metadata']['name']}: {p}" for p in problems(doc)]
    assert not found, "\n".join(found)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (for its built-in kustomize)")
@pytest.mark.parametrize(("overlay", "kind"), [("rayjob", "RayJob"), ("raycluster", "RayCluster")])
def test_kustomize_output_matches_the_kuberay_crds(overlay: str, kind: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    rendered = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    assert sorted(doc["kind"] for doc in rendered) == sorted(["PersistentVolumeClaim", kind])
    (image,) = docs.kustomization(K8S / "common")["images"]
    wanted = f"{image['newName']}:{image['newTag']}"
    for doc in rendered:
        if doc["kind"] == kind:
            assert problems(doc) == [], "\n".join(problems(doc))
            # the image transformer reaches every container, also those nested in a RayJob
            assert set(_images(doc)) == {wanted}


def test_a_misspelt_field_fails_validation() -> None:
    doc = copy.deepcopy(docs.one("RayCluster"))
    container = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["securityContxt"] = container.pop("securityContext")
    # jsonschema alone accepts it (the CRD does not forbid unknown keys); the walk does not
    assert schema_errors(doc, crd_schema("RayCluster")) == []
    assert problems(doc) == [
        "spec.workerGroupSpecs[0].template.spec.containers[0].securityContxt: "
        "unknown field 'securityContxt' (did you mean 'securityContext'?)"
    ]


def test_a_misspelt_rayjob_field_fails_validation() -> None:
    doc = copy.deepcopy(docs.one("RayJob"))
    doc["spec"]["activeDeadlineSecond"] = doc["spec"].pop("activeDeadlineSeconds")
    assert problems(doc) == [
        "spec.activeDeadlineSecond: unknown field 'activeDeadlineSecond' (did you mean 'activeDeadlineSeconds'?)"
    ]


def test_a_wrong_typed_field_fails_validation() -> None:
    doc = copy.deepcopy(docs.one("RayJob"))
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "two"
    assert problems(doc) == [
        "spec.rayClusterSpec.workerGroupSpecs[0].maxReplicas: 'two' is not of type 'integer'"
    ]


def test_a_wrong_enum_value_fails_validation() -> None:
    doc = copy.deepcopy(docs.one("RayCluster"))
    doc["spec"]["autoscalerOptions"]["upscalingMode"] = "Eager"
    assert (
        len(problems(doc)) == 1
        and "spec.autoscalerOptions.upscalingMode: 'Eager' is not one of" in problems(doc)[0]
    )


# --- one image, no placeholders -----------------------------------------------------------------


def test_applied_files_have_no_placeholders() -> None:
    kustomizations = [K8S / name / "kustomization.yaml" for name in ("common", "rayjob", "raycluster")]
    for path in [*docs.applied_files(), *kustomizations]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]  # comments may show a command with <registry>
            assert not PLACEHOLDERS.search(code), f"{path.relative_to(docs.ROOT)}:{number}: {line.strip()}"


def test_one_image_name_set_in_one_place() -> None:
    (image,) = docs.kustomization(K8S / "common")["images"]
    containers = [
        c for _, spec in docs.cluster_specs() for _, pod in docs.pods(spec) for c in pod["containers"]
    ]
    containers += docs.one("RayJob")["spec"]["submitterPodTemplate"]["spec"]["containers"]
    for container in containers:
        assert container["image"].rpartition(":")[0] == image["name"], container["image"]


# --- the RayJob ---------------------------------------------------------------------------------


def test_rayjob_submission_retries_and_deadline() -> None:
    spec = docs.one("RayJob")["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert spec["entrypointNumGpus"] == 0
    # the sweep resumes on rerun, so both the submitter and the whole job may retry
    assert spec["submitterConfig"] == {"backoffLimit": 2}
    assert spec["backoffLimit"] >= 1
    assert isinstance(spec["activeDeadlineSeconds"], int) and 24 * 3600 <= spec["activeDeadlineSeconds"]
    assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"


def test_rayjob_cluster_is_the_standing_cluster() -> None:
    assert docs.one("RayJob")["spec"]["rayClusterSpec"] == docs.one("RayCluster")["spec"]


def test_runtime_env_is_yaml_without_uploads_or_installs() -> None:
    text = docs.one("RayJob")["spec"]["runtimeEnvYAML"]
    assert isinstance(text, str), "runtimeEnvYAML must be a YAML string, not a mapping"
    env: dict[str, Any] = yaml.safe_load(text)
    # the image carries the project and the stack: nothing to upload, nothing to pip-install
    # (pip cannot resolve the compressed-tensors pins of vllm and llmcompressor anyway)
    assert not {"working_dir", "py_modules", "pip", "uv", "conda"} & set(env)
    assert env["env_vars"]["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "env_vars values must be strings"


def test_entrypoint_runs_a_sweep_that_ships_in_the_image() -> None:
    argv = _entrypoint()
    assert argv[:4] == ["python", "-m", "cluster", "run"]
    sweep, overrides = argv[4], argv[5:]
    assert sweep.startswith(IMAGE_PROJECT_DIR + "/sweeps/") and sweep.endswith(".yaml"), sweep
    relative = sweep.removeprefix(IMAGE_PROJECT_DIR + "/")
    assert (docs.ROOT / relative).is_file(), f"entrypoint names {sweep}, but {relative} is not in the repo"
    assert all("=" in arg and not arg.startswith("-") for arg in overrides), overrides


def test_readme_names_the_head_service() -> None:
    readme = docs.README.read_text(encoding="utf-8")
    assert f"svc/{docs.one('RayCluster')['metadata']['name']}-head-svc" in readme
