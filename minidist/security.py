"""Security: TLS credentials and the per-cluster shared secret.

Two independent layers protect a TCP scheduler (see minidist/comm/tcp.py for how they are used):

1. The shared secret. Every connection, TLS or not, proves knowledge of a random per-cluster secret with an
   HMAC challenge in both directions. The scheduler writes the secret to a file only its user can read:

       new_secret() --> write_secret(address, secret) --> <secret dir>/<host>-<port>@<machine>.secret
                                                               |                              (0600)
       a client of the same user:  read_secret(address) <-----+   found from the address alone

   The secret directory is ``$XDG_RUNTIME_DIR/minidist`` when that runtime directory exists and belongs to
   the user, else ``~/.minidist``; it is created 0700, and refused (never repaired) when it is a symbolic
   link, not a directory, another user's, or has any other mode. File names carry this machine's name: a
   home directory shared between machines (NFS) holds each machine's files apart, and the sweep of stale
   files (whose owner pid is dead) only looks at this machine's, the only pids it can check.

2. TLS (``tls://`` addresses). ``Security`` holds a CA and a certificate/key per role (scheduler, worker,
   client), each given as a file path or as PEM text. ``Security.temporary()`` makes a throw-away CA and
   certificate in memory (needs the optional ``cryptography`` package: ``pip install minidist[tls]``).
   Both ends require and verify the other's certificate against the CA (mutual TLS). Host names are not
   checked: trust comes from the private CA, and scheduler addresses are often bare IPs.

Security objects hold only strings, so they pickle and can be handed to a subprocess.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import pathlib
import re
import secrets
import socket
import ssl
import stat
import tempfile

from minidist.comm.addressing import parse_address

_ROLES = ("scheduler", "worker", "client")


def _is_pem(value: str) -> bool:
    return "-----BEGIN" in value


class Security:
    """TLS settings; each ``tls_*`` value is a path to a PEM file or the PEM text itself.

    ``require_encryption=True`` makes listeners and connections refuse plain ``tcp://`` addresses.
    """

    def __init__(
        self,
        tls_ca_file: str | None = None,
        tls_client_cert: str | None = None,
        tls_client_key: str | None = None,
        tls_scheduler_cert: str | None = None,
        tls_scheduler_key: str | None = None,
        tls_worker_cert: str | None = None,
        tls_worker_key: str | None = None,
        require_encryption: bool = False,
    ):
        self.tls_ca_file = tls_ca_file
        self.tls_client_cert = tls_client_cert
        self.tls_client_key = tls_client_key
        self.tls_scheduler_cert = tls_scheduler_cert
        self.tls_scheduler_key = tls_scheduler_key
        self.tls_worker_cert = tls_worker_cert
        self.tls_worker_key = tls_worker_key
        self.require_encryption = bool(require_encryption)

    def __repr__(self) -> str:
        # Never print key material: say whether each field is a file, inline PEM or unset.
        def describe(value):
            if value is None:
                return "None"
            return "<PEM text>" if _is_pem(value) else repr(value)

        fields = [
            f"{name}={describe(getattr(self, name))}"
            for name in vars(self)
            if name.startswith("tls_") and getattr(self, name) is not None
        ]
        fields.append(f"require_encryption={self.require_encryption}")
        return f"Security({', '.join(fields)})"

    @classmethod
    def temporary(cls) -> Security:
        """Self-signed CA plus one certificate for every role, valid one year, held in memory."""
        ca_pem, cert_pem, key_pem = _make_temporary_credentials()
        return cls(
            tls_ca_file=ca_pem,
            tls_client_cert=cert_pem,
            tls_client_key=key_pem,
            tls_scheduler_cert=cert_pem,
            tls_scheduler_key=key_pem,
            tls_worker_cert=cert_pem,
            tls_worker_key=key_pem,
            require_encryption=True,
        )

    def server_context(self, role: str = "scheduler") -> ssl.SSLContext:
        """Context for the listening side: presents ``role``'s certificate, requires the peer's."""
        return self._context(ssl.PROTOCOL_TLS_SERVER, role)

    def client_context(self, role: str = "client") -> ssl.SSLContext:
        """Context for the connecting side: presents ``role``'s certificate, verifies the server's."""
        return self._context(ssl.PROTOCOL_TLS_CLIENT, role)

    def _context(self, protocol: int, role: str) -> ssl.SSLContext:
        if role not in _ROLES:
            raise ValueError(f"Unknown TLS role {role!r}; use one of {', '.join(_ROLES)}")
        cert = getattr(self, f"tls_{role}_cert")
        key = getattr(self, f"tls_{role}_key")
        if not self.tls_ca_file:
            raise ValueError(
                "TLS needs a CA: set Security(tls_ca_file=...) or use Security.temporary()"
            )
        if not cert:
            raise ValueError(
                f"TLS needs a {role} certificate: set Security(tls_{role}_cert=..., tls_{role}_key=...) "
                "or use Security.temporary()"
            )
        context = ssl.SSLContext(protocol)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False  # trust comes from the private CA, see the module docstring
        context.verify_mode = ssl.CERT_REQUIRED
        if _is_pem(self.tls_ca_file):
            context.load_verify_locations(cadata=self.tls_ca_file)
        else:
            context.load_verify_locations(cafile=self.tls_ca_file)
        _load_cert_chain(context, cert, key)
        return context


def tls_context(
    protocol: str, security: Security | None, server: bool, role: str, address: str
) -> ssl.SSLContext | None:
    """The SSLContext a transport needs for ``protocol`` (None for plain tcp).

    Checks that the address and the security settings agree: tls:// needs a Security, and a Security
    with require_encryption refuses tcp://.
    """
    if protocol == "inproc":
        raise ValueError(
            f"{address!r} is an in-process address: it has no socket to listen on or connect to"
        )
    if protocol == "tls":
        if security is None:
            raise ValueError(
                f"{address!r} is a TLS address: pass security=Security(...) with the cluster's credentials "
                "(for security=True clusters, the cluster's .security object)"
            )
        return security.server_context(role) if server else security.client_context(role)
    if security is not None and security.require_encryption:
        raise ValueError(
            f"Security(require_encryption=True) refuses the unencrypted address {address!r}; "
            "use a tls:// address"
        )
    return None


def _load_cert_chain(context: ssl.SSLContext, cert: str, key: str | None) -> None:
    """load_cert_chain only reads files: PEM text goes through a private temporary file, removed at once."""
    temporary = []
    try:
        paths: list = []  # the certificate's file, then the key's (None: the key is in that file)
        for value in (cert, key):
            if value is not None and _is_pem(value):
                fd, path = tempfile.mkstemp(prefix="minidist-tls-", suffix=".pem")  # mode 0600
                temporary.append(path)
                with os.fdopen(fd, "w") as f:
                    f.write(value)
                value = path
            paths.append(value)
        context.load_cert_chain(certfile=paths[0], keyfile=paths[1])
    finally:
        for path in temporary:
            os.unlink(path)


def _make_temporary_credentials() -> tuple[str, str, str]:
    """(CA certificate, leaf certificate, leaf key) as PEM text; the CA's key is thrown away."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:
        raise ImportError(
            "Temporary TLS credentials (security=True / Security.temporary()) need the 'cryptography' "
            "package: pip install minidist[tls]"
        ) from exc

    now = datetime.datetime.now(datetime.timezone.utc)
    # A day of slack before "now" so a peer whose clock is a little behind still accepts the certificates.
    not_before, not_after = now - datetime.timedelta(days=1), now + datetime.timedelta(days=365)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "minidist temporary CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(socket.gethostname())]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "minidist")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = serialization.Encoding.PEM
    return ca_cert.public_bytes(pem).decode(), cert.public_bytes(pem).decode(), key_pem.decode()


