#!/usr/bin/env python3
"""Checks of rendered chart manifests that no schema expresses: the objects agree with each
other and with objmeta's needs.

    check_rendered.py DIR    (DIR holds one NAME.yaml per value set, from scripts/check-chart)

Static membership (group.instance.id from the pod's namespace and name), secrets only by
reference, every selector matching the pods, the ServiceMonitor's job label, the
PrometheusRule and dashboard equal to their sources, KEDA owning the replica count with a
trigger KEDA's Kafka scaler understands, authenticated with objmeta's SASL Secret and trusting
the same CA Secret key that objmeta mounts for ssl.ca.location. Exits 1 listing every problem.
Needs python3 with PyYAML (Debian: python3-yaml), as scripts/check-compose does.
"""

import glob
import json
import os
import re
import sys

try:
    import yaml
except ImportError as missing:  # pragma: no cover - environment problem, said plainly
    sys.exit(f"check_rendered: {missing}; install python3-yaml")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "deploy/helm/objmeta")
VALUE_SETS = os.path.join(ROOT, "tests/chart/values")
# The trigger metadata keys the chart may render, each a parameter of KEDA's Kafka scaler
# (keda.sh/docs/2.20/scalers/apache-kafka). The CRD types metadata as a free string map, so
# a misspelled key (lagTreshold) passes validation and KEDA silently uses the default.
KAFKA_SCALER_KEYS = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "allowIdleConsumers",
    "offsetResetPolicy", "sasl", "tls",
}
# The TriggerAuthentication parameters the chart may render, each an authentication parameter
# of the Kafka scaler; the CRD takes any string, and KEDA ignores one it does not know.
KAFKA_SCALER_AUTH_PARAMS = {"username", "password", "ca"}

problems = []


def check(ok, what):
    if not ok:
        problems.append(what)
    return ok


def load_objects(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def by_kind(objects, kind):
    return [o for o in objects if o.get("kind") == kind]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def container_env(statefulset):
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in container.get("env", [])}


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def secret_looking_name():
    """values.schema.json's one rule for names that may hold a secret (Go's and Python's
    regular expressions agree on its syntax)."""
    with open(os.path.join(CHART, "values.schema.json"), encoding="utf-8") as f:
        return re.compile(json.load(f)["definitions"]["secretLookingName"]["pattern"])


def field_ref(var):
    return var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")


