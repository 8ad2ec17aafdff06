import os
import stat

import pandas as pd
import pytest

from common import results


def test_atomic_write_keeps_the_old_version_when_writing_fails(tmp_path):
    path = tmp_path / "rounds.csv"
    results.write_text(path, "old\n")

    def explode(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        results._atomic_write(path, explode)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rounds.csv"]  # no temp file left


def test_upsert_replaces_repeated_rounds_instead_of_duplicating(tmp_path):
    path = tmp_path / "rounds.csv"
    results.upsert_rows(path, [{"round": 1, "acc": 0.1}, {"round": 2, "acc": 0.2}], ["round"])
    frame = results.upsert_rows(path, [{"round": 2, "acc": 0.25}, {"round": 3, "acc": 0.3}],
                                ["round"])
    assert frame["round"].tolist() == [1, 2, 3]
    assert pd.read_csv(path)["acc"].tolist() == [0.1, 0.25, 0.3]


def test_torch_and_parquet_round_trip(tmp_path):
    import torch

    results.save_torch(tmp_path / "m.pt", {"w": torch.ones(2)})
    assert torch.load(tmp_path / "m.pt")["w"].sum() == 2
    frame = pd.DataFrame({"a": [1, 2]})
    results.write_parquet(tmp_path / "t.parquet", frame)
    assert pd.read_parquet(tmp_path / "t.parquet").equals(frame)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_results_get_the_users_umask_not_private_temp_file_modes(tmp_path, umask, mode):
    """Shared results folders and containers running as another uid must read them."""
    previous = os.umask(umask)
    try:
        assert results.current_umask() == umask
        results.write_text(tmp_path / "status.json", "{}\n")
        results.save_torch(tmp_path / "checkpoint.pt", {"w": 1})
    finally:
        os.umask(previous)
    for name in ("status.json", "checkpoint.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