# --- the shared secret -------------------------------------------------------------------------------


def new_secret() -> bytes:
    """32 random bytes for a new cluster."""
    return secrets.token_bytes(32)


def check_secret(secret) -> bytes:
    """``secret`` as bytes, or ValueError if it is not non-empty bytes."""
    if not isinstance(secret, (bytes, bytearray)) or not secret:
        raise ValueError("The secret must be non-empty bytes, e.g. minidist.security.new_secret()")
    return bytes(secret)


def _secret_dir() -> pathlib.Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = None
    if runtime:
        try:
            info = os.lstat(runtime)
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
                base = pathlib.Path(runtime) / "minidist"
        except OSError:
            pass
    if base is None:
        base = pathlib.Path.home() / ".minidist"
    try:
        base.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    else:
        base.chmod(0o700)  # ours, just made: whatever the umask took away
    _check_secret_dir(base, os.lstat(base))
    return base


def _check_secret_dir(base: pathlib.Path, info: os.stat_result) -> None:
    """Refuse a secret directory anyone else could read, swap or redirect; never repair it silently."""
    where = "remove it (a fresh one is made) or set XDG_RUNTIME_DIR to a directory of your own"
    if stat.S_ISLNK(info.st_mode):
        raise PermissionError(
            f"The minidist secret directory {base} is a symbolic link; refusing to follow it: {where}"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"The minidist secret directory {base} is not a directory: {where}")
    if info.st_uid != os.getuid():
        raise PermissionError(
            f"The minidist secret directory {base} belongs to another user (uid {info.st_uid}): {where}"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        raise PermissionError(
            f"The minidist secret directory {base} has mode {oct(stat.S_IMODE(info.st_mode))}, not "
            f"0o700: others may have read or replaced its secrets. Check it, then {where}"
        )


def _safe(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9.-]", "_", name)
    if safe != name:  # keep distinct names distinct after replacing characters
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return safe


def _machine() -> str:
    return _safe(socket.gethostname() or "localhost")


def _file_name(host: str, port: int, machine: str | None = None) -> str:
    # The host and port only, no protocol: tcp:// and tls:// to the same place name the same scheduler.
    return f"{_safe(host)}-{port}@{machine or _machine()}.secret"


def secret_path(address: str) -> pathlib.Path:
    """Where the secret of the scheduler at ``address`` lives (creates the private directory)."""
    _, host, port = parse_address(address)
    return _secret_dir() / _file_name(host, port)


def write_secret(address: str, secret: bytes) -> pathlib.Path:
    """Store ``secret`` for ``address`` in a 0600 file (atomically replacing a stale one)."""
    secret = check_secret(secret)
    path = secret_path(address)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)  # 0600 from the start
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{secret.hex()} {os.getpid()}\n")  # the owner's pid, for sweep_stale_secrets
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    sweep_stale_secrets(path.parent)
    return path


