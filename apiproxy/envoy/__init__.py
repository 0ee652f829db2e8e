"""The Envoy front end: run the Envoy v3 bootstrap Gardener renders (`envoy.yaml`) unchanged.

`bootstrap` reads the config into a `ProxyConfig` (sans-I/O) and refuses, naming the config path, what
apiproxy cannot honour; `cli` is `apiproxy-envoy`, which takes Envoy's command line.
"""
