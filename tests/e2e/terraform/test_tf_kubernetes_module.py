"""terraform/kubernetes cannot be applied here (no Kubernetes cluster, no hashicorp/kubernetes provider
offline): these tests parse its HCL with python-hcl2 and check, object by object, that what it would
send to the API server is a valid Kubernetes object — names, required fields, numeric ports, selectors
that match the pods' labels, named ports that exist, mounts of declared volumes, a ServiceMonitor that
selects a Service with the port it scrapes — and that the Dockerfile copies files that exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

hcl2 = pytest.importorskip(
    "hcl2", reason="python-hcl2 is not installed (it is in the dev extra: pip install -e .[dev])"
)

REPO = Path(__file__).resolve().parents[3]
MODULE = REPO / "terraform" / "kubernetes"

# The values a user must give (variables without a default), and `each.key` per for_each resource.
INPUTS = {
    "cluster_name": "east-1",
    "region": "us-east",
    "zones": ["us-east-1a", "us-east-1b"],
    "pki_dir": "/pki",
}
EACH_KEY = {"identity": "gateway", "register_peer": "west-1"}

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")  # IANA_SVC_NAME: at most 15 characters
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class Opaque(str):
    """A value only Terraform knows at apply time (a file's content, another resource's attribute)."""


def _unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == '"' else key


class Module:
    """The module's HCL, with a small evaluator for the expressions its manifests use."""

    def __init__(self, directory: Path, inputs: dict[str, Any]) -> None:
        self.text = ""
        self.variables: dict[str, dict] = {}
        self.locals: dict[str, Any] = {}
        self.resources: dict[tuple[str, str], dict] = {}
        self.outputs: dict[str, dict] = {}
        for path in sorted(directory.glob("*.tf")):
            self.text += path.read_text()
            with open(path) as handle:
                parsed = hcl2.load(handle)
            for block in parsed.get("variable", []):
                for name, body in block.items():
                    self.variables[_unquote(name)] = body
            for block in parsed.get("locals", []):
                self.locals.update({k: v for k, v in block.items() if k != "__is_block__"})
            for block in parsed.get("resource", []):
                for rtype, named in block.items():
                    for rname, body in named.items():
                        self.resources[(_unquote(rtype), _unquote(rname))] = body
            for block in parsed.get("output", []):
                for name, body in block.items():
                    self.outputs[_unquote(name)] = body
        self.inputs = inputs
        self.each_key: str | None = None

    # -- evaluation -------------------------------------------------------------------------------

    def var(self, name: str) -> Any:
        if name in self.inputs:
            return self.inputs[name]
        assert name in self.variables, f"var.{name} is not declared"
        return self.value(self.variables[name].get("default"))

    def value(self, raw: Any) -> Any:
        """A parsed HCL value with its expressions evaluated (Opaque where only Terraform can)."""
        if isinstance(raw, list):
            return [self.value(v) for v in raw]
        if isinstance(raw, dict):
            return {_unquote(k): self.value(v) for k, v in raw.items() if k != "__is_block__"}
        if not isinstance(raw, str):
            return raw
        if raw.startswith("${") and raw.endswith("}") and _matching_brace(raw, 1) == len(raw) - 1:
            return self.expr(raw[2:-1])
        if raw.startswith('"') and raw.endswith('"'):
            return self.template(raw[1:-1])
        return raw

    def template(self, text: str) -> str:
        out, i = "", 0
        while i < len(text):
            if text.startswith("${", i):
                end = _matching_brace(text, i + 1)
                got = self.expr(text[i + 2 : end])
                if isinstance(got, Opaque) or not isinstance(got, (str, int, float)):
                    return Opaque(out + "<?>")
                out += str(got)
                i = end + 1
            else:
                out += text[i]
                i += 1
        return out

    def expr(self, source: str) -> Any:
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError:  # HCL beyond Python's grammar (a ? b : c, heredocs): Terraform's to evaluate
            return Opaque(source)
        return self._eval(tree.body)

    def _eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return self.template(node.value) if isinstance(node.value, str) else node.value
        if isinstance(node, ast.List):
            return [self._eval(e) for e in node.elts]
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            return self._reference(node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self._eval(node.left), self._eval(node.right)
            return (
                left + right
                if isinstance(left, int) and isinstance(right, int)
                else Opaque(ast.unparse(node))
            )
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "merge":
            merged: dict = {}
            for arg in node.args:
                merged.update(self._eval(arg))
            return merged
        return Opaque(ast.unparse(node))

    def _reference(self, node: ast.AST) -> Any:
        """`var.x.y`, `local.x`, `each.key`, or `TYPE.NAME[KEY].attr[0].attr` of a resource of this module."""
        steps: list[Any] = []
        while isinstance(node, (ast.Attribute, ast.Subscript)):
            steps.insert(0, node.attr if isinstance(node, ast.Attribute) else self._eval(node.slice))
            node = node.value
        if not isinstance(node, ast.Name):
            return Opaque("expression")
        root = node.id
        if root == "each" and steps == ["key"]:
            return self.each_key
        if root == "var":
            value = self.var(steps.pop(0))
        elif root == "local":
            name = steps.pop(0)
            assert name in self.locals, f"local.{name} is not defined"
            value = self.value(self.locals[name])
        elif (root, steps[0] if steps else None) in self.resources:
            name = steps.pop(0)
            key = (
                steps.pop(0)
                if steps and isinstance(steps[0], str) and steps[0] not in ("metadata", "spec", "status")
                else None
            )
            saved = self.each_key
            self.each_key = key if key is not None else EACH_KEY.get(name)
            try:
                value = self.value(self.resources[(root, name)])
            finally:
                self.each_key = saved
        else:
            return Opaque(root)
        for step in steps:
            if isinstance(value, dict) and step in value:
                value = value[step]
            elif isinstance(value, list) and isinstance(step, int) and step < len(value):
                value = value[step]
            else:
                return Opaque(f"{root}...{step}")  # computed by the API server (status, ids)
        return value

    # -- rendering ------------------------------------------------------------------------------

    def render(self, rtype: str, rname: str) -> dict:
        self.each_key = EACH_KEY.get(rname)
        return self.value(self.resources[(rtype, rname)])

    def of_type(self, rtype: str) -> dict[str, dict]:
        return {name: self.render(t, name) for (t, name) in self.resources if t == rtype}


def _matching_brace(text: str, open_at: int) -> int:
    """Index of the `}` closing the `{` at `open_at`, skipping braces inside string literals."""
    depth, i, in_string = 0, open_at, False
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            in_string = not in_string
        elif not in_string or text.startswith("${", i):
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return i
        i += 1
    raise AssertionError(f"unbalanced braces in {text!r}")


def one(blocks: Any) -> dict:
    """A nested block that Terraform allows once (`metadata { ... }`), as parsed: a list of one dict."""
    assert isinstance(blocks, list) and len(blocks) == 1, blocks
    return blocks[0]


def check_metadata(kind: str, name: str, metadata: dict, *, namespaced: bool = True) -> None:
    assert DNS1123_SUBDOMAIN.match(metadata["name"]), f"{kind} {name}: metadata.name {metadata['name']!r}"
    if namespaced:
        assert metadata.get("namespace"), f"{kind} {name}: no metadata.namespace"
    for key, value in (metadata.get("labels") or {}).items():
        assert LABEL_KEY.match(key), f"{kind} {name}: label key {key!r}"
        assert isinstance(value, Opaque) or LABEL_VALUE.match(value), f"{kind} {name}: label {key}={value!r}"


@pytest.fixture(scope="module")
def module() -> Module:
    return Module(MODULE, INPUTS)


def test_every_file_of_both_modules_parses_as_hcl2():
    for path in [*MODULE.glob("*.tf"), REPO / "terraform" / "demo" / "main.tf"]:
        with open(path) as handle:
            assert hcl2.load(handle), path


def test_every_reference_is_declared(module: Module):
    for name in set(re.findall(r"\bvar\.([a-z_][a-z0-9_]*)", module.text)):
        assert name in module.variables, f"var.{name} is used but not declared"
    for name in set(re.findall(r"\blocal\.([a-z_][a-z0-9_]*)", module.text)):
        assert name in module.locals, f"local.{name} is used but not defined"
    declared = {f"{t}.{n}" for t, n in module.resources}
    for ref in set(re.findall(r"\b(kubernetes_[a-z0-9_]+\.[a-z0-9_]+)", module.text)):
        assert ref in declared, f"{ref} is referenced but not declared"
    for name, body in module.variables.items():
        assert body.get("description"), f"variable {name} has no description"


def test_the_module_declares_every_object_a_cluster_needs(module: Module):
    types = {t for t, _ in module.resources}
    assert {
        "kubernetes_namespace_v1", "kubernetes_secret_v1", "kubernetes_config_map_v1", "kubernetes_deployment_v1",
        "kubernetes_service_v1", "kubernetes_manifest", "kubernetes_job_v1",
    } <= types  # fmt: skip
    services = module.of_type("kubernetes_service_v1")
    assert [n for n, s in services.items() if one(s["spec"])["type"] == "LoadBalancer"] == ["eastwest"]
    assert set(module.of_type("kubernetes_deployment_v1")) == {"control", "gateway"}


def test_deployments_select_their_own_pods_and_use_what_they_declare(module: Module):
    for name, deployment in module.of_type("kubernetes_deployment_v1").items():
        check_metadata("Deployment", name, one(deployment["metadata"]))
        spec = one(deployment["spec"])
        assert isinstance(spec["replicas"], int) and spec["replicas"] >= 1
        selector = one(spec["selector"])["match_labels"]
        template = one(spec["template"])
        pod_labels = one(template["metadata"])["labels"]
        assert selector and selector.items() <= pod_labels.items(), (
            f"{name}: selector {selector} vs labels {pod_labels}"
        )
        pod = one(template["spec"])
        volumes = {v["name"] for v in pod["volume"]}
        for container in pod["container"]:
            assert DNS1123_LABEL.match(container["name"]) and container["image"]
            ports = {}
            for port in container["port"]:
                assert isinstance(port["container_port"], int) and 0 < port["container_port"] < 65536, port
                assert PORT_NAME.match(port["name"]), port["name"]
                ports[port["name"]] = port["container_port"]
            assert len(set(ports.values())) == len(ports), f"{name}: two ports share a number"
            for mount in container["volume_mount"]:
                assert mount["name"] in volumes, f"{name}: mounts undeclared volume {mount['name']}"
                assert mount["mount_path"].startswith("/")
            for probe in ("readiness_probe", "liveness_probe"):
                target = one(one(container[probe])["tcp_socket"])["port"]
                assert target in ports, f"{name}: {probe} on unknown port {target}"
            assert container["args"][0] in ("control", "gateway") and "--config" in container["args"]


def test_services_select_pods_and_name_ports_those_pods_have(module: Module):
    deployments = module.of_type("kubernetes_deployment_v1")
    pods = {
        name: (
            one(one(one(d["spec"])["template"])["metadata"])["labels"],
            {p["name"] for c in one(one(one(d["spec"])["template"])["spec"])["container"] for p in c["port"]},
        )
        for name, d in deployments.items()
    }
    for name, service in module.of_type("kubernetes_service_v1").items():
        check_metadata("Service", name, one(service["metadata"]))
        spec = one(service["spec"])
        assert spec["type"] in ("ClusterIP", "LoadBalancer", "NodePort")
        selected = [p for p, (labels, _) in pods.items() if spec["selector"].items() <= labels.items()]
        assert len(selected) == 1, f"Service {name} selects {selected}"
        _, container_ports = pods[selected[0]]
        names = [p["name"] for p in spec["port"]]
        assert len(set(names)) == len(names)
        for port in spec["port"]:
            assert isinstance(port["port"], int) and 0 < port["port"] < 65536, port
            assert port["target_port"] in container_ports, (
                f"Service {name}: target_port {port['target_port']}"
            )
            assert port["protocol"] == "TCP"


def test_the_service_monitor_scrapes_a_port_of_a_service_it_selects(module: Module):
    monitor = module.render("kubernetes_manifest", "service_monitor")["manifest"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    check_metadata("ServiceMonitor", "service_monitor", monitor["metadata"])
    match = monitor["spec"]["selector"]["matchLabels"]
    services = module.of_type("kubernetes_service_v1")
    selected = [n for n, s in services.items() if match.items() <= one(s["metadata"])["labels"].items()]
    assert selected == ["gateway"]
    ports = {p["name"] for p in one(services["gateway"]["spec"])["port"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def test_secrets_and_the_config_map_are_valid(module: Module):
    secrets = module.of_type("kubernetes_secret_v1")
    for name, secret in secrets.items():
        check_metadata("Secret", name, one(secret["metadata"]))
        assert secret["type"] == "Opaque"
        data = secret["data"]
        assert isinstance(data, Opaque) or all(CONFIG_KEY.match(k) for k in data), (
            f"Secret {name}: keys {list(data)}"
        )
    assert set(secrets["cluster_ca"]["data"]) == {"bundle.pem", "ca.crt", "ca.key"}
    assert set(secrets["identity"]["data"]) == {"cert.pem", "key.pem", "chain.pem"}
    config = module.render("kubernetes_config_map_v1", "config")
    check_metadata("ConfigMap", "config", one(config["metadata"]))
    assert set(config["data"]) == {"control.toml", "gateway.toml"}
    # Each pod mounts secret keys that exist, at the PKI layout `isthmus` reads (certs/files.py).
    secret_keys = {
        one(s["metadata"])["name"]: set(s["data"])
        for s in secrets.values()
        if not isinstance(s["data"], Opaque)
    }
    for name, deployment in module.of_type("kubernetes_deployment_v1").items():
        pod = one(one(one(deployment["spec"])["template"])["spec"])
        pki = next(v for v in pod["volume"] if v["name"] == "pki")
        paths = []
        for source in one(pki["projected"])["sources"]:
            projected = one(source["secret"])
            for item in projected["items"]:
                assert item["key"] in secret_keys.get(projected["name"], {item["key"]}), (name, item)
                paths.append(item["path"])
        role = "control" if name == "control" else "gateway"
        assert "bundle.pem" in paths
        assert {
            f"clusters/east-1/identities/{role}/{f}" for f in ("cert.pem", "key.pem", "chain.pem")
        } <= set(paths)


def test_the_peering_job_reads_its_token_from_the_secret(module: Module):
    job = module.render("kubernetes_job_v1", "register_peer")
    check_metadata("Job", "register_peer", one(job["metadata"]))
    assert one(job["metadata"])["name"] == "isthmus-register-west-1"
    pod = one(one(one(job["spec"])["template"])["spec"])
    assert pod["restart_policy"] in ("OnFailure", "Never")
    container = one(pod["container"])
    assert "isthmus cluster register --token" in container["command"][-1]
    ref = one(one(one(container["env"])["value_from"])["secret_key_ref"])
    assert ref["key"] == "west-1" and ref["name"] == "isthmus-east-1-peer-tokens"
    tokens = module.render("kubernetes_secret_v1", "peer_tokens")
    assert one(tokens["metadata"])["name"] == ref["name"]


def test_the_dockerfile_copies_files_that_exist_and_runs_isthmus():
    lines = [line.strip() for line in (MODULE / "Dockerfile").read_text().splitlines()]
    assert any(line.startswith("FROM python:3.11") for line in lines)
    assert 'ENTRYPOINT ["isthmus"]' in lines
    assert "USER 10001" in lines  # matches run_as_user in the Deployments
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile: COPY {source} does not exist in the repository"
    packages = re.findall(r"include = \[([^\]]*)\]", (REPO / "pyproject.toml").read_text())[0]
    for package in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {package}/ {package}/" in lines, f"the image lacks the {package} package"
