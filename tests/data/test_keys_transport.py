"""One keys file for every command: ``data download --keys-file`` and ``paper --keys-file``
read the same formats through the one Alpaca transport (``brokers/alpaca``), checked against
the loopback Alpaca server with the real alpaca-py client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data.conftest import KEY, SECRET, run_data

#: Every keys-file format either command accepted before issue 14 (point 3).
FORMATS: dict[str, tuple[str, str]] = {
    # what `data download` accepted and `paper` refused
    "two-lines": ("alpaca.keys", f"{KEY}\n{SECRET}\n"),
    "alias-names": ("alpaca.env", f"export ALPACA_API_KEY={KEY}\nALPACA_SECRET_KEY={SECRET}\n"),
    # what `paper` accepted and `data download` refused (or read as a wrong key)
    "json": ("keys.json", json.dumps({"key_id": KEY, "secret_key": SECRET}, indent=2)),
    "json-one-line": ("keys.json", json.dumps({"APCA_API_KEY_ID": KEY,
                                               "APCA_API_SECRET_KEY": SECRET})),
    # both
    "toml": ("keys.toml", f'key_id = "{KEY}"\nsecret_key = "{SECRET}"\n'),
    "env-names": ("keys", f"APCA_API_KEY_ID={KEY}\nAPCA_API_SECRET_KEY='{SECRET}'\n"),
}


def _keys(tmp_path: Path, fmt: str) -> Path:
    name, text = FORMATS[fmt]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_paper_accepts_every_keys_file_format(data_sim: object, tmp_path: Path,
                                              fmt: str) -> None:
    """Regression (issue 14, point 3): a keys file that ``data download --keys-file``
    accepted (two lines, ``ALPACA_API_KEY=...``) was refused by ``paper`` ("needs key_id and
    secret_key"), because each had its own loader. The paper command's loader must read it
    and the trading client must authenticate with it."""
    from brokers.alpaca.client import AlpacaClient
    from brokers.alpaca.credentials import load_credentials

    creds = load_credentials(_keys(tmp_path, fmt), environ={})
    assert (creds.key_id, creds.secret_key) == (KEY, SECRET)
    assert SECRET not in repr(creds)
    client = AlpacaClient(creds, base_url=data_sim.base_url, read_attempts=1)  # type: ignore
    account = client.get_account()  # the loopback server checks the keys (401 otherwise)
    assert account.equity > 0


@pytest.mark.parametrize("fmt", ["json", "json-one-line", "two-lines"])
def test_download_accepts_every_keys_file_format(sim_clean: object, tmp_path: Path,
                                                 fmt: str) -> None:
    """Regression (issue 14, point 3): a JSON keys file that ``paper --keys-file`` accepted
    was refused by ``data download`` ("missing Alpaca API key") or read as a wrong key (HTTP
    401). ``data download`` must read the same formats as ``paper``."""
    out = tmp_path / "bars"
    proc = run_data("download", "--symbols", "ACME", "--start", "2025-10-01", "--end",
                    "2025-10-01", "--data-url", sim_clean.base_url,  # type: ignore[attr-defined]
                    "--out", str(out), "--quiet", "--keys-file", str(_keys(tmp_path, fmt)),
                    keys=False)
    assert proc.returncode == 0, proc.stderr
    assert "ACME 1Min: +390 bars" in proc.stdout


def test_keys_file_errors_name_the_file_not_its_content(tmp_path: Path) -> None:
    """A keys file with one value is refused in one line naming the file and both formats,
    never echoing the value (same message for both commands: one loader)."""
    from brokers.alpaca.credentials import load_credentials
    from ratchet.common.errors import ConfigError
    from ratchet.common.logs import RedactSecrets

    path = tmp_path / "half.keys"
    path.write_text("ONLY-THE-KEY-ID-123\n")
    with pytest.raises(ConfigError) as err:
        load_credentials(path, environ={}, redactor=RedactSecrets())
    assert "ONLY-THE-KEY-ID-123" not in str(err.value)
    assert str(path) in str(err.value)
    proc = run_data("download", "--symbols", "ACME", "--start", "2025-10-01",
                    "--data-url", "http://127.0.0.1:9", "--out", str(tmp_path / "o"),
                    "--keys-file", str(path), keys=False)
    assert proc.returncode == 2
    assert "ONLY-THE-KEY-ID-123" not in proc.stdout + proc.stderr
    assert str(err.value) in proc.stderr
