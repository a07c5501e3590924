"""The cluster deployment files: rendered from one spec, valid for the servers that read them, and in step with
the project's pins, CLI and Serve config builder (docs/deploy.md)."""

from __future__ import annotations

import copy
import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra import kuberay, workloads
from infra.render import FILES, KUBERAY, LAUNCHER, render
from infra.spec import SpecError, load_spec
from infra.validate import ManifestError, check_document, check_file, load_documents
from sbir.cli import app
from sbir.config import load_config
from serve.config_file import serve_config

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"


@pytest.fixture(scope="module")
def spec():
    return load_spec()


def _pinned_ray() -> str:
    (pin,) = re.findall(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), flags=re.M)
    return pin


def _dockerfile_arg(name: str) -> str:
    (value,) = re.findall(rf"^ARG {name}=(\S+)$", (INFRA / "Dockerfile").read_text(), flags=re.M)
    return value


@pytest.mark.parametrize("name", list(FILES))
def test_each_shipped_file_is_what_the_spec_renders(spec, name):
    assert (INFRA / name).read_text() == render(name, spec), f"run `make manifests`: {name} differs from the spec"


@pytest.mark.parametrize("name", list(FILES))
def test_each_shipped_file_spells_every_object_out(name):
    assert not re.search(r"[&*]id\d+", (INFRA / name).read_text()), "YAML aliases: a reader cannot edit one copy"


@pytest.mark.parametrize("name", list(FILES))
def test_each_shipped_file_validates_offline(name):
    assert check_file(INFRA / name) >= 1


def _edited(document: dict, path: str, value) -> dict:
    edited = copy.deepcopy(document)
    node = edited
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    node[parts[-1]] = value
    return edited


@pytest.mark.parametrize(
    ("name", "path", "value", "named"),
    [
        ("kuberay/rayjob-train.yaml", "spec.shutdownAfterJobFinish", True, "shutdownAfterJobFinish"),
        ("kuberay/rayservice.yaml", "spec.rayClusterConfig.headGroupSpec.template.spec.containers.0.imagePullPolcy",
         "Always", "imagePullPolcy"),
        ("kuberay/raycluster.yaml", "spec.workerGroupSpecs.0.maxReplicas", "eight", "maxReplicas"),
        ("kuberay/mlflow.yaml", "spec.replica", 2, "replica"),
        ("kuberay/config.yaml", "data.PORT", 5000, "PORT"),
        ("launcher/aws.yaml", "docker.imag", "x", "imag"),
        ("launcher/gcp.yaml", "available_node_types.gpu.min_worker", 1, "min_worker"),
    ],
)  # fmt: skip
def test_unknown_fields_and_wrong_types_fail_with_the_field_named(name, path, value, named):
    document = load_documents(INFRA / name)[0]
    check_document(document)
    with pytest.raises(ManifestError, match=re.escape(named)):
        check_document(_edited(document, path, value))


def test_a_rayservice_whose_serve_config_ray_refuses_fails():
    document = load_documents(INFRA / "kuberay/rayservice.yaml")[0]
    bad = yaml.safe_load(document["spec"]["serveConfigV2"])
    bad["applications"][0]["deployments"][0]["num_replicas"] = "many"
    with pytest.raises(Exception, match="not valid for Ray Serve"):
        check_document(_edited(document, "spec.serveConfigV2", yaml.safe_dump(bad)))


def test_the_rayservice_carries_the_serve_config_the_builder_makes(spec):
    service = load_documents(INFRA / "kuberay/rayservice.yaml")[0]
    overrides = [
        f"run.dir={spec.run_dir}",
        "serve.host=0.0.0.0",
        "serve.load_before_ready=true",
        *spec.service.overrides,
    ]
    args = {"config": spec.service.preset, "model": spec.service.model, "overrides": overrides}
    expected = serve_config(load_config(spec.service.preset, overrides), args)
    assert kuberay.serve_config_of(service) == expected
    assert expected["http_options"]["host"] == "0.0.0.0", "a pod's endpoint must listen beyond loopback"


