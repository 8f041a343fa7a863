"""The Kubernetes GPU work-pool template: rendered by prefect-kubernetes' own job configuration, valid for
Kubernetes in strict mode, and enforced by the Prefect server (a wrongly typed job variable is refused)."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parents[1] / "infra" / "k8s" / "gpu-base-job-template.json"


def _render(values: dict) -> dict:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads(TEMPLATE.read_text())
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
    return config.job_manifest


def test_rendered_job_requests_a_gpu_and_passes_strict_validation():
    import kubernetes_validate

    manifest = _render({"image": "registry.example/unlearnops:1", "gpu_count": 2,
                        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
                        "tolerations": [{"key": "gpu", "operator": "Equal", "value": "l4", "effect": "NoSchedule"}]})
    pod = manifest["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"][0]["key"] == "gpu"
    assert manifest["spec"]["completions"] == 1 and "completions" not in pod
    manifest["metadata"]["name"] = "unlearnops-run"  # what the worker sets from generateName
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
    defaults = _render({"image": "unlearnops:latest"})["spec"]["template"]["spec"]
    assert defaults["tolerations"][0]["key"] == "nvidia.com/gpu" and defaults["nodeSelector"]

    broken = json.loads(json.dumps(manifest))
    broken["spec"]["template"]["spec"]["completions"] = 1  # where the stock template puts it
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_prefect_server_refuses_a_wrongly_typed_job_variable(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import PrefectHTTPStatusError

    from flows.process_request import process_request

    template = json.loads(TEMPLATE.read_text())
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="gpu-k8s-test", type="kubernetes", base_job_template=template))
        flow_id = client.create_flow(process_request)
        ok = client.create_deployment(flow_id, "typed-ok", work_pool_name="gpu-k8s-test",
                                      job_variables={"gpu_count": 1}, entrypoint="flows/process_request.py:process_request")
        with pytest.raises(PrefectHTTPStatusError, match="422|409|gpu_count"):
            client.create_deployment(flow_id, "typed-bad", work_pool_name="gpu-k8s-test",
                                     job_variables={"gpu_count": "two"},
                                     entrypoint="flows/process_request.py:process_request")
        client.delete_deployment(ok)
        client.delete_work_pool("gpu-k8s-test")


def test_compose_runs_prefect_and_the_queue_on_postgres_without_secrets():
    """`docker compose` cannot run here (no engine); check what it would start."""
    import yaml

    compose = yaml.safe_load((TEMPLATE.parents[1] / "docker-compose.yml").read_text())
    services = compose["services"]
    prefect_db = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://") and "@postgres:" in prefect_db
    worker = services["worker"]["environment"]
    assert worker["UNLEARNOPS_QUEUE_URL"].startswith("postgresql://") and "@queue-db:" in worker["UNLEARNOPS_QUEUE_URL"]
    assert {"prefect-server", "queue-db", "minio-init"} <= set(services["worker"]["depends_on"])
    assert "unlearn deploy" in services["worker"]["command"]
    server = services["prefect-server"]["environment"]  # the server wants basic auth; the worker presents it
    assert server["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING")
    assert worker["PREFECT_API_AUTH_STRING"] == "${PREFECT_AUTH_STRING}"
    for name, service in services.items():  # every secret comes from infra/.env, none is written here
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "ACCESS_KEY", "AUTH")):
                assert str(value).startswith("${"), (name, key)
