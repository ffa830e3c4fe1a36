"""Who may call what (serve/api.py: authorize, check_host), every case of the rules."""

import pytest

from ragtune.config import validate_config
from ragtune.serve.api import Access, ApiError, authorize, check_host

READ, ADMIN = "read-key", "admin-key"


def outcome(method, path, key, access, client="10.0.0.7"):
    try:
        authorize(method, path, f"Bearer {key}" if key else "", client, access)
        return 200
    except ApiError as exc:
        return exc.status, exc.code


@pytest.mark.parametrize("method, path, key, expected", [
    ("POST", "/v1/chat/completions", READ, 200),
    ("POST", "/v1/chat/completions", ADMIN, 200),
    ("POST", "/v1/chat/completions", None, (401, "invalid_api_key")),
    ("GET", "/healthz", None, 200),
    ("POST", "/v1/documents", ADMIN, 200),
    ("DELETE", "/v1/documents/kb/a.md", ADMIN, 200),
    ("POST", "/v1/documents", READ, (403, "permission_denied")),
    ("DELETE", "/v1/documents/kb/a.md", READ, (403, "permission_denied")),
    ("POST", "/v1/documents", None, (401, "invalid_api_key")),
    ("POST", "/v1/documents", "wrong", (401, "invalid_api_key")),
])
def test_with_both_keys_only_the_admin_key_writes_documents(method, path, key, expected):
    assert outcome(method, path, key, Access(api_key=READ, admin_key=ADMIN)) == expected


def test_without_an_admin_key_the_documents_api_is_off_unless_local_and_from_this_machine():
    off = Access(api_key=None, admin_key=None)
    assert outcome("POST", "/v1/documents", None, off, client="127.0.0.1") == (403, "documents_api_off")
    assert outcome("POST", "/v1/chat/completions", None, off) == 200
    local = Access(api_key=None, admin_key=None, local_documents=True)
    assert outcome("POST", "/v1/documents", None, local, client="127.0.0.1") == 200
    assert outcome("DELETE", "/v1/documents/a", None, local, client="::1") == 200
    assert outcome("POST", "/v1/documents", None, local, client="192.168.1.20") == (403, "documents_api_off")
    keyed_local = Access(api_key=READ, admin_key=None, local_documents=True)  # the read key still applies
    assert outcome("POST", "/v1/documents", None, keyed_local, client="127.0.0.1") == (401, "invalid_api_key")
    assert outcome("POST", "/v1/documents", READ, keyed_local, client="127.0.0.1") == 200


@pytest.mark.parametrize("host, ok", [("127.0.0.1:8000", True), ("localhost:8000", True), ("[::1]:8000", True),
                                      ("LOCALHOST", True), ("evil.example:8000", False), ("127.0.0.1.evil.example", False),
                                      ("", False)])
def test_a_local_server_answers_only_its_own_host_names(host, ok):
    allowed = ["127.0.0.1", "localhost", "::1"]
    if ok:
        check_host(host, allowed)
    else:
        with pytest.raises(ApiError, match="is not served here") as caught:
            check_host(host, allowed)
        assert caught.value.status == 400 and caught.value.code == "invalid_host"
    check_host("evil.example", [])  # no list: any host (a server behind a Service or gateway)


def test_the_local_documents_switch_needs_loopback_host_names():
    with pytest.raises(ValueError, match="set serve.allowed_hosts to loopback names"):
        validate_config({"serve": {"local_documents_api": True}}, "test")
    with pytest.raises(ValueError, match="set serve.allowed_hosts to loopback names"):
        validate_config({"serve": {"local_documents_api": True, "allowed_hosts": ["localhost", "0.0.0.0"]}}, "test")
    validate_config({"serve": {"local_documents_api": True, "allowed_hosts": ["localhost", "127.0.0.1"]}}, "test")
