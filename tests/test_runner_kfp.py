"""The KFP pipeline: compiled YAML, secret handling, and the kfp.Client request.

No Kubeflow cluster exists on these machines: a compiled pipeline is checked by parsing it
with KFP's own protobuf types, and submission is tested as the request the client would
send (a fake KFP server would prove nothing), plus one real connection to a closed port.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from prodml.cli import main
from prodml.core.config import load_config_dict
from prodml.core.errors import RunnerError
from prodml.runner import kfp as kfp_runner
from prodml.testing.runners import RunnerConformance
from prodml.testing.sdk import needs_sdk

needs_sdk("kfp", extra="kfp")

pytestmark = pytest.mark.kfp

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_CSV = ROOT / "examples" / "quickstart" / "data" / "train.csv"
ACCESS_KEY = "AKIAPRODMLTESTKEY01"
SECRET_KEY = "s3cr3t/Value+ThatMustNotLeak"


class TestKfpLocalRunnerConformance(RunnerConformance):
    @pytest.fixture
    def backend_config(self, tmp_path: Path) -> dict:
        return {"type": "kfp-local", "work_dir": str(tmp_path / "work")}


class TestKfpRunnerConformance(RunnerConformance):
    runs_here = False

    @pytest.fixture
    def backend_config(self) -> dict:
        return {"type": "kfp", "host": "http://127.0.0.1:9"}


def write_config(tmp_path: Path, **changes) -> Path:
    """A cluster-style config in a project folder ``tmp_path`` (data copied into it)."""
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "train.csv").write_bytes(QUICKSTART_CSV.read_bytes())
    (tmp_path / "model.py").write_text("def build_model(spec):\n    raise NotImplementedError\n")
    config = {
        "project": "quickstart",
        "source": {"type": "csv", "path": "data/train.csv", "label": "target"},
        "trainer": {"type": "keras", "model": "model.py:build_model", "epochs": 2, "seed": 42},
        "store": {
            "type": "s3",
            "bucket": "models",
            "endpoint_url": "http://minio.minio.svc:9000",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
        },
        "server": {"type": "kserve", "mode": "cluster", "image": "registry.example/prodml:test"},
        "runner": {
            "type": "kfp",
            "host": "http://127.0.0.1:9",
            "image": "registry.example/prodml:test",
            "project_dir": ".",
            "credentials_secret": "prodml-s3",
            "retries": {"train": 2},
        },
    }
    for key, value in changes.items():
        config[key] = value
    path = tmp_path / "prodml.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def parse_pipeline(path: Path):
    """The compiled file as KFP's PipelineSpec, plus the platform (kubernetes) document."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    platform = docs[1] if len(docs) > 1 else {}
    return spec, platform


def stage_order(spec) -> list[str]:
    """Task names following the dependency chain from the task that depends on nothing."""
    tasks = spec.root.dag.tasks
    order = [name for name, task in tasks.items() if not task.dependent_tasks]
    assert len(order) == 1, f"expected one first task, got {order}"
    while True:
        after = [name for name, task in tasks.items() if list(task.dependent_tasks) == [order[-1]]]
        if not after:
            return order
        assert len(after) == 1
        order.append(after[0])


