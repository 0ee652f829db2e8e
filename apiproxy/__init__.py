"""apiproxy: the node side of Gardener's apiserver-proxy, in one asyncio (uvloop) process.

Pods connect to a virtual IP on port 443; apiproxy carries each connection, TLS untouched, through an
HTTP/1.1 CONNECT tunnel to the seed's ingress gateway, and keeps the virtual IP on its interface.
"""

__version__ = "0.1.0"
