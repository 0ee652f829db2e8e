"""The admin interface and the metrics listener in front of it. apiproxy serves no admin: the metrics
listener's http_connection_manager may only route /metrics and /ready to the admin's /stats/prometheus and
/ready (through a cluster that points at the admin address), and apiproxy serves those two itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..config import Endpoint
from ..documents import show
from .address import ADMIN, socket_address_or_pipe
from .cluster import cluster_target
from .fields import ADMIN_FIELDS, ADMIN_ROUTES, ROUTE_ACTION_FIELDS, ROUTER
from .message import BootstrapError, Message

Admin = Endpoint | str | None  # its address, a pipe's path, or none


def read_admin(admin: Message | None) -> tuple[Admin, str | None]:
    """The admin's address, and how the log names it ("pipe /path", "socket 127.0.0.1:9901")."""
    if admin is None:
        return None, None
    admin.check(ADMIN_FIELDS)
    address = admin.message("address")
    if address is None:
        return None, None
    found = socket_address_or_pipe(address, ADMIN)
    return found, f"pipe {found}" if isinstance(found, str) else f"socket {found}"


def check_metrics_routes(manager: Message, clusters: Mapping[str, Message], admin: Admin) -> None:
    """The http_connection_manager may only expose the admin's /stats/prometheus and /ready."""
    if manager.has("rds"):
        raise BootstrapError(manager.at("rds"), "not supported (xDS)")
    for http_filter in manager.messages("http_filters"):
        typed = http_filter.message("typed_config")
        kind = typed.type_name() if typed is not None else http_filter.string("name")
        if kind not in (ROUTER, "envoy.filters.http.router"):
            raise BootstrapError(http_filter.path, f"http filter {show(kind)}: not supported (router only)")
    for name in manager.fields:
        if name not in ("@type", "route_config", "http_filters"):
            manager.findings.ignored.append(manager.at(name))
    route_config = manager.require("route_config")
    for host in route_config.messages("virtual_hosts"):
        for route in host.messages("routes"):
            _check_route(route, clusters, admin)


def _check_route(route: Message, clusters: Mapping[str, Message], admin: Admin) -> None:
    match = route.require("match")
    action = route.message("route")
    if set(match.fields) - {"path", "case_sensitive"} or action is None:
        raise BootstrapError(
            route.path, "not supported (only `match: {path: ...}` routes to the admin cluster)"
        )
    public = match.string("path")
    action.check(ROUTE_ACTION_FIELDS, refuse=False)
    admin_path = action.string("prefix_rewrite") or public
    expected = ADMIN_ROUTES.get(admin_path)
    if expected is None or expected != public:
        raise BootstrapError(
            route.path,
            f"{show(public)} → admin {show(admin_path)}: not supported "
            "(apiproxy serves /metrics from /stats/prometheus and /ready)",
        )
    cluster_name = action.string("cluster")
    cluster = clusters.get(cluster_name)
    if cluster is None:
        raise BootstrapError(action.at("cluster"), f"no cluster named {show(cluster_name)}")
    if admin is None or cluster_target(cluster) != admin:
        raise BootstrapError(
            action.at("cluster"),
            f"cluster {show(cluster_name)} does not point at the admin address: not supported",
        )
