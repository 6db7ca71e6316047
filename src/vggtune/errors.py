"""The one exception type for a user's mistake: the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """A mistake the user can fix: names what was received and what is allowed."""


def choice_error(what: str, received, allowed) -> UserError:
    allowed_text = ", ".join(str(a) for a in allowed)
    return UserError(f"{what}: received {received!r}; allowed: {allowed_text}")
