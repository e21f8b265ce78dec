"""Errors a user can fix: library code raises a subclass of `UserError` with the offending value in its message.

Every CLI's `main` is wrapped in `cli_main.exit_on_user_error`, which prints that message as one line and exits
with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input (a missing file, a wrong key, a prompt too long): the message says what to change."""


def error_chain(error: BaseException) -> list[BaseException]:
    """The error and what it was raised from, in turn."""
    chain, link = [], error
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    return chain
