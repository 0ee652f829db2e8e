"""The load Job (deploy/load/chart): an Indexed Job whose N pods each run one shard, rendered by the real
helm and checked against the Kubernetes schema (kubernetes-validate, strict, the newest and the oldest
Kubernetes the chart allows), with arguments the load generator's own parser accepts for every shard.

Needs the helm and kubernetes-validate that deploy/install-tools.sh puts in .tools/ (CI's deploy step runs
it first); without them these tests are skipped, saying so.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.load.cli import plan_for
from benchmarks.load.plan import Shard

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "load" / "chart"
HELM = REPO / ".tools" / "bin" / "helm"
VALIDATE = REPO / ".tools" / "venv" / "bin" / "kubernetes-validate"
KUBERNETES_VERSIONS = ("1.37.0", "1.27.0")
DESTINATION = "outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local"

pytestmark = pytest.mark.skipif(not HELM.exists(), reason="no helm: run deploy/install-tools.sh")

GATEWAY_RATE = {
    "image.repository": "registry.example/apiproxy-load",
    "target.gateway": "10.1.2.3:8443",
    "target.destination": DESTINATION,
    "tls.caConfigMap": "kube-root-ca.crt",
    "scenario.name": "rate",
}


def helm_template(strings: dict[str, str], sets: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    args = [str(HELM), "template", "load", str(CHART), "--namespace", "load-test"]
    for key, value in strings.items():
        args += ["--set-string", f"{key}={value}"]
    for item in sets:
        args += ["--set", item]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def render(strings: dict[str, str], sets: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    result = helm_template(strings, sets)
    assert result.returncode == 0, result.stderr
    (job,) = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return result.stdout, job


def shard_args(job: dict[str, Any], index: int) -> list[str]:
    """The container's arguments as Kubernetes expands them for pod `index` ($(SHARD_INDEX))."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return [arg.replace("$(SHARD_INDEX)", str(index)) for arg in container["args"]]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_job_is_valid_kubernetes(version: str, tmp_path: Path) -> None:
    if not VALIDATE.exists():
        pytest.skip("no kubernetes-validate: run deploy/install-tools.sh")
    text, _ = render(GATEWAY_RATE, ("shards=4", "scenario.args={500,--duration,60s}"))
    manifest = tmp_path / "job.yaml"
    manifest.write_text(text)
    done = subprocess.run([str(VALIDATE), "--strict", "--kubernetes-version", version, str(manifest)],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed for resource job/load" in done.stdout + done.stderr


def test_helm_lint_strict_passes() -> None:
    done = subprocess.run([str(HELM), "lint", "--strict", str(CHART), "--set", "image.repository=x",
                           "--set-string", "target.node=10.0.0.1:443"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_n_pods_run_at_once_each_one_shard() -> None:
    _, job = render(GATEWAY_RATE, ("shards=4", "scenario.args={500,--duration,60s}"))
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert spec["backoffLimit"] == 0  # a retried shard would run its load twice
    assert spec["activeDeadlineSeconds"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "benchmarks.load"]
    assert container["env"] == [{"name": "SHARD_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]  # fmt: skip
    args = container["args"]
    assert args[args.index("--shard") + 1] == "$(SHARD_INDEX)/4"
    assert args[args.index("--output") + 1] == "/results/shard-$(SHARD_INDEX)"
    assert "--log-results" in args  # how the results leave the pod without a volume
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "limits" not in container["resources"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"results": "/results", "ca": "/etc/apiproxy-load/ca"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["results"] == {"name": "results", "emptyDir": {}}
    assert volumes["ca"]["configMap"]["name"] == "kube-root-ca.crt"


def test_every_shard_gets_arguments_the_load_generator_accepts(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    from lab.certs import make_certificates

    ca.write_bytes(make_certificates(tmp_path / "certs").ca_file.read_bytes())
    _, job = render(GATEWAY_RATE, ("shards=3", "scenario.args={500,--duration,60s}", "workers=2"))
    for index in range(3):
        args = [str(ca) if a == "/etc/apiproxy-load/ca/ca.crt" else a for a in shard_args(job, index)]
        plan = plan_for(args)
        assert plan.shard == Shard(index, 3)
        assert (plan.scenario.kind, plan.scenario.rate, plan.scenario.duration) == ("rate", 500, 60)
        assert (plan.target.kind, plan.target.endpoint, plan.target.destination) == (
            "gateway",
            "10.1.2.3:8443",
            DESTINATION,
        )
        assert plan.target.ca_file == str(ca)
        assert plan.workers == 2


def test_a_node_target_in_plain_text_and_results_on_a_claim() -> None:
    strings = {"image.repository": "registry.example/apiproxy-load", "target.node": "10.96.0.1:443",
               "results.persistentVolumeClaim": "load-results"}  # fmt: skip
    _, job = render(strings, ("tls.plain=true", "scenario.args={3000}"))
    args = shard_args(job, 0)
    plan = plan_for(args)
    assert (plan.target.kind, plan.target.tls, plan.scenario.count) == ("node", False, 3000)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["results"]["persistentVolumeClaim"] == {"claimName": "load-results"}
    assert "ca" not in volumes


@pytest.mark.parametrize(
    ("strings", "sets", "message"),
    [
        ({"image.repository": "x"}, (), "set exactly one of target.node"),
        ({"image.repository": "x", "target.node": "10.0.0.1:443", "target.gateway": "10.0.0.2:8443"}, (),
         "set exactly one of target.node"),
        ({"image.repository": "x", "target.gateway": "10.0.0.2:8443"}, (), "target.destination is required"),
        ({"target.node": "10.0.0.1:443"}, (), "image.repository"),
        ({"image.repository": "x", "target.node": "10.0.0.1"}, (), "target.node: Does not match pattern"),
        ({"image.repository": "x", "target.node": "10.0.0.1:443"}, ("shards=0",), "shards: Must be greater than or equal to 1"),
        ({"image.repository": "x", "target.node": "10.0.0.1:443", "scenario.name": "flood"}, (), "scenario.name"),
        ({"image.repository": "x", "target.gateway": "10.0.0.2:8443", "target.destination": "a\rb"}, (),
         "target.destination: Does not match pattern"),
        ({"image.repository": "x", "target.node": "10.0.0.1:443", "timeout": "10 s"}, (), "timeout: Does not match pattern"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_naming_the_value(
    strings: dict[str, str], sets: tuple[str, ...], message: str
) -> None:
    result = helm_template(strings, sets)
    assert result.returncode != 0
    assert message in result.stderr