def _parse_secret_file(path: pathlib.Path) -> tuple[bytes, int | None]:
    """(secret, owner pid or None) from a secret file; ValueError if it is not one."""
    fields = path.read_text().split()
    if not fields:
        raise ValueError("empty")
    owner = int(fields[1]) if len(fields) > 1 else None
    return bytes.fromhex(fields[0]), owner


def sweep_stale_secrets(directory: pathlib.Path) -> None:
    """Delete secret files whose owner process is gone (a scheduler killed before it could clean up).

    A file whose owner cannot be told (written by an older minidist) is left alone.
    """
    for path in directory.glob(
        f"*@{_machine()}.secret"
    ):  # pids of other machines mean nothing here
        try:
            _, owner = _parse_secret_file(path)
        except (OSError, ValueError):
            continue
        if owner is None or owner == os.getpid():
            continue
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, under another user's name


def _candidate_paths(address: str) -> list[pathlib.Path]:
    """The file for ``address``, then the files for the IPs its host name resolves to ("localhost").

    This machine's files first; for an address that is not loopback, another machine's file for the
    same address too (a home directory shared between machines).
    """
    _, host, port = parse_address(address)
    directory = _secret_dir()
    hosts = [host]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        infos = []
    hosts += [str(info[4][0]) for info in infos if str(info[4][0]) not in hosts]
    paths = [directory / _file_name(h, port) for h in hosts]
    for h in hosts:
        if not _is_loopback_host(h):
            paths += sorted(
                p for p in directory.glob(f"{_safe(h)}-{port}@*.secret") if p not in paths
            )
    return paths


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def read_secret(address: str) -> bytes | None:
    """The secret stored for ``address`` by this user, or None if there is none."""
    for path in _candidate_paths(address):
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.getuid()
            or stat.S_IMODE(info.st_mode) & 0o077
        ):
            raise PermissionError(
                f"Refusing to use the secret file {path}: it must be a regular file of yours with mode "
                f"0600 (it has uid {info.st_uid}, mode {oct(stat.S_IMODE(info.st_mode))}, "
                f"{'a symbolic link' if stat.S_ISLNK(info.st_mode) else 'not a link'}); delete it "
                "and restart the scheduler"
            )
        try:
            return _parse_secret_file(path)[0]
        except ValueError as exc:
            raise ValueError(
                f"The secret file {path} is corrupt; delete it and restart the scheduler"
            ) from exc
    return None


def remove_secret(address: str, secret: bytes | None = None) -> None:
    """Delete the secret file for ``address``; with ``secret``, only if the file still holds that one.

    Passing the secret keeps a closing cluster from deleting the file of a newer cluster on the same port.
    """
    path = secret_path(address)
    if secret is not None:
        try:
            if _parse_secret_file(path)[0] != bytes(secret):
                return
        except (OSError, ValueError):
            return
    try:
        path.unlink()
    except FileNotFoundError:
        pass
