"""Where API keys come from: the environment, a private key file, or newly generated; never weak, never shared."""
from __future__ import annotations

import json
import os
import stat

import pytest

from reverie.errors import ReverieError
from serve.auth import ADMIN_ENV, API_ENV, load_keys


@pytest.fixture(autouse=True)
def no_env_keys(monkeypatch):
    monkeypatch.delenv(API_ENV, raising=False)
    monkeypatch.delenv(ADMIN_ENV, raising=False)


def test_keys_come_from_the_environment_first(monkeypatch, tmp_path):
    monkeypatch.setenv(API_ENV, "u" * 20)
    monkeypatch.setenv(ADMIN_ENV, "a" * 20)
    keys, generated = load_keys(tmp_path / "keys.json")
    assert (keys.api_key, keys.admin_key, keys.source, generated) == ("u" * 20, "a" * 20, "environment", False)
    assert not (tmp_path / "keys.json").exists()


def test_missing_keys_are_generated_into_a_file_only_the_user_can_read(tmp_path):
    path = tmp_path / "cfg" / "keys.json"
    keys, generated = load_keys(path)
    assert generated and keys.source == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"api_key": keys.api_key, "admin_key": keys.admin_key}
    assert keys.api_key != keys.admin_key and len(keys.api_key) >= 32
    again, generated_again = load_keys(path)
    assert again == keys and not generated_again


@pytest.mark.parametrize("env,match", [
    ({API_ENV: "u" * 20}, "both"),
    ({API_ENV: "short", ADMIN_ENV: "a" * 20}, "at least 16"),
    ({API_ENV: "s" * 20, ADMIN_ENV: "s" * 20}, "must differ"),
])
def test_bad_environment_keys_are_refused(monkeypatch, tmp_path, env, match):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ReverieError, match=match):
        load_keys(tmp_path / "keys.json")


def test_a_key_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"api_key": "u" * 20, "admin_key": "a" * 20}))
    os.chmod(path, 0o644)
    with pytest.raises(ReverieError, match="chmod 600"):
        load_keys(path)


def test_a_malformed_key_file_is_refused_without_echoing_it(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text('{"api_key": "secret-secret-secret"}')
    os.chmod(path, 0o600)
    with pytest.raises(ReverieError) as e:
        load_keys(path)
    assert "secret-secret-secret" not in str(e.value)
