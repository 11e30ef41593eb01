"""Finding a user's app by ``module:attribute``: what is found, and the one
clear error for everything that is not an app."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobtrack.cli.options import settings_for
from jobtrack.errors import ConfigurationError
from jobtrack.runtime import App, Settings
from jobtrack.runtime.loading import load_app


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [name for name in sys.modules if name.startswith("loadme_")]:
        del sys.modules[name]


def write(folder: Path, name: str, text: str) -> None:
    (folder / f"{name}.py").write_text(text, encoding="utf-8")


def test_an_attribute_a_dotted_attribute_or_a_factory_gives_the_app(modules: Path) -> None:
    write(
        modules,
        "loadme_good",
        "from jobtrack import App\n"
        "app = App()\n"
        "class Holder:\n    app = app\n"
        "def make():\n    return app\n",
    )
    found = load_app("loadme_good:app", {})
    assert isinstance(found, App)
    assert load_app("loadme_good:Holder.app", {}) is found
    assert load_app("loadme_good:make", {}) is found
    assert load_app(None, {"JOBTRACK_APP": "loadme_good:app"}) is found
    assert load_app(None, {}) is None


@pytest.mark.parametrize(
    ("spec", "text", "message"),
    [
        ("loadme_x", "", "is not module:attribute"),
        ("loadme_missing:app", None, "cannot import 'loadme_missing': ModuleNotFoundError"),
        ("loadme_syntax:app", "app = (\n", "cannot import 'loadme_syntax': SyntaxError"),
        ("loadme_raises:app", "raise RuntimeError('no config')\n", "RuntimeError: no config"),
        ("loadme_attr:app", "other = 1\n", "has no attribute 'app'"),
        ("loadme_type:app", "app = 42\n", "is a int, not a jobtrack App"),
        (
            "loadme_factory:make",
            "def make():\n    raise KeyError('STORE')\n",
            "failed to make the app: KeyError: 'STORE'",
        ),
    ],
)
def test_anything_but_an_app_is_one_configuration_error(
    modules: Path, spec: str, text: str | None, message: str
) -> None:
    if text is not None:
        write(modules, spec.partition(":")[0], text)
    with pytest.raises(ConfigurationError, match=message) as caught:
        load_app(spec, {})
    assert "(check --app or JOBTRACK_APP)" in str(caught.value)


def test_settings_given_in_code_win_over_the_environment_and_flags_over_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBTRACK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JOBTRACK_STORE_URL", "sqlite:///from-env.db")
    in_code = Settings(data_dir=tmp_path, store_url="postgresql://db/jobs", stuck_after=60)
    app = App(in_code)
    from_environment = Settings.from_env()
    assert settings_for(app, from_environment) == in_code
    flagged = Settings.from_env(store_url="sqlite:///flag.db", workers=7)
    chosen = settings_for(app, flagged)
    assert (chosen.store_url, chosen.workers, chosen.stuck_after) == ("sqlite:///flag.db", 7, 60)
    unset = App()  # its settings read from the environment: the command's are used as they are
    assert settings_for(unset, flagged) is flagged
