"""Keeping the virtual IP (VIP) on a local interface: what Gardener's Go sidecar did, repaired on netlink events.

`reconcile` holds the pass logic behind the small `netlink.Netlink` interface (`netlink` speaks rtnetlink
itself); `events` parses what the kernel says and `watch` reads it; `keeper` runs passes on events and a
timer; `service` runs the keeper beside the proxy; `sidecar` (with `goflags`) is the drop-in
`apiserver-proxy-sidecar`; `options` validates the VIP settings of both.
"""
