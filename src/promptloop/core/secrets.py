"""Keys never leave in clear: whatever a provider's error repeats is redacted before it is printed,
logged or stored.

Known secrets are every key promptloop resolved (`llm.models.<model>.api_key`) and the value of
every environment variable whose name says it holds one (OPENAI_API_KEY, AZURE_API_KEY,
GITHUB_TOKEN ...): litellm reads those by itself, so an error can echo them even when promptloop
never touched them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

REDACTED = "<api-key>"
# Names of environment variables that hold credentials, by the conventions providers use.
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSW)", re.IGNORECASE)
MIN_SECRET_CHARS = 8  # shorter values ("1", "true") would redact ordinary words

_resolved: set[str] = set()


def remember_secret(value: str) -> None:
    """Redact `value` from now on (a key resolved from a Prefect Secret block, say)."""
    if len(value) >= MIN_SECRET_CHARS:
        _resolved.add(value)


def known_secrets() -> list[str]:
    """Every secret to redact, longest first (so a key containing another is replaced whole)."""
    # Names first, values by .get: another thread (MLflow's telemetry) may unset a variable meanwhile.
    values = (os.environ.get(name, "") for name in list(os.environ) if SECRET_NAME.search(name))
    from_env = {value for value in values if len(value) >= MIN_SECRET_CHARS}
    return sorted(_resolved | from_env, key=len, reverse=True)


def redact_secrets(text: str) -> str:
    """`text` with every known secret replaced by a placeholder."""
    for secret in known_secrets():
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redactor() -> Callable[[str], str]:
    """`redact_secrets` with the known secrets read once: for redacting many texts in a row."""
    secrets = known_secrets()

    def redact(text: str) -> str:
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    return redact


def holds_secret(text: str) -> bool:
    """True when `text` contains a known secret."""
    return any(secret in text for secret in known_secrets())
