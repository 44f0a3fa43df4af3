import pytest


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """One ocbench cache (demo data, embeddings) shared by the tests of a module."""
    path = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("OCBENCH_CACHE", str(path))
    yield path
    patch.undo()
