"""A Python rendering of the part of ``kustomize build`` that ``deploy/k8s/`` uses.

No kustomize binary ships on the package registries we install from (``pykustomize`` has no
build for this platform), and the manifests must be checked in ``make test`` without network.
Where ``kubectl`` or ``kustomize`` is on PATH, ``tests/test_deploy_manifests.py`` checks that
this renderer prints the same objects as the real build, so the tests built on it check what a
cluster would get. It reads ``kustomization.yaml`` itself: resources (files and directories
with their own kustomization), ``namespace``, ``labels``, ``images``, ``configMapGenerator``
and ``secretGenerator`` (fixed names only), and JSON 6902 ``patches``. Any other field, or a
generator whose name kustomize would hash, is refused: a manifest that used a feature this
renderer ignores would otherwise pass the tests without being checked.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

KNOWN_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "labels",
    "images",
    "generatorOptions",
    "configMapGenerator",
    "secretGenerator",
    "patches",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


class UnsupportedKustomization(Exception):
    """The kustomization uses something this renderer does not implement."""


def load_documents(path: Path) -> list[Manifest]:
    """Every non-empty YAML document of ``path``."""
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def render(directory: Path) -> list[Manifest]:
    """The manifests ``kustomize build directory`` would print (for the supported subset)."""
    kustomization: Manifest = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise UnsupportedKustomization(f"{directory}: unsupported fields {sorted(unknown)}")
    manifests: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            manifests.extend(render(target))
        else:
            manifests.extend(load_documents(target))
    manifests.extend(_generated(directory, kustomization))
    for patch in kustomization.get("patches", []):
        _apply_patch(manifests, patch)
    for label_set in kustomization.get("labels", []):
        if label_set.get("includeSelectors") or label_set.get("includeTemplates"):
            raise UnsupportedKustomization("labels on selectors or templates")
        for manifest in manifests:
            manifest.setdefault("metadata", {}).setdefault("labels", {}).update(label_set["pairs"])
    for image in kustomization.get("images", []):
        _set_image(manifests, image)
    namespace = kustomization.get("namespace")
    if namespace:
        _set_namespace(manifests, namespace)
    return manifests


def _generated(directory: Path, kustomization: Manifest) -> list[Manifest]:
    options = kustomization.get("generatorOptions", {})
    generators = [("ConfigMap", g) for g in kustomization.get("configMapGenerator", [])]
    generators += [("Secret", g) for g in kustomization.get("secretGenerator", [])]
    if generators and not options.get("disableNameSuffixHash"):
        raise UnsupportedKustomization(f"{directory}: generated names with a hash suffix")
    manifests: list[Manifest] = []
    for kind, generator in generators:
        values: dict[str, str] = {}
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            values[key] = value
        for file in generator.get("files", []):
            values[Path(file).name] = (directory / file).read_text()
        if kind == "Secret":
            data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
        else:
            data = values
        metadata: Manifest = {"name": generator["name"]}
        if options.get("labels"):
            # kustomize prints no empty labels map.
            metadata["labels"] = dict(options["labels"])
        manifest: Manifest = {"apiVersion": "v1", "kind": kind, "metadata": metadata, "data": data}
        if kind == "Secret":
            manifest["type"] = "Opaque"
        manifests.append(manifest)
    return manifests


def _apply_patch(manifests: list[Manifest], patch: Manifest) -> None:
    target = patch["target"]
    operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise UnsupportedKustomization("only JSON 6902 patches (a list of operations)")
    matched = [
        m
        for m in manifests
        if m["kind"] == target["kind"] and m["metadata"]["name"] == target["name"]
    ]
    if len(matched) != 1:
        raise UnsupportedKustomization(f"patch target {target} matched {len(matched)}")
    for operation in operations:
        _apply_operation(matched[0], operation)


def _apply_operation(manifest: Manifest, operation: Manifest) -> None:
    *parents, last = [_unescape(p) for p in operation["path"].lstrip("/").split("/")]
    node: Any = manifest
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) and last != "-" else last
    op = operation["op"]
    if op == "replace":
        if isinstance(node, dict) and key not in node:
            raise UnsupportedKustomization(f"replace of a missing {operation['path']}")
        node[key] = copy.deepcopy(operation["value"])
    elif op == "add":
        if isinstance(node, list):
            node.insert(len(node) if key == "-" else key, copy.deepcopy(operation["value"]))
        else:
            node[key] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del node[key]
    else:
        raise UnsupportedKustomization(f"patch operation {op}")


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


def _pod_specs(manifest: Manifest) -> list[Manifest]:
    spec = manifest.get("spec", {})
    if manifest["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return [spec["template"]["spec"]]
    return []


def _set_image(manifests: list[Manifest], image: Manifest) -> None:
    for manifest in manifests:
        for pod in _pod_specs(manifest):
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                name, _, _tag = container["image"].partition(":")
                if name == image["name"]:
                    new_name = image.get("newName", name)
                    container["image"] = f"{new_name}:{image.get('newTag', _tag)}"


def _set_namespace(manifests: list[Manifest], namespace: str) -> None:
    for manifest in manifests:
        if manifest["kind"] in CLUSTER_SCOPED:
            continue
        manifest["metadata"]["namespace"] = namespace
        for subject in manifest.get("subjects", []):
            if subject.get("kind") == "ServiceAccount":
                subject["namespace"] = namespace
