"""The catalog file: the shipped default, and every way a catalog can be wrong."""

import copy
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from jupyterhub_credits.catalog import (
    CPU_ONLY,
    CatalogError,
    hold_amount,
    load_catalog,
    max_affordable_hours,
    parse_catalog,
    session_rate,
)
from jupyterhub_credits.ledger.amounts import parse_amount

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "catalog.yaml"


def valid_mapping():
    """A small valid catalog as plain data; each test changes one thing in it."""
    return {
        "images": {
            "tf-new": {
                "display_name": "TensorFlow new",
                "tensorflow": "2.21",
                "cuda": "12.5",
                "image": "example.org/tf:2.21",
                "gpu_types": ["t4", "a100"],
                "default": True,
            },
            "tf-cpu": {
                "display_name": "TensorFlow CPU",
                "tensorflow": "2.21",
                "image": "example.org/tf:2.21-cpu",
                "gpu_types": [],
            },
        },
        "gpu_types": {
            "t4": {"display_name": "T4", "price_per_gpu_hour": 5},
            "a100": {
                "display_name": "A100",
                "price_per_gpu_hour": "15",
                "kubernetes": {
                    "node_selector": {"example.org/gpu": "a100"},
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                },
                "local": {"match": "A100"},
            },
        },
        "cpu": {"price_per_hour": 1},
        "quotas": {
            "max_gpus_per_session": 3,
            "max_hours_per_session": 24,
            "max_concurrent_gpu_sessions": 2,
            "min_prepaid_minutes": 1,
            "groups": {"staff": {"max_gpus_per_session": 4, "pool": True}},
        },
    }


DELETE = object()


def changed(path, value):
    """``valid_mapping()`` with the value at ``path`` replaced (or deleted with DELETE)."""
    data = valid_mapping()
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return data


# --- the shipped catalog


def test_the_shipped_catalog_loads():
    catalog = load_catalog(SHIPPED)
    assert catalog.source == str(SHIPPED)
    assert set(catalog.gpu_types) == {"t4", "a100", "h100"}
    assert catalog.default_image.id in catalog.images
    assert catalog.quotas.max_gpus_per_session == 3
    assert catalog.quotas.max_hours_per_session == 24
    assert catalog.quotas.min_prepaid_minutes == 1


def test_min_prepaid_minutes_may_be_a_fraction_of_a_minute():
    data = changed(("quotas", "min_prepaid_minutes"), "0.05")
    catalog = parse_catalog(data, source="test.yaml")
    assert catalog.quotas.min_prepaid_minutes == Decimal("0.05")  # 3 seconds, exactly
    assert catalog.cpu.price_per_hour == parse_amount(1)


def test_the_shipped_catalog_offers_three_tensorflow_versions_and_a_cpu_image():
    catalog = load_catalog(SHIPPED)
    gpu_images = [image for image in catalog.images.values() if not image.cpu_only]
    assert len({image.tensorflow for image in gpu_images}) >= 3
    assert all(image.cuda for image in gpu_images)
    assert any(image.cpu_only for image in catalog.images.values())
    assert sum(image.default for image in catalog.images.values()) == 1


def test_the_shipped_catalog_places_every_gpu_type_on_kubernetes_and_locally():
    for gpu in load_catalog(SHIPPED).gpu_types.values():
        assert gpu.kubernetes.resource == "nvidia.com/gpu"
        assert gpu.kubernetes.node_selector
        assert gpu.local.match in {"T4", "A100", "H100"}


def test_in_the_shipped_catalog_120_credits_buy_exactly_8_a100_hours():
    catalog = load_catalog(SHIPPED)
    rate = session_rate(catalog, "a100", 1)
    assert hold_amount(rate, Decimal(8)) == parse_amount("120")
    assert max_affordable_hours(rate, parse_amount("120")) == Decimal(8)


def test_the_shipped_prices_rise_with_the_gpu():
    catalog = load_catalog(SHIPPED)
    prices = [catalog.gpu_types[gpu].price_per_gpu_hour for gpu in ("t4", "a100", "h100")]
    assert prices == sorted(prices)
    assert catalog.cpu.price_per_hour < prices[0]


# --- what a valid catalog becomes


