"""Node configuration: a TOML file (read with ``tomllib``) with command-line overrides.

Every key, its type and its default is in :data:`REFERENCE` (rendered in docs/cli.md).
Precedence, lowest first: built-in defaults, the TOML file, command-line flags.

The decision a reader would ask about: **unknown keys are an error**, not ignored.  A
typo such as ``bootsrap`` would otherwise silently run a node that never joins the
network; the error names the key and the file so it can be fixed in one step.
Secrets never live in the config: it names the keystore and where the passphrase comes
from (a file or ``QUDAG_PASSPHRASE``), never the passphrase itself.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["ConfigError", "NodeSettings", "REFERENCE", "load_config", "parse_hostport"]


class ConfigError(Exception):
    """The configuration is unusable; the message says which key and how to fix it."""


def parse_hostport(text: str, *, what: str = "address") -> tuple[str, int]:
    """``"127.0.0.1:4000"`` / ``"[::1]:4000"`` -> ``(host, port)``."""
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be a string HOST:PORT, got {text!r}")
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{what} {text!r} is not HOST:PORT (e.g. 127.0.0.1:4000)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(f"{what} {text!r}: port {port!r} is not a number") from None
    if not 0 <= p <= 65535:
        raise ConfigError(f"{what} {text!r}: port {p} is out of range 0-65535")
    return host, p


#: (section, key) -> (type, default, description).  The single source of the reference.
REFERENCE: dict[tuple[str, str], tuple[type, Any, str]] = {
    ("node", "keystore"): (str, "", "Path of the encrypted identity keystore (qudag keygen writes it). Required."),
    ("node", "passphrase_file"): (str, "", "File whose first line is the keystore passphrase; empty: QUDAG_PASSPHRASE, then a prompt."),
    ("node", "data_dir"): (str, "", "Directory for the node's files (certificate, state); empty: the keystore's directory."),
    ("node", "log_level"): (str, "info", "Log level on stderr: debug, info, warning, error."),
    ("link", "listen"): (str, "127.0.0.1:0", "TCP address for authenticated post-quantum links (port 0: any free port)."),
    ("dht", "listen"): (str, "127.0.0.1:0", "UDP address of the KRPC/Kademlia DHT node."),
    ("dht", "bootstrap"): (list, [], "DHT nodes to join through, as \"HOST:PORT\" (UDP) strings."),
    ("dht", "bootstrap_timeout"): (float, 10.0, "Seconds to wait for the initial bootstrap before running anyway."),
    ("onion", "relay"): (bool, False, "Run an onion relay (own TCP listener) that also serves the \"echo\" stream service."),
    ("onion", "listen"): (str, "127.0.0.1:0", "TCP address of the onion relay's link listener."),
    ("onion", "directory"): (str, "", "Relay directory file (JSON list of hex certificates), re-read when a relay is not in it."),
    ("dark", "directory"): (str, "", "Dark storage directory (JSON list of hex link certificates, DHT node id -> link); the node adds its own at start. Empty: it still stores other nodes' descriptors but cannot publish its own."),
    ("dark", "circuit_hops"): (int, 0, "Fetch and store dark descriptors through onion circuits of this many hops (at least 2), each ending at the storage node, so storage nodes never see this node's address; needs [onion] relay = true. 0: direct links."),
    ("http", "listen"): (str, "127.0.0.1:0", "Metrics/status HTTP address; loopback by default (/status lists peers)."),
    ("http", "enabled"): (bool, True, "Serve /metrics, /status and /healthz."),
}


@dataclass(kw_only=True, slots=True)
class NodeSettings:
    """The resolved settings of one node (after file and flags)."""

    keystore: str = ""
    passphrase_file: str = ""
    data_dir: str = ""
    log_level: str = "info"
    link_listen: tuple[str, int] = ("127.0.0.1", 0)
    dht_listen: tuple[str, int] = ("127.0.0.1", 0)
    bootstrap: list[tuple[str, int]] = field(default_factory=list)
    bootstrap_timeout: float = 10.0
    relay: bool = False
    onion_listen: tuple[str, int] = ("127.0.0.1", 0)
    onion_directory: str = ""
    dark_directory: str = ""
    dark_circuit_hops: int = 0
    http_listen: tuple[str, int] = ("127.0.0.1", 0)
    http_enabled: bool = True

    def resolved_data_dir(self) -> str:
        return self.data_dir or os.path.dirname(os.path.abspath(self.keystore)) or "."


_LOG_LEVELS = ("debug", "info", "warning", "error")


def _check_type(section: str, key: str, value: Any, path: str) -> Any:
    typ, _default, _ = REFERENCE[(section, key)]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise ConfigError(f"{path}: [{section}] {key} must be a {typ.__name__}, got {value!r}")
    return value


def _apply(settings: NodeSettings, section: str, key: str, value: Any, where: str) -> None:
    if section == "node":
        if key == "log_level":
            if value.lower() not in _LOG_LEVELS:
                raise ConfigError(f"{where}: log_level {value!r} is not one of {', '.join(_LOG_LEVELS)}")
            value = value.lower()
        setattr(settings, key, value)
    elif (section, key) == ("link", "listen"):
        settings.link_listen = parse_hostport(value, what=f"{where}: [link] listen")
    elif (section, key) == ("dht", "listen"):
        settings.dht_listen = parse_hostport(value, what=f"{where}: [dht] listen")
    elif (section, key) == ("dht", "bootstrap"):
        settings.bootstrap = [parse_hostport(v, what=f"{where}: [dht] bootstrap entry") for v in value]
    elif (section, key) == ("dht", "bootstrap_timeout"):
        if value <= 0:
            raise ConfigError(f"{where}: [dht] bootstrap_timeout must be positive")
        settings.bootstrap_timeout = value
    elif (section, key) == ("onion", "relay"):
        settings.relay = value
    elif (section, key) == ("onion", "listen"):
        settings.onion_listen = parse_hostport(value, what=f"{where}: [onion] listen")
    elif (section, key) == ("onion", "directory"):
        settings.onion_directory = value
    elif (section, key) == ("dark", "directory"):
        settings.dark_directory = value
    elif (section, key) == ("dark", "circuit_hops"):
        if value != 0 and not 2 <= value <= 8:
            raise ConfigError(f"{where}: [dark] circuit_hops must be 0 (direct links) or 2 to 8, got {value}")
        settings.dark_circuit_hops = value
    elif (section, key) == ("http", "listen"):
        settings.http_listen = parse_hostport(value, what=f"{where}: [http] listen")
    elif (section, key) == ("http", "enabled"):
        settings.http_enabled = value


def load_config(path: Optional[str], overrides: Optional[dict[tuple[str, str], Any]] = None) -> NodeSettings:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides`` (flags: keys
    as in :data:`REFERENCE`, values already typed; ``None`` values are ignored)."""
    settings = NodeSettings()
    if path:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for section, table in doc.items():
            if not isinstance(table, dict) or not any(s == section for s, _ in REFERENCE):
                raise ConfigError(f"{path}: unknown section [{section}] (known: node, link, dht, onion, dark, http)")
            for key, value in table.items():
                if (section, key) not in REFERENCE:
                    raise ConfigError(f"{path}: unknown key {key!r} in [{section}] (see docs/cli.md)")
                _apply(settings, section, key, _check_type(section, key, value, path), path)
    for (section, key), value in (overrides or {}).items():
        if value is None:
            continue
        _apply(settings, section, key, _check_type(section, key, value, "command line"), "command line")
    if settings.dark_circuit_hops and not settings.relay:
        raise ConfigError("[dark] circuit_hops needs [onion] relay = true (or --relay): "
                          "the node builds those circuits with its relay")
    return settings


