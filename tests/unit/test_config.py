import pytest
import yaml

from ragtune.config import ConfigError, RagtuneConfig, load_config
from tests.conftest import REPO


def test_defaults_validate():
    cfg = load_config()
    assert cfg.embedding.model == "minilm" and cfg.search.mode == "hybrid"


def test_unknown_key_names_file_key_and_allowed_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("embedding:\n  batchsize: 8\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert str(path) in msg and "embedding.batchsize" in msg and "batch_size" in msg and "device" in msg


def test_bad_value_names_allowed_values(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("search:\n  mode: semantic\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "search.mode" in str(exc.value) and "'dense', 'bm25' or 'hybrid'" in str(exc.value)


def test_overrides_are_parsed_as_yaml_and_validated():
    cfg = load_config(overrides=["embedding.batch_size=16", "ingest.sources=[a, b]", "ingest.prune=true"])
    assert cfg.embedding.batch_size == 16 and cfg.ingest.sources == ["a", "b"] and cfg.ingest.prune is True
    with pytest.raises(ConfigError, match="embedding.batch_size"):
        load_config(overrides=["embedding.batch_size=0"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(overrides=["embedding.batch_size"])


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("milvus: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- a\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_job_config_validates(path):
    header = path.read_text().splitlines()[0]
    assert header.startswith("#"), "a job config starts with a comment saying what it is for"
    RagtuneConfig.model_validate(yaml.safe_load(path.read_text()))
