"""What the example's tests share: where the example and the kit are, and the files the app writes."""

from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1]
# The kit's package (celery_kit.guard), as the deployment installs it beside the app.
KIT = Path(__file__).resolve().parents[3] / "kit"


def data_files(directory: Path) -> dict[str, str]:
    """The app's data files (database, mail, analytics) under directory, as its environment names them."""
    return {
        "SIGNUP_DATABASE": str(directory / "db.sqlite3"),
        "SIGNUP_MAIL_DIR": str(directory / "mail"),
        "SIGNUP_ANALYTICS_FILE": str(directory / "analytics.jsonl"),
    }
