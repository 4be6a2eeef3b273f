"""Offline checks of Loupe's Kubernetes manifests, for tests/tests/deploy.rs.

  deploy_check.py objects FILE
      prints, as JSON: every object's kind/name, the agent ConfigMap's loupe.yaml
      text, the DaemonSet container's added capabilities and the relay's command.
  deploy_check.py policies CRD_FILE KIND POLICY_FILE...
      validates each policy document (its apiVersion/kind replaced by the CRD's)
      against the CRD's openAPIV3Schema with jsonschema, printing one line per
      document; exits 1 if any fails.
"""
import json
import sys

import jsonschema
import yaml


def objects(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    out = {"objects": [f"{d['kind']}/{d['metadata']['name']}" for d in docs]}
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "loupe-config":
            out["config"] = d["data"]["loupe.yaml"]
        if d["kind"] == "DaemonSet":
            c = d["spec"]["template"]["spec"]["containers"][0]
            out["capabilities"] = c["securityContext"]["capabilities"]["add"]
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "hubble-relay":
            out["relay"] = d["spec"]["template"]["spec"]["containers"][0]["command"]
    print(json.dumps(out))


def schema_of(crd):
    """The CRD's structural schema as JSON Schema (x-kubernetes-* keys ignored,
    `preserve-unknown-fields` objects accept any property)."""
    def walk(s):
        if isinstance(s, dict):
            return {k: walk(v) for k, v in s.items() if not k.startswith("x-kubernetes-")}
        if isinstance(s, list):
            return [walk(v) for v in s]
        return s
    return walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def policies(crd_path, kind, files):
    crd = yaml.safe_load(open(crd_path))
    version = crd["spec"]["versions"][0]["name"]
    api_version = f"{crd['spec']['group']}/{version}"
    schema = schema_of(crd)
    failed = False
    for f in files:
        for doc in yaml.safe_load_all(open(f)):
            if not doc:
                continue
            doc["apiVersion"], doc["kind"] = api_version, kind
            name = f"{f}: {doc.get('metadata', {}).get('name')}"
            try:
                jsonschema.validate(doc, schema)
                print(f"ok {name}")
            except jsonschema.ValidationError as e:
                failed = True
                print(f"invalid {name}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    if sys.argv[1] == "objects":
        objects(sys.argv[2])
    elif sys.argv[1] == "policies":
        policies(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
