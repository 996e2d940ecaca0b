#!/usr/bin/env python3
"""What a real cluster (or a real incident) would reject in the rendered Kubernetes manifests,
and the schemas do not see. Run by .ci/validate-deploy on the `kubectl kustomize` output:

    check-manifests.py REPO RENDERED.yaml [RENDERED.yaml ...]

Each file is one rendered set (k8s/, k8s/ with the redis-cluster component). Checks, per set:

  grace      the confab pods' terminationGracePeriodSeconds covers the preStop sleep, the
             drain's deadlines as the code has them (src/app.rs DRAIN_DEADLINE,
             HTTP_STOP_DEADLINE), the Redis deregister (3 commands, each at most
             COMMAND_TIMEOUT, src/broker/redis/mod.rs) and a margin; docs/ARCHITECTURE.md
             and docs/deploy.md state the same deadlines and grace period
  probes     every httpGet probe and hook hits a route confab serves (src/app.rs's router and
             docs/protocol.md's table), on a named container port that is confab's
             CONFAB_BIND port; readiness is /readyz, liveness /healthz (a draining pod must
             not be restarted)
  api rules  what the API server validates beyond the schema: object names and label values,
             selectors that match their pod templates, port names, volumes behind every
             mount, requests within limits, Services and Ingress backends that name existing
             ports, ConfigMaps and Secrets that exist
  PSS        the namespace's enforced Pod Security Standard (restricted) admits every pod
  settings   CONFAB_TRUSTED_PROXIES comes from the per-cluster ConfigMap only; confab's
             NetworkPolicy admits port 3000 from named namespaces only; the memory request
             holds docs/deploy.md's budget for CONFAB_MAX_CONNECTIONS sockets; Redis has a
             maxmemory under its limit with the noeviction policy; the Redis
             PodDisruptionBudget lets a drain through; ingress-nginx annotations exist
PyYAML comes with checkov in validate-deploy's venv.
"""

import ipaddress
import pathlib
import re
import sys

import yaml

problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


def rust_seconds(source, name):
    match = re.search(rf"const {name}: Duration = Duration::from_(secs|millis)\((\d[\d_]*)\)",
                      source)
    if not match:
        raise SystemExit(f"check-manifests: cannot find the constant {name}")
    value = int(match.group(2).replace("_", ""))
    return value if match.group(1) == "secs" else value / 1000


def quantity(text):
    """A Kubernetes quantity (memory or CPU) as a number of bytes or cores."""
    text = str(text)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
             "G": 10**9, "T": 10**12, "m": 1e-3}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def redis_bytes(text):
    text = str(text).lower()
    units = {"kb": 1024, "mb": 2**20, "gb": 2**30, "k": 1000, "m": 10**6, "g": 10**9}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
# The ingress-nginx annotations (nginx.ingress.kubernetes.io/...) the manifests may use, each
# checked against ingress-nginx's annotation reference: the controller ignores a misspelt one
# in silence. Add a name here only after finding it there.
INGRESS_NGINX_ANNOTATIONS = {
    "proxy-read-timeout", "proxy-send-timeout", "proxy-connect-timeout", "proxy-buffering",
    "proxy-next-upstream", "proxy-next-upstream-tries", "proxy-next-upstream-timeout",
    "proxy-body-size", "ssl-redirect", "force-ssl-redirect", "denylist-source-range",
    "allowlist-source-range", "proxy-http-version", "upstream-hash-by", "affinity",
}


def check_metadata(where, obj):
    meta = obj.get("metadata", {})
    name = meta.get("name", "")
    kind = obj["kind"]
    pattern, limit = (DNS_LABEL, 63) if kind in ("Service", "Namespace") else (DNS_SUBDOMAIN, 253)
    if not pattern.match(name) or len(name) > limit:
        problem(where, f"name {name!r} is not a valid {kind} name")
    for field in ("labels",):
        for key, value in (meta.get(field) or {}).items():
            check_label(where, key, value)
    annotations = meta.get("annotations") or {}
    if len(yaml.safe_dump(annotations)) > 200_000:
        problem(where, "annotations near the 256 KiB limit (kubectl apply adds a copy)")


