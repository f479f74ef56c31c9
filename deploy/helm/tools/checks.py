"""The checks of `deploy/helm/check` on what `helm template` rendered; each subcommand exits 1 on a failure.

    checks.py validate --kube-version V [--kube-version V]... FILE...
        Every object, strictly (unknown fields fail), with kubernetes-validate against each Kubernetes version.
    checks.py contract --mode sqlite|postgres --node-command SWIFT_FILE FILE
        What the chart promises for its mode (workload kind, replicas, volumes, budget, spread, probes, secrets),
        and that the node is started only with flags `meridian node` has (read from its Swift source).
    checks.py karmada --policies FILE... --release NAME=FILE...
        The Karmada policies, structurally: each object's fields, that every resource selector names an object
        its release renders, that every rendered object is propagated, and that override paths exist.
    checks.py cluster-files --meridian BIN FILE...
        The cluster file of each render, completed as its pod completes it, through `meridian config check`.
"""

import argparse
import functools
import os
import re
import subprocess
import sys
import tempfile

import kubernetes_validate
import kubernetes_validate.utils
import yaml

# kubernetes-validate reads a schema file (and the multi-megabyte definitions file) for every object: read each once.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents)


class Failures:
    def __init__(self):
        self.messages = []

    def add(self, where, message):
        self.messages.append(f"{where}: {message}")

    def check(self, condition, where, message):
        if not condition:
            self.add(where, message)
        return condition

    def finish(self, what):
        for message in self.messages:
            print(f"  FAIL {message}")
        if self.messages:
            print(f"{what}: {len(self.messages)} failure(s)")
            return 1
        return 0


def objects(path):
    with open(path, encoding="utf-8") as handle:
        return [document for document in yaml.safe_load_all(handle) if document]


def name_of(resource):
    return f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"


# --- validate -------------------------------------------------------------------------------------------------

