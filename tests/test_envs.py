"""Local environments of the catalog's images: the pure rules, and ``jupyterhub-credits envs``.

The builds are real: ``python -m venv`` and pip, offline (``--no-index`` through
pip's own PIP_* variables) from tiny wheels made here — a stand-in
``tensorflow-cpu`` and a stand-in ``jupyterhub-singleuser`` that prints its own
``sys.prefix`` — so no TensorFlow and no network are needed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from jupyterhub_credits import envs
from jupyterhub_credits.cli import main
from tests.hub import CATALOG

IMAGES = ("tf-2.21", "tf-2.19", "tf-2.17", "tf-2.21-cpu")


# --- pure rules ----------------------------------------------------------------------------

PINS = """\
# pinned for the image
absl-py==2.1.0
tensorflow==2.19.0
zipp==3.20.0
"""


@pytest.mark.parametrize("pins, gpu, line", [
    (PINS, True, "tensorflow[and-cuda]==2.19.0"),
    (PINS, False, "tensorflow-cpu==2.19.0"),
    (PINS.replace("tensorflow==", "tensorflow-cpu=="), False, "tensorflow-cpu==2.19.0"),
    (PINS.replace("tensorflow==", "Tensorflow_CPU == "), True, "tensorflow[and-cuda]==2.19.0"),
])
def test_the_tensorflow_pin_becomes_the_build_for_this_machine(pins, gpu, line):
    text, requirement = envs.tensorflow_for_machine(pins, gpu=gpu)
    assert requirement == line
    assert text.splitlines() == ["# pinned for the image", "absl-py==2.1.0", line, "zipp==3.20.0"]


@pytest.mark.parametrize("pins", ["absl-py==2.1.0\n", "tensorflow==2.19.0\ntensorflow-cpu==2.19.0\n",
                                  "tensorboard==2.19.0\n"])
def test_pins_without_exactly_one_tensorflow_are_refused_in_words(pins):
    with pytest.raises(envs.PinsError, match="must pin TensorFlow exactly once"):
        envs.tensorflow_for_machine(pins, gpu=False, source="tf-2.19.txt")


def test_an_image_environment_is_its_own_mapping_else_every_image_mapping_else_envs_dir():
    overrides = {"tf-2.17": "/opt/old", "*": "/opt/hub"}
    assert envs.environment_path("tf-2.17", "/envs", overrides) == Path("/opt/old")
    assert envs.environment_path("tf-2.21", "/envs", overrides) == Path("/opt/hub")
    assert envs.environment_path("tf-2.21", "/envs", {}) == Path("/envs/tf-2.21")


def test_the_refusal_names_the_command_that_builds_the_environment(monkeypatch):
    monkeypatch.setenv(envs.ENVS_DIR_ENV, "/srv/envs")
    message = envs.not_installed_message("TensorFlow 2.17", "tf-2.17", Path("/srv/envs/tf-2.17"),
                                         "/srv/envs")
    assert message == ("TensorFlow 2.17 is not installed on this machine. An administrator can "
                       "build it with: jupyterhub-credits envs build tf-2.17. Nothing was charged.")
    elsewhere = envs.not_installed_message("TensorFlow 2.17", "tf-2.17", Path("/x/tf-2.17"), "/x")
    assert "jupyterhub-credits envs build tf-2.17 --envs-dir /x." in elsewhere
    own = envs.not_installed_message("TensorFlow 2.17", "tf-2.17", Path("/opt/old"), "/x")
    assert "install jupyterhub-singleuser into /opt/old" in own


@pytest.mark.parametrize("direct_url, source", [
    ({"url": "file://{here}", "dir_info": {"editable": True}}, "{here}"),
    ({"url": "file://{here}/missing", "dir_info": {}}, "jupyterhub-credits==1.2.3"),
    ({"url": "https://github.com/o/r", "vcs_info": {"vcs": "git", "commit_id": "abc"}},
     "jupyterhub-credits @ git+https://github.com/o/r@abc"),
    (None, "jupyterhub-credits==1.2.3"),
])
def test_the_package_comes_from_where_this_one_was_installed_from(tmp_path, direct_url, source):
    given = json.loads(json.dumps(direct_url).replace("{here}", str(tmp_path)))
    assert envs.package_source(given, "1.2.3") == source.replace("{here}", str(tmp_path))


def fake_environment(path: Path, *, stamp: dict | None, program: bool = True,
                     tensorflow: str | None = "2.19.0") -> Path:
    """An environment's files as `envs build` leaves them, without building anything."""
    (path / "bin").mkdir(parents=True)
    if program:
        script = path / envs.server_program(path).relative_to(path)
        script.write_text("#!/bin/sh\n")
        script.chmod(0o755)
    if tensorflow:
        (path / "lib/python3.11/site-packages" / f"tensorflow_cpu-{tensorflow}.dist-info").mkdir(
            parents=True)
    if stamp is not None:
        (path / "jupyterhub-credits-env.json").write_text(json.dumps(stamp))
    return path


