"""The shipped configuration files agree with the catalog and the code."""

from __future__ import annotations

from pathlib import Path

import yaml

from jupyterhub_credits.catalog import load_catalog

ROOT = Path(__file__).resolve().parent.parent
CATALOG = load_catalog(ROOT / "config" / "catalog.yaml")


def test_every_catalog_image_has_a_dockerfile_with_its_tensorflow():
    dockerfiles = {path.parent.name: path.read_text()
                   for path in (ROOT / "images").glob("*/Dockerfile")}
    for image_id, image in CATALOG.images.items():
        matching = [text for text in dockerfiles.values() if f"Catalog image: {image.image}" in text]
        assert matching, f"no Dockerfile under images/ builds {image.image} ({image_id})"
        assert f"=={image.tensorflow}." in matching[0], image_id
        assert "jupyterhub-credits" in matching[0]
    assert len({image.tensorflow for image in CATALOG.images.values()}) >= 3


def test_z2jh_values_prepull_every_catalog_image_and_configure_credits():
    values = yaml.safe_load((ROOT / "config" / "z2jh-values.yaml").read_text())
    pulled = {f"{image['name']}:{image['tag']}" for image in values["prePuller"]["extraImages"].values()}
    assert pulled == {image.image for image in CATALOG.images.values()}
    snippet = values["hub"]["extraConfig"]["00-credits"]
    assert "configure_credits(" in snippet and 'spawner="kubernetes"' in snippet
    compile(snippet, "00-credits", "exec")
    assert values["singleuser"]["extraPodConfig"]["restartPolicy"] == "Never"
