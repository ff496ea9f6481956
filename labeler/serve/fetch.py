"""Image bytes from a `uri` input, without letting the server be used to read its own
machine or network (SSRF).

Rules, in order:
- only `https://` and `s3://` (that exact spelling: storage tells S3 from a local path by
  it); never `file://`, `http://` or anything else (403);
- https hosts must be listed in `uri.allowed_hosts`, s3 buckets in `uri.allowed_s3_buckets`
  (403); the s3 endpoint is the operator's (AWS_ENDPOINT_URL), never the caller's; an s3
  key with an empty, `.` or `..` segment is refused (403): the S3 client resolves
  `s3://allowed/../other/key` to bucket `other` before it sends the request;
- every address the host resolves to must be a public one: loopback, private, link-local
  (cloud metadata at 169.254.169.254), shared, reserved, multicast and unspecified
  addresses are refused (403), and so are IPv6 addresses that carry an IPv4 one to a
  translator or tunnel (IPv4-mapped and -compatible, NAT64, 6to4, SIIT): a NAT64 gateway
  connects `64:ff9b::a00:1` to 10.0.0.1;
- the connection goes to the address that was checked, with the host name kept for TLS
  (SNI and certificate), so a second DNS answer cannot swap in an internal address;
- redirects are not followed (422); the body is cut off past `max_bytes` (413).

A fetch that fails is the caller's to mend (422: the URI names nothing, a 4xx from its
server, a certificate that does not verify) or not (502: its server answered 5xx, refused or
dropped the connection, or S3 failed; 504: it did not answer within fetch_timeout_s), so a
client retries the 5xx ones and not the others.

Files inside Label Studio (a task's `/data/upload/...`) come from the operator's Label
Studio only (fetch_label_studio_file): its address is configured, never the caller's.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
from urllib.parse import unquote, urlsplit

import pyarrow.fs as pafs

from labeler.serve.config import UriSpec
from labeler.serve.errors import ApiError
from labeler.storage import filesystem_for


# IPv6 prefixes whose addresses stand for an IPv4 address that a translator, a tunnel or the
# host's own stack reaches: NAT64 (RFC 6052, RFC 8215), 6to4, IPv4-compatible, SIIT. Python
# counts several of them as global, whatever IPv4 address they carry.
IPV4_CARRYING_PREFIXES = tuple(ipaddress.ip_network(n) for n in (
    "64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::/96", "::ffff:0:0:0/96"))


def check_address(address: str) -> None:
    """403 unless `address` (an IP literal) is a public unicast address."""
    ip = ipaddress.ip_address(address.split("%")[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if (not ip.is_global or ip.is_multicast
            or (ip.version == 6 and any(ip in net for net in IPV4_CARRYING_PREFIXES))):
        raise ApiError(403, f"uri refused: {address} is not a public address "
                            f"(loopback, private, link-local and reserved addresses are never fetched)")


def resolve_public(host: str, port: int) -> str:
    """The first address of `host`, after checking that every address it has is public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        # EAI_AGAIN: the name server failed, not the name.
        raise ApiError(502 if err.errno == socket.EAI_AGAIN else 422,
                       f"uri host {host!r} does not resolve: {err.strerror}") from None
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        check_address(address)
    return addresses[0]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed, already checked address; TLS still verifies `host`'s certificate."""

    def __init__(self, host: str, address: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def check_uri(uri: str, policy: UriSpec) -> tuple[str, str, int]:
    """(scheme, host or bucket, port) of an acceptable uri; ApiError otherwise. Does not
    resolve names (fetch does, just before connecting)."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as err:
        raise ApiError(422, f"malformed uri: {err}") from None
    scheme = parts.scheme.lower()
    if scheme == "s3":
        if not uri.startswith("s3://"):
            # The storage layer tells S3 from local paths by this exact prefix: `S3://b/..`
            # would be read as a local path (../../etc/passwd) on this machine.
            raise ApiError(422, "malformed uri: write the scheme in lower case: s3://")
        if not parts.netloc or not parts.path.strip("/"):
            raise ApiError(422, "malformed uri: expected s3://bucket/key")
        if parts.netloc not in policy.allowed_s3_buckets:
            raise ApiError(403, f"uri refused: bucket {parts.netloc!r} is not in the server's "
                                f"allowed_s3_buckets")
        # The whole key as the S3 client gets it (storage.filesystem_for: everything after
        # the bucket, query and fragment included). The client resolves `.` and `..` before
        # sending, so `s3://allowed/../other/key` would read bucket `other`.
        key = uri[len("s3://") + len(parts.netloc) + 1:]
        if any(segment in ("", ".", "..") for segment in key.split("/")):
            raise ApiError(403, "uri refused: an s3 key with an empty, '.' or '..' segment "
                                "may leave its bucket")
        return scheme, parts.netloc, 0
    if scheme != "https":
        raise ApiError(403, f"uri refused: scheme {scheme + '://' if scheme else '(none)'} is "
                            f"not accepted; only https:// and s3:// URIs are fetched")
    host = (parts.hostname or "").lower()
    if not host:
        raise ApiError(422, "malformed uri: no host")
    if host not in policy.allowed_hosts:
        raise ApiError(403, f"uri refused: host {host!r} is not in the server's allowed_hosts")
    return scheme, host, port or 443


def fetch_uri(uri: str, policy: UriSpec, max_bytes: int, kind: str = "image") -> bytes:
    """The bytes at an https:// or s3:// uri, under the rules above; kind: what is fetched
    ("image" or "video"), for the Accept header and the messages."""
    scheme, host, port = check_uri(uri, policy)
    if scheme == "s3":
        return _fetch_s3(uri, max_bytes, kind)
    address = resolve_public(host, port)
    parts = urlsplit(uri)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    conn = _PinnedHTTPSConnection(host, address, port, policy.fetch_timeout_s)
    try:
        # The host checked, never the netloc: it may hold userinfo (`user:password@`).
        host_header = (f"[{host}]" if ":" in host else host) + (
            f":{port}" if port != 443 else "")
        conn.request("GET", target, headers={"Host": host_header, "Accept": f"{kind}/*"})
        response = conn.getresponse()
        if 300 <= response.status < 400:
            raise ApiError(422, f"uri answered a redirect (HTTP {response.status}); "
                                f"redirects are not followed, give the final URI")
        if response.status != 200:
            raise ApiError(_status_for_answer(response.status),
                           f"uri answered HTTP {response.status} {response.reason}")
        data = response.read(max_bytes + 1)
    except (OSError, http.client.HTTPException) as err:
        raise ApiError(_status_for_failure(err),
                       f"cannot fetch uri: {type(err).__name__}: {err}") from None
    finally:
        conn.close()
    if len(data) > max_bytes:
        raise ApiError(413, f"{kind} at uri is larger than {max_bytes} bytes")
    return data


# Label Studio's paths for the files it holds: uploads, and its local-files serving.
LABEL_STUDIO_FILE_PATHS = ("/data/upload/", "/data/local-files/")
LABEL_STUDIO_URL_ENV, LABEL_STUDIO_KEY_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"


def label_studio_url(policy: UriSpec) -> str | None:
    """The configured Label Studio address, or LABEL_STUDIO_URL's; None for neither."""
    url = policy.label_studio_url or os.environ.get(LABEL_STUDIO_URL_ENV) or None
    return url.rstrip("/") if url else None


def fetch_label_studio_file(path: str, policy: UriSpec, max_bytes: int,
                            kind: str = "image") -> bytes:
    """The bytes of a file inside Label Studio (a task's `/data/upload/...` or
    `/data/local-files/?d=...`), from the operator's Label Studio (label_studio_url) with
    its API token, as Label Studio's own ML backend SDK fetches them. The address is the
    operator's, never the caller's: only the path comes from the task, and only these
    paths (422 otherwise, or without a configured Label Studio)."""
    base = label_studio_url(policy)
    if not path.startswith(LABEL_STUDIO_FILE_PATHS) or _leaves_folder(path):
        raise ApiError(422, f"{path[:100]!r} is a path inside Label Studio that is not one of "
                            f"its files ({', '.join(LABEL_STUDIO_FILE_PATHS)})")
    if base is None:
        raise ApiError(422, f"{path[:100]!r} is a file inside Label Studio, and the server "
                            f"knows no Label Studio to fetch it from: set uri.label_studio_url "
                            f"(or {LABEL_STUDIO_URL_ENV}) and {LABEL_STUDIO_KEY_ENV}, or use "
                            f"cloud storage (s3://) or https URLs")
    parts = urlsplit(base)
    connection = (http.client.HTTPSConnection if parts.scheme == "https"
                  else http.client.HTTPConnection)
    conn = connection(parts.hostname, parts.port, timeout=policy.fetch_timeout_s)
    headers = {"Accept": f"{kind}/*"}
    token = os.environ.get(LABEL_STUDIO_KEY_ENV)
    if token:
        headers["Authorization"] = f"Token {token}"
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        if response.status != 200:
            # 401/403: the operator's token is wrong, not the task (502).
            status = 502 if response.status in (401, 403) else _status_for_answer(
                response.status)
            raise ApiError(status, f"Label Studio answered HTTP {response.status} "
                                f"{response.reason} for {path[:100]!r}"
                                + (f" (is {LABEL_STUDIO_KEY_ENV} a valid token?)"
                                   if response.status in (401, 403) else ""))
        data = response.read(max_bytes + 1)
    except (OSError, http.client.HTTPException) as err:
        raise ApiError(_status_for_failure(err),
                       f"cannot fetch {path[:100]!r} from Label Studio at {base}: "
                            f"{type(err).__name__}: {err}") from None
    finally:
        conn.close()
    if len(data) > max_bytes:
        raise ApiError(413, f"{kind} at {path[:100]!r} is larger than {max_bytes} bytes")
    return data


def _status_for_answer(status: int) -> int:
    """The status for a fetched server's non-200 answer: its 5xx are its own failure (502),
    its 4xx say the URI names nothing usable (422)."""
    return 502 if status >= 500 else 422


def _status_for_failure(err: Exception) -> int:
    """The status for a fetch that got no answer: 504 for a timeout, 422 for a certificate
    that does not verify (retrying will not change it), 502 for any other failure of the
    connection (refused, reset, a malformed answer)."""
    if isinstance(err, TimeoutError):
        return 504
    if isinstance(err, ssl.SSLCertVerificationError):
        return 422
    return 502


def _leaves_folder(path: str) -> bool:
    """Whether a Label Studio file path could name something outside its folder: a `.` or
    `..` segment (also percent-encoded) or a backslash before the query, which Label Studio
    or a proxy in front of it may resolve to another of its endpoints (the request carries
    the operator's API token)."""
    route = unquote(path.partition("?")[0])
    return "\\" in route or any(segment in (".", "..") for segment in route.split("/"))


def s3_object_size(uri: str) -> int | None:
    """The size in bytes of the object at an (already checked) s3:// uri: 422 when there
    is none, 502 when the store fails (unreachable, denied, throttled)."""
    fs, path = filesystem_for(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as err:
        raise ApiError(502, f"cannot fetch uri: {err}") from None
    if info.type != pafs.FileType.File:
        raise ApiError(422, f"no object at {uri}")
    return info.size


def _fetch_s3(uri: str, max_bytes: int, kind: str) -> bytes:
    size = s3_object_size(uri)
    if size is not None and size > max_bytes:
        raise ApiError(413, f"{kind} at uri has {size} bytes, over the limit of {max_bytes}")
    fs, path = filesystem_for(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError as err:
        raise ApiError(502, f"cannot fetch uri: {err}") from None