def check_statefulset(name, sts, services, autoscaled):
    where = f"{name}: StatefulSet {sts['metadata']['name']}"
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    check(spec.get("podManagementPolicy") == "Parallel", f"{where}: podManagementPolicy is not Parallel")
    check(matches(spec["selector"]["matchLabels"], labels), f"{where}: selector does not match its pods")
    check(pod.get("automountServiceAccountToken") is False, f"{where}: service account token mounted")
    if autoscaled:
        check("replicas" not in spec, f"{where}: sets replicas while KEDA owns the count")
    else:
        check("replicas" in spec, f"{where}: no replicas without autoscaling")

    headless = [s for s in services if s["metadata"]["name"] == spec["serviceName"]]
    if check(headless, f"{where}: serviceName {spec['serviceName']} is not a rendered Service"):
        check(headless[0]["spec"].get("clusterIP") == "None", f"{where}: its Service is not headless")
        check(matches(headless[0]["spec"]["selector"], labels), f"{where}: its Service selects other pods")

    env = container_env(sts)
    names = [e["name"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]]
    check(len(names) == len(set(names)), f"{where}: an environment variable is set twice")
    check(field_ref(env.get("POD_NAMESPACE", {})) == "metadata.namespace", f"{where}: POD_NAMESPACE is not the pod's namespace")
    check(field_ref(env.get("POD_NAME", {})) == "metadata.name", f"{where}: POD_NAME is not the pod's name")
    check(
        env.get("KAFKA_GROUP_INSTANCE_ID", {}).get("value") == "$(POD_NAMESPACE)-$(POD_NAME)",
        f"{where}: KAFKA_GROUP_INSTANCE_ID is not $(POD_NAMESPACE)-$(POD_NAME)",
    )
    # Kubernetes expands $(VAR) only for variables defined earlier in the list.
    if "KAFKA_GROUP_INSTANCE_ID" in names:
        defined_before = names[: names.index("KAFKA_GROUP_INSTANCE_ID")]
        check({"POD_NAMESPACE", "POD_NAME"} <= set(defined_before), f"{where}: KAFKA_GROUP_INSTANCE_ID precedes the variables it uses")
    check("secretKeyRef" in env.get("DATABASE_URL", {}).get("valueFrom", {}), f"{where}: DATABASE_URL not from a Secret")
    secret_looking = secret_looking_name()
    for var in env.values():
        if secret_looking.search(var["name"]):
            check("value" not in var, f"{where}: {var['name']} has an inline value")

    security = pod["containers"][0]["securityContext"]
    check(security.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem writable")
    check(security.get("runAsNonRoot") is True, f"{where}: may run as root")
    check(security.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities not all dropped")
    return labels


def check_monitoring(name, objects, pod_labels, services):
    for monitor in by_kind(objects, "ServiceMonitor"):
        where = f"{name}: ServiceMonitor {monitor['metadata']['name']}"
        selected = [s for s in services if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        check(len(selected) == 1, f"{where}: selects {len(selected)} Services, want the headless one")
        ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            check(endpoint["port"] in ports, f"{where}: port {endpoint['port']} is not a port of the Service")
            job = [r for r in endpoint.get("relabelings", []) if r.get("targetLabel") == "job"]
            check(job and job[0].get("replacement") == "objmeta", f"{where}: job label not set to objmeta")

    for rule in by_kind(objects, "PrometheusRule"):
        check_prometheus_rule(name, rule)

    with open(os.path.join(ROOT, "dashboards/objmeta.json"), encoding="utf-8") as f:
        dashboard = json.load(f)
    for config in by_kind(objects, "ConfigMap"):
        if "objmeta.json" in config.get("data", {}):
            check(json.loads(config["data"]["objmeta.json"]) == dashboard, f"{name}: dashboard differs from dashboards/objmeta.json")
            check(config["metadata"]["labels"].get("grafana_dashboard") == "1", f"{name}: dashboard lacks the sidecar label")

    for pdb in by_kind(objects, "PodDisruptionBudget"):
        check(matches(pdb["spec"]["selector"]["matchLabels"], pod_labels), f"{name}: PodDisruptionBudget selects other pods")


def runbook_bases(name):
    """The chart's default prometheusRule.runbookBaseUrl and the one value set NAME uses."""
    default = load_yaml(os.path.join(CHART, "values.yaml"))["prometheusRule"]["runbookBaseUrl"]
    values = load_yaml(os.path.join(VALUE_SETS, name)) or {}
    return default, values.get("prometheusRule", {}).get("runbookBaseUrl", default)


def check_prometheus_rule(name, rule):
    """With the default base the rule is deploy/prometheus/alerts.yml exactly; with another,
    only the runbook URLs differ, each starting with that base."""
    alerts = load_yaml(os.path.join(ROOT, "deploy/prometheus/alerts.yml"))
    default, base = runbook_bases(name)
    if base == default:
        check(rule["spec"] == alerts, f"{name}: PrometheusRule differs from deploy/prometheus/alerts.yml")
        return
    restored = json.loads(json.dumps(rule["spec"]))
    for group in restored["groups"]:
        for alert in group["rules"]:
            url = alert.get("annotations", {}).get("runbook_url", "")
            if check(url.startswith(base + "#"), f"{name}: {alert['alert']}'s runbook_url {url!r} does not start with {base}#"):
                alert["annotations"]["runbook_url"] = default + url[len(base):]
    check(restored == alerts, f"{name}: PrometheusRule differs from deploy/prometheus/alerts.yml in more than the runbook URLs")


def check_autoscaling(name, objects, sts):
    for scaled in by_kind(objects, "ScaledObject"):
        where = f"{name}: ScaledObject {scaled['metadata']['name']}"
        target = scaled["spec"]["scaleTargetRef"]
        check(target.get("kind") == "StatefulSet" and target["name"] == sts["metadata"]["name"], f"{where}: does not target the StatefulSet")
        env = container_env(sts)
        for trigger in scaled["spec"]["triggers"]:
            meta = trigger["metadata"]
            unknown = sorted(set(meta) - KAFKA_SCALER_KEYS)
            check(not unknown, f"{where}: trigger metadata keys {unknown} are not Kafka scaler parameters the chart renders")
            check(meta.get("consumerGroup") == env["KAFKA_GROUP_ID"]["value"], f"{where}: another consumer group than objmeta's")
            check(meta.get("topic") == env["KAFKA_TOPIC"]["value"], f"{where}: another topic than objmeta's")
            check(meta.get("allowIdleConsumers") == "false", f"{where}: allowIdleConsumers is not \"false\"")
            check(meta.get("offsetResetPolicy") == "earliest", f"{where}: offsetResetPolicy is not \"earliest\" (objmeta's auto.offset.reset)")
            check_trigger_auth(where, objects, trigger, env, mounted_ca(name, sts))


def kafka_properties(env):
    """KAFKA_PROPERTIES as a dict (key=value pairs joined with ";")."""
    value = env.get("KAFKA_PROPERTIES", {}).get("value", "")
    return dict(pair.split("=", 1) for pair in value.split(";") if pair)


def mounted_ca(name, sts):
    """(Secret, key) of the file ssl.ca.location names, which must be that key of a Secret
    volume mounted read-only into the objmeta container; None without ssl.ca.location."""
    where = f"{name}: StatefulSet {sts['metadata']['name']}"
    props = kafka_properties(container_env(sts))
    location = props.get("ssl.ca.location")
    if location is None:
        return None
    check(props.get("security.protocol") in ("SSL", "SASL_SSL"), f"{where}: ssl.ca.location without TLS")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        directory = mount["mountPath"].rstrip("/") + "/"
        if not location.startswith(directory):
            continue
        secret = volumes.get(mount["name"], {}).get("secret")
        if not check(secret, f"{where}: ssl.ca.location {location} is not in a Secret volume"):
            return None
        check(mount.get("readOnly") is True, f"{where}: the CA's volume is mounted writable")
        items = [i for i in secret.get("items", []) if i["path"] == location[len(directory):]]
        if not check(len(items) == 1, f"{where}: no item of Secret {secret['secretName']} is mounted as {location}"):
            return None
        return secret["secretName"], items[0]["key"]
    check(False, f"{where}: ssl.ca.location {location} is not in a mounted volume")
    return None


def check_trigger_auth(where, objects, trigger, env, ca):
    """The trigger authenticates as objmeta does: the SASL Secret, and the CA objmeta trusts
    (the same Secret and key) as the scaler's `ca`, with tls enabled."""
    auths = {a["metadata"]["name"]: a for a in by_kind(objects, "TriggerAuthentication")}
    ref = trigger.get("authenticationRef", {}).get("name")
    if ref is None:
        check("KAFKA_SASL_PASSWORD" not in env, f"{where}: SASL in use but no TriggerAuthentication referenced")
        check(ca is None, f"{where}: objmeta trusts a private CA but no TriggerAuthentication referenced")
        return
    if not check(ref in auths, f"{where}: authenticationRef {ref} is not a rendered TriggerAuthentication"):
        return
    refs = auths[ref]["spec"].get("secretTargetRef", [])
    params = {r["parameter"]: (r["name"], r["key"]) for r in refs}
    check(len(params) == len(refs), f"{where}: a TriggerAuthentication parameter is set twice")
    unknown = sorted(set(params) - KAFKA_SCALER_AUTH_PARAMS)
    check(not unknown, f"{where}: TriggerAuthentication parameters {unknown} are not Kafka scaler parameters the chart renders")
    for param, var in (("username", "KAFKA_SASL_USERNAME"), ("password", "KAFKA_SASL_PASSWORD")):
        secret_ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef")
        expected = (secret_ref["name"], secret_ref["key"]) if secret_ref else None
        check(params.get(param) == expected, f"{where}: TriggerAuthentication {param} is {params.get(param)}, objmeta's {var} is {expected}")
    check(params.get("ca") == ca, f"{where}: TriggerAuthentication ca is {params.get('ca')}, objmeta's ssl.ca.location is {ca}")
    if ca is not None:
        check(trigger["metadata"].get("tls") == "enable", f"{where}: a CA for KEDA without tls: enable")


def check_default_image():
    """values.yaml names the default image's tag (scripts/check-images reads it there); it must
    stay the chart's appVersion, which the helpers fall back to."""
    app_version = load_yaml(os.path.join(CHART, "Chart.yaml"))["appVersion"]
    tag = load_yaml(os.path.join(CHART, "values.yaml"))["image"]["tag"]
    check(tag == app_version, f"values.yaml image.tag {tag!r} is not Chart.yaml's appVersion {app_version!r}")


def check_file(path):
    name = os.path.basename(path)
    objects = load_objects(path)
    services = by_kind(objects, "Service")
    statefulsets = by_kind(objects, "StatefulSet")
    if not check(len(statefulsets) == 1, f"{name}: {len(statefulsets)} StatefulSets, want 1"):
        return
    sts = statefulsets[0]
    autoscaled = bool(by_kind(objects, "ScaledObject"))
    pod_labels = check_statefulset(name, sts, services, autoscaled)
    check_monitoring(name, objects, pod_labels, services)
    check_autoscaling(name, objects, sts)
    print(f"  rendered objects consistent: {name} ({len(objects)} objects)", file=sys.stderr)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check_rendered.py DIR")
    files = sorted(glob.glob(os.path.join(sys.argv[1], "*.yaml")))
    if not files:
        sys.exit(f"check_rendered: no manifests in {sys.argv[1]}")
    for path in files:
        check_file(path)
    # The full value set must exercise every optional kind, or its checks prove nothing.
    full = load_objects(os.path.join(sys.argv[1], "full.yaml"))
    for kind in ("ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication", "PodDisruptionBudget"):
        check(by_kind(full, kind), f"full.yaml: no {kind} rendered")
    for sts in by_kind(full, "StatefulSet"):
        check("ssl.ca.location" in kafka_properties(container_env(sts)), "full.yaml: no private Kafka CA (kafka.tls.caSecret)")
        env = container_env(sts)
        check(env.get("RECONCILE_BUCKETS", {}).get("value") == "photos,documents", "full.yaml: no periodic reconcile (reconcile.every)")
        check(env.get("EVENT_SOURCE", {}).get("value") == "versitygw", "full.yaml: events.source not passed as EVENT_SOURCE")
        check(env.get("ENRICH_CONCURRENCY", {}).get("value") == "16", "full.yaml: events.enrichConcurrency not passed")
        for var in ("S3_ACCESS_KEY", "S3_SECRET_KEY"):
            check("secretKeyRef" in env.get(var, {}).get("valueFrom", {}), f"full.yaml: {var} not from a Secret")
        mounts = {m["mountPath"] for m in sts["spec"]["template"]["spec"]["containers"][0].get("volumeMounts", [])}
        ca_file = env.get("S3_CA_FILE", {}).get("value", "")
        check(bool(ca_file) and os.path.dirname(ca_file) in mounts, "full.yaml: S3_CA_FILE is not in a mounted directory")
    check_default_image()
    for problem in problems:
        print(f"check_rendered: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