def test_a_valid_mapping_becomes_read_only_data():
    catalog = parse_catalog(valid_mapping(), source="test.yaml")
    assert catalog.gpu_types["t4"].price_per_gpu_hour == 5_000
    assert catalog.gpu_types["a100"].price_per_gpu_hour == 15_000
    assert catalog.gpu_types["t4"].kubernetes is None
    assert catalog.gpu_types["a100"].kubernetes.resource == "nvidia.com/gpu"  # the default
    assert catalog.images["tf-cpu"].cpu_only
    assert catalog.images["tf-cpu"].cuda is None
    assert catalog.images["tf-cpu"].allows(CPU_ONLY)
    assert not catalog.images["tf-cpu"].allows("t4")
    assert catalog.images["tf-new"].allows(CPU_ONLY)  # a GPU image also runs CPU-only
    assert list(catalog.images) == ["tf-new", "tf-cpu"]  # file order, as the form shows it
    assert catalog.groups["staff"].pool
    assert catalog.earning == {}
    with pytest.raises(TypeError):
        catalog.gpu_types["x"] = None
    with pytest.raises(TypeError):
        catalog.gpu_types["a100"].kubernetes.node_selector["x"] = "y"


def test_the_earning_section_is_kept_as_given_and_read_only():
    earning = {"signup": {"credits": 75, "tags": ["a", "b"]}, "anything": None}
    catalog = parse_catalog({**valid_mapping(), "earning": copy.deepcopy(earning)})
    assert catalog.earning["signup"]["credits"] == 75
    assert catalog.earning["signup"]["tags"] == ("a", "b")
    with pytest.raises(TypeError):
        catalog.earning["signup"]["credits"] = 1000


def test_the_catalog_does_not_change_with_the_mapping_it_came_from():
    data = valid_mapping()
    catalog = parse_catalog(data)
    data["gpu_types"]["a100"]["kubernetes"]["node_selector"]["example.org/gpu"] = "changed"
    assert catalog.gpu_types["a100"].kubernetes.node_selector["example.org/gpu"] == "a100"


# --- every way to be wrong names the file, the key and the problem


