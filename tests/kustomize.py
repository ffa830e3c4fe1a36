"""`kustomize build` in Python for the offline tests: the subset of kustomize that k8s/ uses
(resources, components, namespace, labels, images, JSON 6902 patches with a target). A
kustomization using anything else fails here, so the manifests stay within what this checks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

KNOWN = {"apiVersion", "kind", "resources", "components", "namespace", "labels", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def _read(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def build(directory: Path) -> list[dict[str, Any]]:
    """The objects `kustomize build directory` emits (order: resources, then components' effects)."""
    k = _read(directory / "kustomization.yaml")[0]
    unknown = set(k) - KNOWN
    if unknown:
        raise ValueError(f"{directory}/kustomization.yaml uses {sorted(unknown)}, which tests/kustomize.py does not build")
    objects: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects += build(path)
        elif directory.resolve() in path.parents:
            objects += [copy.deepcopy(o) for o in _read(path)]
        else:
            raise ValueError(f"{directory}: resource file {entry} is outside the kustomization (kustomize refuses it)")
    for component in k.get("components", []):
        objects = apply(directory / component, objects, component=True)
    return apply(directory, objects)


def apply(directory: Path, objects: list[dict[str, Any]], component: bool = False) -> list[dict[str, Any]]:
    """The transformations of ``directory``'s kustomization (or component) applied to ``objects``."""
    k = _read(directory / "kustomization.yaml")[0]
    if component:
        if k.get("kind") != "Component" or set(k) - {"apiVersion", "kind", "images", "labels", "patches"}:
            raise ValueError(f"{directory} is not a Component that tests/kustomize.py builds")
    for patch in k.get("patches", []):
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        target = patch["target"]
        hits = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
        if not hits:
            raise ValueError(f"{directory}: patch {patch['path']} matches no {target['kind']}/{target['name']}")
        for o in hits:
            o.update(jsonpatch.apply_patch(o, ops))
    for label in k.get("labels", []):
        if label.get("includeSelectors"):
            raise ValueError(f"{directory}: labels with includeSelectors are not built here")
        for o in objects:
            o["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in k.get("images", []):
        for o in objects:
            _set_image(o, image)
    if "namespace" in k:
        for o in objects:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = k["namespace"]
    return objects


def _set_image(node: Any, image: dict[str, str]) -> None:
    """Like kustomize: the ``image`` of every item of a ``containers`` or ``initContainers`` list, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    if container.get("image", "").split("@")[0].rsplit(":", 1)[0] == image["name"]:
                        name = image.get("newName", image["name"])
                        container["image"] = f"{name}@{image['digest']}" if "digest" in image else f"{name}:{image['newTag']}"
            _set_image(value, image)
    elif isinstance(node, list):
        for value in node:
            _set_image(value, image)
