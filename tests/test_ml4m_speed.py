"""tools/ml4m_speed.py: the parts that run without torch or an ml-4m checkout."""

import sys

import pytest


def test_rejects_a_directory_that_is_not_an_ml4m_checkout(import_tool, tmp_path):
    ml4m_speed = import_tool("ml4m_speed")
    with pytest.raises(SystemExit, match="no fourm/models/generate.py"):
        ml4m_speed.main(["--ml4m", str(tmp_path), "generate"])


def test_missing_optional_packages_import_as_stand_ins(import_tool, monkeypatch):
    ml4m_speed = import_tool("ml4m_speed")
    finder = ml4m_speed._Absent()
    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, finder])
    for name in ("webdataset", "webdataset.filters"):  # removed again (or restored) afterwards
        monkeypatch.setitem(sys.modules, name, None)
        del sys.modules[name]
    import webdataset.filters

    assert webdataset.filters.__spec__.loader is finder  # only because it is not installed
    decorate = webdataset.filters.pipelinefilter
    assert decorate(lambda x: x) is not None  # usable as a decorator and a base class
    assert isinstance(type("Sub", (webdataset.filters.DataPipeline,), {})(), webdataset.filters.DataPipeline)
    assert finder.find_spec("numpy_not_optional") is None
    assert getattr(webdataset, "__file__", None) is None  # no stand-in for dunders
