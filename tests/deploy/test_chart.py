"""The Helm chart's rendered manifests: the pod Gardener's node relies on (SPEC §2 "Pod"), each container
with only its capabilities, values that reach the flags, and the two modes configuring the same tunnel
(the allInOne flags and the gardenerCompatible envoy.yaml are read by apiproxy's own parsers).

Needs the real helm binary that deploy/install-tools.sh puts in .tools/bin (CI's deploy step runs it
first); without it these tests are skipped, saying so.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from apiproxy.cli.options import TunnelOptions
from apiproxy.config import ConfigError, TunnelConfig
from apiproxy.envoy.bootstrap import read_bootstrap
from apiproxy.handover import parse_socket_path
from apiproxy.vip.options import build_vip
from apiproxy.vip.sidecar import build_config, parse_flags

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "apiserver-proxy"
HELM = REPO / ".tools" / "bin" / "helm"

pytestmark = pytest.mark.skipif(not HELM.exists(), reason="no helm: run deploy/install-tools.sh")

# The labels of the DaemonSet Gardener renders (pkg/component/networking/apiserverproxy): its selector,
# every object's labels, and what the DaemonSet and its pod add.
GARDENER_SELECTOR = {"app": "kubernetes", "role": "apiserver-proxy"}
GARDENER_LABELS = {**GARDENER_SELECTOR, "gardener.cloud/role": "system-component", "origin": "gardener"}
GARDENER_DAEMONSET_LABELS = {**GARDENER_LABELS, "node.gardener.cloud/critical-component": "true"}
GARDENER_POD_LABELS = {
    **GARDENER_DAEMONSET_LABELS,
    "networking.gardener.cloud/from-seed": "allowed",
    "networking.gardener.cloud/to-apiserver": "allowed",
    "networking.gardener.cloud/to-dns": "allowed",
}
# Gardener's requests per container (cpu, memory); the init container is `setup`.
GARDENER_REQUESTS = {"setup": ("20m", "20Mi"), "sidecar": ("5m", "15Mi"), "proxy": ("5m", "30Mi")}

GARDENER = {
    "vip.address": "240.168.102.23",
    "upstream.address": "api.bar.foo.internal.example.com.:8443",
    "upstream.destination": "outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local",
}


def helm_template(
    values: str | None = None, strings: dict[str, str] | None = None, sets: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`helm template` with a ci/ value file, `--set-string` values and `--set` items."""
    args = [str(HELM), "template", "apiserver-proxy", str(CHART), "--namespace", "kube-system"]
    if values:
        args += ["--values", str(CHART / "ci" / values)]
    for key, value in (strings or {}).items():
        args += ["--set-string", f"{key}={value}"]
    for item in sets:
        args += ["--set", item]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def render(
    values: str | None = None, strings: dict[str, str] | None = None, sets: tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """Renders the chart; returns the manifests by `Kind/name`."""
    result = helm_template(values, strings, sets)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in docs}