def test_the_serve_import_path_imports_from_the_repository_root(spec):
    from serve.settings import settings_from_args

    application = kuberay.serve_config_of(load_documents(INFRA / "kuberay/rayservice.yaml")[0])["applications"][0]
    module_name, attribute = application["import_path"].split(":")
    module = importlib.import_module(module_name)
    assert Path(module.__file__).resolve() == ROOT / Path(*module_name.split(".")).with_suffix(".py")
    assert callable(getattr(module, attribute))
    settings, config = settings_from_args(application["args"])  # the builder accepts the args as they are
    assert settings.model == spec.service.model and config.serve.reload_interval_s > 0
    assert config.serve.load_before_ready, "an upgrade must not move traffic to a cluster still loading"


def test_readiness_of_serving_pods_is_the_endpoints_readyz():
    service = load_documents(INFRA / "kuberay/rayservice.yaml")[0]
    for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        (shell,) = container["readinessProbe"]["exec"]["command"][2:]
        assert f"localhost:{kuberay.SERVE_PORT}/readyz" in shell, "ready only with the model loaded"
        assert f"localhost:{kuberay.SERVE_PORT}/-/healthz" in shell, "KubeRay's proxy check (draining) kept"
    assert service["spec"]["excludeHeadPodFromServeSvc"] is True


def _entrypoints() -> dict[str, str]:
    jobs = [load_documents(INFRA / name)[0] for name in KUBERAY if "rayjob" in name]
    return {job["metadata"]["name"]: job["spec"]["entrypoint"] for job in jobs}


def test_rayjob_entrypoints_are_the_commands_the_docs_show():
    text = " ".join(DEPLOY_DOC.read_text().split())  # commands wrap over lines in the docs
    for name, entrypoint in _entrypoints().items():
        assert entrypoint in text.replace(" \\ ", " "), f"docs/deploy.md does not show the entrypoint of {name}"


