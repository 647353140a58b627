from hpasc import __version__


def test_help_lists_commands(cli):
    r = cli("--help")
    assert r.returncode == 0
    assert "folds" in r.stdout


def test_version(cli):
    r = cli("--version")
    assert r.returncode == 0 and __version__ in r.stdout


def test_unknown_command_fails(cli):
    r = cli("frobnicate")
    assert r.returncode != 0