def containers(manifests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    spec = manifests["DaemonSet/apiserver-proxy"]["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def flags(container: dict[str, Any]) -> dict[str, list[str]]:
    """`--name=value` arguments as name -> values (repeatable flags keep their order)."""
    found: dict[str, list[str]] = {}
    for arg in container.get("args", []):
        name, _, value = arg.partition("=")
        found.setdefault(name, []).append(value)
    return found


def added_capabilities(container: dict[str, Any]) -> set[str]:
    capabilities = container["securityContext"]["capabilities"]
    assert capabilities["drop"] == ["ALL"]
    return set(capabilities["add"])


@pytest.mark.parametrize("values", ["all-in-one-values.yaml", "gardener-compatible-values.yaml"])
def test_the_pod_is_what_gardener_nodes_expect(values: str) -> None:
    manifests = render(values)
    daemonset = manifests["DaemonSet/apiserver-proxy"]
    pod = daemonset["spec"]["template"]["spec"]
    assert daemonset["metadata"]["namespace"] == "kube-system"
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    # The node's resolver: the cluster's DNS would need the API server, through this proxy, at a cold start.
    assert "dnsPolicy" not in pod
    assert daemonset["spec"]["selector"] == {"matchLabels": GARDENER_SELECTOR}
    assert GARDENER_DAEMONSET_LABELS.items() <= daemonset["metadata"]["labels"].items()
    assert GARDENER_POD_LABELS.items() <= pod_labels(daemonset).items()
    assert daemonset["spec"]["revisionHistoryLimit"] == 2
    for kind_name, manifest in manifests.items():
        assert GARDENER_LABELS.items() <= manifest["metadata"]["labels"].items(), kind_name
    for name, container in containers(manifests).items():
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["runAsUser"] == 0
        assert "limits" not in container["resources"], name
        cpu, memory = GARDENER_REQUESTS[name]
        assert container["resources"]["requests"] == {"cpu": cpu, "memory": memory}, name
    proxy = containers(manifests)["proxy"]
    # Loopback: the kubelet shares the node's network namespace with this hostNetwork pod, and the endpoint
    # keeps connection slots for loopback sources that pods cannot take; it listens on 0.0.0.0 too.
    readiness, liveness = proxy["readinessProbe"], proxy["livenessProbe"]
    assert (
        readiness["httpGet"] == liveness["httpGet"] == {"host": "127.0.0.1", "path": "/ready", "port": 16910}
    )
    assert (readiness["periodSeconds"], readiness["timeoutSeconds"]) == (2, 1)
    assert (liveness["periodSeconds"], liveness["timeoutSeconds"]) == (10, 1)
    service = manifests["Service/apiserver-proxy"]["spec"]
    assert service["clusterIP"] == "None"
    assert service["ports"] == [{"name": "metrics", "port": 16910, "targetPort": 16910, "protocol": "TCP"}]
    assert service["selector"].items() <= pod_labels(daemonset).items()


def pod_labels(daemonset: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = daemonset["spec"]["template"]["metadata"]["labels"]
    return labels


def envoy_config_map(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (config_map,) = [m for key, m in manifests.items() if key.startswith("ConfigMap/")]
    return config_map


@pytest.mark.parametrize("values", ["all-in-one-values.yaml", "gardener-compatible-values.yaml"])
def test_pod_labels_carry_no_chart_version(values: str) -> None:
    """A pod label that changes with the chart version would roll every node's pod at each upgrade."""
    labels = pod_labels(render(values, sets=("podLabels.tier=node",))["DaemonSet/apiserver-proxy"])
    assert not {"helm.sh/chart", "app.kubernetes.io/version"} & set(labels)
    assert labels["tier"] == "node"


def test_all_in_one_runs_one_container_with_the_vip_and_the_port_443_capabilities() -> None:
    manifests = render("all-in-one-values.yaml")
    assert list(containers(manifests)) == ["proxy"]
    proxy = containers(manifests)["proxy"]
    assert proxy["command"] == ["apiproxy", "run"]
    assert added_capabilities(proxy) == {"NET_ADMIN", "NET_BIND_SERVICE"}
    args = flags(proxy)
    assert args["--ip-address"] == ["240.168.102.23"]
    assert args["--interface"] == ["apiserver-proxy"]
    assert args["--destination-header"] == ["X-Gardener-Destination"]
    assert args["--metrics-address"] == ["0.0.0.0:16910", "[::]:16910"]
    assert not [key for key in manifests if key.startswith("ConfigMap/")]


def test_gardener_compatible_is_gardeners_layout_with_each_container_holding_only_its_capability() -> None:
    manifests = render("gardener-compatible-values.yaml")
    by_name = containers(manifests)
    assert list(by_name) == ["setup", "sidecar", "proxy"]
    setup, sidecar, proxy = by_name["setup"], by_name["sidecar"], by_name["proxy"]
    assert setup["command"] == sidecar["command"] == ["apiserver-proxy-sidecar"]
    assert flags(setup)["--daemon"] == ["false"]
    assert flags(sidecar)["--daemon"] == ["true"]
    assert flags(sidecar)["--ip-address"] == ["240.168.102.23"]
    assert added_capabilities(setup) == added_capabilities(sidecar) == {"NET_ADMIN"}
    assert added_capabilities(proxy) == {"NET_BIND_SERVICE"}
    assert proxy["command"] == [
        "envoy",
        "--concurrency",
        "2",
        "--use-dynamic-base-id",
        "-c",
        "/etc/apiserver-proxy/envoy.yaml",
    ]
    mounts = {m["name"]: m["mountPath"] for m in proxy["volumeMounts"]}
    assert mounts == {
        "envoy-config": "/etc/apiserver-proxy",
        "admin-uds": "/etc/admin-uds",
        "handover": "/var/run/apiserver-proxy",
    }


def test_the_envoy_config_map_is_immutable_and_named_by_its_content() -> None:
    """As Gardener's: a new envoy.yaml is a new ConfigMap, so the pod template changes and the pods roll."""
    names = []
    for idle in ("1h", "30m"):
        manifests = render("gardener-compatible-values.yaml", strings={"timeouts.idle": idle})
        config_map = envoy_config_map(manifests)
        assert config_map["immutable"] is True
        name = config_map["metadata"]["name"]
        assert re.fullmatch(r"apiserver-proxy-config-[0-9a-f]{8}", name), name
        volumes = manifests["DaemonSet/apiserver-proxy"]["spec"]["template"]["spec"]["volumes"]
        assert {"name": "envoy-config", "configMap": {"name": name}} in volumes
        names.append(name)
    assert names[0] != names[1]
    again = envoy_config_map(render("gardener-compatible-values.yaml", strings={"timeouts.idle": "1h"}))
    assert again["metadata"]["name"] == names[0]


def envoy_tunnel(manifests: dict[str, dict[str, Any]]) -> tuple[TunnelConfig, int]:
    text = envoy_config_map(manifests)["data"]["envoy.yaml"]
    config = read_bootstrap(text).config
    return config.tunnel, config.listener.max_connections


def flags_tunnel(manifests: dict[str, dict[str, Any]]) -> tuple[TunnelConfig, int]:
    args = flags(containers(manifests)["proxy"])

    def one(flag: str) -> str:
        return args[flag][-1]  # repeated (extraArgs): the last wins, as in click

    options = TunnelOptions(
        upstream=one("--upstream"),
        connect_authority=one("--connect-authority"),
        destination=one("--destination"),
        destination_header=args["--destination-header"],
        upstream_protocol="connect",
        dns_family=one("--dns-family"),
        dns_refresh=one("--dns-refresh"),
        connect_timeout=one("--connect-timeout"),
        connect_answer_timeout=one("--connect-answer-timeout"),
        idle_timeout=one("--idle-timeout"),
        tcp_keepalive_time=one("--tcp-keepalive-time"),
        tcp_keepalive_interval=one("--tcp-keepalive-interval"),
        buffer_size=one("--buffer-size"),
    )
    return options.build(), int(one("--max-connections"))


# Envoy has no CONNECT-answer timeout: apiproxy's envoy applies its own default there.
_NOT_IN_ENVOY_YAML = {"connect_answer_timeout"}


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "upstream.address": "[fd00::1]:8132",
            "upstream.connectAuthority": "api.example.com.:443",
            "upstream.dnsFamily": "v6",
            "upstream.dnsRefresh": "500ms",
            "upstream.destination": "shoot--foo--bar--kube-apiserver-socket",
            "timeouts.connect": "2s",
            "timeouts.idle": "30m",
            "tcpKeepalive.time": "2h",
            "tcpKeepalive.interval": "1m",
        },
    ],
    ids=["gardener-defaults", "every-knob-changed"],
)
def test_both_modes_configure_the_same_tunnel(values: dict[str, str]) -> None:
    settings = {**GARDENER, **values}
    extra = (
        "upstream.destinationHeaders={X-Gardener-Destination,Reversed-VPN}",
        "bufferSize=65536",
        "maxConnections=2048",
    )
    all_in_one = render(strings=settings, sets=extra)
    gardener = render(strings={**settings, "mode": "gardenerCompatible"}, sets=extra)
    from_flags, flags_limit = flags_tunnel(all_in_one)
    from_envoy, envoy_limit = envoy_tunnel(gardener)
    assert flags_limit == envoy_limit == 2048
    for field in TunnelConfig.__dataclass_fields__:
        if field not in _NOT_IN_ENVOY_YAML:
            assert getattr(from_flags, field) == getattr(from_envoy, field), field
    assert from_flags.connect_headers == (
        ("X-Gardener-Destination", settings["upstream.destination"]),
        ("Reversed-VPN", settings["upstream.destination"]),
    )


def test_iptables_rules_add_net_raw_and_share_the_hosts_xtables_lock() -> None:
    manifests = render("all-in-one-full-values.yaml")
    proxy = containers(manifests)["proxy"]
    assert added_capabilities(proxy) == {"NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"}
    assert flags(proxy)["--setup-iptables"] == [""]
    assert {"name": "xtables-lock", "mountPath": "/run/xtables.lock"} in proxy["volumeMounts"]
    assert "ServiceMonitor/apiserver-proxy" in manifests
    assert proxy["resources"]["limits"] == {"memory": "200Mi"}  # limits only when asked for


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"upstream.address": GARDENER["upstream.address"], "upstream.destination": "x"},
            "vip.address is required",
        ),
        ({"vip.address": "240.168.102.23", "upstream.destination": "x"}, "upstream.address is required"),
        (
            {**GARDENER, "upstream.destination": "a\r\nX-Injected: 1"},
            "upstream.destination: Does not match pattern",
        ),
        ({**GARDENER, "timeouts.idle": "1d"}, "timeouts.idle: Does not match pattern"),
        ({**GARDENER, "vip.address": "240.168.102"}, "vip.address"),
        ({**GARDENER, "mode": "sidecarOnly"}, "mode: mode must be one of"),
        ({**GARDENER, "upstream.destinationHeaders[0]": "Bad Header"}, "destinationHeaders.0"),
    ],
)
def test_bad_values_are_refused_naming_the_value(settings: dict[str, str], message: str) -> None:
    result = helm_template(strings=settings)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize("values", sorted(p.name for p in (CHART / "ci").glob("all-in-one*-values.yaml")))
