"""What the command's help says about its arguments."""

from click.testing import CliRunner

from ctxledger._cli import main


def test_forget_help_says_it_takes_a_user_or_inactive_since() -> None:
    result = CliRunner().invoke(main, ["forget", "--help"], prog_name="ctxledger")

    assert result.exit_code == 0
    usage = result.output.splitlines()[0]
    assert usage == "Usage: ctxledger forget [OPTIONS] (USER | --inactive-since TIME)"


def test_forget_without_a_user_or_inactive_since_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["forget"], prog_name="ctxledger")

    assert result.exit_code == 2
    assert "give a USER or --inactive-since TIME (not both)" in result.output
