"""The parse cache: unchanged files skip parsing; positions and errors stay exact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from controller.load.desired import load_desired
from controller.load.loader import load_specs
from controller.load.parse_cache import CACHE_NAME, ParseCache


def cache_dir(root: Path) -> Path:
    return root / ".llmops" / "cache"


def test_second_load_uses_the_cache(make_repo: Callable[..., Path]) -> None:
    root = make_repo()
    first = load_specs(root, cache_dir=cache_dir(root))
    assert (cache_dir(root) / CACHE_NAME).exists()
    cache = ParseCache(cache_dir(root))
    spec_files = sorted((root / "specs").rglob("*.yaml"))
    assert len(cache.entries) == len(spec_files)
    second = load_specs(root, cache_dir=cache_dir(root))
    assert [s.doc.data for s in second.specs] == [s.doc.data for s in first.specs]
    assert all(s.doc._tree is None for s in second.specs)  # nothing parsed again


def test_positions_from_cached_documents_are_exact(make_repo: Callable[..., Path]) -> None:
    root = make_repo()
    load_specs(root, cache_dir=cache_dir(root))  # fills the cache
    (root / "specs/datasets/faq.yaml").unlink()  # the experiment's reference now dangles
    loaded = load_desired(root, cache_dir=cache_dir(root))
    d = next(d for d in loaded.diagnostics if d.path == "spec.dataset")
    assert (d.file, d.line, d.col) == ("specs/experiments/exp.yaml", 6, 12)


def test_changed_file_is_parsed_again(make_repo: Callable[..., Path]) -> None:
    root = make_repo()
    load_specs(root, cache_dir=cache_dir(root))
    path = root / "specs/models/base.yaml"
    path.write_text(path.read_text().replace("name: base", "name: base2"))
    names = {s.name for s in load_specs(root, cache_dir=cache_dir(root)).specs}
    assert "base2" in names and "base" not in names


def test_corrupt_cache_is_ignored(make_repo: Callable[..., Path]) -> None:
    root = make_repo()
    load_specs(root, cache_dir=cache_dir(root))
    (cache_dir(root) / CACHE_NAME).write_text("{not json")
    assert len(load_specs(root, cache_dir=cache_dir(root)).specs) == 5
    assert ParseCache(cache_dir(root)).entries  # rewritten


def test_files_with_syntax_errors_are_not_cached(make_repo: Callable[..., Path]) -> None:
    root = make_repo({"specs/models/broken.yaml": "kind: [Model\n"})
    result = load_specs(root, cache_dir=cache_dir(root))
    assert any("broken.yaml" in d.file for d in result.diagnostics)
    again = load_specs(root, cache_dir=cache_dir(root))
    assert any("broken.yaml" in d.file for d in again.diagnostics)
