"""`fastcot serve` on the command line: help, and bad options or a missing model end with one
line and exit status 2 before anything is served."""

import pytest

from fastcot.cli import main


def test_help_lists_server_and_engine_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    for option in ("--host", "--port", "--api-key", "--served-model-name", "--max-model-len", "--num-kv-blocks",
                   "--thinking-delimiters"):
        assert option in out


@pytest.mark.parametrize("args, words", [
    (["/nonexistent/checkpoint", "--device", "cpu"], "/nonexistent/checkpoint"),
    (["tiny-random", "--port", "70000"], "--port"),
    (["tiny-random", "--max-n", "0"], "--max-n"),
    (["tiny-random", "--device", "cpu", "--speculative-tokens", "-1"], "--speculative-tokens"),
])
def test_bad_invocations_exit_2_with_a_message(args, words, capsys):
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
