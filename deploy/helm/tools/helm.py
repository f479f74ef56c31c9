"""A `helm` command for `deploy/helm/check`: `helm lint` and `helm template`, run by Helm's own Go code.

The PyPI packages that bundle Helm ship its Go SDK, not the helm binary: helm-python-sdk has Helm v4's SDK as a
native library (libhelm_c) with ctypes bindings (helm-sdkpy is alike, for Python 3.12 and later; helm-package has
helm binaries for macOS and Windows only). This command puts the two subcommands the check needs on top of it,
with the flags it uses and Helm's exit codes, so the check reads like the commands a person would run:

    helm lint CHART [--strict] [-f VALUES]... [--set K=V]... [--kube-version V] [-n NAMESPACE]
    helm template NAME CHART [-f VALUES]... [--set K=V]... [-n NAMESPACE]
    helm version

`template` is what Helm's own `helm template` is: an install with a client-side dry run (no cluster is
contacted; the release is kept in memory only), which validates the values against values.schema.json and
prints the manifest. Values files and --set merge as Helm merges them: maps deeply, anything else replaced, the
later wins, --set paths into what the files gave. As in Helm, `template` drops a chart default that the values
set to null and `lint` keeps it, and `lint` reports a template's `fail` without failing (it renders in lint
mode) where `template` fails.
"""

import argparse
import os
import sys

import helm_python as helm


def merge_maps(base, override):
    """Helm's values merge (pkg/cli/values mergeMaps): maps merge key by key, everything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_maps(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_into(base, parsed):
    """Helm's --set (strvals.ParseInto): paths set into the values so far, so `peers[0].name=x` changes one field of
    one list element and keeps the rest; `parse_set_string` leaves None in the list indices it did not name."""
    if isinstance(parsed, dict) and isinstance(base, dict):
        merged = dict(base)
        for key, value in parsed.items():
            merged[key] = set_into(base.get(key), value)
        return merged
    if isinstance(parsed, list) and isinstance(base, list):
        merged = list(base) + [None] * max(0, len(parsed) - len(base))
        for index, value in enumerate(parsed):
            if value is not None:
                merged[index] = set_into(merged[index], value)
        return merged
    return parsed


def user_values(arguments):
    values = {}
    for path in arguments.values:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise SystemExit(f"Error: open {path}: {error.strerror}")
        try:
            loaded = helm.values_from_yaml(text) or {}
        except helm.HelmError as error:
            raise SystemExit(f"Error: failed to parse {path}: {error}")
        values = merge_maps(values, loaded)
    for expression in arguments.set:
        try:
            values = set_into(values, helm.parse_set_string(expression))
        except helm.HelmError as error:
            raise SystemExit(f"Error: failed parsing --set data: {error}")
    return values


def lint(arguments):
    report = helm.lint(arguments.chart, user_values(arguments), strict=arguments.strict, namespace=arguments.namespace,
                       kube_version=arguments.kube_version)
    names = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
    failed = bool(report.get("errors"))
    print(f"==> Linting {arguments.chart}")
    for message in report.get("messages") or []:
        severity = message.get("severity", 0)
        # As Helm's lint: errors fail the chart, and with --strict warnings do too.
        if severity == 3 or (arguments.strict and severity == 2):
            failed = True
        print(f"[{names.get(severity, severity)}] {message.get('path', '')}: {message.get('error', '')}")
    for error in report.get("errors") or []:
        print(f"[ERROR] {error}")
    print()
    print(f"1 chart(s) linted, {1 if failed else 0} chart(s) failed")
    return 1 if failed else 0


def template(arguments):
    chart = helm.Chart.load(arguments.chart)
    # An in-memory release store and no kubeconfig: a client-side dry run never talks to a cluster.
    os.environ["KUBECONFIG"] = os.devnull
    config = helm.Config(namespace=arguments.namespace, storage_driver="memory")
    try:
        release = config.install(chart, arguments.name, user_values(arguments), namespace=arguments.namespace, dry_run="client")
    except helm.HelmError as error:
        print(f"Error: INSTALLATION FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        config.close()
        chart.close()
    sys.stdout.write(release["manifest"])
    return 0


def main():
    parser = argparse.ArgumentParser(prog="helm", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def value_options(command):
        command.add_argument("-f", "--values", action="append", default=[], metavar="FILE")
        command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        command.add_argument("-n", "--namespace", default="default")

    lint_command = commands.add_parser("lint")
    lint_command.add_argument("chart")
    lint_command.add_argument("--strict", action="store_true")
    lint_command.add_argument("--kube-version", default=None)
    value_options(lint_command)

    template_command = commands.add_parser("template")
    template_command.add_argument("name")
    template_command.add_argument("chart")
    value_options(template_command)

    commands.add_parser("version")

    arguments = parser.parse_args()
    if arguments.command == "version":
        print(f"helm-python-sdk {helm.__version__}: Helm SDK {helm.helm_sdk_version()} (libhelm_c {helm.helm_c_version()})")
        return 0
    try:
        return lint(arguments) if arguments.command == "lint" else template(arguments)
    except helm.HelmError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
