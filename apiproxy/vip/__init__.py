"""Keeping the virtual IP (VIP) on a local interface: what Gardener's Go sidecar did, repaired on netlink events.

`reconcile` holds the pass logic behind the small `netlink.Netlink` interface; `watch` turns kernel events
into repairs; `service` runs both beside the proxy; `sidecar` is the drop-in `apiserver-proxy-sidecar`.
"""
