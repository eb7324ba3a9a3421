"""TLS on the xDS port: mutual TLS for the server, with certificates re-read when they rotate.

The server presents the certificate and key from two PEM files and accepts only clients whose
certificate is signed by a CA from a third (mutual TLS). The three files are read and checked
at start. Before every new connection's handshake, and every few seconds besides, their
status is compared with what was last read (one `stat` per file, following symlinks, so a
Kubernetes Secret volume's swap of its data folder counts as a change); only then are they
read again. A new set that checks out serves every connection from then on; connections
already open keep the certificate they started with. A set that does not (a half-written
file, a key that does not match its certificate, garbage) is logged as an error naming the
file and the port keeps serving the last good set. Nothing read from the files is ever
logged except a certificate's SHA-256 fingerprint.

The client side (`channel_credentials`) is for this program's own gRPC clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from snapshot.certificates import MAX_PEM_BYTES
from watcher.manifest_file import FileTooLarge, NotRegularFile, read_bounded

log = logging.getLogger("staticsite_xds.tls")

CERTIFICATE_BEGIN = "-----BEGIN CERTIFICATE-----"
CERTIFICATE_END = "-----END CERTIFICATE-----"
PRIVATE_KEY_MARK = "PRIVATE KEY-----"
DEFAULT_CHECK_INTERVAL = 5.0  # seconds between checks of the files when nobody connects

FileStamp = tuple[int, int, int, int, int] | None


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names its flag and path."""


class _FilesMoving(TlsFileError):
    """The files changed while they were being read and checked: look again later."""


@dataclass(frozen=True, slots=True)
class PemFile:
    """A PEM file as the command line names it: the flag and the path."""

    flag: str
    path: Path

    def __str__(self) -> str:
        return f"{self.flag} {self.path}"

    def stamp(self) -> FileStamp:
        """The status of the file the path leads to, now: it changes when the file does."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def read(self) -> bytes:
        try:
            data = read_bounded(self.path, MAX_PEM_BYTES)  # a FIFO is refused, never waited on
        except FileNotFoundError:
            raise TlsFileError(f"{self}: no such file") from None
        except IsADirectoryError:
            raise TlsFileError(f"{self}: a folder, not a file") from None
        except NotRegularFile:
            raise TlsFileError(f"{self}: not a regular file (a FIFO or a device)") from None
        except PermissionError:
            raise TlsFileError(f"{self}: cannot be read (permission denied)") from None
        except OSError as exc:
            raise TlsFileError(f"{self}: cannot be read ({exc.strerror or exc})") from None
        except FileTooLarge:
            raise TlsFileError(f"{self}: larger than {MAX_PEM_BYTES // 1024} KiB, not a PEM file") from None
        if not data.strip():
            raise TlsFileError(f"{self}: empty")
        return data


@dataclass(frozen=True, slots=True)
class ServerKeyMaterial:
    """One checked set of the server's files, as bytes (never logged, never shown)."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes

    @property
    def fingerprint(self) -> str:
        """The SHA-256 fingerprint of the server's certificate (the first in the chain)."""
        return certificate_fingerprint(self.certificate_chain)

    @property
    def expires(self) -> float:
        """When the server's certificate (the first in the chain) expires, in seconds since the epoch."""
        return certificate_expiry(self.certificate_chain)

    def __repr__(self) -> str:  # a key must never reach a log through a repr
        return f"ServerKeyMaterial(certificate sha256 {self.fingerprint})"


def certificate_fingerprint(pem: bytes) -> str:
    text = pem.decode("ascii", errors="replace")
    start = text.find(CERTIFICATE_BEGIN)
    end = text.find(CERTIFICATE_END, start)
    if start < 0 or end < 0:
        return "?"
    der = ssl.PEM_cert_to_DER_cert(text[start : end + len(CERTIFICATE_END)])
    return hashlib.sha256(der).hexdigest()


def certificate_expiry(pem: bytes) -> float:
    """When the first certificate of a PEM chain expires, in seconds since the epoch."""
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def _check_certificates(source: PemFile, pem: bytes) -> None:
    """Every certificate in `pem` parses, and there is at least one."""
    text = pem.decode("ascii", errors="replace")
    if CERTIFICATE_BEGIN not in text:
        raise TlsFileError(f"{source}: no PEM certificate in it")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError):
        raise TlsFileError(f"{source}: not a valid PEM certificate (cut short or damaged?)") from None


def _check_key(key: PemFile, pem: bytes, certificate: PemFile) -> None:
    """`pem` is an unencrypted private key that belongs to the certificate in `certificate`."""
    text = pem.decode("ascii", errors="replace")
    if PRIVATE_KEY_MARK not in text:
        raise TlsFileError(f"{key}: no PEM private key in it")
    if "ENCRYPTED" in text:
        raise TlsFileError(f"{key}: the private key is encrypted; give it unencrypted")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certificate.path, key.path, password=b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsFileError(
                f"{key}: the private key does not belong to the certificate in {certificate}"
            ) from None
        raise TlsFileError(f"{key}: not a valid PEM private key (cut short or damaged?)") from None
    except OSError as exc:
        raise TlsFileError(f"{key}: cannot be read ({exc.strerror or exc})") from None


def _read_checked(
    certificate: PemFile, key: PemFile, client_ca: PemFile | None
) -> tuple[bytes, bytes, bytes | None]:
    """Read and check the files; `_FilesMoving` when they changed meanwhile."""
    read = (certificate.read(), key.read(), client_ca.read() if client_ca else None)
    problem: TlsFileError | None = None
    try:
        _check_certificates(certificate, read[0])
        if client_ca is not None and read[2] is not None:
            _check_certificates(client_ca, read[2])
        _check_key(key, read[1], certificate)  # reads the files again, by their paths
    except TlsFileError as exc:
        problem = exc
    # The key check read the paths anew: what it saw is what we hold only if nothing changed.
    again = (certificate.read(), key.read(), client_ca.read() if client_ca else None)
    if again != read:
        raise _FilesMoving(f"{certificate}, {key}: changed while being read")
    if problem is not None:
        raise problem
    return read


