"""An image `uri` over https, fetched from a real TLS server on 127.0.0.1 (a test CA from
trustme): the body up to the size limit (413 past it), redirects not followed, HTTP errors
named (a 4xx is the URI's fault, 422; the fetched server's failures are 502 / 504, which a
client may retry), and the server's certificate verified for the URI's host name although
the connection goes to the checked address.

The one seam: 127.0.0.1 is not a public address, so the address check (resolve_public,
tested on its own in test_serve_units) is replaced to answer 127.0.0.1 for the test host."""

import http.server
import socket
import ssl
import threading
import time

import pytest
import trustme

from labeler.serve import fetch
from labeler.serve.config import UriSpec
from labeler.serve.errors import ApiError

HOST = "images.example.com"
BODY = b"\xff\xd8" + b"x" * 998  # 1000 bytes


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/moved.jpg":
            self.send_response(302)
            self.send_header("Location", "https://10.0.0.1/a.jpg")
            self.end_headers()
            return
        if self.path == "/busy.jpg":
            self.send_error(503)
            return
        if self.path == "/slow.jpg":
            time.sleep(1.5)  # past the client's timeout; it has gone
            return
        if self.path != "/a.jpg?v=2" or self.headers["Host"].split(":")[0] != HOST:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def tls_server():
    """(port, CA) of an HTTPS server on 127.0.0.1 whose certificate names HOST."""
    ca = trustme.CA()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(HOST).configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], ca
    server.shutdown()


@pytest.fixture
def trusted(tls_server, monkeypatch, tmp_path):
    """The test CA trusted (OpenSSL's SSL_CERT_FILE) and HOST resolving to 127.0.0.1."""
    port, ca = tls_server
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setattr(fetch, "resolve_public", lambda host, _port: "127.0.0.1")
    return port


POLICY = UriSpec(allowed_hosts=[HOST])


def test_an_https_image_is_fetched_from_the_checked_address(trusted):
    assert fetch.fetch_uri(f"https://{HOST}:{trusted}/a.jpg?v=2", POLICY, 1000) == BODY


@pytest.mark.parametrize("path, max_bytes, status, message", [
    ("/a.jpg?v=2", 999, 413, "image at uri is larger than 999 bytes"),
    ("/moved.jpg", 1000, 422, "uri answered a redirect (HTTP 302); redirects are not followed"),
    ("/missing.jpg", 1000, 422, "uri answered HTTP 404 Not Found"),
    ("/busy.jpg", 1000, 502, "uri answered HTTP 503 Service Unavailable"),
])
def test_https_answers_the_server_will_not_use(trusted, path, max_bytes, status, message):
    with pytest.raises(ApiError) as err:
        fetch.fetch_uri(f"https://{HOST}:{trusted}{path}", POLICY, max_bytes)
    assert (err.value.status, message in str(err.value)) == (status, True), str(err.value)


def test_a_certificate_for_another_host_is_refused(trusted):
    """The connection goes to the pinned address, yet TLS checks the URI's host name."""
    other = UriSpec(allowed_hosts=["cdn.example.org"])
    with pytest.raises(ApiError) as err:
        fetch.fetch_uri(f"https://cdn.example.org:{trusted}/a.jpg?v=2", other, 1000)
    assert err.value.status == 422 and "CERTIFICATE_VERIFY_FAILED" in str(err.value)


def test_an_untrusted_certificate_is_refused(tls_server, monkeypatch):
    monkeypatch.setattr(fetch, "resolve_public", lambda host, _port: "127.0.0.1")
    with pytest.raises(ApiError) as err:
        fetch.fetch_uri(f"https://{HOST}:{tls_server[0]}/a.jpg?v=2", POLICY, 1000)
    assert err.value.status == 422 and "CERTIFICATE_VERIFY_FAILED" in str(err.value)


def test_the_host_header_is_the_checked_host_without_userinfo(trusted):
    """The Host header was the URI's netloc: `user:password@host:port`, credentials and all,
    sent to the server (which answered 404 here, its Host not HOST)."""
    assert fetch.fetch_uri(f"https://user:pw@{HOST}:{trusted}/a.jpg?v=2", POLICY, 1000) == BODY


def test_a_server_that_does_not_answer_in_time_is_a_504(trusted):
    quick = UriSpec(allowed_hosts=[HOST], fetch_timeout_s=0.5)
    with pytest.raises(ApiError) as err:
        fetch.fetch_uri(f"https://{HOST}:{trusted}/slow.jpg", quick, 1000)
    assert err.value.status == 504 and "timed out" in str(err.value), str(err.value)


def test_a_refused_connection_is_a_502(trusted):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(ApiError) as err:
        fetch.fetch_uri(f"https://{HOST}:{port}/a.jpg", POLICY, 1000)
    assert err.value.status == 502 and "ConnectionRefusedError" in str(err.value)
