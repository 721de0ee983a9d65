"""Offline Kubernetes manifest validation for the tests (shared/reference/K8S.md, section 3).

Custom resources are checked against their CRD's own openAPIV3Schema (the CRD files in
../shared/k8s-schemas or $K8S_SCHEMA_DIR), built-in kinds through kubernetes-validate, and the
admission-webhook rules a schema cannot express (Knative: K8S.md 1.1-1.4, KServe: 2.1-2.3) are
coded below. There is no defaulting and no cluster: the Knative flags a cluster has on are passed
in as `features`, e.g. {"nodeselector", "kubernetes.podspec-tolerations"} (config-features) or
"allow-zero-initial-scale" (config-autoscaler).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.conftest import REPO_ROOT

K8S_VERSION = "1.33"  # built-in schemas: the Kubernetes release kubernetes-validate checks against
KNATIVE = "serving.knative.dev/v1"
KSERVE_ALPHA = "serving.kserve.io/v1alpha1"
KSERVE_BETA = "serving.kserve.io/v1beta1"
AUTOSCALING = "autoscaling.knative.dev/"
KPA, HPA = "kpa.autoscaling.knative.dev", "hpa.autoscaling.knative.dev"
PROGRESS_DEADLINE = "serving.knative.dev/progress-deadline"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the ISVC CRD is 2 MB

Doc = Mapping[str, Any]
Issue = tuple[str, str]  # (field path, message)
Runtimes = Mapping[str, Doc]  # (Cluster)ServingRuntimes by name


def schema_dir() -> Path:
    """The CRD folder: $K8S_SCHEMA_DIR, else shared/k8s-schemas beside the checkout."""
    env = os.environ.get("K8S_SCHEMA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "k8s-schemas"


@functools.cache
def validator() -> ManifestValidator:
    """One validator per test process: parsing the CRDs takes about a second."""
    folder = schema_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"CRD schemas not found at {folder} (set K8S_SCHEMA_DIR)")
    return ManifestValidator.load(folder)


def validate_files(paths: Iterable[str | Path], features: Collection[str] = ()) -> list[str]:
    """validator().validate_files: errors start with the file name."""
    return validator().validate_files(paths, features)


# ---- CRD schemas -------------------------------------------------------------------------

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_OBJECT_META_OTHER = ("generateName", "uid", "resourceVersion", "generation", "creationTimestamp")
# CRDs publish the root `metadata` as a bare object; the API server checks it as ObjectMeta.
_OBJECT_META: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": _DNS_SUBDOMAIN, "maxLength": 253},
        "namespace": {"type": "string", "pattern": _DNS_LABEL, "maxLength": 63},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        **{key: {} for key in _OBJECT_META_OTHER},  # written by the API server
    },
}


def _to_json_schema(node: Mapping[str, Any], branch: bool = False) -> dict[str, Any]:
    """A CRD's OpenAPI v3 schema as JSON Schema draft 4 (K8S.md 3, step 2)."""
    out = {k: v for k, v in node.items() if k not in ("description", "default", "example")}
    for key in ("properties", "patternProperties"):
        if key in out:
            out[key] = {name: _to_json_schema(sub) for name, sub in out[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), Mapping):
            out[key] = _to_json_schema(out[key])
    for key in ("allOf", "anyOf", "oneOf", "not"):
        if key in out:  # value checks only: their `properties` never add fields
            subs = out[key] if isinstance(out[key], list) else [out[key]]
            converted = [_to_json_schema(sub, branch=True) for sub in subs]
            out[key] = converted if isinstance(out[key], list) else converted[0]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]  # a `pattern` stays beside it
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
        and not branch
    ):  # kubectl's default strict field validation: unknown fields are errors, not pruned
        out["additionalProperties"] = False
    return out