def _read_settled(
    certificate: PemFile, key: PemFile, client_ca: PemFile | None, attempts: int = 5
) -> tuple[bytes, bytes, bytes | None]:
    for _ in range(attempts - 1):
        try:
            return _read_checked(certificate, key, client_ca)
        except _FilesMoving:
            continue
    return _read_checked(certificate, key, client_ca)


class ServingCertificate:
    """The xDS port's certificate, key and client CA, followed through their rotations."""

    def __init__(self, certificate: PemFile, key: PemFile, client_ca: PemFile) -> None:
        """Read and check the files; `TlsFileError` names the first that cannot serve."""
        self.files = (certificate, key, client_ca)
        self._lock = threading.Lock()
        self._stamps = self._stamp()
        self.current = self._load(attempts=5)
        self._handed_over: ServerKeyMaterial | None = None
        self.rotations = 0

    @classmethod
    def from_paths(cls, certificate: Path, key: Path, client_ca: Path) -> ServingCertificate:
        """The files as the `serve` flags name them."""
        return cls(
            PemFile("--tls-cert", Path(certificate)),
            PemFile("--tls-key", Path(key)),
            PemFile("--tls-client-ca", Path(client_ca)),
        )

    def _stamp(self) -> tuple[FileStamp, ...]:
        return tuple(f.stamp() for f in self.files)

    def _load(self, attempts: int = 1) -> ServerKeyMaterial:
        certificate, key, client_ca = self.files
        chain, private_key, ca = _read_settled(certificate, key, client_ca, attempts)
        assert ca is not None
        return ServerKeyMaterial(chain, private_key, ca)

    def describe(self) -> str:
        certificate, key, client_ca = self.files
        return (
            f"certificate {certificate} (sha256 {self.current.fingerprint}), key {key}; "
            f"clients need a certificate signed by a CA in {client_ca}"
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for the xDS port: this certificate, client certificates required."""
        with self._lock:
            self._handed_over = self.current
            initial = _configuration(self.current)
        return grpc.dynamic_ssl_server_credentials(
            initial, self.configuration_for_handshake, require_client_authentication=True
        )

    def check(self) -> bool:
        """Look at the files; take a changed set that checks out. True if one was taken.

        Never raises: a set that does not check out is logged, once, and the last good one
        stays.
        """
        with self._lock:
            try:
                return self._check_locked()
            except Exception:  # never let a rotation take the port down
                log.exception("checking the xDS port's TLS files failed; the current certificate stays")
                return False

    def _check_locked(self) -> bool:
        stamps = self._stamp()
        if stamps == self._stamps:
            return False
        try:
            material = self._load()
        except _FilesMoving:
            return False  # mid-rotation: the stamps stay old, so the next look reads again
        except TlsFileError as exc:
            self._stamps = stamps
            log.error(
                "the xDS port's TLS files changed but cannot be used: %s; still serving the "
                "certificate with sha256 %s",
                exc,
                self.current.fingerprint,
            )
            return False
        self._stamps = stamps
        if material == self.current:
            return False
        previous, self.current = self.current, material
        self.rotations += 1
        certificate, _, client_ca = self.files
        if material.certificate_chain != previous.certificate_chain:
            log.info(
                "xDS TLS: new connections get the certificate from %s with sha256 %s (was %s)",
                certificate,
                material.fingerprint,
                previous.fingerprint,
            )
        if material.client_ca != previous.client_ca:
            log.info("xDS TLS: client certificates are now checked against the new CAs in %s", client_ca)
        return True

    def configuration_for_handshake(self) -> grpc.ServerCertificateConfiguration | None:
        """Asked by gRPC before each new handshake: a new configuration, or None to keep the one it has."""
        self.check()
        with self._lock:
            if self.current is self._handed_over:
                return None
            self._handed_over = self.current
            return _configuration(self.current)

    async def follow(self, stop: asyncio.Event, interval: float = DEFAULT_CHECK_INTERVAL) -> None:
        """Check the files every `interval` seconds until `stop`, so a rotation is taken (and
        reported) even while no new client connects."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                await asyncio.to_thread(self.check)


def _configuration(material: ServerKeyMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.private_key, material.certificate_chain)], root_certificates=material.client_ca
    )


def channel_credentials(
    ca: Path | None,
    certificate: Path | None = None,
    key: Path | None = None,
    *,
    flags: tuple[str, str, str] = ("--tls-ca", "--tls-cert", "--tls-key"),
) -> grpc.ChannelCredentials:
    """Credentials for a client of the xDS port: trust the CAs in `ca` (None: the system's),
    and present `certificate` and `key` when given (both or neither).

    `TlsFileError` names the flag (from `flags`) and the file that cannot be used.
    """
    ca_flag, certificate_flag, key_flag = flags
    if (certificate is None) != (key is None):
        raise TlsFileError(f"{certificate_flag} and {key_flag} go together")
    root = None
    if ca is not None:
        ca_file = PemFile(ca_flag, Path(ca))
        root = ca_file.read()
        _check_certificates(ca_file, root)
    if certificate is None or key is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    chain, private_key, _ = _read_settled(
        PemFile(certificate_flag, Path(certificate)), PemFile(key_flag, Path(key)), None
    )
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=private_key, certificate_chain=chain
    )
