"""Triton's cloud credential file (TRITON_CLOUD_CREDENTIAL_PATH): one section per object store
("s3", "gs", "as"), each entry named by the start of the repository paths it serves ("" serves
every path); the longest matching name wins.

    {"s3": {"": {"key_id": ..., "secret_key": ..., "region": ..., "session_token": ...,
                 "profile": ...}},
     "gs": {"gs://bucket": "/path/to/service-account.json"},
     "as": {"": {"account_str": ..., "account_key": ...}}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CREDENTIAL_FILE_VARIABLE = "TRITON_CLOUD_CREDENTIAL_PATH"


def credential_entry(section: str, url: str, environ: Mapping[str, str]) -> Any:
    """The entry of `section` for the repository at `url`, None without one (the store's
    usual credentials then apply). Raises ValueError for a file that cannot be used."""
    path = environ.get(CREDENTIAL_FILE_VARIABLE)
    if not path:
        return None
    try:
        entries = json.loads(Path(path).read_text()).get(section, {})
        if not isinstance(entries, dict):
            raise ValueError(f"section '{section}' is not an object")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{CREDENTIAL_FILE_VARIABLE}={path} cannot be read: {exc}") from None
    matching = [name for name in entries if url.startswith(name)]
    return entries[max(matching, key=len)] if matching else None


def entry_fields(entry: Any, section: str, fields: tuple[str, ...]) -> dict[str, str]:
    """The non-empty `fields` of an entry that must be an object."""
    if not isinstance(entry, dict):
        raise ValueError(
            f"{CREDENTIAL_FILE_VARIABLE}: an entry of section '{section}' must be an object "
            f"with {', '.join(fields)}"
        )
    return {name: str(entry[name]) for name in fields if entry.get(name)}