def check_label(where, key, value):
    prefix, _, name = key.rpartition("/")
    if (prefix and (not DNS_SUBDOMAIN.match(prefix) or len(prefix) > 253)) \
            or not LABEL_NAME.match(name) or len(name) > 63:
        problem(where, f"label key {key!r} is invalid")
    if not isinstance(value, str) or not LABEL_VALUE.match(value) or len(value) > 63:
        problem(where, f"label {key}={value!r}: not a valid label value")


def matches(selector, labels):
    """A LabelSelector (matchLabels and matchExpressions) against a set of labels."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def pod_templates(docs):
    """(where, workload, pod spec, pod labels) of every workload's pod template."""
    for (kind, name), obj in docs.items():
        spec = obj.get("spec", {})
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            template = spec["template"]
            yield f"{kind}/{name}", obj, template["spec"], template["metadata"].get("labels", {})
        elif kind == "CronJob":
            template = spec["jobTemplate"]["spec"]["template"]
            yield f"{kind}/{name}", obj, template["spec"], template["metadata"].get("labels", {})
        elif kind == "Pod":
            yield f"Pod/{name}", obj, spec, obj["metadata"].get("labels", {})


def containers(pod):
    return (pod.get("initContainers") or []) + (pod.get("containers") or [])


def check_workloads(docs):
    config_maps = {n for (k, n) in docs if k == "ConfigMap"}
    secrets = {n for (k, n) in docs if k == "Secret"}
    for where, workload, pod, labels in pod_templates(docs):
        selector = workload["spec"].get("selector")
        if workload["kind"] in ("Deployment", "StatefulSet", "DaemonSet") \
                and not matches(selector, labels):
            problem(where, "spec.selector does not match the pod template's labels "
                           "(the API server refuses it)")
        for key, value in labels.items():
            check_label(where, key, value)
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates") or []}
        for volume in volumes.values():
            if "configMap" in volume and volume["configMap"]["name"] not in config_maps \
                    and not volume["configMap"].get("optional"):
                problem(where, f"volume {volume['name']}: no ConfigMap {volume['configMap']['name']}")
            if "secret" in volume and volume["secret"]["secretName"] not in secrets \
                    and not volume["secret"].get("optional"):
                problem(where, f"volume {volume['name']}: no Secret {volume['secret']['secretName']}")
        names = set()
        for container in containers(pod):
            cwhere = f"{where} container {container['name']}"
            if container["name"] in names:
                problem(cwhere, "duplicate container name")
            names.add(container["name"])
            port_names = set()
            for port in container.get("ports") or []:
                if "name" in port:
                    if len(port["name"]) > 15 or not PORT_NAME.match(port["name"]) \
                            or not re.search("[a-z]", port["name"]):
                        problem(cwhere, f"port name {port['name']!r} is not an IANA service name")
                    port_names.add(port["name"])
            for mount in container.get("volumeMounts") or []:
                if mount["name"] not in volumes and mount["name"] not in claims:
                    problem(cwhere, f"volumeMount {mount['name']} has no volume")
            for source in container.get("envFrom") or []:
                if "configMapRef" in source and source["configMapRef"]["name"] not in config_maps \
                        and not source["configMapRef"].get("optional"):
                    problem(cwhere, f"envFrom: no ConfigMap {source['configMapRef']['name']}")
                if "secretRef" in source and source["secretRef"]["name"] not in secrets \
                        and not source["secretRef"].get("optional"):
                    problem(cwhere, f"envFrom: no Secret {source['secretRef']['name']}")
            for action in handlers(container):
                port = action.get("httpGet", action.get("tcpSocket", {})).get("port")
                if isinstance(port, str) and port not in port_names:
                    problem(cwhere, f"a probe or hook uses port {port!r}, which no port is named")
            resources = container.get("resources") or {}
            for resource, limit in (resources.get("limits") or {}).items():
                request = (resources.get("requests") or {}).get(resource)
                if request is not None and quantity(request) > quantity(limit):
                    problem(cwhere, f"{resource} request {request} above its limit {limit}")


def handlers(container):
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if container.get(probe):
            yield container[probe]
    for hook in (container.get("lifecycle") or {}).values():
        yield hook