def test_every_all_in_one_value_file_renders_flags_apiproxy_accepts(values: str) -> None:
    """A value the schema lets through must pass apiproxy's own parser too (no CrashLoop on a node)."""
    manifests = render(values)
    try:
        flags_tunnel(manifests)
    except ConfigError as error:
        pytest.fail(f"apiproxy run refuses the flags rendered from {values}: {error}")


@pytest.mark.parametrize(
    "vip",
    [
        {},
        {"vip.address": "64:ff9b:1::f0a8:6617", "vip.interface": "lo", "vip.syncInterval": "30s"},
        {"vip.cleanup": "true", "vip.setupIptables": "true"},
    ],
    ids=["gardener-defaults", "ipv6-on-lo", "cleanup-and-iptables"],
)
def test_both_modes_keep_the_same_vip(vip: dict[str, str]) -> None:
    """The sidecar's flags (gardenerCompatible) and `apiproxy run`'s (allInOne) give the same VIPConfig."""
    strings = {k: v for k, v in vip.items() if k not in ("vip.cleanup", "vip.setupIptables")}
    sets = tuple(f"{k}={v}" for k, v in vip.items() if k in ("vip.cleanup", "vip.setupIptables"))
    if "vip.cleanup" in vip:  # gardenerCompatible allows the sidecar's cleanup only without surge
        sets += NO_SURGE
    sidecar = containers(render(strings={**GARDENER, **strings, "mode": "gardenerCompatible"}, sets=sets))[
        "sidecar"
    ]
    parsed = parse_flags(sidecar["args"])
    from_sidecar = build_config(parsed, ipaddress.ip_address(parsed.values["ip-address"]))
    args = flags(containers(render(strings={**GARDENER, **strings}, sets=sets))["proxy"])
    from_run = build_vip(
        ipaddress.ip_address(args["--ip-address"][-1]),
        args["--interface"][-1],
        args["--sync-interval"][-1],
        "--cleanup" in args,
        "--setup-iptables" in args,
        443,
    )
    assert from_sidecar == from_run
    assert from_run.setup_iptables is ("vip.setupIptables" in vip)


