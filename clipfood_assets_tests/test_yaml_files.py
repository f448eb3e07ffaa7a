import pytest

from clipfood_assets.yaml_files import read_yaml_mapping, yaml_mapping


def test_a_mapping_is_returned_and_an_empty_document_is_empty():
    assert yaml_mapping("a: 1\nb: [2]\n", "x.yaml", "must be a mapping") == {"a": 1, "b": [2]}
    assert yaml_mapping(b"# only a comment\n", "x.yaml", "must be a mapping") == {}


@pytest.mark.parametrize("text, message", [
    ("a: [unclosed\n", r"^x\.yaml: not valid YAML: "),
    ("- a\n- list\n", r"^x\.yaml: must be a mapping, got list$"),
    ("42\n", r"^x\.yaml: must be a mapping, got int$"),
])
def test_errors_name_where_and_why(text, message):
    with pytest.raises(ValueError, match=message):
        yaml_mapping(text, "x.yaml", "must be a mapping")


def test_a_caller_can_refuse_an_empty_document_and_word_its_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("")
    with pytest.raises(ValueError, match=r"c\.yaml: <root>: empty file$"):
        read_yaml_mapping(path, "must be a mapping", empty="<root>: empty file")
    path.write_text("a: [\n")
    with pytest.raises(ValueError, match=r"c\.yaml: invalid YAML: "):
        read_yaml_mapping(path, "must be a mapping", invalid="invalid YAML")
    with pytest.raises(FileNotFoundError):
        read_yaml_mapping(tmp_path / "missing.yaml", "must be a mapping")