def check_pod_security(docs):
    """The restricted Pod Security Standard, for namespaces that enforce it."""
    enforced = {n: o["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce")
                for (k, n), o in docs.items() if k == "Namespace"}
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                       "persistentVolumeClaim", "projected", "secret"}
    for where, workload, pod, _ in pod_templates(docs):
        namespace = workload["metadata"].get("namespace", "default")
        if enforced.get(namespace) not in ("restricted", "baseline"):
            continue
        restricted = enforced[namespace] == "restricted"
        pod_context = pod.get("securityContext") or {}
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(field):
                problem(where, f"{field} is refused by Pod Security")
        for volume in pod.get("volumes") or []:
            kinds = set(volume) - {"name"}
            if restricted and not kinds <= allowed_volumes:
                problem(where, f"volume {volume['name']} of type {kinds} is refused by the "
                               "restricted Pod Security Standard")
        for container in containers(pod):
            cwhere = f"{where} container {container['name']}"
            context = container.get("securityContext") or {}
            if context.get("privileged"):
                problem(cwhere, "privileged is refused by Pod Security")
            if not restricted:
                continue
            if context.get("allowPrivilegeEscalation") is not False:
                problem(cwhere, "restricted PSS: allowPrivilegeEscalation must be false")
            capabilities = context.get("capabilities") or {}
            if "ALL" not in (capabilities.get("drop") or []):
                problem(cwhere, "restricted PSS: capabilities must drop ALL")
            if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
                problem(cwhere, "restricted PSS: only NET_BIND_SERVICE may be added")
            non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
            if non_root is not True:
                problem(cwhere, "restricted PSS: runAsNonRoot must be true")
            if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
                problem(cwhere, "restricted PSS: runAsUser 0")
            seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {})
            if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
                problem(cwhere, "restricted PSS: seccompProfile must be RuntimeDefault or Localhost")


def check_services(docs):
    templates = list(pod_templates(docs))
    for (kind, name), obj in docs.items():
        if kind == "Service":
            selector = obj["spec"].get("selector")
            if not selector:
                continue
            selected = [(w, p) for w, _, p, labels in templates
                        if matches({"matchLabels": selector}, labels)]
            if not selected:
                problem(f"Service/{name}", "selects no pod template")
            for port in obj["spec"].get("ports") or []:
                target = port.get("targetPort", port["port"])
                if isinstance(target, str) and not any(
                        target == p.get("name") for _, pod in selected
                        for c in pod.get("containers") or [] for p in c.get("ports") or []):
                    problem(f"Service/{name}", f"targetPort {target!r} names no container port")
        elif kind in ("PodDisruptionBudget", "NetworkPolicy"):
            selector = obj["spec"].get("selector" if kind == "PodDisruptionBudget" else "podSelector")
            if not any(matches(selector, labels) for _, _, _, labels in templates):
                problem(f"{kind}/{name}", "selects no pod template")
        elif kind == "HorizontalPodAutoscaler":
            target = obj["spec"]["scaleTargetRef"]
            workload = docs.get((target["kind"], target["name"]))
            if workload is None:
                problem(f"{kind}/{name}", f"targets {target['kind']}/{target['name']}, absent")
            elif "replicas" in workload["spec"]:
                problem(f"{kind}/{name}", f"{target['kind']}/{target['name']} sets spec.replicas: "
                                          "every apply would reset what the autoscaler chose")
        elif kind == "Ingress":
            for prefix_key, value in (obj["metadata"].get("annotations") or {}).items():
                prefix, _, annotation = prefix_key.partition("/")
                if prefix == "nginx.ingress.kubernetes.io" \
                        and annotation not in INGRESS_NGINX_ANNOTATIONS:
                    problem(f"Ingress/{name}", f"unknown ingress-nginx annotation {prefix_key}")
            for rule in obj["spec"].get("rules") or []:
                for path in rule.get("http", {}).get("paths") or []:
                    backend = path["backend"]["service"]
                    service = docs.get(("Service", backend["name"]))
                    if service is None:
                        problem(f"Ingress/{name}", f"backend Service {backend['name']} is absent")
                        continue
                    port = backend["port"]
                    ports = service["spec"].get("ports") or []
                    if not any(port.get("name") == p.get("name") if "name" in port
                               else port.get("number") == p["port"] for p in ports):
                        problem(f"Ingress/{name}", f"Service {backend['name']} has no port {port}")