def test_compile_writes_a_pipeline_kfp_parses_with_one_task_per_stage(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    out = tmp_path / "pipeline.yaml"
    assert main(["compile", "-c", str(config), "-o", str(out)]) == 0

    text = out.read_text(encoding="utf-8")
    assert SECRET_KEY not in text and ACCESS_KEY not in text
    spec, platform = parse_pipeline(out)
    assert spec.pipeline_info.name == "prodml-quickstart"
    assert stage_order(spec) == ["fetch", "train", "export", "serve"]
    tasks = spec.root.dag.tasks
    # artifacts pass between the steps: fetch's Dataset into train, train's Model into export
    assert tasks["train"].inputs.artifacts["dataset"].task_output_artifact.producer_task == "fetch"
    assert tasks["export"].inputs.artifacts["model"].task_output_artifact.producer_task == "train"
    assert tasks["serve"].inputs.parameters["modelref"].task_output_parameter.producer_task == "export"
    assert tasks["train"].retry_policy.max_retry_count == 2
    assert not tasks["fetch"].caching_options.enable_cache
    assert tasks["train"].caching_options.enable_cache
    assert not tasks["serve"].caching_options.enable_cache
    executors = json.loads(json.dumps(docs_executors(spec)))
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/prodml:test"}

    # the config parameter: secret-free, paths rewritten into the image's project folder
    default = spec.root.input_definitions.parameters["config_json"].default_value.string_value
    carried = json.loads(default)
    assert carried["source"]["path"] == "/app/data/train.csv"
    assert carried["trainer"]["model"] == "/app/model.py:build_model"
    assert "secret_access_key" not in carried["store"] and "access_key_id" not in carried["store"]

    # credentials reach the steps that use the store from the Kubernetes Secret named in the
    # config: the variables the store asks for (pod_environment), never values
    kube = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(kube) == {"exec-export", "exec-serve"}
    for executor in kube.values():
        (secret,) = executor["secretAsEnv"]
        assert secret["secretName"] == "prodml-s3"
        assert {k["envVar"] for k in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def docs_executors(spec) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(spec.deployment_spec)["executors"]


def test_compile_has_only_the_configured_stages(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, stages=["fetch", "train"])
    out = tmp_path / "p.yaml"
    assert main(["compile", "-c", str(config), "-o", str(out)]) == 0
    spec, _ = parse_pipeline(out)
    assert stage_order(spec) == ["fetch", "train"]


def test_compile_refuses_a_pipeline_that_would_carry_a_secret(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    # the secret key pasted into a plain (non-secret) field by mistake
    leaky = write_config(tmp_path)
    data = yaml.safe_load(leaky.read_text())
    data["store"]["prefix"] = "models-s3cr3tvalue"
    data["store"]["secret_access_key"] = "models-s3cr3tvalue"
    leaky.write_text(yaml.safe_dump(data))
    out = tmp_path / "pipeline.yaml"
    assert main(["compile", "-c", str(leaky), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "refusing to write the pipeline" in err and "store.secret_access_key" in err
    assert "models-s3cr3tvalue" not in err  # the value itself is never printed
    assert not out.exists() and not list(tmp_path.glob(".*.yaml"))


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        (["fetch", "serve"], "needs 'train', 'export' before it"),
        (["train", "fetch"], "out of order"),
        (["fetch", "deploy"], "stages[1]"),
    ],
)
def test_bad_stage_lists_are_config_errors(tmp_path: Path, monkeypatch, capsys, stages, expected) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, stages=stages)
    assert main(["compile", "-c", str(config), "-o", str(tmp_path / "p.yaml")]) == 2
    assert expected in capsys.readouterr().err


def test_a_kfp_pipeline_cannot_start_in_the_middle(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, stages=["train", "export", "serve"])
    assert main(["compile", "-c", str(config), "-o", str(tmp_path / "p.yaml")]) == 1
    assert "cannot start at 'train'" in capsys.readouterr().err


def test_serve_only_pipeline_serves_the_stores_version(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, stages=["serve"])
    out = tmp_path / "p.yaml"
    assert main(["compile", "-c", str(config), "-o", str(out)]) == 0
    spec, _ = parse_pipeline(out)
    assert stage_order(spec) == ["serve"]
    modelref = spec.root.dag.tasks["serve"].inputs.parameters["modelref"]
    assert modelref.runtime_value.constant.string_value == ""


# -- kfp.Client: the request, built and checked as a unit -------------------------------------


def load(path: Path):
    return load_config_dict(yaml.safe_load(path.read_text()), base_dir=path.parent)


def test_client_arguments_come_from_the_runner_config(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["runner"].update(host="https://kfp.example", namespace="team-a", token="tok-123456")
    config = load_config_dict(data, base_dir=tmp_path)
    assert kfp_runner.client_arguments(config.runner) == {
        "host": "https://kfp.example",
        "namespace": "team-a",
        "existing_token": "tok-123456",
    }


def test_client_needs_a_host(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    data = yaml.safe_load(write_config(tmp_path).read_text())
    del data["runner"]["host"]
    config = load_config_dict(data, base_dir=tmp_path)
    with pytest.raises(RunnerError, match=r"runner\.host"):
        kfp_runner.client_arguments(config.runner)
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", "http://from-env:8888")
    assert kfp_runner.client_arguments(config.runner)["host"] == "http://from-env:8888"


def test_submission_request(tmp_path: Path) -> None:
    data = yaml.safe_load(write_config(tmp_path).read_text())
    config = load_config_dict(data, base_dir=tmp_path)
    package = tmp_path / "pipeline.yaml"
    request = kfp_runner.submission_arguments(config, package, now=0)
    assert request == {
        "pipeline_file": str(package),
        "arguments": {},
        "run_name": "quickstart-19700101-000000",
        "experiment_name": "quickstart",
    }
    data["runner"].update(
        experiment="nightly", run_name="retrain-42", namespace="team-a", service_account="pipeline-runner"
    )
    request = kfp_runner.submission_arguments(load_config_dict(data, base_dir=tmp_path), package, now=0)
    assert request["run_name"] == "retrain-42" and request["experiment_name"] == "nightly"
    assert request["namespace"] == "team-a" and request["service_account"] == "pipeline-runner"


def test_unreachable_host_is_named_without_a_traceback(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = yaml.safe_load(write_config(tmp_path).read_text())
    data["runner"]["host"] = f"http://127.0.0.1:{port}"
    (tmp_path / "prodml.yaml").write_text(yaml.safe_dump(data))
    assert main(["run", "-c", str(tmp_path / "prodml.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach Kubeflow Pipelines at http://127.0.0.1:{port}" in err
    assert "Traceback" not in err and SECRET_KEY not in err


def test_follow_prints_each_step_state_until_the_run_ends(tmp_path: Path) -> None:
    """--wait's loop on the API's run objects (kfp_server_api's own model classes)."""
    import io

    from kfp_server_api import models

    def run(state: str, tasks: dict[str, str]):
        details = models.V2beta1RunDetails(
            task_details=[models.V2beta1PipelineTaskDetail(display_name=n, state=s) for n, s in tasks.items()]
        )
        return models.V2beta1Run(run_id="r1", state=state, run_details=details)

    answers = iter(
        [
            run("RUNNING", {"fetch": "RUNNING"}),
            run("RUNNING", {"fetch": "SUCCEEDED", "train": "RUNNING"}),
            run("FAILED", {"fetch": "SUCCEEDED", "train": "FAILED"}),
        ]
    )

    class Answers:
        def get_run(self, run_id: str):
            return next(answers)

    data = yaml.safe_load(write_config(tmp_path).read_text())
    config = load_config_dict(data, base_dir=tmp_path)
    out = io.StringIO()
    runner = kfp_runner.KfpRunner(config.runner, stream=out)
    kfp_runner.POLL_SECONDS, saved = 0.0, kfp_runner.POLL_SECONDS
    try:
        assert runner.follow(Answers(), "r1", "http://kfp") == "FAILED"
    finally:
        kfp_runner.POLL_SECONDS = saved
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert lines == [
        ["fetch", "RUNNING"],
        ["fetch", "SUCCEEDED"],
        ["train", "RUNNING"],
        ["train", "FAILED"],
        ["run", "r1:", "FAILED"],
    ]


def test_the_kind_config_compiles_for_the_cluster(tmp_path: Path, monkeypatch, capsys) -> None:
    """config/kind.yaml (docs/kind.md): the pipeline the cluster would run, checked offline."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("KFP_HOST", raising=False)
    out = tmp_path / "kind-pipeline.yaml"
    assert main(["compile", "-c", "config/kind.yaml", "-o", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err  # nothing in it that only works on a laptop
    spec, platform = parse_pipeline(out)
    assert stage_order(spec) == ["fetch", "train", "export", "serve"]
    executors = docs_executors(spec)
    assert {e["container"]["image"] for e in executors.values()} == {"prodml:0.1.0"}
    carried = json.loads(spec.root.input_definitions.parameters["config_json"].default_value.string_value)
    # the image holds the project at /app (deploy/Dockerfile copies config/ and examples/ there)
    assert carried["source"]["path"] == "/app/examples/quickstart/data/train.csv"
    assert carried["trainer"]["model"] == "/app/examples/quickstart/model.py:build_model"
    assert carried["server"]["mode"] == "cluster" and carried["store"]["type"] == "s3"
    kube = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(kube) == {"exec-export", "exec-serve"}
    for executor in kube.values():
        assert executor["secretAsEnv"][0]["secretName"] == "prodml-s3"
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "COPY examples ./examples" in dockerfile and "WORKDIR /app" in dockerfile


@pytest.mark.slow
def test_a_failing_kfp_local_step_is_named(tmp_path: Path, capsys) -> None:
    (tmp_path / "data.csv").write_text("a,b,y\n1,2,3\n2,1,4\n3,0,5\n4,1,7\n")
    (tmp_path / "model.py").write_text("def build_model(spec):\n    raise ValueError('broken model code')\n")
    config = {
        "project": "failing",
        "source": {"type": "csv", "path": "data.csv", "label": "y"},
        "trainer": {"type": "keras", "model": "model.py:build_model", "epochs": 1},
        "runner": {"type": "kfp-local"},
        "stages": ["fetch", "train"],
    }
    (tmp_path / "prodml.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "-c", str(tmp_path / "prodml.yaml")]) == 1
    captured = capsys.readouterr()
    assert "the kfp-local pipeline failed in the train step" in captured.err
    assert "broken model code" in captured.out  # the step's own error, in its log
    runs = tmp_path / ".prodml" / "runs"
    record = json.loads((runs / (runs / "latest").read_text().strip() / "run.json").read_text())
    assert record["status"] == "failed"


# -- the compiled pipeline against the pinned KFP backend (issue 11, break 2) -------------------


def test_the_platform_spec_is_accepted_by_the_pinned_kfp_backend(tmp_path: Path, monkeypatch) -> None:
    """kfp-kubernetes 2.17 emits SecretAsEnv.optional and secretNameParameter; the documented
    backend must know them (2.4.0's driver rejected `optional`: kubeflow/pipelines#12495)."""
    from prodml.core import cluster_check, versions

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("KFP_HOST", raising=False)
    out = tmp_path / "kind-pipeline.yaml"
    assert main(["compile", "-c", "config/kind.yaml", "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text(encoding="utf-8")))
    assert cluster_check.check_pipeline(docs) == []
    emitted = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-serve"]["secretAsEnv"][
        0
    ]
    known = {spec[0] for spec in cluster_check.kfp_messages()["kfp_kubernetes.SecretAsEnv"].values()}
    assert set(emitted) <= known and {"optional", "secretNameParameter"} <= set(emitted)
    assert versions.KFP_BACKEND_VERSION == "2.17.0"  # retryPolicy is honoured from 2.17 on
    assert "retryPolicy" in docs[0]["root"]["dag"]["tasks"]["train"]


def test_the_kfp_validator_rejects_unknown_fields_and_wrong_types(tmp_path: Path, monkeypatch) -> None:
    from prodml.core import cluster_check

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "p.yaml"
    assert main(["compile", "-c", str(write_config(tmp_path)), "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text(encoding="utf-8")))
    docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-serve"]["secretAsEnv"][0][
        "mountPath"
    ] = "/x"
    docs[0]["root"]["dag"]["tasks"]["train"]["retryPolicy"]["maxRetryCount"] = "twice"
    problems = [str(p) for p in cluster_check.check_pipeline(docs)]
    assert any(
        "exec-serve.secretAsEnv[0].mountPath" in p and "unknown field 'mountPath'" in p for p in problems
    )
    assert any("retryPolicy.maxRetryCount" in p and "expected int32" in p for p in problems), problems


def test_compile_refuses_what_the_backend_would_reject(tmp_path: Path, monkeypatch, capsys) -> None:
    """With the field set of a backend that lacks SecretAsEnv.optional (as KFP 2.4.0's did),
    compile fails naming the field, before anything is submitted."""
    from prodml.core import cluster_check

    monkeypatch.chdir(tmp_path)
    messages = {k: dict(v) for k, v in cluster_check.kfp_messages().items()}
    messages["kfp_kubernetes.SecretAsEnv"].pop("optional")
    monkeypatch.setattr(cluster_check, "kfp_messages", lambda: messages)
    out = tmp_path / "p.yaml"
    assert main(["compile", "-c", str(write_config(tmp_path)), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown field 'optional' in kfp_kubernetes.SecretAsEnv" in err
    assert not out.exists()
    # and --no-check writes it anyway
    assert main(["compile", "-c", str(write_config(tmp_path)), "-o", str(out), "--no-check"]) == 0


def test_compile_checks_the_serve_steps_manifests(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, server={"type": "kserve", "mode": "cluster"})
    assert main(["compile", "-c", str(config), "-o", str(tmp_path / "p.yaml")]) == 2
    assert "server.image: runtime prodml needs the serving image" in capsys.readouterr().err


# -- AKS: the serve step's credentials come from the Secret it is given (break 4) -------------


def secret_keys_created_in(doc: Path, secret: str) -> set[str]:
    """The keys `kubectl create secret generic SECRET --from-literal=KEY=...` makes in a doc."""
    import re

    text = doc.read_text(encoding="utf-8").replace("\\\n", " ")
    found: set[str] = set()
    for line in text.splitlines():
        if f"create secret generic {secret}" in line:
            found |= set(re.findall(r"--from-literal=([A-Z_]+)=", line))
    assert found, f"{doc} creates no Secret {secret}"
    return found


def test_aks_serve_step_resolves_storage_credentials_from_its_secret(tmp_path: Path, monkeypatch) -> None:
    from prodml.core.plugins import default_registry
    from prodml.plugins.servers import _k8s
    from prodml.runner._step import step_config

    account_key = "QUtTLWFjY291bnQta2V5LWZvci10ZXN0cw=="
    connection = (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey="
        f"{account_key};EndpointSuffix=core.windows.net"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
    config = write_config(
        tmp_path,
        store={
            "type": "azure_blob",
            "container": "prodml-models",
            "connection_string": "${env:AZURE_STORAGE_CONNECTION_STRING}",
        },
        runner={
            "type": "kfp",
            "host": "http://127.0.0.1:9",
            "image": "registry.example/prodml:test",
            "project_dir": ".",
            "credentials_secret": "prodml-azure",
        },
    )
    out = tmp_path / "p.yaml"
    assert main(["compile", "-c", str(config), "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert account_key not in text
    spec, platform = parse_pipeline(out)
    serve_env = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-serve"][
        "secretAsEnv"
    ]
    (secret,) = serve_env
    assert secret["secretName"] == "prodml-azure"
    # the keys the step reads are the keys docs/aks.md puts into the Secret
    wanted = {k["secretKey"] for k in secret["keyToEnv"]}
    assert wanted <= secret_keys_created_in(ROOT / "docs" / "aks.md", "prodml-azure")

    # inside the serve step's pod: the config parameter, and only the Secret's variables
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    for item in secret["keyToEnv"]:
        monkeypatch.setenv(item["envVar"], {"AZURE_STORAGE_CONNECTION_STRING": connection}[item["secretKey"]])
    config_json = spec.root.input_definitions.parameters["config_json"].default_value.string_value
    step = step_config(config_json)
    store = default_registry().create("store", step.store)
    from prodml.core.interfaces import ModelRef

    ref = ModelRef(
        model_name="quickstart", version="20261129T173000Z-0123abcd", store_type="azure_blob", uri=""
    )
    storage = store.kserve_storage(ref, with_values=True)
    server = default_registry().create("server", step.server)
    access = _k8s.storage_access(server.config, storage, "quickstart")
    assert access is not None
    assert _k8s.secret_values(access, storage) == {"AZURE_STORAGE_ACCESS_KEY": account_key}
