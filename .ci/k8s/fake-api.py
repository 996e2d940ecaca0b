#!/usr/bin/env python3
"""A Kubernetes API server that knows the built-in kinds and holds nothing, on loopback.

`kubectl apply --dry-run=client` needs a server even though it changes nothing: it maps each
kind to its REST resource through the server's discovery (`/api`, `/apis`, `/apis/G/V`), then
GETs each object to decide between create and patch. No cluster can run on this machine
(docs/deploy.md, "What is not proven"), so .ci/validate-deploy points kubectl at this: the
discovery of the API groups and versions that Kubernetes 1.30 to 1.37 serve for the kinds
below, and `404 NotFound` for every object, as an empty cluster answers. A kind or version a
real cluster does not serve (a typo, an API removed since, such as policy/v1beta1) fails
kubectl's mapping exactly as it would against a real one.

Prints the port it listens on, then serves until killed. Standard library only.
"""

import http.server
import json
import sys

# (group, version) -> [(plural, kind, namespaced)], as the real API server's discovery lists
# them. Only what a chat deploy may plausibly use; add a kind here when a manifest needs it.
RESOURCES = {
    ("", "v1"): [
        ("namespaces", "Namespace", False),
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("pods", "Pod", True),
    ],
    ("apps", "v1"): [
        ("deployments", "Deployment", True),
        ("statefulsets", "StatefulSet", True),
        ("daemonsets", "DaemonSet", True),
    ],
    ("batch", "v1"): [("jobs", "Job", True), ("cronjobs", "CronJob", True)],
    ("networking.k8s.io", "v1"): [
        ("ingresses", "Ingress", True),
        ("ingressclasses", "IngressClass", False),
        ("networkpolicies", "NetworkPolicy", True),
    ],
    ("policy", "v1"): [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    ("autoscaling", "v1"): [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    ("autoscaling", "v2"): [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    ("rbac.authorization.k8s.io", "v1"): [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
    ],
}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def resource_list(group, version):
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": [
            {"name": plural, "singularName": kind.lower(), "namespaced": namespaced,
             "kind": kind, "verbs": VERBS}
            for plural, kind, namespaced in RESOURCES[(group, version)]
        ],
    }


def group_list():
    groups = {}
    for group, version in RESOURCES:
        if group:
            groups.setdefault(group, []).append(version)
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": group,
                "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
                # The newest listed last: autoscaling prefers v2.
                "preferredVersion": {"groupVersion": f"{group}/{versions[-1]}",
                                     "version": versions[-1]},
            }
            for group, versions in groups.items()
        ],
    }


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        sys.stderr.write(f"fake-api: {self.command} {self.path}\n")

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - the base class's name
        path = self.path.split("?")[0].rstrip("/")
        parts = path.strip("/").split("/")
        if path == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"],
                                    "serverAddressByClientCIDRs": []})
        if path == "/apis":
            return self.reply(200, group_list())
        if path == "/api/v1":
            return self.reply(200, resource_list("", "v1"))
        if len(parts) == 3 and parts[0] == "apis" and (parts[1], parts[2]) in RESOURCES:
            return self.reply(200, resource_list(parts[1], parts[2]))
        if path == "/version":
            return self.reply(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0"})
        # Every object, and anything else (openapi included): absent, as in an empty cluster.
        return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "message": f"{path} not found", "reason": "NotFound",
                                "code": 404})

    def refuse(self):
        self.reply(405, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "message": "this fake API server accepts no writes",
                         "reason": "MethodNotAllowed", "code": 405})

    do_POST = do_PUT = do_PATCH = do_DELETE = refuse  # noqa: N815


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
