"""k8s/ offline: every overlay and job built (tests/kustomize.py) and validated strictly — ray.io
and milvus.io kinds against the CRD schemas in ../shared/k8s-schemas (a field a schema does not
declare fails), core kinds with kubernetes-validate; the generated manifests are what
`ragtune k8s render` makes from serve_configs/ and jobs/configs/; the security rules; the
Dockerfiles' pins."""

import math
import re
import shutil
import tomllib
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ragtune.k8s import render
from tests.conftest import REPO
from tests.kustomize import CLUSTER_SCOPED, build

K8S = REPO / "k8s"
SCHEMAS = REPO.parent / "shared" / "k8s-schemas"
CRDS = {("ray.io", kind): SCHEMAS / "kuberay-v1.7.0" / f"ray.io_{kind.lower()}s.yaml" for kind in ("RayJob", "RayService", "RayCluster")}
CRDS[("milvus.io", "Milvus")] = SCHEMAS / "milvus-operator-v1.3.8" / "milvus.io_milvuses.yaml"
KUBERNETES = "1.33"
OVERLAYS = ["dev", "gpu", "production"]
JOB_DIRS = sorted(p.parent for p in K8S.glob("overlays/*/jobs/*/kustomization.yaml"))
RAY_PORTS = {6379, 8265, 10001}


