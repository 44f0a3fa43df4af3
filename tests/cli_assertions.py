"""Shared assertions for the error contract: one line that names what is wrong."""


def one_line_error(result, *fragments):
    """A CLI result: exit code 2, exactly one `error: ...` line on stderr naming each fragment, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def one_line_message(excinfo, *parts: str) -> str:
    """A raised error (pytest.raises excinfo): its message is one line containing each part."""
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message