# One case a line: (where to change valid_mapping(), new value, key path named, words of the problem).
# fmt: off
ERROR_CASES = [
    # unknown keys, with a hint for typos
    (("imagez",), {}, "imagez", "unknown key; did you mean 'images'?"),
    (("gpu_types", "a100", "price"), 1, "gpu_types.a100.price", "unknown key"),
    (("quotas", "max_gpus_per_sesion"), 1, "quotas.max_gpus_per_sesion", "did you mean 'max_gpus_per_session'"),
    (("quotas", "groups", "staff", "max_gpu"), 1, "quotas.groups.staff.max_gpu", "unknown key"),
    (("gpu_types", "a100", "kubernetes", "nodeSelector"), {}, "gpu_types.a100.kubernetes.nodeSelector", "unknown key"),
    # missing keys
    (("gpu_types", "a100", "price_per_gpu_hour"), DELETE, "gpu_types.a100.price_per_gpu_hour", "missing key"),
    (("cpu",), DELETE, "cpu", "missing key"),
    (("quotas", "min_prepaid_minutes"), DELETE, "quotas.min_prepaid_minutes", "missing key"),
    (("images", "tf-new", "image"), DELETE, "images.tf-new.image", "missing key"),
    (("images", "tf-new", "cuda"), DELETE, "images.tf-new.cuda", "must name its CUDA version"),
    (("gpu_types", "a100", "local"), {}, "gpu_types.a100.local.match", "missing key"),
    # wrong types
    (("images", "tf-new", "tensorflow"), Decimal("2.10"), "images.tf-new.tensorflow", "got a number (2.10); quote it"),
    (("images", "tf-new", "gpu_types"), "t4", "images.tf-new.gpu_types", "expected a list"),
    (("images", "tf-new", "default"), "yes", "images.tf-new.default", "expected true or false"),
    (("quotas", "groups", "staff", "pool"), 1, "quotas.groups.staff.pool", "expected true or false"),
    (("quotas", "max_gpus_per_session"), "3", "quotas.max_gpus_per_session", "expected a whole number"),
    (("quotas", "max_gpus_per_session"), True, "quotas.max_gpus_per_session", "expected a whole number"),
    (("gpu_types", "a100", "kubernetes", "node_selector", "example.org/gpu"), True,
     "gpu_types.a100.kubernetes.node_selector.example.org/gpu", "quote it"),
    (("gpu_types", "a100"), None, "gpu_types.a100", "expected a mapping"),
    (("earning",), ["rule"], "earning", "expected a mapping"),
    (("images", "tf-new", "display_name"), " ", "images.tf-new.display_name", "must not be empty"),
    # prices
    (("gpu_types", "a100", "price_per_gpu_hour"), "-5", "gpu_types.a100.price_per_gpu_hour", "must not be negative"),
    (("gpu_types", "a100", "price_per_gpu_hour"), -5, "gpu_types.a100.price_per_gpu_hour", "must not be negative"),
    (("gpu_types", "a100", "price_per_gpu_hour"), 0, "gpu_types.a100.price_per_gpu_hour", "greater than zero"),
    (("gpu_types", "a100", "price_per_gpu_hour"), 15.5, "gpu_types.a100.price_per_gpu_hour", "not a float"),
    (("gpu_types", "a100", "price_per_gpu_hour"), "fifteen", "gpu_types.a100.price_per_gpu_hour", "expected a decimal number"),
    (("gpu_types", "a100", "price_per_gpu_hour"), "15.0001", "gpu_types.a100.price_per_gpu_hour", "at most 3 decimal places"),
    (("cpu", "price_per_hour"), None, "cpu.price_per_hour", "invalid amount"),
    # references between sections
    (("images", "tf-new", "gpu_types"), ["t4", "v100"], "images.tf-new.gpu_types[1]", "unknown GPU type 'v100' (gpu_types defines: t4, a100)"),
    (("images", "tf-new", "gpu_types"), ["t4", "t4"], "images.tf-new.gpu_types[1]", "listed twice"),
    (("images", "tf-new", "gpu_types"), ["none"], "images.tf-new.gpu_types[0]", "every image can run CPU-only"),
    (("gpu_types", "none"), {"display_name": "x", "price_per_gpu_hour": 1}, "gpu_types.none", "reserved for CPU-only"),
    # ids
    (("images", "tf 2.21"), {}, "images.tf 2.21", "invalid image id"),
    (("gpu_types", "a/100"), {}, "gpu_types.a/100", "invalid GPU type id"),
    # the default image
    (("images", "tf-new", "default"), False, "images", "no default image"),
    (("images", "tf-cpu", "default"), True, "images.tf-cpu.default", "images.tf-new already is"),
    (("images",), {}, "images", "no images"),
    # quotas
    (("quotas", "max_gpus_per_session"), 0, "quotas.max_gpus_per_session", "must be at least 1"),
    (("quotas", "max_concurrent_gpu_sessions"), -1, "quotas.max_concurrent_gpu_sessions", "must be at least 1"),
    (("quotas", "min_prepaid_minutes"), 0, "quotas.min_prepaid_minutes", "must be greater than zero"),
    (("quotas", "min_prepaid_minutes"), "0.00001", "quotas.min_prepaid_minutes", "at most 4 decimal places"),
    (("quotas", "max_hours_per_session"), "0", "quotas.max_hours_per_session", "greater than zero"),
    (("quotas", "max_hours_per_session"), "1.00001", "quotas.max_hours_per_session", "at most 4 decimal places"),
    (("quotas", "max_hours_per_session"), 1.5, "quotas.max_hours_per_session", "not a float"),
    (("quotas", "min_prepaid_minutes"), 1441, "quotas.min_prepaid_minutes", "no session could ever start"),
    (("quotas", "groups", "staff", "max_hours_per_session"), "0.01",
     "quotas.groups.staff.max_hours_per_session", "no session could ever start"),
    (("quotas", "groups", "staff", "min_prepaid_minutes"), 2000,
     "quotas.groups.staff.min_prepaid_minutes", "no session could ever start"),
    (("quotas", "groups", "staff", "max_gpus_per_session"), 0, "quotas.groups.staff.max_gpus_per_session", "must be at least 1"),
    (("quotas", "groups"), ["staff"], "quotas.groups", "expected a mapping"),
    # kubernetes placement
    (("gpu_types", "a100", "kubernetes", "tolerations", 0, "operator"), "Exist",
     "gpu_types.a100.kubernetes.tolerations[0].operator", "expected one of Exists, Equal"),
    (("gpu_types", "a100", "kubernetes", "tolerations", 0, "effect"), "NoSchedul",
     "gpu_types.a100.kubernetes.tolerations[0].effect", "expected one of"),
    (("gpu_types", "a100", "kubernetes", "tolerations", 0, "tolerationSecond"), 5,
     "gpu_types.a100.kubernetes.tolerations[0].tolerationSecond", "did you mean 'tolerationSeconds'"),
    (("gpu_types", "a100", "kubernetes", "resource"), "", "gpu_types.a100.kubernetes.resource", "must not be empty"),
    # the image reference
    (("images", "tf-new", "image"), "example.org/tf: 2.21", "images.tf-new.image", "contains no spaces"),
]
# fmt: on


