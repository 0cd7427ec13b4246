"""Upload exported folders to the Hugging Face Hub, turning network and auth failures into messages with a fix.

The token comes from where `huggingface_hub` looks for it (`--token`, `HF_TOKEN`, `hf auth login`).
"""

from pathlib import Path

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError, HTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

LOGIN_FIX = "log in with `hf auth login` (or `huggingface-cli login`), set HF_TOKEN, or pass --token"


class HubPublishError(RuntimeError):
    """An upload failed; the message names the repository and what to do."""


def explain_hub_error(error: Exception, repo_id: str | None) -> str:
    """A one-paragraph explanation of a Hub failure: which repository, what went wrong, how to fix it."""
    action = f"publishing {repo_id!r}" if repo_id else "publishing to the Hub"
    if isinstance(error, LocalTokenNotFoundError):
        return f"No Hugging Face token found for {action}: {LOGIN_FIX}."
    if isinstance(error, OfflineModeIsEnabled):
        return f"HF_HUB_OFFLINE is set, which blocks {action}. Unset it, or pass --dry-run to write the folders only."
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            return f"The Hub rejected the token while {action} (401 Unauthorized): {LOGIN_FIX}."
        if status == 403:
            namespace = (repo_id or "").split("/")[0]
            return (
                f"The token has no write access for {action} (403 Forbidden): use a token that may write to the "
                f"{namespace!r} namespace, or set --repo_id_pattern to a namespace you own."
            )
        return f"The Hub answered with an error while {action}: {error}"
    return (
        f"Could not reach the Hub while {action} ({type(error).__name__}: {error}). Check the network connection, "
        "proxy settings and HF_ENDPOINT, then run the export again."
    )


HUB_ERRORS = (LocalTokenNotFoundError, OfflineModeIsEnabled, HTTPError, ConnectionError, TimeoutError)


class HubPublisher:
    """Creates repositories and uploads folders with one `HfApi`; every Hub failure becomes a `HubPublishError`."""

    def __init__(self, token: str | None = None, private: bool = False):
        self.api = HfApi(token=token)
        self.private = private

    def check_access(self) -> str:
        """The user name the token belongs to; fails early, before anything is exported, without a usable token."""
        try:
            return self.api.whoami()["name"]
        except HUB_ERRORS as error:
            raise HubPublishError(explain_hub_error(error, None)) from error

    def publish(self, folder: Path, repo_id: str, commit_message: str) -> str:
        """Validates the card with the Hub, creates `repo_id` if needed and uploads `folder`; returns the repo URL."""
        try:
            ModelCard.load(folder / "README.md").validate()
            url = self.api.create_repo(repo_id, private=self.private, exist_ok=True)
            self.api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
        except ValueError as error:
            raise HubPublishError(f"The Hub rejected the model card of {repo_id!r}: {error}") from error
        except HUB_ERRORS as error:
            raise HubPublishError(explain_hub_error(error, repo_id)) from error
        return str(url)


__all__ = ["HubPublisher", "HubPublishError", "explain_hub_error"]
