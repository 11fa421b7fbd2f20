"""Upload an export folder to the Hugging Face Hub (``huggingface_hub.HfApi``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .output import ExportError


def check_repo_id(repo_id: str) -> None:
    """`ExportError` unless ``repo_id`` reads 'owner/name'."""
    if repo_id.count("/") != 1 or any(not part.strip() for part in repo_id.split("/")):
        raise ExportError(f"--push-to-hub needs a repository id 'owner/name', got {repo_id!r}")


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                api: Any = None) -> str:
    """Create the model repository ``repo_id`` (if missing) and upload ``folder``; returns the repo URL.

    ``api``: an `HfApi`-like object (create_repo, upload_folder); a new
    ``HfApi(token=token)`` when None.  Hub and network failures become one-line
    `ExportError`s.
    """
    check_repo_id(repo_id)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="Upload erased model exported by erasekit")
    except (OSError, ValueError) as err:  # requests/hub HTTP errors derive from OSError
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ExportError(f"could not push to the Hub repository {repo_id}: {first}") from None
    return str(url)
