from pathlib import Path

import pytest

from clipper.errors import SettingsError
from clipper.settings import env_overrides, load_settings


def write(dir: Path, name: str, text: str) -> Path:
    (dir / "settings").mkdir(exist_ok=True)
    p = dir / "settings" / f"{name}.toml"
    p.write_text(text)
    return p


def load(tmp_path: Path, env: str = "t", environ: dict | None = None, overrides: dict | None = None):
    return load_settings(env, environ={"CLIPPER_SETTINGS_DIR": str(tmp_path / "settings"), **(environ or {})},
                         cwd=tmp_path, overrides=overrides)


def test_file_then_env_then_cli(tmp_path: Path) -> None:
    write(tmp_path, "t", "[workers]\ncount = 3\nffmpeg_threads = 1\n")
    assert load(tmp_path).workers.count == 3
    assert load(tmp_path, environ={"CLIPPER_WORKERS__COUNT": "5"}).workers.count == 5
    s = load(tmp_path, environ={"CLIPPER_WORKERS__COUNT": "5"}, overrides={"workers": {"count": 7}})
    assert s.workers.count == 7
    assert s.workers.ffmpeg_threads == 1


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    write(tmp_path, "t", "[workers]\ncuont = 3\n")
    with pytest.raises(SettingsError, match=r"workers\.cuont: unknown key"):
        load(tmp_path)


def test_unknown_env_var_key_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "t", "")
    with pytest.raises(SettingsError, match=r"redis\.urll: unknown key \(from CLIPPER_REDIS__URLL\)"):
        load(tmp_path, environ={"CLIPPER_REDIS__URLL": "redis://x"})
    with pytest.raises(SettingsError, match=r"foo: unknown key \(from CLIPPER_FOO__BAR\)"):
        load(tmp_path, environ={"CLIPPER_FOO__BAR": "1"})
    with pytest.raises(SettingsError, match=r"workers\.count: .* \(from CLIPPER_WORKERS__COUNT\)"):
        load(tmp_path, environ={"CLIPPER_WORKERS__COUNT": "-1"})


def test_settings_files_installed_under_the_prefix_are_found(tmp_path: Path) -> None:
    import sys

    from clipper.settings import settings_dirs

    dirs = settings_dirs(tmp_path, {})
    assert Path(sys.prefix) / "share" / "clipper" / "settings" in dirs


def test_invalid_value_names_the_key(tmp_path: Path) -> None:
    write(tmp_path, "t", "[retry]\nmax_attempts = 0\n")
    with pytest.raises(SettingsError, match=r"retry\.max_attempts"):
        load(tmp_path)


def test_unknown_env_lists_known_ones(tmp_path: Path) -> None:
    write(tmp_path, "alpha", "")
    write(tmp_path, "beta", "")
    with pytest.raises(SettingsError, match=r"unknown ENV 'gamma'.*known: .*alpha, beta"):
        load(tmp_path, env="gamma")


def test_relative_paths_resolve_against_start_directory(tmp_path: Path) -> None:
    write(tmp_path, "t", '[daemon]\npid_file = "run/x.pid"\n[output]\ndir = "/abs/out"\n')
    s = load(tmp_path)
    assert s.daemon.pid_file == tmp_path / "run/x.pid"
    assert s.daemon.log_file.is_absolute() and s.daemon.work_dir.is_absolute()
    assert s.output.dir == Path("/abs/out")


def test_s3_needs_a_bucket(tmp_path: Path) -> None:
    write(tmp_path, "t", '[output]\nkind = "s3"\n')
    with pytest.raises(SettingsError, match="output.bucket is required"):
        load(tmp_path)


def test_env_values_are_json_when_they_parse() -> None:
    parsed = env_overrides({"CLIPPER_FETCH__ALLOW_FILE_ROOTS": '["/a", "/b"]', "CLIPPER_FETCH__ALLOW_PRIVATE": "true",
                            "CLIPPER_OUTPUT__BUCKET": "123", "CLIPPER_REDIS__URL": "redis://h:1/0", "OTHER": "x"})
    assert parsed == {"fetch": {"allow_file_roots": ["/a", "/b"], "allow_private": True},
                      "output": {"bucket": "123"}, "redis": {"url": "redis://h:1/0"}}


@pytest.mark.parametrize("env", ["dev", "local", "prod"])
def test_shipped_settings_files_are_valid(env: str) -> None:
    repo = Path(__file__).resolve().parents[2]
    s = load_settings(env, environ={"CLIPPER_SETTINGS_DIR": str(repo / "settings")}, cwd=repo)
    assert s.env == env