def reference_markdown() -> str:
    """The key reference as a Markdown table (docs/cli.md embeds it)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for (section, key), (typ, default, doc) in REFERENCE.items():
        rows.append(f"| `[{section}] {key}` | {typ.__name__} | `{default!r}` | {doc} |")
    return "\n".join(rows)


def dump_toml(settings: NodeSettings) -> str:
    """A TOML file that loads back to ``settings`` (testnet writes one per node)."""

    def hp(a: tuple[str, int]) -> str:
        h, p = a
        return f"[{h}]:{p}" if ":" in h else f"{h}:{p}"

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    boot = ", ".join(q(hp(b)) for b in settings.bootstrap)
    return (
        "[node]\n"
        f"keystore = {q(settings.keystore)}\n"
        f"passphrase_file = {q(settings.passphrase_file)}\n"
        f"data_dir = {q(settings.data_dir)}\n"
        f"log_level = {q(settings.log_level)}\n\n"
        f"[link]\nlisten = {q(hp(settings.link_listen))}\n\n"
        f"[dht]\nlisten = {q(hp(settings.dht_listen))}\nbootstrap = [{boot}]\n"
        f"bootstrap_timeout = {settings.bootstrap_timeout!r}\n\n"
        f"[onion]\nrelay = {'true' if settings.relay else 'false'}\nlisten = {q(hp(settings.onion_listen))}\n"
        f"directory = {q(settings.onion_directory)}\n\n"
        f"[dark]\ndirectory = {q(settings.dark_directory)}\ncircuit_hops = {settings.dark_circuit_hops}\n\n"
        f"[http]\nlisten = {q(hp(settings.http_listen))}\nenabled = {'true' if settings.http_enabled else 'false'}\n"
    )