@pytest.mark.parametrize("path, value, key, words", ERROR_CASES)
def test_every_error_names_the_file_the_key_and_the_problem(path, value, key, words):
    with pytest.raises(CatalogError) as caught:
        parse_catalog(changed(path, value), source="test.yaml")
    error = caught.value
    assert error.source == "test.yaml"
    assert error.path == key
    assert words in error.problem
    assert str(error) == f"test.yaml: {key}: {error.problem}"


@pytest.mark.parametrize("data", [None, [], "images", 42])
def test_a_catalog_that_is_not_a_mapping_is_refused(data):
    with pytest.raises(CatalogError, match=r"^test\.yaml: expected a mapping"):
        parse_catalog(data, source="test.yaml")


# --- reading the file


def write(tmp_path, text):
    path = tmp_path / "catalog.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_duplicate_ids_in_the_file_are_refused(tmp_path):
    text = SHIPPED.read_text(encoding="utf-8")
    assert text.count("\n  h100:\n") == 1
    path = write(tmp_path, text.replace("\n  h100:\n", "\n  a100:\n"))
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert caught.value.path == "gpu_types.a100"
    assert str(caught.value).startswith(f"{path}: gpu_types.a100: duplicate key 'a100' (lines ")


def test_duplicate_keys_anywhere_are_refused(tmp_path):
    path = write(tmp_path, yaml.safe_dump(valid_mapping()) + "cpu: {price_per_hour: 2}\n")
    with pytest.raises(CatalogError, match="cpu: duplicate key 'cpu'"):
        load_catalog(path)


def test_yaml_decimals_are_read_exactly(tmp_path):
    text = SHIPPED.read_text(encoding="utf-8").replace(
        "price_per_gpu_hour: 5\n", "price_per_gpu_hour: 2.345\n"
    )
    catalog = load_catalog(write(tmp_path, text))
    assert catalog.gpu_types["t4"].price_per_gpu_hour == 2_345


def test_an_unquoted_version_is_refused_with_a_hint(tmp_path):
    text = SHIPPED.read_text(encoding="utf-8").replace('tensorflow: "2.17"', "tensorflow: 2.10")
    with pytest.raises(CatalogError) as caught:
        load_catalog(write(tmp_path, text))
    assert caught.value.path == "images.tf-2.17.tensorflow"
    assert "a number (2.10); quote it" in caught.value.problem


@pytest.mark.parametrize("value", [".inf", ".nan", "1:30.5"])
def test_yaml_numbers_that_are_not_amounts_are_refused(tmp_path, value):
    text = SHIPPED.read_text(encoding="utf-8").replace(
        "price_per_gpu_hour: 5\n", f"price_per_gpu_hour: {value}\n"
    )
    with pytest.raises(CatalogError, match=r"gpu_types\.t4\.price_per_gpu_hour: invalid amount"):
        load_catalog(write(tmp_path, text))


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "the file is empty"),
        ("images: [unclosed\n", "not valid YAML at line 2"),
        ("a: 1\n---\nb: 2\n", "not valid YAML"),
    ],
)
def test_unreadable_yaml_names_the_file(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert words in caught.value.problem


def test_a_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(CatalogError, match=f"^{path}: cannot read the catalog"):
        load_catalog(path)


def test_yaml_tags_that_build_objects_are_refused(tmp_path):
    path = write(tmp_path, "images: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(path)
