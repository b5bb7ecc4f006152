"""orchestrator._redact: the one place credentials are taken out of the URIs we print and store."""

from __future__ import annotations

import pytest

from orchestrator._redact import redact, secret_param

CASES = [
    # userinfo: the password goes, the user stays
    ("http://user:s3cr3t@host:5000", "http://user:***@host:5000"),
    ("https://user:s3cr3t@host/mlflow/", "https://user:***@host/mlflow/"),
    ("postgresql://mlflow:s3cr3t@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
    (
        "postgresql+psycopg2://u:s3cr3t@db/mlflow?sslmode=require",
        "postgresql+psycopg2://u:***@db/mlflow?sslmode=require",
    ),
    ("mysql+pymysql://root:s3cr3t@127.0.0.1/db", "mysql+pymysql://root:***@127.0.0.1/db"),
    ("s3://AKIAEXAMPLE:s3cr3t@bucket/sweeps", "s3://AKIAEXAMPLE:***@bucket/sweeps"),
    ("http://user:@host", "http://user:***@host"),
    # a password holding what ends an authority: ${PW} expanded unencoded
    ("http://u:p@ss@host:5000", "http://u:***@host:5000"),
    ("http://u:s3c/r3t@host:5000/x", "http://u:***@host:5000/x"),
    ("http://u:s3cr%2Ft@host", "http://u:***@host"),
    # token-like query parameters (and in the fragment)
    ("http://host:5000/?token=s3cr3t", "http://host:5000/?token=***"),
    ("https://host/x?access_token=s3cr3t&page=2", "https://host/x?access_token=***&page=2"),
    ("https://host/x?password=s3cr3t;user=me", "https://host/x?password=***;user=me"),
    ("https://host/x?api_key=s3cr3t&apikey=s3cr3t", "https://host/x?api_key=***&apikey=***"),
    ("https://host/x?client_secret=s3cr3t", "https://host/x?client_secret=***"),
    (
        "https://acct.blob.core.windows.net/c?sv=2024&sig=s3cr3t",
        "https://acct.blob.core.windows.net/c?sv=2024&sig=***",
    ),
    (
        "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F"
        "20261206&X-Amz-Date=20261206T000000Z&X-Amz-Security-Token=s3cr3t&X-Amz-Signature=s3cr3t",
        "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
        "&X-Amz-Date=20261206T000000Z&X-Amz-Security-Token=***&X-Amz-Signature=***",
    ),
    (
        "https://storage.googleapis.com/b/o?X-Goog-Credential=sa%40p&X-Goog-Signature=s3cr3t",
        "https://storage.googleapis.com/b/o?X-Goog-Credential=***&X-Goog-Signature=***",
    ),
    ("https://app/cb#access_token=s3cr3t&state=1", "https://app/cb#access_token=***&state=1"),
    (
        "mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC%7D%3BUID%3Du%3BPWD%3Ds3cr3t",
        "mssql+pyodbc:///?odbc_connect=***",
    ),
    # both at once
    ("http://u:s3cr3t@h:1/p?token=s3cr3t#x", "http://u:***@h:1/p?token=***#x"),
]

KEPT = [
    "http://127.0.0.1:5000",
    "http://host:5000/path@v2",  # an @ in the path after a port is not userinfo
    "sqlite:////home/ray/mlflow/mlflow.db",
    "sqlite:///results/mlflow.db",
    "s3://bucket/sweeps?endpoint_override=127.0.0.1:9000&scheme=http",
    "gs://bucket/prefix",
    "postgresql://mlflow@db/mlflow",  # a user without a password (pgpass, IAM auth)
    "https://host/x?page=2&sort=asc&region=us-west-2",
    "file:///tmp/x",
    "no URI here: user:pass@host is not one",
]


@pytest.mark.parametrize(("uri", "expected"), CASES)
def test_credentials_are_masked(uri: str, expected: str) -> None:
    assert redact(uri) == expected
    assert "s3cr3t" not in redact(uri)
    assert redact(redact(uri)) == redact(uri)  # idempotent


@pytest.mark.parametrize("text", KEPT)
def test_uris_without_credentials_are_unchanged(text: str) -> None:
    assert redact(text) == text


def test_every_uri_inside_a_line_of_text() -> None:
    line = (
        "MlflowException: API request to http://u:s3cr3t@127.0.0.1:5000/api/2.0/mlflow/runs/"
        "create failed (see 'https://h/x?sig=s3cr3t', or <postgresql://a:s3cr3t@db/m>). "
        "HTTPConnectionPool(host='127.0.0.1', port=5000)"
    )
    assert redact(line) == (
        "MlflowException: API request to http://u:***@127.0.0.1:5000/api/2.0/mlflow/runs/"
        "create failed (see 'https://h/x?sig=***', or <postgresql://a:***@db/m>). "
        "HTTPConnectionPool(host='127.0.0.1', port=5000)"
    )
    assert redact("(http://u:s3cr3t@host:5000).") == "(http://u:***@host:5000)."


def test_nested_structures_are_redacted_value_by_value() -> None:
    config = {
        "tracking": {"uri": "http://u:s3cr3t@h:5000", "experiment": "x"},
        "storage": {"path": "s3://b/p?endpoint_override=m:9000"},
        "list": ["https://h/?token=s3cr3t", 3, None],
        "tuple": ("postgresql://u:s3cr3t@db/m",),
        "number": 1.5,
    }
    assert redact(config) == {
        "tracking": {"uri": "http://u:***@h:5000", "experiment": "x"},
        "storage": {"path": "s3://b/p?endpoint_override=m:9000"},
        "list": ["https://h/?token=***", 3, None],
        "tuple": ("postgresql://u:***@db/m",),
        "number": 1.5,
    }


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "Access_Token",
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "password",
        "passwd",
        "pwd",
        "secret",
        "client_secret",
        "sig",
        "signature",
        "api_key",
        "apikey",
        "key",
        "auth",
        "refresh_token",
        "sessionToken",
    ],
)
def test_token_like_parameter_names(name: str) -> None:
    assert secret_param(name)


@pytest.mark.parametrize(
    "name", ["endpoint_override", "scheme", "region", "page", "sslmode", "X-Amz-Date", "sv"]
)
def test_ordinary_parameter_names(name: str) -> None:
    assert not secret_param(name)