def _closed(schema):
    """A CRD's OpenAPI schema with every object that declares properties closed to others."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_closed(v) for v in schema]
    return schema


@cache
def _crd_validator(group: str, kind: str, version: str):
    if not SCHEMAS.is_dir():
        pytest.fail(f"{SCHEMAS} not found: the k8s tests need ../shared beside the repository")
    crd = yaml.safe_load(CRDS[(group, kind)].read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(_closed(served["schema"]["openAPIV3Schema"]))


def validate(obj: dict) -> None:
    group, _, version = obj["apiVersion"].rpartition("/")
    if (group, obj["kind"]) in CRDS:
        errors = sorted(_crd_validator(group, obj["kind"], version).iter_errors(obj), key=str)
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])
    else:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


@cache
def built(directory: Path) -> tuple:
    return tuple(build(directory))


def everything() -> list[dict]:
    return [o for d in [*(K8S / "overlays" / o for o in OVERLAYS), *JOB_DIRS] for o in built(d)]


def ray_clusters(objects) -> list[tuple[str, dict]]:
    """(name, RayCluster spec) of every RayService and RayJob."""
    out = []
    for o in objects:
        if o["kind"] == "RayService":
            out.append((o["metadata"]["name"], o["spec"]["rayClusterConfig"]))
        elif o["kind"] == "RayJob":
            out.append((o["metadata"]["name"], o["spec"]["rayClusterSpec"]))
    return out


def pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]


def test_the_generated_manifests_are_what_the_configs_render(tmp_path):
    assert render(check=True) == [], "run `ragtune k8s render` and commit the result"
    # a changed config is caught: two more training workers need another GPU node
    for part in ("serve_configs", "jobs/configs", "k8s"):
        shutil.copytree(REPO / part, tmp_path / part)
    config = tmp_path / "jobs/configs/train_gpu_multinode_zero3.yaml"
    config.write_text(config.read_text().replace("num_workers: 16", "num_workers: 18"))
    changed = render(tmp_path)
    assert changed == [tmp_path / "k8s/overlays/gpu/jobs/train/rayjob.yaml"]
    job = yaml.safe_load(changed[0].read_text().split("\n", 1)[1])
    assert job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 3
    assert render(tmp_path, check=True) == []


@pytest.mark.parametrize("directory", [K8S / "overlays" / o for o in OVERLAYS] + JOB_DIRS,
                         ids=lambda p: str(p.relative_to(K8S)))
def test_every_overlay_and_job_builds_and_validates_strictly(directory):
    objects = built(directory)
    assert objects
    for obj in objects:
        validate(obj)
        assert obj["metadata"].get("namespace") == "ragtune" or obj["kind"] in CLUSTER_SCOPED
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ragtune"
    images = {c["image"] for _, spec in ray_clusters(objects) for t in pod_templates(spec) for c in t["spec"]["containers"]}
    tag = r"@sha256:[0-9a-f]{64}" if "production" in directory.parts else r":0\.1\.0-(cpu|cuda)"
    assert images and all(re.fullmatch(r"ghcr.io/your-org/ragtune" + tag, i) for i in images), images


def test_strict_validation_catches_a_misspelt_field_and_the_milvus_resource_is_valid():
    job = yaml.safe_load((K8S / "overlays/dev/jobs/train/rayjob.yaml").read_text())
    job["spec"]["shutdownAfterJobFinish"] = True  # the real field ends in -es
    with pytest.raises(AssertionError, match="shutdownAfterJobFinish"):
        validate(job)
    service = yaml.safe_load((K8S / "overlays/dev/rayservice.yaml").read_text())
    service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(AssertionError, match="resource"):
        validate(service)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate({**yaml.safe_load((K8S / "base/shared-volume.yaml").read_text()), "spec": {"accesModes": []}})
    for obj in yaml.safe_load_all((K8S / "milvus/milvus-cluster.yaml").read_text()):
        validate(obj)


def test_every_ray_cluster_authenticates_and_exposes_nothing_outside():
    objects = everything()
    for name, spec in ray_clusters(objects):
        assert spec["authOptions"] == {"mode": "token", "secretName": "ragtune-ray-token"}, name
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", name
        # only the head (its autoscaler sidecar) gets a Kubernetes API token
        assert spec["enableInTreeAutoscaling"] and "automountServiceAccountToken" not in pod_templates(spec)[0]["spec"]
        assert all(t["spec"]["automountServiceAccountToken"] is False for t in pod_templates(spec)[1:]), name
    for o in objects:
        assert o["kind"] not in ("Ingress", "Secret"), f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "Service":
            assert o["spec"].get("type", "ClusterIP") == "ClusterIP"
        if o["kind"] == "RayService" and "serveService" in o["spec"]:
            assert o["spec"]["serveService"]["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_credentials_come_only_from_secret_refs():
    secretive = re.compile(r"TOKEN|PASSWORD|SECRET|API_KEY|ACCESS_KEY", re.I)
    found = 0

    def walk(node, where):
        nonlocal found
        if isinstance(node, dict):
            if "name" in node and ("value" in node or "valueFrom" in node) and secretive.search(str(node["name"])):
                assert "value" not in node and "secretKeyRef" in node["valueFrom"], f"{where}: {node['name']}"
                found += 1
            if "redisPassword" in node:
                assert set(node["redisPassword"]) == {"valueFrom"} and "secretKeyRef" in node["redisPassword"]["valueFrom"]
                found += 1
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    for o in everything():
        walk(o, f"{o['kind']}/{o['metadata']['name']}")
    assert found > 20  # the API key, Milvus token, S3 keys, Ray token of the submitters, Redis password
    for values in (K8S / "milvus").glob("values-*.yaml"):
        text = values.read_text()
        assert not re.search(r"(?im)^\s*(password|secretKey|accessKey|rootPassword)\s*:\s*\S", text), values


def test_a_network_policy_guards_every_cluster():
    for directory in [*(K8S / "overlays" / o for o in OVERLAYS), *JOB_DIRS]:
        objects = built(directory) + (built(K8S / "overlays" / directory.parts[-3]) if "jobs" in directory.parts else ())
        policies = {p["spec"]["podSelector"]["matchLabels"]["ragtune.io/cluster"]: p
                    for p in objects if p["kind"] == "NetworkPolicy"}
        for name, spec in ray_clusters(built(directory)):
            for template in pod_templates(spec):
                assert template["metadata"]["labels"]["ragtune.io/cluster"] == name
            policy = policies[name]
            assert policy["spec"]["policyTypes"] == ["Ingress"]
            for rule in policy["spec"]["ingress"]:
                peers = rule["from"]
                own = peers == [{"podSelector": {"matchLabels": {"ragtune.io/cluster": name}}}]
                ports = {p["port"] for p in rule.get("ports", [])}
                # only the cluster's own pods reach every port; others get the dashboard (the
                # operator) or the API, never GCS or the client port
                assert own or (ports and not ports & {6379, 10001}), (name, rule)


def test_the_service_monitor_scrapes_every_overlays_serve_service_with_the_read_key():
    """No prometheus-operator CRD schema is in ../shared, so the ServiceMonitor's fields are held to
    the ones its API documents for what we use, and every name in it to what it must match."""
    (monitor,) = build(K8S / "monitoring")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "authorization"}
    assert endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"
    assert endpoint["authorization"]["type"] == "Bearer" and set(endpoint["authorization"]) == {"type", "credentials"}
    for overlay in OVERLAYS:
        objects = built(K8S / "overlays" / overlay)
        (service,) = [o for o in objects if o["kind"] == "RayService"]
        name = service["metadata"]["name"]
        # the labels KubeRay puts on the serve Service it makes for a RayService (common/service.go)
        serve_svc_labels = {"ray.io/serve": f"{name}-serve", "ray.io/originated-from-cr-name": name,
                            "ray.io/originated-from-crd": "RayService"}
        assert monitor["spec"]["selector"]["matchLabels"].items() <= serve_svc_labels.items()
        assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]  # where the secret is
        head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert {"containerPort": 8000, "name": endpoint["port"]} in head["ports"]
        (key,) = [e for e in head["env"] if e["name"] == "RAGTUNE_API_KEY"]
        assert endpoint["authorization"]["credentials"] == {k: key["valueFrom"]["secretKeyRef"][k] for k in ("name", "key")}
        (policy,) = [p for p in objects if p["kind"] == "NetworkPolicy" and p["metadata"]["name"] == name]
        assert {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
                "ports": [{"protocol": "TCP", "port": 8000}]} in policy["spec"]["ingress"]


def test_gpu_workers_request_gpus_tolerate_the_taint_and_get_shared_memory():
    for directory in [K8S / "overlays/gpu", *(d for d in JOB_DIRS if "gpu" in d.parts)]:
        for name, spec in ray_clusters(built(directory)):
            assert "nvidia.com/gpu" not in str(spec["headGroupSpec"])
            (group,) = spec["workerGroupSpecs"]
            assert group["minReplicas"] == 1 and group["maxReplicas"] == 8
            pod = group["template"]["spec"]
            resources = pod["containers"][0]["resources"]
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 8
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            shm = [v for v in pod["volumes"] if v["name"] == "dshm"][0]
            assert shm["emptyDir"]["medium"] == "Memory"
            assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    train = yaml.safe_load((REPO / "jobs/configs/train_gpu_multinode_zero3.yaml").read_text())["train"]
    (_, spec), = ray_clusters(built(K8S / "overlays/gpu/jobs/train"))
    assert spec["workerGroupSpecs"][0]["replicas"] == math.ceil(train["num_workers"] / 8)
    for directory in [K8S / "overlays/dev", *(d for d in JOB_DIRS if "dev" in d.parts)]:
        assert "nvidia.com/gpu" not in str(built(directory))
    (service,) = [o for o in built(K8S / "overlays/production") if o["kind"] == "RayService"]
    gcs = service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert gcs["redisAddress"].endswith(":6379") and gcs["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "ragtune-redis"
    assert service["spec"]["upgradeStrategy"] == {"type": "NewCluster"}


def test_jobs_limits_and_entrypoints():
    for directory in JOB_DIRS:
        (job,) = built(directory)
        s = job["spec"]
        assert s["shutdownAfterJobFinishes"] is True and s["ttlSecondsAfterFinished"] > 0
        assert s["activeDeadlineSeconds"] >= 3600 and 0 <= s["backoffLimit"] <= 3
        assert yaml.safe_load(s["runtimeEnvYAML"]) == {"working_dir": "/home/ray/ragtune"}
        config = re.fullmatch(r"python jobs/(\w+)\.py (jobs/configs/\S+\.yaml)", s["entrypoint"])
        assert config and config[1] == directory.name and (REPO / config[2]).is_file(), s["entrypoint"]


def test_the_rayservice_runs_the_serve_config_it_was_rendered_from():
    from ray.serve.schema import ServeDeploySchema

    for overlay, source, collection in (("dev", "local.yaml", "quickstart"), ("gpu", "gpu.yaml", None),
                                        ("production", "gpu.yaml", None)):
        (service,) = [o for o in built(K8S / "overlays" / overlay) if o["kind"] == "RayService"]
        config = yaml.safe_load(service["spec"]["serveConfigV2"])
        ServeDeploySchema.model_validate(config)
        applications = yaml.safe_load((REPO / "serve_configs" / source).read_text())["applications"]
        for app in applications:  # on Kubernetes both keys are always required; no loopback trust
            serve = app["args"].setdefault("serve", {})
            serve.update(api_key_env="RAGTUNE_API_KEY", admin_key_env="RAGTUNE_ADMIN_KEY")
            serve.pop("local_documents_api", None)
            serve.pop("allowed_hosts", None)
            if collection:  # the dev cluster serves the collection its ingest job fills
                app["args"].setdefault("milvus", {})["collection"] = collection
        assert config["applications"] == applications
        assert config["http_options"]["host"] == "0.0.0.0" and config["http_options"]["port"] == 8000
        head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert {"containerPort": 8000, "name": "serve"} in head["ports"]


def test_dockerfiles_pin_what_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = {re.split(r"[=<>\[ ]", d)[0]: d for d in project["project"]["dependencies"]}
    torch = pins["torch"].split("==")[1]
    ray = re.search(r"==([\d.]+)", pins["ray"])[1]
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (K8S / "docker" / name).read_text()
        assert f"FROM rayproject/ray:{ray}-py311-" in text and f"ARG TORCH_VERSION={torch}" in text
        first_torch = text.index('"torch==${TORCH_VERSION}"')
        assert first_torch < re.search(r'pip install --no-cache-dir "?\.', text).start(), "torch goes in before ragtune"
        for package in project["tool"]["ragtune"]["install-without-deps"]:
            assert f'--no-deps "{package}"' in text
    assert "[vllm" in (K8S / "docker/Dockerfile.cuda").read_text()


def _restricted_violations(pod: dict, autoscaler: dict | None = None) -> list[str]:
    """Kubernetes Pod Security Standards, "restricted" profile (v1.33), for one pod spec."""
    found = []
    spec_ctx = pod.get("securityContext", {})
    containers = [*pod["containers"], *pod.get("initContainers", [])]
    if autoscaler is not None:  # KubeRay's sidecar of the head, configured in the RayCluster spec
        containers.append({"name": "autoscaler", "securityContext": autoscaler})
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            found.append(f"volume {volume['name']}: {kinds}")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        found.append("host namespaces")
    for c in containers:
        ctx = c.get("securityContext", {})
        merged = {**spec_ctx, **ctx}
        if merged.get("runAsNonRoot") is not True or merged.get("runAsUser", 1) == 0:
            found.append(f"{c['name']}: runAsNonRoot")
        if ctx.get("allowPrivilegeEscalation") is not False or ctx.get("privileged"):
            found.append(f"{c['name']}: allowPrivilegeEscalation")
        if "ALL" not in ctx.get("capabilities", {}).get("drop", []) or set(ctx.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{c['name']}: capabilities")
        if merged.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{c['name']}: seccompProfile")
        if ctx.get("readOnlyRootFilesystem") is not True:
            found.append(f"{c['name']}: readOnlyRootFilesystem")  # not in the profile; ragtune's own rule
        for port in c.get("ports", []):
            if "hostPort" in port:
                found.append(f"{c['name']}: hostPort")
    return found


def test_every_pod_meets_pod_security_restricted_with_a_read_only_root():
    pods = 0
    for o in everything():
        if o["kind"] not in ("RayService", "RayJob"):
            continue
        spec = o["spec"]["rayClusterConfig"] if o["kind"] == "RayService" else o["spec"]["rayClusterSpec"]
        templates = [(t, None) for t in pod_templates(spec)[1:]]
        templates.append((pod_templates(spec)[0], spec["autoscalerOptions"]["securityContext"]))
        if o["kind"] == "RayJob":
            templates.append((o["spec"]["submitterPodTemplate"], None))
        for template, autoscaler in templates:
            assert _restricted_violations(template["spec"], autoscaler) == [], (o["kind"], o["metadata"]["name"])
            mounts = {m["mountPath"] for c in template["spec"]["containers"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts  # where Ray (and the submitter's working_dir zip) writes
            pods += 1
    assert pods >= 30
    broken = yaml.safe_load((K8S / "overlays/dev/rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    worker = pod_templates(broken)[1]["spec"]
    worker["containers"][0]["securityContext"].pop("capabilities")
    worker["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert _restricted_violations(worker) == ["volume host: {'hostPath'}", "ray-worker: capabilities"]


def test_production_refuses_an_image_given_by_a_mutable_tag(tmp_path):
    from ragtune.preflight import check_pinned_images

    production = K8S / "overlays/production"
    assert check_pinned_images(production) == []
    policies = {o["kind"]: o for o in built(production) if o["kind"].startswith("ValidatingAdmissionPolicy")}
    policy, binding = policies["ValidatingAdmissionPolicy"], policies["ValidatingAdmissionPolicyBinding"]
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["pods"]
    assert "@sha256:[0-9a-f]{64}$" in policy["spec"]["validations"][0]["expression"]
    assert binding["spec"]["validationActions"] == ["Deny"] and binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ragtune"}
    shutil.copytree(production, tmp_path / "production")
    kustomization = tmp_path / "production" / "kustomization.yaml"
    k = yaml.safe_load(kustomization.read_text())
    k["images"] = [{"name": "ghcr.io/your-org/ragtune", "newTag": "latest"}]
    kustomization.write_text(yaml.safe_dump(k))
    (problem,) = check_pinned_images(tmp_path / "production")
    assert "image ghcr.io/your-org/ragtune is given by tag 'latest'" in problem and "digest: sha256:" in problem