@pytest.mark.parametrize("name", sorted(_entrypoints()))
def test_each_rayjob_entrypoint_parses_with_the_cli(name):
    argv = _entrypoints()[name].split()
    assert argv[0] == "sbir"
    result = CliRunner().invoke(app, [*argv[1:], "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: sbir ")


def test_a_dry_run_names_a_bad_override():
    result = CliRunner().invoke(
        app, ["train", "-c", "zse_sketchy25", "train.num_workers=4", "train.batch_size=30", "--dry-run"]
    )
    assert result.exit_code == 2 and "batch_size" in result.output


def test_the_image_and_every_manifest_name_the_pinned_ray_and_python(spec):
    pin = _pinned_ray()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    python = project["tool"]["ruff"]["target-version"]  # py311: the Python the project is written for
    assert project["project"]["requires-python"] == f">={python[2]}.{python[3:]}"
    assert _dockerfile_arg("RAY_VERSION") == pin == spec.ray_version
    assert _dockerfile_arg("PYTHON_TAG") == python
    assert f"{sys.version_info.major}{sys.version_info.minor}" == python[2:], "the venv runs another Python"
    for name in KUBERAY:
        document = load_documents(INFRA / name)[0]
        cluster = document["spec"].get("rayClusterSpec") or document["spec"].get("rayClusterConfig") or document["spec"]
        assert cluster["rayVersion"] == pin, name
    for name in LAUNCHER:
        assert f"ray.__version__ == '{pin}'" in load_documents(INFRA / name)[0]["setup_commands"][0]


def test_the_image_runs_as_a_user_and_carries_no_secrets():
    dockerfile = (INFRA / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    assert not re.search(r"^(ENV|ARG)\b.*(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", dockerfile, flags=re.M | re.I)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("**") + 1 :], "the build context is an allow-list after '**'"
    assert not any(line.startswith("!") and line.strip("!/") in (".venv", ".git", "data", "runs") for line in ignored)


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_credentials_come_from_secrets_never_inline():
    for name in KUBERAY | {"kuberay/mlflow.yaml": None}:
        for document in load_documents(INFRA / name):
            for node in _walk(document):
                if "name" in node and "value" in node and isinstance(node["value"], str):
                    assert not re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", node["name"]), (name, node)
    for secret in load_documents(INFRA / "kuberay/secrets.template.yaml"):
        assert all("REPLACE-ME" in value for value in secret["stringData"].values()), secret["metadata"]["name"]


def test_launcher_setup_installs_nothing_unpinned():
    for name in LAUNCHER:
        config = load_documents(INFRA / name)[0]
        commands = [
            *config["initialization_commands"], *config["setup_commands"],
            *config["head_setup_commands"], *config["worker_setup_commands"],
        ]  # fmt: skip
        for command in commands:
            if "pip install" in command:
                assert "-c constraints.txt" in command or re.search(r"==\d", command), command


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ({"storage": "/mnt/shared"}, "storage"),
        ({"head": {"cpu": "four"}}, "head.cpu"),
        ({"worker_groups": [{"name": "gpu", "replicas": 9, "max_replicas": 8, "gpus": 1}]}, "replicas"),
        ({"mlflow": {"uri": "http://tracking.elsewhere:5000", "artifacts": "s3://b/m"}}, "mlflow.uri"),
        ({"trian": {}}, "trian"),
    ],
)
def test_a_bad_cluster_spec_is_one_error_naming_the_key(tmp_path, edit, named):
    data = yaml.safe_load((INFRA / "cluster.yaml").read_text())
    for key, value in edit.items():
        if key == "worker_groups":
            data[key] = [{**data[key][0], **value[0]}]
        else:
            data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
    bad = tmp_path / "cluster.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=re.escape(named)):
        load_spec(bad)
    result = CliRunner().invoke(app, ["infra", "render", "--spec", str(bad), "kuberay/raycluster.yaml"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "Traceback" not in result.output


def test_render_writes_every_file_and_validate_checks_them(tmp_path):
    runner = CliRunner()
    written = runner.invoke(app, ["infra", "render", "--out", str(tmp_path)])
    assert written.exit_code == 0, written.output
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.yaml")) == sorted(FILES)
    checked = runner.invoke(app, ["infra", "validate", *(str(tmp_path / name) for name in FILES)])
    assert checked.exit_code == 0 and checked.output.count("ok: ") == len(FILES), checked.output
    (tmp_path / "kuberay/rayjob-train.yaml").write_text("apiVersion: ray.io/v1\nkind: RayJob\nspec: {entrypoint: 1}\n")
    refused = runner.invoke(app, ["infra", "validate", str(tmp_path / "kuberay/rayjob-train.yaml")])
    assert refused.exit_code == 1 and "entrypoint" in refused.output


def test_the_cluster_jobs_keep_data_and_checkpoints_on_shared_storage(spec):
    for workload in (workloads.train(spec), workloads.sweep(spec)):
        assert workload.config.run.storage.startswith("s3://"), workload.name
        assert workload.config.data.prepared.startswith(spec.storage), workload.name
        assert workload.config.run.check_resources is False, "the autoscaler adds GPU nodes on demand"


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
@pytest.mark.parametrize("method", ["zse", "clip_at"])
def test_the_gpu_check_configs_are_valid_for_any_gpu_count(method, gpus, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        gpu_check = importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    preset, _ = gpu_check.METHODS[method]
    config = load_config(preset, gpu_check.method_overrides(method, gpus, "amp_bf16", 300, tmp_path))
    assert config.train.num_workers == gpus and config.train.use_gpu and config.train.backend == "nccl"
    assert config.train.epochs * config.train.steps_per_epoch == 300
    assert config.model.clip_at.pretrained is None or method == "zse", "nothing may be downloaded"


def test_the_gpu_check_says_so_on_a_machine_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would run for real (make gpu-check)")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", "/dev/null"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "no CUDA GPU is visible" in done.stderr and "Traceback" not in done.stderr