# --- rolling updates ---------------------------------------------------------------------------------------

# The fallback rollout: no surge, no handover.
NO_SURGE = (
    "updateStrategy.rollingUpdate.maxSurge=0",
    "updateStrategy.rollingUpdate.maxUnavailable=1",
    "handover.enabled=false",
)


def pod_spec(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = manifests["DaemonSet/apiserver-proxy"]["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("values", ["all-in-one-values.yaml", "gardener-compatible-values.yaml"])
def test_rollouts_surge_and_the_new_pod_takes_the_listener_over(values: str) -> None:
    """maxSurge 1 / maxUnavailable 0, the handover socket in a hostPath both pods mount, named to the proxy
    in the environment (Gardener's Envoy command line takes no flag), and no hostPort that would keep the
    surge pod off the node."""
    manifests = render(values)
    daemonset = manifests["DaemonSet/apiserver-proxy"]
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = pod_spec(manifests)
    proxy = containers(manifests)["proxy"]
    assert {"name": "APIPROXY_HANDOVER_SOCKET", "value": "/var/run/apiserver-proxy/handover"} in proxy["env"]
    assert parse_socket_path(
        "APIPROXY_HANDOVER_SOCKET", "/var/run/apiserver-proxy/handover"
    )  # apiproxy takes it
    assert {"name": "handover", "mountPath": "/var/run/apiserver-proxy"} in proxy["volumeMounts"]
    assert {
        "name": "handover",
        "hostPath": {"path": "/var/run/apiserver-proxy", "type": "DirectoryOrCreate"},
    } in pod["volumes"]
    for name, container in containers(manifests).items():
        assert not any("hostPort" in port for port in container.get("ports", [])), name
    # Above the drain (20s: timeouts.drain in allInOne, apiproxy's default in gardenerCompatible).
    assert pod["terminationGracePeriodSeconds"] == 30


def test_extra_environment_follows_the_handover_socket() -> None:
    proxy = containers(render(strings=GARDENER, sets=("extraEnv[0].name=TZ", "extraEnv[0].value=UTC")))[
        "proxy"
    ]
    assert [e["name"] for e in proxy["env"]] == ["APIPROXY_HANDOVER_SOCKET", "TZ"]


@pytest.mark.parametrize("mode", ["allInOne", "gardenerCompatible"])
def test_the_fallback_rollout_has_no_handover(mode: str) -> None:
    manifests = render(strings={**GARDENER, "mode": mode}, sets=NO_SURGE)
    assert manifests["DaemonSet/apiserver-proxy"]["spec"]["updateStrategy"]["rollingUpdate"] == {
        "maxSurge": 0,
        "maxUnavailable": 1,
    }
    proxy = containers(manifests)["proxy"]
    assert "env" not in proxy
    assert all(volume["name"] != "handover" for volume in pod_spec(manifests).get("volumes", []))


@pytest.mark.parametrize(
    ("strings", "sets", "message"),
    [
        ({}, ("terminationGracePeriodSeconds=20",), "terminationGracePeriodSeconds (20) must be longer than the drain (20s)"),
        ({"timeouts.drain": "1m"}, (), "terminationGracePeriodSeconds (30) must be longer than the drain (60s)"),
        ({"mode": "gardenerCompatible"}, ("terminationGracePeriodSeconds=15",), "must be longer than the drain (20s)"),
        ({"mode": "gardenerCompatible"}, ("vip.cleanup=true",), "vip.cleanup with a surge rollout"),
        ({}, ("handover.enabled=false",), "maxSurge needs handover.enabled"),
        ({}, ("updateStrategy.rollingUpdate.maxSurge=0",), "maxSurge and maxUnavailable cannot both be 0"),
        ({"handover.hostPath": "var/run"}, (), "handover.hostPath: Does not match pattern"),
    ],
)  # fmt: skip
def test_unsafe_rollouts_are_refused_saying_why(
    strings: dict[str, str], sets: tuple[str, ...], message: str
) -> None:
    result = helm_template(strings={**GARDENER, **strings}, sets=sets)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_cleanup_with_surge_is_fine_in_all_in_one() -> None:
    """apiproxy run keeps the VIP while the other process of a handover serves on it (tests/rollout)."""
    proxy = containers(render(strings=GARDENER, sets=("vip.cleanup=true",)))["proxy"]
    assert "--cleanup" in flags(proxy)
