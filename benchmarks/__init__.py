"""Side-by-side benchmarks of the node proxy: apiproxy, the real Envoy on Gardener's config, and no proxy,
on loopback behind a real Envoy seed gateway. Run `python -m benchmarks` (or `--quick`); see __main__.
"""
