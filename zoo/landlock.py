"""Linux Landlock through ctypes: confine this process (and its children) to writing inside given folders.

Used by the child processes that run untrusted model code (``converters.isolation``): whatever a
hostile TorchScript or TensorFlow graph does, it cannot write, create, rename or delete a file
outside its scratch folder, open a TCP connection, signal a process outside its domain or reach
an abstract unix socket. Reading stays allowed (the frameworks read their own libraries and the
model), so the restriction needs no list of system folders.

Landlock is an unprivileged kernel feature (Linux 5.13+, ABI versions add rights: 2 file
renames across folders, 3 truncate, 4 TCP, 5 device ioctls, 6 signal and abstract-socket
scoping). `restrict_writes` uses every right the running kernel knows and says what it could
not enforce; where the kernel has no Landlock it changes nothing and says why. The restriction
holds for the calling thread and everything it starts afterwards, and cannot be lifted: call it
in a fresh child before it starts threads or runs anything untrusted.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Syscall numbers: the same on every architecture Linux added Landlock to (the unified table).
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights (uapi/linux/landlock.h), with the ABI version that introduced each.
_FS_WRITE_FILE = 1 << 1
_FS_REMOVE_DIR = 1 << 4
_FS_REMOVE_FILE = 1 << 5
_FS_MAKE_CHAR = 1 << 6
_FS_MAKE_DIR = 1 << 7
_FS_MAKE_REG = 1 << 8
_FS_MAKE_SOCK = 1 << 9
_FS_MAKE_FIFO = 1 << 10
_FS_MAKE_BLOCK = 1 << 11
_FS_MAKE_SYM = 1 << 12
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_WRITE_RIGHTS_BY_ABI = {
    1: (_FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE_CHAR | _FS_MAKE_DIR | _FS_MAKE_REG
        | _FS_MAKE_SOCK | _FS_MAKE_FIFO | _FS_MAKE_BLOCK | _FS_MAKE_SYM),
    2: _FS_REFER,
    3: _FS_TRUNCATE,
    5: _FS_IOCTL_DEV,
}
# The rights a rule may grant on a single file (not a folder).
_FILE_RIGHTS = _FS_WRITE_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

# Files every process may still write: the null device (frameworks redirect chatter there).
ALWAYS_WRITABLE = ("/dev/null",)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass
class SandboxStatus:
    """What `restrict_writes` enforced: whether it is active, the ABI, what may be written, what is denied."""

    active: bool
    abi: int = 0
    writable: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)  # e.g. "writes outside the writable folders", "TCP"
    reason: str | None = None  # why it is inactive, or what the kernel could not enforce

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One phrase for reports: 'Landlock ABI 7: ...' or 'none: <reason>'."""
        if not self.active:
            return f"none ({self.reason})"
        text = f"Linux Landlock ABI {self.abi}: denies {', '.join(self.denied)}"
        return text + (f" ({self.reason})" if self.reason else "")


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _long(value: int) -> ctypes.c_long:
    """Variadic syscall(2) arguments, passed as full machine words."""
    return ctypes.c_long(value)


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when there is none (not Linux, too old, or disabled at boot)."""
    if platform.system() != "Linux":
        return 0
    try:
        version = _libc().syscall(_long(_CREATE_RULESET), None, _long(0), _long(_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def _unavailable_reason() -> str:
    if platform.system() != "Linux":
        return f"Landlock is a Linux feature and this is {platform.system() or 'an unknown system'}"
    return (f"this kernel ({platform.release()}) has no Linux Landlock (5.13 or newer with "
            f"CONFIG_SECURITY_LANDLOCK and landlock in its lsm= boot list)")


def restrict_writes(writable: Sequence[str | os.PathLike], *, deny_tcp: bool = True) -> SandboxStatus:
    """Confine this thread and its future children: writes only under `writable` (and /dev/null).

    Also denies TCP bind/connect (ABI 4+) when `deny_tcp`, and signals or abstract unix sockets
    reaching outside the sandbox (ABI 6+). Returns what was enforced; an inactive status (no
    Landlock here) changes nothing. Raises OSError when the kernel has Landlock but refuses the
    rules (a writable folder that does not exist, for instance).
    """
    abi = abi_version()
    if abi < 1:
        return SandboxStatus(active=False, reason=_unavailable_reason())
    libc = _libc()
    rights = 0
    for version, bits in _WRITE_RIGHTS_BY_ABI.items():
        if abi >= version:
            rights |= bits
    attr = _RulesetAttr(handled_access_fs=rights)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    denied = ["writes outside the writable folders"]
    missing = []
    if deny_tcp and abi >= 4:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
        denied.append("TCP bind and connect")
    elif deny_tcp:
        missing.append("TCP (needs ABI 4)")
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        denied.append("signals and abstract unix sockets outside the sandbox")
    else:
        missing.append("signal scoping (needs ABI 6)")
    fd = libc.syscall(_long(_CREATE_RULESET), ctypes.byref(attr), _long(size), _long(0))
    if fd < 0:
        _raise("landlock_create_ruleset")
    paths = [os.path.abspath(os.fspath(p)) for p in writable]
    try:
        for path in [*paths, *ALWAYS_WRITABLE]:
            if path in ALWAYS_WRITABLE and not os.path.exists(path):
                continue
            allowed = rights if os.path.isdir(path) else rights & _FILE_RIGHTS
            target = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneathAttr(allowed_access=allowed, parent_fd=target)
                if libc.syscall(_long(_ADD_RULE), _long(fd), _long(_RULE_PATH_BENEATH),
                                ctypes.byref(rule), _long(0)) < 0:
                    _raise(f"landlock_add_rule({path})")
            finally:
                os.close(target)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, _long(1), _long(0), _long(0), _long(0)) != 0:
            _raise("prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(_long(_RESTRICT_SELF), _long(fd), _long(0)) < 0:
            _raise("landlock_restrict_self")
    finally:
        os.close(fd)
    return SandboxStatus(active=True, abi=abi, writable=paths, denied=denied,
                         reason=f"not enforced here: {', '.join(missing)}" if missing else None)


def _raise(call: str) -> None:
    code = ctypes.get_errno() or errno.EPERM
    raise OSError(code, f"{call}: {os.strerror(code)}")


__all__ = ["ALWAYS_WRITABLE", "SandboxStatus", "abi_version", "restrict_writes"]
