"""Migration files: numbered without gaps, and misnamed or gapped files refused."""

import pytest

from exchange.platform.db import MigrationError, load_migrations


def test_the_shipped_migrations_are_numbered_without_gaps():
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))


def test_misnamed_or_gapped_files_are_refused(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="expected number 0002"):
        load_migrations(tmp_path)
    (tmp_path / "0003_c.sql").unlink()
    (tmp_path / "2_bad name.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_lower_snake"):
        load_migrations(tmp_path)