def check_confab(repo, docs):
    deployment = docs[("Deployment", "confab")]
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "confab")
    where = "Deployment/confab"

    # --- the grace period against the drain, as the code has it ---
    app = (repo / "src/app.rs").read_text()
    redis = (repo / "src/broker/redis/mod.rs").read_text()
    drain = rust_seconds(app, "DRAIN_DEADLINE")
    http_stop = rust_seconds(app, "HTTP_STOP_DEADLINE")
    command = rust_seconds(redis, "COMMAND_TIMEOUT")
    deregister = 3 * command  # release the node's presence, DEL its liveness key, SREM it
    margin = 5
    pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre_stop:
        sleep = pre_stop["sleep"]["seconds"]
    elif pre_stop.get("exec", {}).get("command", [""])[0] == "sleep":
        sleep = int(pre_stop["exec"]["command"][1])
    else:
        sleep = 0
        problem(where, "no preStop sleep: the pod would get SIGTERM while load balancers "
                       "still send it new connections")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    needed = sleep + drain + http_stop + deregister + margin
    if grace < needed:
        problem(where, f"terminationGracePeriodSeconds {grace} < preStop {sleep} + drain "
                       f"{drain} + HTTP stop {http_stop} + Redis deregister {deregister} "
                       f"+ margin {margin} = {needed}")
    architecture = (repo / "docs/ARCHITECTURE.md").read_text()
    if not re.search(rf"at most {drain:g} s \(`DRAIN_DEADLINE`\)", architecture):
        problem("docs/ARCHITECTURE.md", f"does not state the {drain:g} s DRAIN_DEADLINE")
    if not re.search(rf"up to {http_stop:g} s \(`HTTP_STOP_DEADLINE`\)", architecture):
        problem("docs/ARCHITECTURE.md", f"does not state the {http_stop:g} s HTTP_STOP_DEADLINE")
    for doc in ("docs/ARCHITECTURE.md", "docs/deploy.md"):
        stated = set(re.findall(r"terminationGracePeriodSeconds: (\d+)", (repo / doc).read_text()))
        if stated != {str(grace)}:
            problem(doc, f"gives terminationGracePeriodSeconds {sorted(stated)}, the manifest {grace}")

    # --- probes at real routes ---
    routes = set(re.findall(r'\.route\("(/[^"{]*)"', app))
    contract = (repo / "docs/protocol.md").read_text()
    documented = set(re.findall(r"^\| `GET (/[a-z/]*)`", contract, re.M))
    config = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            config.update(docs[("ConfigMap", source["configMapRef"]["name"])]["data"])
    bind_port = int(config.get("CONFAB_BIND", "127.0.0.1:3000").rsplit(":", 1)[1])
    named_ports = {p["name"]: p["containerPort"] for p in container.get("ports") or [] if "name" in p}
    for kind, want in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        probe = container.get(kind)
        if not probe or "httpGet" not in probe:
            problem(where, f"no HTTP {kind}")
            continue
        if probe["httpGet"]["path"] != want:
            problem(where, f"{kind} is {probe['httpGet']['path']}, should be {want}")
    for probe in handlers(container):
        if "httpGet" not in probe:
            continue
        path, port = probe["httpGet"]["path"], probe["httpGet"]["port"]
        if path not in routes or path not in documented:
            problem(where, f"probe path {path} is not a route of confab (src/app.rs: "
                           f"{sorted(routes)}; docs/protocol.md: {sorted(documented)})")
        if named_ports.get(port, port) != bind_port:
            problem(where, f"probe port {port} is not CONFAB_BIND's port {bind_port}")

    # --- trusted proxies: per cluster, and only reachable from named namespaces ---
    if "CONFAB_TRUSTED_PROXIES" in docs[("ConfigMap", "confab")]["data"]:
        problem("ConfigMap/confab", "sets CONFAB_TRUSTED_PROXIES: it belongs in cluster.env")
    cluster = [o for (k, n), o in docs.items() if k == "ConfigMap" and n.startswith("confab-cluster")]
    if len(cluster) != 1 or "CONFAB_TRUSTED_PROXIES" not in cluster[0].get("data", {}):
        problem(where, "no confab-cluster ConfigMap with CONFAB_TRUSTED_PROXIES (cluster.env)")
    else:
        for entry in filter(None, map(str.strip, cluster[0]["data"]["CONFAB_TRUSTED_PROXIES"].split(","))):
            network = ipaddress.ip_network(entry, strict=False)
            if network.prefixlen == 0:
                problem("cluster.env", f"CONFAB_TRUSTED_PROXIES {entry} trusts everybody")
    policy = docs.get(("NetworkPolicy", "confab"))
    if policy is None:
        problem(where, "no NetworkPolicy confab")
    else:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from") or []
            if not peers:
                problem("NetworkPolicy/confab", "a rule admits every source")
            for peer in peers:
                names = (peer.get("namespaceSelector") or {}).get("matchLabels", {})
                if "ipBlock" in peer or "kubernetes.io/metadata.name" not in names:
                    problem("NetworkPolicy/confab", f"peer {peer} is not a namespace by name")

    # --- memory for a full node (docs/deploy.md: sockets x 10 KiB + ~10 MiB) ---
    sockets = int(config.get("CONFAB_MAX_CONNECTIONS", "20000"))
    budget = sockets * 10 * 2**10 + 10 * 2**20
    request = quantity(container["resources"]["requests"]["memory"])
    if request < budget:
        problem(where, f"memory request {request / 2**20:.0f} MiB is below the budget for "
                       f"{sockets} sockets: {budget / 2**20:.0f} MiB (docs/deploy.md)")
    deploy = (repo / "docs/deploy.md").read_text()
    if "sockets × 10 KiB + ~10 MiB" not in deploy:
        problem("docs/deploy.md", "the memory budget formula the check uses is gone")


