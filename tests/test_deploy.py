"""deploy/ (Kubernetes) and the Dockerfile: valid against the Kubernetes schemas, offline,
and consistent with the server they run (its own argument parser, ports, drain timing,
metric names)."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from anogan_inspect.server.cli import build_parser, config_from_args
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
KUBERNETES = "1.33.0"  # preStop's sleep action needs 1.30 or later


def documents() -> dict[str, dict]:
    docs = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.yaml")), ids=lambda p: p.name)
def test_manifests_are_valid_kubernetes(path: Path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises when invalid


def test_a_misspelt_field_is_caught():
    deployment = documents()["Deployment"]
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_the_deployment_runs_this_server_and_drains_within_its_grace(server):
    docs = documents()
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    config = config_from_args(build_parser().parse_args(container["args"]))  # as it starts
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == config.port  # grpc.health.v1
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == config.metrics_port
    # SIGTERM comes after preStop; the server then serves on for --drain-delay and lets
    # frames finish for --grace: all before the kubelet's kill.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop + config.drain_delay_seconds + config.grace_seconds < \
        pod["spec"]["terminationGracePeriodSeconds"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The headless Service finds these pods; the autoscaler scales this Deployment on a
    # metric the server exports.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    exported = {family.name for family in server.server.metrics.registry.collect()}
    assert metric in exported


def test_the_dockerfile_installs_as_the_makefile_does():
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    torch_spec = next(line.split("?=")[1].strip() for line in makefile.splitlines()
                      if line.startswith("TORCH_SPEC"))
    install = [line for line in dockerfile.splitlines() if line.startswith("RUN pip install")]
    assert install[0].endswith(torch_spec) and '".[serve-gpu]"' in install[1]
    assert 'ENTRYPOINT ["anogan-serve"]' in dockerfile
    for line in dockerfile.splitlines():  # every folder it copies exists
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
