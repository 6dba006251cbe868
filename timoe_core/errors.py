"""The one exception type that means "the user's input is wrong".

The CLI turns a `TimoeError` into a single line on stderr and exit code 2; anything
else is a bug and exits 1. Messages name the problem and, where there is one, the fix.
"""


class TimoeError(Exception):
    """Bad input, usage or environment: reported to the user as one line, exit code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    one-line error message quotes of a library's exception."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_validation_error(exc: Exception, limit: int = 3) -> str:
    """A pydantic ValidationError as one line naming each field at fault
    (`model_config.n_layer: Input should be ... (got 1000000)`), for messages about
    files (run.json, timoe.json, manifest.json); any other exception: its first line."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return first_line(exc)
    parts = []
    for err in errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]).replace("model_config_", "model_config")
        msg = err["msg"].removeprefix("Value error, ")
        got = repr(err.get("input"))
        got = got if len(got) <= 40 else got[:37] + "..."
        parts.append(f"{loc}: {msg} (got {got})" if loc else msg)
    more = len(errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
