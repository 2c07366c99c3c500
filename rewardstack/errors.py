"""The one exception type for mistakes a user can fix (bad input, missing files, wrong options)."""


class UserError(ValueError):
    """A problem with the user's input. The CLI prints its message on one line and exits with code 2."""


def require(config, name: str, condition: bool, requirement: str) -> None:
    """Stop with a UserError naming option `name` of `config` (and its flag) unless `condition` holds."""
    if not condition:
        raise UserError(f"{name} must be {requirement}, got {getattr(config, name)!r} (option --{name.replace('_', '-')})")