def validate(arguments):
    failures = Failures()
    count = 0
    for path in arguments.files:
        rendered = objects(path)
        failures.check(rendered, os.path.basename(path), "nothing was rendered")
        for resource in rendered:
            for version in arguments.kube_version:
                count += 1
                where = f"{os.path.basename(path)} {name_of(resource)} (Kubernetes {version})"
                try:
                    kubernetes_validate.validate(resource, version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    location = "/".join(str(part) for part in error.path) or "(top)"
                    failures.add(where, f"at {location}: {error.message}")
                except kubernetes_validate.SchemaNotFoundError as error:
                    failures.add(where, error.message)
    if not failures.messages:
        print(f"  ok: {count} object validations, strict, Kubernetes {', '.join(arguments.kube_version)}")
    return failures.finish("kubernetes-validate")


# --- contract -------------------------------------------------------------------------------------------------

def node_flags(swift_file):
    """The options and flags of `meridian node`, as ArgumentParser spells them, read from the command's source."""
    with open(swift_file, encoding="utf-8") as handle:
        source = handle.read()

    def kebab(name):
        return "--" + re.sub(r"(?<!^)([A-Z])", r"-\1", name).lower()

    def properties(struct):
        start = source.index(f"struct {struct}")
        body = source[start:source.index("func run()", start) if struct == "NodeCommand" else len(source)]
        return [kebab(match) for match in re.findall(r"@(?:Option|Flag)\b.*?\bvar\s+(\w+)", body, re.S)]

    flags = set(properties("NodeCommand"))
    if "@OptionGroup var cluster: ConfigOption" in source:
        # ConfigOption (ClusterOptions.swift): --config and --token.
        flags |= {"--config", "--token"}
    return flags


def scaled(value, total, round_up=True):
    """Kubernetes' GetScaledValueFromIntOrPercent: a count, or a percentage of `total`, rounded up (budgets, and a
    Deployment's maxSurge) or down (a Deployment's maxUnavailable)."""
    if isinstance(value, str) and value.endswith("%"):
        return -(-int(value[:-1]) * total // 100) if round_up else int(value[:-1]) * total // 100
    return int(value)


def contract(arguments):
    failures = Failures()
    rendered = objects(arguments.file)
    by_kind = {}
    for resource in rendered:
        by_kind.setdefault(resource["kind"], []).append(resource)
    where = os.path.basename(arguments.file)
    postgres = arguments.mode == "postgres"

    workload_kind = "Deployment" if postgres else "StatefulSet"
    other_kind = "StatefulSet" if postgres else "Deployment"
    workloads = by_kind.get(workload_kind, [])
    if not failures.check(len(workloads) == 1, where, f"expected one {workload_kind}, found {len(workloads)}"):
        return failures.finish("contract")
    failures.check(other_kind not in by_kind, where, f"a {other_kind} in {arguments.mode} mode")
    workload = workloads[0]
    pod = workload["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    containers = {container["name"]: container for container in pod["spec"]["containers"]}
    node = containers.get("meridian")
    if not failures.check(node is not None, where, "no container named meridian"):
        return failures.finish("contract")

    # The node's command line: `meridian node` with flags it has.
    failures.check(node.get("command") == ["meridian"] and node["args"][0] == "node", where, "the container does not run `meridian node`")
    known = node_flags(arguments.node_command)
    for argument in node["args"][1:]:
        if argument.startswith("--"):
            failures.check(argument.split("=")[0] in known, where, f"`meridian node` has no flag {argument} (it has {', '.join(sorted(known))})")
    args = node["args"]
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    failures.check(config_path is not None, where, "no --config")
    failures.check("--peer-route" in args and args[args.index("--peer-route") + 1] == "direct", where, "peers must be reached directly (--peer-route direct)")

    # The cluster file.
    config_maps = by_kind.get("ConfigMap", [])
    cluster = None
    if failures.check(len(config_maps) == 1 and "cluster.yaml" in config_maps[0].get("data", {}), where, "no ConfigMap with cluster.yaml"):
        cluster = yaml.safe_load(config_maps[0]["data"]["cluster.yaml"])
        region = args[args.index("--region") + 1]
        own = cluster["regions"][0]
        failures.check(own["name"] == region, where, f"the cluster file's first region is {own['name']}, the node serves {region}")
        failures.check(own["client"].startswith("0.0.0.0:") and own["peer"].startswith("0.0.0.0:"), where, "the region does not listen on every address of the pod")
        text = config_maps[0]["data"]["cluster.yaml"]
        failures.check("session_secret" not in text, where, "the ConfigMap holds the session secret")
        store = own.get("store")
        if postgres:
            if failures.check(isinstance(store, dict) and store.get("kind") == "postgres", where, "the cluster file has no postgres store"):
                failures.check(store.get("password_env") == "MERIDIAN_POSTGRES_PASSWORD" and "password_file" not in store, where, "the password is not read from MERIDIAN_POSTGRES_PASSWORD")
                failures.check(not re.match(r"^postgres(ql)?://[^/@]*:[^/@]*@", store.get("url", "")) and "password=" not in store.get("url", ""),
                               where, "the store's url holds a password")
        else:
            failures.check(store is None, where, "a store section in SQLite mode (SQLite is the default)")

    # Ports and Services. With PostgreSQL every node answers /health for itself on a port of its own
    # (--health-listen), since a standby relays the client and peer ports to the lease holder.
    ports = {port["name"]: port["containerPort"] for port in node.get("ports", [])}
    expected_ports = {"client", "peer", "health"} if postgres else {"client", "peer"}
    failures.check(set(ports) == expected_ports, where, f"container ports {sorted(ports)}, expected {', '.join(sorted(expected_ports))}")
    failures.check(len(set(ports.values())) == len(ports), where, f"container ports {ports} share a number")
    if postgres:
        listen = args[args.index("--health-listen") + 1] if "--health-listen" in args else None
        failures.check(listen == f"0.0.0.0:{ports.get('health')}", where,
                       f"--health-listen is {listen}, expected 0.0.0.0:{ports.get('health')} (the container's health port)")
    else:
        failures.check("--health-listen" not in args, where, "--health-listen in SQLite mode (the node refuses it)")
    # With PostgreSQL the holder writes where the others reach it into the lease row: the pod's IP (the cluster
    # file's addresses are wildcards, and other pods cannot resolve its host name). SQLite refuses --advertise.
    env = {variable["name"]: variable for variable in node.get("env", [])}
    pod_ip = env.get("POD_IP", {})
    if postgres:
        advertise = args[args.index("--advertise") + 1] if "--advertise" in args else None
        failures.check(advertise == "$(POD_IP)", where, f"--advertise is {advertise}, expected $(POD_IP)")
        failures.check(pod_ip.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP" and "value" not in pod_ip,
                       where, f"POD_IP is {pod_ip or 'not set'}, expected the downward API's status.podIP")
    else:
        failures.check("--advertise" not in args, where, "--advertise in SQLite mode (the node refuses it)")
        failures.check(not pod_ip, where, "POD_IP in SQLite mode (nothing uses it)")
    services = {service["metadata"]["name"]: service for service in by_kind.get("Service", [])}
    release = workload["metadata"]["name"]
    for suffix, port_name in (("client", "client"), ("peer", "peer")):
        service = services.get(f"{release}-{suffix}")
        if failures.check(service is not None, where, f"no Service {release}-{suffix}"):
            failures.check([port["name"] for port in service["spec"]["ports"]] == [port_name], where, f"Service {release}-{suffix} does not expose {port_name}")
            failures.check(service["spec"].get("type", "ClusterIP") in ("ClusterIP", "NodePort", "LoadBalancer") and service["spec"].get("clusterIP") != "None",
                           where, f"Service {release}-{suffix} is not a routed Service")
    for service in services.values():
        selector = service["spec"].get("selector", {})
        failures.check(selector and all(pod_labels.get(key) == value for key, value in selector.items()), where,
                       f"Service {service['metadata']['name']} does not select the region's pods")

    # Probes: readiness asks the client port's /ready (the region is served there and its store answers; with
    # PostgreSQL a standby relays it to the lease holder), or connects over TCP where client certificates are
    # required. Liveness and startup ask /health: on the client port with SQLite, on the health port (plain HTTP)
    # with PostgreSQL, where each node answers for itself (on the client port a standby would answer the holder's).
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health"), ("startupProbe", "/health")):
        handler = node.get(probe, {})
        http = handler.get("httpGet")
        if postgres and path == "/health":
            failures.check(http and http.get("path") == path and http.get("port") == "health" and http.get("scheme", "HTTP") == "HTTP" and "tcpSocket" not in handler,
                           where, f"{probe} is {handler}, expected GET {path} over HTTP on the health port")
        else:
            failures.check((http and http.get("path") == path and http.get("port") == "client") or handler.get("tcpSocket", {}).get("port") == "client",
                           where, f"{probe} does not ask the client port's {path}")

    if arguments.mode == "sqlite":
        failures.check(workload["spec"]["replicas"] == 1, where, "a SQLite StatefulSet with more than one replica")
        headless = services.get(workload["spec"].get("serviceName", ""))
        failures.check(headless is not None and headless["spec"].get("clusterIP") == "None", where, "the StatefulSet's serviceName is not a headless Service")
        claims = workload["spec"].get("volumeClaimTemplates", [])
        failures.check(len(claims) == 1 and claims[0]["metadata"]["name"] == "data" and claims[0]["spec"]["resources"]["requests"].get("storage"),
                       where, "no volume claim template 'data' with a size")
        failures.check("PodDisruptionBudget" not in by_kind, where, "a PodDisruptionBudget for a single node")
    else:
        replicas = workload["spec"]["replicas"]
        failures.check(replicas >= 2, where, "a PostgreSQL Deployment with fewer than 2 replicas")
        # Every node is Ready while the region is served (a standby relays to the holder). The rollout keeps every
        # node until its replacement is Ready; the budget lets a drain evict one node and keeps at least one.
        strategy = workload["spec"].get("strategy", {})
        rolling = strategy.get("rollingUpdate", {})
        failures.check(strategy.get("type", "RollingUpdate") == "RollingUpdate", where, f"the Deployment's strategy is {strategy.get('type')}, not RollingUpdate")
        failures.check(scaled(rolling.get("maxUnavailable", "25%"), replicas, round_up=False) == 0 and scaled(rolling.get("maxSurge", "25%"), replicas) >= 1, where,
                       f"the rollout is {rolling}: expected maxUnavailable 0 and a surge of at least 1 (a new node Ready before an old one goes)")
        budgets = by_kind.get("PodDisruptionBudget", [])
        if failures.check(len(budgets) == 1, where, "no PodDisruptionBudget"):
            spec = budgets[0]["spec"]
            if "minAvailable" in spec:
                desired_healthy = scaled(spec["minAvailable"], replicas)
            else:
                desired_healthy = replicas - scaled(spec.get("maxUnavailable", 0), replicas)
            failures.check(1 <= desired_healthy <= replicas - 1, where,
                           f"the budget is {spec}: with {replicas} Ready nodes it must keep at least 1 and let a drain evict 1 (it keeps {desired_healthy})")
            failures.check(spec.get("unhealthyPodEvictionPolicy") == "AlwaysAllow", where, "NotReady pods are not always evictable (unhealthyPodEvictionPolicy)")
            failures.check(all(pod_labels.get(key) == value for key, value in spec["selector"]["matchLabels"].items()), where, "the budget does not select the pods")
        spreads = pod["spec"].get("topologySpreadConstraints", [])
        failures.check(any(spread["topologyKey"] == "topology.kubernetes.io/zone" for spread in spreads), where, "no spread across zones")
        password = env.get("MERIDIAN_POSTGRES_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef", {})
        failures.check(password.get("name") and password.get("key"), where, "MERIDIAN_POSTGRES_PASSWORD does not come from a Secret")
        root_key = env.get("MERIDIAN_ROOT_KEY", {}).get("valueFrom", {}).get("secretKeyRef", {})
        failures.check(root_key.get("name") and root_key.get("key"), where, "stateless nodes without MERIDIAN_ROOT_KEY from a Secret")
        volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
        failures.check("emptyDir" in volumes.get("data", {}), where, "the data directory of a stateless node is not an emptyDir")
    failures.check(not any("value" in variable and re.search("PASSWORD|KEY|SECRET", name) for name, variable in env.items()), where,
                   "a secret given as a literal environment value")

    if not failures.messages:
        print(f"  ok: {where}: the {arguments.mode} contract holds ({len(rendered)} objects)")
    return failures.finish("contract")


# --- karmada --------------------------------------------------------------------------------------------------

def structure(schema, value, path, failures, where):
    """A small structural check: `schema` is a dict of field -> (required, type or nested dict or [item schema])."""
    if isinstance(schema, dict):
        if not failures.check(isinstance(value, dict), where, f"{path or '/'} is not a mapping"):
            return
        for field in value:
            failures.check(field in schema, where, f"{path}/{field}: unknown field (known: {', '.join(sorted(schema))})")
        for field, (required, inner) in schema.items():
            if field in value:
                structure(inner, value[field], f"{path}/{field}", failures, where)
            else:
                failures.check(not required, where, f"{path}/{field} is required")
    elif isinstance(schema, list):
        if failures.check(isinstance(value, list) and value, where, f"{path} is not a non-empty list"):
            for index, item in enumerate(value):
                structure(schema[0], item, f"{path}/{index}", failures, where)
    elif isinstance(schema, tuple):  # an enumeration
        failures.check(value in schema, where, f"{path} is {value!r}, not one of {', '.join(schema)}")
    elif schema is not None:
        failures.check(isinstance(value, schema), where, f"{path} is not a {schema.__name__}")


SELECTOR = {"apiVersion": (True, str), "kind": (True, str), "name": (False, str), "namespace": (False, str),
            "labelSelector": (False, {"matchLabels": (True, dict)})}
CLUSTERS = {"clusterNames": (True, [str])}
OPERATORS = ("add", "remove", "replace")
METADATA = {"name": (True, str), "namespace": (True, str), "labels": (False, dict), "annotations": (False, dict)}
PROPAGATION = {"apiVersion": (True, ("policy.karmada.io/v1alpha1",)), "kind": (True, ("PropagationPolicy",)), "metadata": (True, METADATA),
               "spec": (True, {"resourceSelectors": (True, [SELECTOR]), "placement": (True, {"clusterAffinity": (True, CLUSTERS)}),
                               "priority": (False, int), "conflictResolution": (False, ("Abort", "Overwrite"))})}
OVERRIDERS = {
    "plaintext": (False, [{"path": (True, str), "operator": (True, OPERATORS), "value": (False, None)}]),
    "imageOverrider": (False, [{"predicate": (False, {"path": (True, str)}), "component": (True, ("Registry", "Repository", "Tag")),
                                "operator": (True, OPERATORS), "value": (False, str)}]),
    "argsOverrider": (False, [{"containerName": (True, str), "operator": (True, ("add", "remove")), "value": (False, [str])}]),
    "labelsOverrider": (False, [{"operator": (True, OPERATORS), "value": (True, dict)}]),
    "annotationsOverrider": (False, [{"operator": (True, OPERATORS), "value": (True, dict)}]),
}
OVERRIDE = {"apiVersion": (True, ("policy.karmada.io/v1alpha1",)), "kind": (True, ("OverridePolicy",)), "metadata": (True, METADATA),
            "spec": (True, {"resourceSelectors": (True, [SELECTOR]),
                            "overrideRules": (True, [{"targetCluster": (True, CLUSTERS), "overriders": (True, OVERRIDERS)}])})}


def pointer(document, path):
    """The value at an RFC 6901 path, or KeyError."""
    value = document
    for part in path.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def karmada(arguments):
    failures = Failures()
    releases = {}
    for entry in arguments.release:
        name, _, path = entry.partition("=")
        releases[name] = objects(path)
    rendered = [(release, resource) for release, resources in releases.items() for resource in resources]

    def selected(selector, namespace):
        return [(release, resource) for release, resource in rendered
                if resource["apiVersion"] == selector["apiVersion"] and resource["kind"] == selector["kind"]
                and resource["metadata"]["name"] == selector.get("name") and resource["metadata"].get("namespace") == selector.get("namespace", namespace)]

    policies = [(path, policy) for path in arguments.policies for policy in objects(path)]
    propagated = {}
    for path, policy in policies:
        where = f"{os.path.basename(path)} {name_of(policy)}"
        kind = policy.get("kind")
        if not failures.check(kind in ("PropagationPolicy", "OverridePolicy"), where, f"kind {kind!r} is neither PropagationPolicy nor OverridePolicy"):
            continue
        before = len(failures.messages)
        structure(PROPAGATION if kind == "PropagationPolicy" else OVERRIDE, policy, "", failures, where)
        if len(failures.messages) > before:
            continue
        namespace = policy["metadata"]["namespace"]
        targets = []
        for selector in policy["spec"]["resourceSelectors"]:
            failures.check("name" in selector, where, f"selector {selector['kind']} names no object (select by name, so no other release's object is caught)")
            matches = selected(selector, namespace)
            if failures.check(len(matches) == 1, where, f"selector {selector['kind']}/{selector.get('name')} in {selector.get('namespace', namespace)} matches no rendered object"):
                targets.append(matches[0])
        if kind == "PropagationPolicy":
            clusters = policy["spec"]["placement"]["clusterAffinity"]["clusterNames"]
            failures.check(len(clusters) == 1, where, f"places a region's release in {len(clusters)} clusters; one region runs in one Kubernetes cluster")
            failures.check(len({release for release, _ in targets}) <= 1, where, "selects the objects of more than one release")
            for release, resource in targets:
                key = (release, name_of(resource))
                failures.check(key not in propagated, where, f"{key[1]} of {release} is already propagated by another policy")
                propagated[key] = set(clusters)
        else:
            for rule in policy["spec"]["overrideRules"]:
                clusters = set(rule["targetCluster"]["clusterNames"])
                for release, resource in targets:
                    placed = propagated.get((release, name_of(resource)), set())
                    failures.check(clusters <= placed, where, f"overrides {name_of(resource)} of {release} in {sorted(clusters - placed)}, where it is not propagated")
                    overriders = rule["overriders"]
                    for item in overriders.get("plaintext", []):
                        # replace and remove need the field; add needs the mapping or list it goes into.
                        path = item["path"] if item["operator"] != "add" else item["path"].rsplit("/", 1)[0]
                        try:
                            pointer(resource, path)
                        except (KeyError, IndexError, ValueError, TypeError):
                            failures.add(where, f"{item['operator']} {item['path']}: no field {path} in {name_of(resource)} of {release}")
                    for item in overriders.get("imageOverrider", []):
                        if "predicate" in item:
                            try:
                                image = pointer(resource, item["predicate"]["path"])
                                failures.check(isinstance(image, str), where, f"{item['predicate']['path']} is not an image in {name_of(resource)}")
                            except (KeyError, IndexError, ValueError, TypeError):
                                failures.add(where, f"image predicate {item['predicate']['path']}: no such field in {name_of(resource)} of {release}")
                        else:
                            failures.check(resource["kind"] in ("Deployment", "StatefulSet"), where, f"an image override of {name_of(resource)}, which has no image")
                    for item in overriders.get("argsOverrider", []):
                        names = [container["name"] for container in resource.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])]
                        failures.check(item["containerName"] in names, where, f"argsOverrider names container {item['containerName']}, not in {name_of(resource)}")

    # Nothing a release renders may stay behind on the control plane.
    for release, resource in rendered:
        failures.check((release, name_of(resource)) in propagated, "karmada", f"{name_of(resource)} of release {release} is not propagated by any PropagationPolicy")
    if not failures.messages:
        print(f"  ok: {len(policies)} Karmada policies select {len(propagated)} rendered objects of {len(releases)} releases")
    return failures.finish("karmada")


# --- cluster files --------------------------------------------------------------------------------------------

def cluster_files(arguments):
    """Completes each render's cluster file as its pod does (the init container's own script, when there is one) and
    asks the node's parser about it with `meridian config check`."""
    failures = Failures()
    skipped = []
    checked = 0
    with tempfile.TemporaryDirectory(prefix="meridian-helm-") as directory:
        # `config check` loads the CA of a cluster whose client API speaks HTTPS: a throwaway one stands in for the
        # Secret's.
        certificates = os.path.join(directory, "certs")
        made = subprocess.run([arguments.meridian, "certs", "init", "--dir", certificates], capture_output=True, text=True)
        if made.returncode != 0:
            failures.add("meridian certs init", made.stderr.strip() or made.stdout.strip())
            return failures.finish("cluster files")
        for path in arguments.files:
            where = os.path.basename(path)
            rendered = objects(path)
            config_map = next((resource for resource in rendered if resource["kind"] == "ConfigMap"), None)
            workload = next((resource for resource in rendered if resource["kind"] in ("Deployment", "StatefulSet")), None)
            if not failures.check(config_map is not None and workload is not None, where, "no ConfigMap and workload rendered"):
                continue
            source = os.path.join(directory, f"{where}.source.yaml")
            with open(source, "w", encoding="utf-8") as handle:
                handle.write(config_map["data"]["cluster.yaml"])
            target = source
            for init in workload["spec"]["template"]["spec"].get("initContainers", []):
                if init["name"] != "cluster-file":
                    continue
                secret = os.path.join(directory, "session-secret")
                with open(secret, "w", encoding="utf-8") as handle:
                    handle.write("0123456789abcdef0123456789abcdef")
                target = os.path.join(directory, f"{where}.cluster.yaml")
                environment = dict(os.environ, CLUSTER_FILE_SOURCE=source, SESSION_SECRET_FILE=secret, CLUSTER_FILE=target)
                ran = subprocess.run(init["command"], env=environment, capture_output=True, text=True)
                if not failures.check(ran.returncode == 0, where, f"the init container's script failed: {ran.stderr.strip()}"):
                    target = None
            if target is None:
                continue
            environment = dict(os.environ, MERIDIAN_CACERT=os.path.join(certificates, "ca.pem"))
            checked_file = subprocess.run([arguments.meridian, "config", "check", target], env=environment, capture_output=True, text=True)
            # ArgumentParser prints the error first, then a usage hint.
            answer = (checked_file.stderr.strip() or checked_file.stdout.strip()).splitlines()
            answer = answer[0].removeprefix("Error: ") if answer else ""
            if checked_file.returncode == 0:
                checked += 1
                print(f"  ok: {where}: {answer.replace(target, 'cluster.yaml')}")
            elif "unknown field 'store'" in answer:
                # The PostgreSQL store's section is being added to the node; until it parses, say so rather than fail.
                skipped.append(where)
                print(f"  skip: {where}: this meridian does not know the cluster file's store section yet")
            else:
                failures.add(where, f"meridian config check: {answer}")
    if not failures.messages:
        print(f"  ok: meridian config check accepted {checked} cluster file(s)" + (f", skipped {len(skipped)}" if skipped else ""))
    return failures.finish("cluster files")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("validate")
    command.add_argument("--kube-version", action="append", required=True)
    command.add_argument("files", nargs="+")
    command = commands.add_parser("contract")
    command.add_argument("--mode", choices=["sqlite", "postgres"], required=True)
    command.add_argument("--node-command", required=True)
    command.add_argument("file")
    command = commands.add_parser("karmada")
    command.add_argument("--policies", nargs="+", required=True)
    command.add_argument("--release", action="append", required=True, metavar="NAME=FILE")
    command = commands.add_parser("cluster-files")
    command.add_argument("--meridian", required=True)
    command.add_argument("files", nargs="+")
    arguments = parser.parse_args()
    return {"validate": validate, "contract": contract, "karmada": karmada, "cluster-files": cluster_files}[arguments.command](arguments)


if __name__ == "__main__":
    sys.exit(main())