def stamp_for(expected: envs.Expected) -> dict:
    return {"image": "tf-2.19", "tensorflow": expected.tensorflow,
            "requirements_sha256": expected.requirements_sha256,
            "built_at": "2026-11-28T03:00:00+00:00"}


def test_the_state_of_an_environment(tmp_path):
    expected = envs.Expected("tensorflow-cpu==2.19.0", "a" * 64)
    state = lambda name: envs.environment_state("tf-2.19", tmp_path / name, expected)  # noqa: E731

    fake_environment(tmp_path / "built", stamp=stamp_for(expected))
    assert state("built").state == "built" and state("built").tensorflow == "2.19.0"
    assert state("built").built_at == "2026-11-28T03:00:00+00:00"

    fake_environment(tmp_path / "pins-changed", stamp={**stamp_for(expected),
                                                         "requirements_sha256": "b" * 64})
    assert state("pins-changed").state == "stale"
    assert "pinned requirements changed" in state("pins-changed").problem

    fake_environment(tmp_path / "cpu-build", stamp={**stamp_for(expected),
                                                      "tensorflow": "tensorflow[and-cuda]==2.19.0"})
    assert state("cpu-build").state == "stale"
    assert "a build now installs tensorflow-cpu==2.19.0" in state("cpu-build").problem

    fake_environment(tmp_path / "by-hand", stamp=None)
    assert state("by-hand").state == "stale" and "no stamp" in state("by-hand").problem

    fake_environment(tmp_path / "no-server", stamp=stamp_for(expected), program=False)
    assert state("no-server").state == "broken"
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert state("dangling").state == "broken" and "does not exist" in state("dangling").problem
    assert state("never-built").state == "missing"


# --- the command line ----------------------------------------------------------------------

def pins_dir(tmp_path: Path, extra: str = "") -> Path:
    """Pinned files for every catalog image: a stand-in TensorFlow and jupyterhub-singleuser."""
    directory = tmp_path / "pins"
    directory.mkdir(exist_ok=True)
    for image_id in IMAGES:
        version = {"tf-2.19": "2.19.0", "tf-2.17": "2.17.1"}.get(image_id, "2.21.0")
        name = "tensorflow-cpu" if image_id.endswith("-cpu") else "tensorflow"
        (directory / f"{image_id}.txt").write_text(
            f"# stand-ins\nfake-singleuser==1.0\n{name}=={version}\n{extra}")
    return directory


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_envs_list_json_says_each_catalog_image_state_and_where(tmp_path, capsys):
    pins = pins_dir(tmp_path)
    envs_dir = tmp_path / "envs"
    expected = envs.requirements_for(pins / "tf-2.19.txt", gpu=False).expected
    fake_environment(envs_dir / "tf-2.19", stamp=stamp_for(expected))
    fake_environment(envs_dir / "tf-2.21", stamp={**stamp_for(expected), "image": "tf-2.21"})
    fake_environment(envs_dir / "tf-2.21-cpu", stamp=None, program=False)

    code, out, err = run_cli(capsys, "envs", "list", "--json", "--cpu", "--catalog", str(CATALOG),
                             "--envs-dir", str(envs_dir), "--requirements-dir", str(pins))
    assert code == 0, err
    listed = {entry["image"]: entry for entry in json.loads(out)}
    assert list(listed) == list(IMAGES)  # every catalog image, in the catalog's order
    assert {image: entry["state"] for image, entry in listed.items()} == {
        "tf-2.21": "stale", "tf-2.19": "built", "tf-2.17": "missing", "tf-2.21-cpu": "broken"}
    assert listed["tf-2.19"]["path"] == str(envs_dir / "tf-2.19")
    assert listed["tf-2.19"]["tensorflow"] == "2.19.0"
    assert listed["tf-2.21"]["expected"] == "tensorflow-cpu==2.21.0"

    code, out, _ = run_cli(capsys, "envs", "list", "--gpu", "--catalog", str(CATALOG),
                           "--envs-dir", str(envs_dir), "--requirements-dir", str(pins))
    assert code == 0
    # On a GPU machine the CPU build it has is stale, and the page says what to run.
    assert "built with tensorflow-cpu==2.19.0, a build now installs tensorflow[and-cuda]==2.19.0" in out
    assert f"build it: jupyterhub-credits envs build tf-2.17 --envs-dir {envs_dir}" in out