def _render(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _builtin_issues(doc: Mapping[str, Any]) -> list[Issue]:
    # Imported here: its 22 MB of schemas stay off the GPU machine, whose run skips these tests.
    import kubernetes_validate

    try:
        kubernetes_validate.validate(dict(doc), K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:  # it stops at the first error
        return [(_render(exc.absolute_path), str(exc.message))]
    except kubernetes_validate.SchemaNotFoundError:
        return [("", f"no schema for {(doc['apiVersion'], doc['kind'])!r}")]
    except Exception as exc:  # its other errors (unsupported version, bad schema) as text
        return [("", f"kubernetes-validate: {getattr(exc, 'message', exc)}")]
    return []


class ManifestValidator:
    """Validates parsed manifests; built from a folder of CRD YAML files."""

    def __init__(self, crds: Mapping[tuple[str, str], Mapping[str, Any]]) -> None:
        self._crds = dict(crds)  # (apiVersion, kind) -> openAPIV3Schema as published
        self._checkers: dict[tuple[str, str], Any] = {}  # converted lazily, then kept

    @classmethod
    def load(cls, folder: Path) -> ManifestValidator:
        crds: dict[tuple[str, str], Mapping[str, Any]] = {}
        for path in sorted(folder.glob("*.yaml")):
            for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    spec = doc["spec"]
                    for version in spec["versions"]:
                        key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                        crds[key] = version["schema"]["openAPIV3Schema"]
        return cls(crds)

    def validate(
        self, documents: Sequence[Mapping[str, Any]], features: Collection[str] = ()
    ) -> list[str]:
        """Every error as 'Kind/name: field.path: message'; an empty list means valid."""
        return self._check([("", doc) for doc in documents], features)

    def validate_files(
        self, paths: Iterable[str | Path], features: Collection[str] = ()
    ) -> list[str]:
        """Multi-document YAML files, checked together (an ISVC may name a runtime defined in
        another file); errors start with the file name."""
        items: list[tuple[str, Any]] = []
        errors: list[str] = []
        for path in map(Path, paths):
            try:
                docs = list(yaml.load_all(path.read_text(), Loader=_LOADER))
            except yaml.YAMLError as exc:
                errors.append(f"{path.name}: not valid YAML: {exc}")
                continue
            items += [(f"{path.name}: ", doc) for doc in docs if doc is not None]
        return errors + self._check(items, features)

    def _check(self, items: Sequence[tuple[str, Any]], features: Collection[str]) -> list[str]:
        enabled = {_feature_key(name) for name in features}
        runtimes = {
            doc["metadata"]["name"]: doc
            for _, doc in items
            if _at(doc, "apiVersion") == KSERVE_ALPHA
            and _at(doc, "kind") in ("ServingRuntime", "ClusterServingRuntime")
            and isinstance(_at(doc, "metadata", "name"), str)
        }
        errors = []
        for prefix, doc in items:
            label = f"{_at(doc, 'kind') or '?'}/{_at(doc, 'metadata', 'name') or '?'}"
            for path, message in sorted(self._issues(doc, enabled, runtimes)):
                errors.append(f"{prefix}{label}: {path + ': ' if path else ''}{message}")
        return errors

    def _issues(self, doc: Any, features: set[str], runtimes: Runtimes) -> list[Issue]:
        if not isinstance(doc, Mapping):
            return [("", f"not a Kubernetes object: {type(doc).__name__}")]
        api_version, kind = doc.get("apiVersion"), doc.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            return [("", "apiVersion and kind must be strings")]
        key, group = (api_version, kind), api_version.rpartition("/")[0]
        if key in self._crds:
            issues = self._schema_issues(key, doc)
        elif "." not in group or group.endswith(".k8s.io"):  # core, apps, autoscaling, ...
            issues = _builtin_issues(doc)
        else:
            issues = [("", f"no schema for {key!r}")]
        rules = _RULES.get(key)
        return issues + list(rules(doc, features, runtimes) if rules else ())

    def _schema_issues(self, key: tuple[str, str], doc: Mapping[str, Any]) -> list[Issue]:
        checker = self._checkers.get(key)
        if checker is None:
            schema = _to_json_schema(self._crds[key])
            schema["properties"] = {**schema.get("properties", {}), "metadata": _OBJECT_META}
            # Draft 4: OpenAPI 3.0 schemas are draft-4 based (boolean exclusiveMinimum, and
            # `integer` rejects 1.0 like the API server; draft 6+ would accept it).
            checker = self._checkers[key] = jsonschema.Draft4Validator(schema)
        return [(_render(e.absolute_path), e.message) for e in checker.iter_errors(doc)]


# ---- webhook rules -----------------------------------------------------------------------


def _at(value: Any, *keys: str) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seq(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _feature_key(name: str) -> str:
    """'kubernetes.podspec-init-containers', 'init-containers' and 'initcontainers' match."""
    key = name.lower().removeprefix("kubernetes.")
    for prefix in ("podspec-", "containerspec-", "volumes-"):
        key = key.removeprefix(prefix)
    return key.replace("-", "")


def _seconds(text: str) -> float:
    """A Go time.Duration string ("90s", "1m30s", "0") in seconds."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    body = text.lstrip("+-")
    parts = re.findall(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)", body)
    if not body or (body != "0" and "".join(n + u for n, u in parts) != body):
        raise ValueError(text)
    return (-1 if text.startswith("-") else 1) * sum(float(n) * units[u] for n, u in parts)


# Knative annotation values (K8S.md 1.1): parser, accepted range, what the message asks for.
_ANNOTATIONS: dict[str, tuple[Callable[[str], float], Callable[[float], bool], str]] = {
    "min-scale": (int, lambda v: v >= 0, "an integer >= 0"),
    "max-scale": (int, lambda v: v >= 0, "an integer >= 0"),
    "initial-scale": (int, lambda v: v >= 0, "an integer >= 0"),
    "activation-scale": (int, lambda v: v >= 2, "an integer >= 2"),
    "target": (float, lambda v: v >= 0.01, "a number >= 0.01"),
    "target-utilization-percentage": (float, lambda v: 1 <= v <= 100, "a number in 1..100"),
    "panic-window-percentage": (float, lambda v: 1 <= v <= 100, "a number in 1..100"),
    "panic-threshold-percentage": (float, lambda v: 110 <= v <= 1000, "a number in 110..1000"),
    "target-burst-capacity": (float, lambda v: v >= 0 or v == -1, "a number >= 0, or -1"),
    "window": (_seconds, lambda v: 6 <= v <= 3600 and v.is_integer(), "whole seconds, 6s..1h"),
    "scale-down-delay": (_seconds, lambda v: 0 <= v <= 3600, "a Go duration in 0s..1h"),
    "scale-to-zero-pod-retention-period": (_seconds, lambda v: 0 <= v <= 3600, "0s..1h"),
}
_ALIASES = {"minScale": "min-scale", "maxScale": "max-scale", "initialScale": "initial-scale"}
# Knative config-features flags, all "disabled" by default (K8S.md 1.4): PodSpec field -> flag.
_POD_FEATURES = {
    "affinity": "kubernetes.podspec-affinity",
    "dnsConfig": "kubernetes.podspec-dnsconfig",
    "dnsPolicy": "kubernetes.podspec-dnspolicy",
    "hostAliases": "kubernetes.podspec-hostaliases",
    "hostIPC": "kubernetes.podspec-hostipc",
    "hostNetwork": "kubernetes.podspec-hostnetwork",
    "hostPID": "kubernetes.podspec-hostpid",
    "initContainers": "kubernetes.podspec-init-containers",
    "nodeSelector": "kubernetes.podspec-nodeselector",
    "priorityClassName": "kubernetes.podspec-priorityclassname",
    "runtimeClassName": "kubernetes.podspec-runtimeclassname",
    "schedulerName": "kubernetes.podspec-schedulername",
    "securityContext": "kubernetes.podspec-securitycontext",
    "shareProcessNamespace": "kubernetes.podspec-shareprocessnamespace",
    "tolerations": "kubernetes.podspec-tolerations",
    "topologySpreadConstraints": "kubernetes.podspec-topologyspreadconstraints",
}
_VOLUME_FEATURES = {
    "persistentVolumeClaim": "kubernetes.podspec-persistent-volume-claim",
    "hostPath": "kubernetes.podspec-volumes-hostpath",
}
_FIELDREF = "kubernetes.podspec-fieldref"  # env valueFrom.fieldRef / resourceFieldRef
_ADD_CAPS = "kubernetes.containerspec-addcapabilities"
# Reserved by queue-proxy and the revision (K8S.md 1.2).
_RESERVED_PORTS = {8012, 8013, 8022, 9090, 9091, 8008}
_RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
_RESERVED_MOUNTS = {"/", "/dev", "/dev/log"}
_PLACEHOLDER = re.compile(r"\.(Name|Namespace)|\.(Labels|Annotations)\.[A-Za-z_][A-Za-z0-9_]*")


def _autoscaling(ann: Doc, where: str, features: set[str], revision: bool) -> Iterator[Issue]:
    """Knative's annotation rules (K8S.md 1.1); `revision` adds the min/max/HPA checks."""
    values: dict[str, float] = {}
    keys: dict[str, str] = {}
    for key, value in ann.items():
        if not isinstance(value, str):
            continue  # the schema reports non-string annotation values
        if key == PROGRESS_DEADLINE and not _accepts(_seconds, lambda v: v > 0, value):
            yield f"{where}.{key}", f"{value!r} is not a positive Go duration"
        if not key.startswith(AUTOSCALING):
            continue
        name = _ALIASES.get(key.removeprefix(AUTOSCALING), key.removeprefix(AUTOSCALING))
        keys[name] = f"{where}.{key}"
        if name == "class" and value not in (KPA, HPA) and value.endswith(".knative.dev"):
            yield keys[name], f"unknown autoscaler class {value!r}"
        if name in _ANNOTATIONS:
            parse, accept, expected = _ANNOTATIONS[name]
            if _accepts(parse, accept, value):
                values[name] = float(parse(value))
            else:
                yield keys[name], f"{value!r} must be {expected}"
    autoscaler = ann.get(AUTOSCALING + "class", KPA)
    metric = ann.get(AUTOSCALING + "metric")
    if autoscaler == KPA and metric is not None and metric not in ("concurrency", "rps"):
        yield keys["metric"], f"metric {metric!r} not valid for KPA (concurrency, rps)"
    if values.get("initial-scale") == 0 and "allowzeroinitialscale" not in features:
        yield keys["initial-scale"], "initial-scale 0 needs allow-zero-initial-scale: true"
    if revision:  # an ISVC sets these from minReplicas/maxReplicas instead
        low, high = values.get("min-scale", 0), values.get("max-scale", 0)
        if 0 < high < low:
            yield keys["max-scale"], f"max-scale {high:g} is less than min-scale {low:g}"
        if autoscaler == HPA and low == 0:
            yield keys["class"], "HPA class cannot scale to zero: set min-scale >= 1"


def _accepts(parse: Callable[[str], float], accept: Callable[[float], bool], text: str) -> bool:
    try:
        return accept(float(parse(text)))
    except ValueError:
        return False


def _pod_features(pod: Doc, where: str, features: set[str]) -> Iterator[Issue]:
    for field, flag in _POD_FEATURES.items():
        if pod.get(field) not in (None, False, "", [], {}) and _feature_key(flag) not in features:
            yield f"{where}.{field}", f"needs Knative feature flag {flag}"
    for i, volume in enumerate(_seq(pod.get("volumes"))):
        for source, flag in _VOLUME_FEATURES.items():
            if source in _map(volume) and _feature_key(flag) not in features:
                yield f"{where}.volumes[{i}].{source}", f"needs Knative feature flag {flag}"


def _containers(containers: list[tuple[str, Doc]], features: set[str]) -> Iterator[Issue]:
    """Knative's container rules (K8S.md 1.2-1.4); `containers` is [(path, container)]."""
    ports = [
        (f"{where}.ports[{i}]", _map(port), where)
        for where, container in containers
        for i, port in enumerate(_seq(container.get("ports")))
    ]
    if len(ports) > 1:
        yield ports[1][0], f"Knative allows a single container port (got {len(ports)})"
    elif not ports and len(containers) > 1:
        yield containers[0][0].rpartition("[")[0], "exactly one container must have a port"
    for path, port, _ in ports:
        if port.get("name", "") not in ("", "http1", "h2c"):
            yield f"{path}.name", f"port name {port['name']!r} not allowed (http1, h2c or none)"
        if port.get("protocol", "TCP") != "TCP":
            yield f"{path}.protocol", "Knative serves TCP only"
        if port.get("containerPort") in _RESERVED_PORTS:
            yield f"{path}.containerPort", f"port {port['containerPort']} is reserved"
    serving = ports[0][2] if ports else containers[0][0] if len(containers) == 1 else None
    number = ports[0][1].get("containerPort", 8080) if ports else 8080
    name = ports[0][1].get("name") if ports else None
    for where, container in containers:
        if container.get("name") == "queue-proxy":
            yield f"{where}.name", "queue-proxy is a reserved container name"
        for i, env in enumerate(_seq(container.get("env"))):
            if _map(env).get("name") in _RESERVED_ENV:
                yield f"{where}.env[{i}].name", f"{env['name']} is a reserved env name"
            for ref in ("fieldRef", "resourceFieldRef"):
                if _at(env, "valueFrom", ref) is not None and "fieldref" not in features:
                    yield f"{where}.env[{i}].valueFrom.{ref}", f"needs feature flag {_FIELDREF}"
        for i, mount in enumerate(_seq(container.get("volumeMounts"))):
            if _map(mount).get("mountPath") in _RESERVED_MOUNTS:
                yield f"{where}.volumeMounts[{i}].mountPath", "reserved mount path"
        added = _at(container, "securityContext", "capabilities", "add")
        if added and "addcapabilities" not in features:
            yield f"{where}.securityContext.capabilities.add", f"needs feature flag {_ADD_CAPS}"
        yield from _extended_resources(container, where)
        if where == serving:
            yield from _probes(container, where, number, name)


def _probes(container: Doc, where: str, number: int, name: str | None) -> Iterator[Issue]:
    """The serving container's probes target its port; queue-proxy runs readiness (K8S.md 1.3)."""
    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = _map(container.get(probe_name))
        for handler in ("httpGet", "tcpSocket", "grpc"):
            port = _at(probe, handler, "port")
            if port is not None and port != number and not (name and port == name):
                yield f"{where}.{probe_name}.{handler}.port", f"must be the serving port {number}"
        if probe_name != "readinessProbe" or probe.get("periodSeconds"):
            continue
        for field in ("failureThreshold", "timeoutSeconds"):  # period 0: qp retries every 50 ms
            if probe.get(field):
                yield f"{where}.{probe_name}.{field}", "not allowed when periodSeconds is 0"


def _extended_resources(container: Doc, where: str) -> Iterator[Issue]:
    """Extended resources (nvidia.com/gpu) need a limit; a request must equal it (K8S.md 1.4)."""
    limits = _map(_at(container, "resources", "limits"))
    requests = _map(_at(container, "resources", "requests"))
    for resource in sorted({*limits, *requests}):
        domain = resource.partition("/")[0]
        if "/" not in resource or domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
            continue
        if resource not in limits:
            yield f"{where}.resources.limits", f"extended resource {resource} needs a limit"
        elif resource in requests and str(requests[resource]) != str(limits[resource]):
            yield f"{where}.resources.requests.{resource}", "must equal its limit"


def _knative_service(doc: Doc, features: set[str], runtimes: Runtimes) -> Iterator[Issue]:
    annotations = _map(_at(doc, "metadata", "annotations"))
    for key in annotations:  # rejected on the Service itself (K8S.md 1.1)
        if key.startswith(AUTOSCALING):
            yield (
                f"metadata.annotations.{key}",
                "autoscaling annotations belong in spec.template.metadata.annotations",
            )
    deadline = {k: v for k, v in annotations.items() if k == PROGRESS_DEADLINE}
    yield from _autoscaling(deadline, "metadata.annotations", features, revision=False)
    template = _map(_at(doc, "spec", "template"))
    where = "spec.template.metadata.annotations"
    yield from _autoscaling(_map(_at(template, "metadata", "annotations")), where, features, True)
    pod = _map(template.get("spec"))
    yield from _pod_features(pod, "spec.template.spec", features)
    containers = _seq(pod.get("containers"))
    if not containers:
        yield "spec.template.spec.containers", "at least one container is needed"
    where = "spec.template.spec.containers"
    yield from _containers([(f"{where}[{i}]", _map(c)) for i, c in enumerate(containers)], features)


def _serving_runtime(doc: Doc, features: set[str], runtimes: Runtimes) -> Iterator[Issue]:
    spec = _map(doc.get("spec"))
    containers = [_map(c) for c in _seq(spec.get("containers"))]
    if not any(c.get("name") == "kserve-container" for c in containers):  # K8S.md 2.1
        yield "spec.containers", "the main container must be named kserve-container"
    for i, model_format in enumerate(_seq(spec.get("supportedModelFormats"))):
        if "priority" in _map(model_format) and model_format.get("autoSelect") is not True:
            yield f"spec.supportedModelFormats[{i}].priority", "only allowed with autoSelect: true"
    for i, container in enumerate(containers):  # rendered with the ISVC's ObjectMeta (2.1)
        for match in re.finditer(r"\{\{(.*?)\}\}", json.dumps(container, default=str)):
            if not _PLACEHOLDER.fullmatch(match[1].strip()):
                yield f"spec.containers[{i}]", f"unknown placeholder {match[0]}"


def _inference_service(doc: Doc, features: set[str], runtimes: Runtimes) -> Iterator[Issue]:
    name = _at(doc, "metadata", "name")
    if isinstance(name, str) and not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        yield "metadata.name", f"{name!r} must match [a-z]([-a-z0-9]*[a-z0-9])?"
    annotations = _map(_at(doc, "metadata", "annotations"))
    mode = annotations.get(DEPLOYMENT_MODE)
    modes = ("Serverless", "RawDeployment", "Knative", "Standard", "ModelMesh")
    if mode is None:  # KServe's code and its shipped ConfigMap disagree on the default (2.3)
        yield "metadata.annotations", f"set {DEPLOYMENT_MODE} explicitly"
    elif mode not in modes:
        yield f"metadata.annotations.{DEPLOYMENT_MODE}", f"{mode!r} is not one of {modes}"
    predictor = _map(_at(doc, "spec", "predictor"))
    low, high = predictor.get("minReplicas"), predictor.get("maxReplicas")
    if isinstance(low, int) and low < 0:
        yield "spec.predictor.minReplicas", f"{low} must be >= 0"
    if isinstance(low, int) and isinstance(high, int) and 0 < high < low:
        yield "spec.predictor.minReplicas", f"{low} is more than maxReplicas {high}"
    model = _map(predictor.get("model"))
    if mode in ("Serverless", "Knative"):  # becomes a Knative revision (2.3)
        yield from _autoscaling(annotations, "metadata.annotations", features, revision=False)
        yield from _pod_features(predictor, "spec.predictor", features)
        custom = _seq(predictor.get("containers"))  # a custom predictor instead of a model
        containers = [(f"spec.predictor.containers[{i}]", _map(c)) for i, c in enumerate(custom)]
        yield from _containers(containers or [("spec.predictor.model", model)], features)
    runtime_name = model.get("runtime")
    runtime = _map(_at(runtimes.get(str(runtime_name)), "spec"))
    if runtime:  # only a runtime given to the same validate() call is known
        formats = sorted(str(_at(f, "name")) for f in _seq(runtime.get("supportedModelFormats")))
        model_format = _at(model, "modelFormat", "name")
        if model_format is not None and model_format not in formats:
            yield (
                "spec.predictor.model.modelFormat.name",
                f"modelFormat {model_format!r} not "
                f"supported by runtime {runtime_name!r} ({', '.join(formats)})",
            )
        protocols = _seq(runtime.get("protocolVersions"))
        protocol = model.get("protocolVersion")
        if protocol is not None and protocols and protocol not in protocols:
            yield (
                "spec.predictor.model.protocolVersion",
                f"{protocol!r} is not among the protocolVersions of runtime {runtime_name!r}",
            )


_RULES: dict[tuple[str, str], Callable[[Doc, set[str], Runtimes], Iterator[Issue]]] = {
    (KNATIVE, "Service"): _knative_service,
    (KSERVE_ALPHA, "ServingRuntime"): _serving_runtime,
    (KSERVE_ALPHA, "ClusterServingRuntime"): _serving_runtime,
    (KSERVE_BETA, "InferenceService"): _inference_service,
}
