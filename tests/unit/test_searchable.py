"""A job type's searchable fields, and the LIKE pattern of a search term."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobtrack import JobType
from jobtrack.errors import InvalidRequest
from jobtrack.jobs.types import search_fields
from jobtrack.runtime import Settings
from jobtrack.runtime.builtin import builtin_app
from jobtrack.store import SearchField
from jobtrack.store.overview import like_pattern


def test_a_type_declares_its_searchable_paths() -> None:
    imports = JobType("imports", ["rows"], searchable=["source.file", "owner", "source.file"])
    exports = JobType("exports", ["rows"])

    assert imports.searchable == (
        SearchField("imports", "source.file"),
        SearchField("imports", "owner"),
    )
    assert imports.searchable[0].parts == ("source", "file")
    assert search_fields([imports, exports]) == imports.searchable


@pytest.mark.parametrize("path", ["", "a..b", ".a", "a.", "a b", 'a."b"', "a/b", "x" * 101])
def test_a_path_that_is_not_dotted_names_is_refused(path: str) -> None:
    with pytest.raises(InvalidRequest, match="dotted path"):
        JobType("imports", ["rows"], searchable=[path])


def test_searchable_takes_a_list_not_a_text() -> None:
    with pytest.raises(InvalidRequest, match="a list of paths"):
        JobType("imports", ["rows"], searchable="source.file")


def test_the_collection_scan_searches_its_collections_path(tmp_path: Path) -> None:
    app = builtin_app(Settings(data_dir=tmp_path, store_url="memory://"))
    assert search_fields(app.job_types.values()) == (
        SearchField("collection-scan", "collection.path"),
    )


def test_a_term_is_taken_literally_and_lowercased() -> None:
    assert like_pattern("100%_Done\\") == "%100\\%\\_done\\\\%"
    assert like_pattern("") == "%%"
