from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from llmos.errors import ConfigError
from llmos.settings import Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = Settings()
    assert settings.home == tmp_path / ".llmos"
    assert (settings.host, settings.port, settings.bus_url) == ("127.0.0.1", 8000, "memory://")
    assert settings.db_url == f"sqlite:///{tmp_path / '.llmos' / 'llmos.db'}"
    assert settings.engine.ctx_per_slot == settings.engine.ctx_size // settings.engine.slots


def test_flags_override_env_which_overrides_the_file(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    config = tmp_path / "llmos.toml"
    config.write_text('port = 9001\nbus_url = "memory://file"\n[engine]\nslots = 2\n'
                      "threads = 1\n")
    monkeypatch.setenv("LLMOS_CONFIG", str(config))
    monkeypatch.setenv("LLMOS_PORT", "9002")
    monkeypatch.setenv("LLMOS_ENGINE__SLOTS", "3")
    settings = Settings(port=9003)
    assert settings.port == 9003
    assert settings.bus_url == "memory://file"
    assert settings.engine.slots == 3
    assert settings.engine.threads == 1


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Settings(config=tmp_path / "nope.toml")


def test_per_model_sampling_defaults_are_checked() -> None:
    from pydantic import ValidationError

    from llmos.settings import EngineSettings

    engine = EngineSettings.model_validate({"sampling": {"temperature": 0.3, "top_k": 20}})
    assert engine.sampling.given() == {"temperature": 0.3, "top_k": 20}
    assert EngineSettings().sampling.given() == {}
    with pytest.raises(ValidationError):
        EngineSettings.model_validate({"sampling": {"temprature": 0.3}})


def test_a_request_may_not_outlive_the_brokers_consumer_timeout(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="consumer timeout"):
        Settings(home=tmp_path, request_timeout_s=1800)
    with pytest.raises(ValidationError, match="bus_consumer_timeout_s"):
        Settings(home=tmp_path, request_timeout_s=600, bus_consumer_timeout_s=630)
    settings = Settings(home=tmp_path, request_timeout_s=3600, bus_consumer_timeout_s=7200)
    assert settings.request_timeout_s == 3600
