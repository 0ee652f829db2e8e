"""A load generator for a node proxy (apiproxy or Envoy on VIP:443) or the seed gateway itself, already
running anywhere: `python -m benchmarks load SCENARIO ...` (storm, rate, hold, requests, bulk; merge).

Open loop (tunnels start on a schedule, latency counted from the scheduled start), every tunnel phase
timed into HDR-style histograms, several worker processes per machine and shards over machines, results
in results.json, results.md and load.png. See benchmarks/README.md, "Load testing".
"""