def test_an_unknown_image_or_catalog_is_a_usage_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "envs", "build", "tf-9.9", "--catalog", str(CATALOG),
                           "--envs-dir", str(tmp_path))
    assert code == 2
    assert "unknown image 'tf-9.9'; the catalog" in err and "tf-2.21, tf-2.19, tf-2.17" in err
    assert "Traceback" not in err and not any(tmp_path.iterdir())

    code, _, err = run_cli(capsys, "envs", "list", "--catalog", str(tmp_path / "none.yaml"))
    assert code == 2 and "cannot read the catalog" in err and "--catalog" in err


def make_wheel(directory: Path, name: str, version: str, files: dict[str, str],
               entry_points: str = "") -> Path:
    """A minimal, valid wheel (PEP 427) holding ``files``."""
    dist = f"{name.replace('-', '_')}-{version}"
    metadata = {f"{dist}.dist-info/METADATA":
                f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                f"{dist}.dist-info/WHEEL":
                "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    if entry_points:
        metadata[f"{dist}.dist-info/entry_points.txt"] = entry_points
    contents = {**files, **metadata}
    record = []
    for path, text in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    wheel = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in contents.items():
            archive.writestr(path, text)
        archive.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture
def offline_index(tmp_path, monkeypatch):
    """pip finds only the stand-in wheels made here (pip's own PIP_* configuration)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "tensorflow-cpu", "2.19.0", {"tensorflow/__init__.py": "VERSION = '2.19.0'\n"})
    make_wheel(wheels, "fake-singleuser", "1.0",
               {"fake_singleuser.py": "import sys\ndef main():\n    print(sys.prefix)\n"},
               entry_points="[console_scripts]\njupyterhub-singleuser = fake_singleuser:main\n")
    package = make_wheel(wheels, "jupyterhub-credits", "0.0.1", {"credits_standin.py": ""})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return package


@pytest.mark.slow
def test_envs_build_makes_a_runnable_environment_and_a_failed_build_keeps_the_old_one(
        tmp_path, capsys, offline_index):
    envs_dir = tmp_path / "envs"
    common = ["--catalog", str(CATALOG), "--envs-dir", str(envs_dir), "--cpu",
              "--package", str(offline_index)]
    code, out, err = run_cli(capsys, "envs", "build", "TF-2.19",
                             "--requirements-dir", str(pins_dir(tmp_path)), *common)
    assert code == 0, err
    environment = envs_dir / "tf-2.19"
    assert f"tf-2.19: built: {environment}" in out
    # Its jupyterhub-singleuser runs with the environment's own Python, at the link's target.
    program = subprocess.run([str(environment / "bin" / "jupyterhub-singleuser")],
                             capture_output=True, text=True, check=True)
    build = environment.resolve()
    assert Path(program.stdout.strip()) == build
    assert build.parent == envs_dir / ".builds" / "tf-2.19"
    stamp = json.loads((environment / "jupyterhub-credits-env.json").read_text())
    assert stamp["tensorflow"] == "tensorflow-cpu==2.19.0"
    assert stamp["package"] == str(offline_index)
    assert (environment / "jupyterhub-credits-requirements.txt").read_text().splitlines()[-1] == \
        "tensorflow-cpu==2.19.0"
    assert any(build.glob("lib/python*/site-packages/credits_standin.py"))  # the package itself

    code, listed, _ = run_cli(capsys, "envs", "list", "--json",
                              "--requirements-dir", str(tmp_path / "pins"), *common[:-2])
    state = next(entry for entry in json.loads(listed) if entry["image"] == "tf-2.19")
    assert (state["state"], state["tensorflow"]) == ("built", "2.19.0")

    code, out, _ = run_cli(capsys, "envs", "build", "tf-2.19",
                           "--requirements-dir", str(tmp_path / "pins"), *common)
    assert code == 0 and "already built from these pins" in out  # nothing rebuilt

    # Pins that cannot be installed: pip's own words, and the environment as it was.
    broken_pins = pins_dir(tmp_path, extra="no-such-package==9.9\n")
    code, out, err = run_cli(capsys, "envs", "build", "tf-2.19", "--force",
                             "--requirements-dir", str(broken_pins), *common)
    assert code == 1
    assert "tf-2.19: pip install of the pinned requirements failed" in err
    assert f"{environment} is unchanged" in err
    assert "| ERROR: No matching distribution found for no-such-package==9.9" in err
    assert "Traceback" not in err
    assert environment.resolve() == build
    assert json.loads((environment / "jupyterhub-credits-env.json").read_text()) == stamp
    assert sorted(os.listdir(envs_dir / ".builds" / "tf-2.19")) == [".lock", build.name]


# --- the local spawners and the spawn form ---------------------------------------------------

def test_envs_settings_reach_both_local_spawners_and_run_the_chosen_environment(tmp_path):
    from traitlets.config import Config

    from jupyterhub_credits.spawner import (
        CreditsLocalProcessSpawner,
        CreditsSimpleLocalProcessSpawner,
    )

    config = Config()
    config.CreditsLocalProcessSpawner.envs_dir = str(tmp_path)
    config.CreditsLocalProcessSpawner.image_environments = {"tf-2.17": "/opt/old"}
    config.Spawner.cmd = ["jupyterhub-singleuser", "--debug"]
    for spawner_class in (CreditsLocalProcessSpawner, CreditsSimpleLocalProcessSpawner):
        spawner = spawner_class(config=config)
        assert spawner.image_environment("tf-2.19") == tmp_path / "tf-2.19"
        assert spawner.image_environment("tf-2.17") == Path("/opt/old")
        spawner.use_image("tf-2.19")
        assert spawner.cmd == [str(tmp_path / "tf-2.19/bin/jupyterhub-singleuser"), "--debug"]
        spawner.use_image("tf-2.17")  # a second start of the same server, another image
        assert spawner.cmd == ["/opt/old/bin/jupyterhub-singleuser", "--debug"]
        spawner.cmd = ["/usr/local/bin/my-wrapper", "jupyterhub-singleuser"]
        spawner.use_image("tf-2.19")  # a deployment's own wrapper stays
        assert spawner.cmd == ["/usr/local/bin/my-wrapper", "jupyterhub-singleuser"]


def test_without_the_setting_the_envs_dir_is_the_clis_default(monkeypatch):
    from jupyterhub_credits.spawner import CreditsLocalProcessSpawner

    monkeypatch.delenv(envs.ENVS_DIR_ENV, raising=False)
    assert CreditsLocalProcessSpawner().envs_dir == "/opt/jupyterhub-credits/envs"
    monkeypatch.setenv(envs.ENVS_DIR_ENV, "/srv/envs")
    assert CreditsLocalProcessSpawner().envs_dir == "/srv/envs"


@pytest.fixture
def form_with_installed(tmp_path):
    """Render the spawn form for a spawner on which only ``installed`` images can run."""
    import asyncio

    from jupyterhub_credits.ledger import Ledger
    from jupyterhub_credits.spawner.context import reset_contexts
    from jupyterhub_credits.spawner.form import render_options_form
    from jupyterhub_credits.spawner.mixin import Unavailable
    from tests.spawners import credits_spawner

    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    Ledger.open(url).close()

    def render(installed, user_options=None) -> str:
        spawner = credits_spawner(url, CATALOG, "ada", user_options=user_options)
        spawner.image_unavailable = lambda image_id: None if image_id in installed else \
            Unavailable(envs.NOT_INSTALLED, "refused")
        return asyncio.run(render_options_form(spawner))

    yield render
    reset_contexts()


def test_the_form_never_selects_an_image_that_cannot_run(form_with_installed):
    import re

    html = form_with_installed({"tf-2.19", "tf-2.21-cpu"}, user_options={"image": "tf-2.17"})
    options = dict(re.findall(r'<option value="(tf-[^"]+)"([^>]*)>', html))
    assert "disabled" in options["tf-2.17"] and "selected" not in options["tf-2.17"]
    assert "disabled" in options["tf-2.21"]  # the catalog's default, not installed
    assert "selected" in options["tf-2.19"]  # the first image that can run
    assert "TensorFlow 2.17 (CUDA 12.3) — not installed on this machine</option>" in html

    nothing = form_with_installed(set())
    assert "No image is installed on this machine yet" in nothing
    assert " selected>" not in nothing.split('name="gpu_type"')[0]