def check_redis(docs):
    statefulset = docs.get(("StatefulSet", "redis"))
    if statefulset is None:
        return problem("rendered set", "no StatefulSet redis")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    args = container.get("args") or []
    settings = {}
    for flag, value in zip(args, args[1:]):
        if flag.startswith("--"):
            settings[flag[2:]] = value
    for (kind, name), obj in docs.items():
        if kind == "ConfigMap" and "redis.conf" in (obj.get("data") or {}) \
                and any("redis.conf" in a for a in args):
            for line in obj["data"]["redis.conf"].splitlines():
                key, _, value = line.strip().partition(" ")
                if key and not key.startswith("#"):
                    settings[key] = value.strip()
    limit = quantity(container["resources"]["limits"]["memory"])
    if "maxmemory" not in settings:
        problem("StatefulSet/redis", "no maxmemory: growth ends in an OOM kill")
    elif not 0 < redis_bytes(settings["maxmemory"]) <= 0.8 * limit:
        problem("StatefulSet/redis", f"maxmemory {settings['maxmemory']} leaves no room under "
                                     f"the {limit / 2**20:.0f} MiB limit (fork, buffers)")
    if settings.get("maxmemory-policy") != "noeviction":
        problem("StatefulSet/redis", "maxmemory-policy must be noeviction: confab's counters, "
                                     "presence and registry have no TTL")
    budget = docs.get(("PodDisruptionBudget", "redis"))
    if budget and budget["spec"].get("maxUnavailable") == 0:
        problem("PodDisruptionBudget/redis", "maxUnavailable 0 blocks every node drain")


def main():
    repo = pathlib.Path(sys.argv[1])
    for path in sys.argv[2:]:
        docs = {}
        for obj in yaml.safe_load_all(open(path)):
            if obj:
                key = (obj["kind"], obj["metadata"]["name"])
                if key in docs:
                    problem(path, f"{key} twice")
                docs[key] = obj
        before = len(problems)
        for (kind, name), obj in docs.items():
            check_metadata(f"{kind}/{name}", obj)
        check_workloads(docs)
        check_pod_security(docs)
        check_services(docs)
        check_confab(repo, docs)
        check_redis(docs)
        label = pathlib.Path(path).name
        if len(problems) == before:
            print(f"{label}: {len(docs)} objects: names, selectors, ports, volumes, Pod Security, "
                  "probes, grace period, trusted proxies, memory, Redis limits: fine")
    for text in problems:
        print(f"validate-deploy: {text}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
