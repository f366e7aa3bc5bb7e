"""Every system view the doctor reads (/proc, /sys, /dev, /etc, /lib) goes through one root folder.

The root is "/" on a real machine; `AIPC_SYSROOT` (or a parameter) points it at a fixture tree, so tests build
the machine they want (a Meteor Lake laptop, a missing driver, a device node the user cannot open) out of plain
files instead of patching functions. Who "the user" is also comes from the root: its `proc/self/status`
(Uid, Gid, Groups lines), exactly what the kernel reports for the running process on a real machine.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

SYSROOT_ENV = "AIPC_SYSROOT"

# Where distributions put shared libraries (the dynamic loader's defaults plus common vendor prefixes).
LIB_DIRS = (
    "usr/lib/x86_64-linux-gnu",
    "lib/x86_64-linux-gnu",
    "usr/lib64",
    "lib64",
    "usr/lib",
    "lib",
    "usr/local/lib",
    "usr/local/lib64",
)


@dataclass(frozen=True)
class Identity:
    """The process's effective user and groups, and the user's name when the password file knows it."""

    uid: int
    gid: int
    groups: frozenset[int]
    user: str | None = None


@dataclass(frozen=True)
class NodeAccess:
    """Whether the process can open a device node for reading and writing, and why."""

    path: str
    mode: str  # as `ls -l` shows it, e.g. crw-rw----
    owner: str
    group: str
    gid: int
    allowed: bool
    how: str  # which permission class decided: owner, group, other, acl, root


class SysRoot:
    """Reads under one root. `root=None` takes `AIPC_SYSROOT`, else "/"."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        chosen = root if root is not None else (os.environ.get(SYSROOT_ENV) or "/")
        self.root = Path(chosen).resolve()
        self.is_real = self.root == Path("/").resolve()

    def __repr__(self) -> str:
        return f"SysRoot({str(self.root)!r})"

    # ---- paths and files ----
    def path(self, rel: str | os.PathLike) -> Path:
        """`rel` ("/dev/accel" or "dev/accel") under the root."""
        return self.root / str(rel).lstrip("/\\")

    def read(self, rel: str, limit: int = 1 << 20) -> str | None:
        """A text file's contents, or None when it is absent or unreadable."""
        try:
            with open(self.path(rel), encoding="utf-8", errors="replace") as f:
                return f.read(limit)
        except OSError:
            return None

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))

    def glob(self, pattern: str) -> list[Path]:
        return sorted(self.root.glob(pattern.lstrip("/")))

    def rel(self, path: Path) -> str:
        """`path` as the user would see it on the machine ("/dev/accel/accel0")."""
        try:
            return "/" + str(path.relative_to(self.root)).replace(os.sep, "/").lstrip("/")
        except ValueError:
            return str(path)

    @property
    def platform(self) -> str:
        """ "linux", "windows" or "other". A fixture root holding `windows/` (captured command outputs) stands
        for a Windows machine, so the Windows readers are testable anywhere."""
        if not self.is_real:
            return "windows" if self.path("windows").is_dir() else "linux"
        if sys.platform == "win32":
            return "windows"
        return "linux" if sys.platform.startswith("linux") else "other"

    # ---- kernel ----
    def kernel_release(self) -> str | None:
        text = self.read("proc/sys/kernel/osrelease")
        if text:
            return text.strip()
        if self.is_real:
            import platform

            return platform.release() or None
        return None

    def loaded_modules(self) -> set[str]:
        """Kernel modules loaded now: /proc/modules, plus /sys/module (which also lists built-in drivers that
        have parameters, and is all a container may show)."""
        names = set()
        for line in (self.read("proc/modules") or "").splitlines():
            if line.strip():
                names.add(line.split()[0])
        sysmod = self.path("sys/module")
        if sysmod.is_dir():
            names.update(p.name for p in sysmod.iterdir())
        return names

    # ---- who we are ----
    def identity(self) -> Identity:
        """The effective uid, gid and supplementary groups from `proc/self/status`, else from the process."""
        uid = gid = None
        groups: set[int] = set()
        for line in (self.read("proc/self/status") or "").splitlines():
            key, _, value = line.partition(":")
            fields = value.split()
            if key == "Uid" and len(fields) >= 2:
                uid = int(fields[1])  # real, effective, saved, filesystem: the effective one decides
            elif key == "Gid" and len(fields) >= 2:
                gid = int(fields[1])
            elif key == "Groups":
                groups = {int(g) for g in fields if g.isdigit()}
        if uid is None or gid is None:
            uid = os.geteuid() if hasattr(os, "geteuid") else 0
            gid = os.getegid() if hasattr(os, "getegid") else 0
            groups = set(os.getgroups()) if hasattr(os, "getgroups") else set()
        return Identity(uid, gid, frozenset(groups | {gid}), self.user_name(uid))

    def user_name(self, uid: int) -> str | None:
        for fields in _colon_records(self.read("etc/passwd")):
            if len(fields) > 2 and fields[2] == str(uid):
                return fields[0]
        if self.is_real:
            try:
                import pwd

                return pwd.getpwuid(uid).pw_name
            except (ImportError, KeyError):
                return None
        return None

    def groups(self) -> dict[int, tuple[str, frozenset[str]]]:
        """gid -> (group name, member user names) from `etc/group`."""
        found = {}
        for fields in _colon_records(self.read("etc/group")):
            if len(fields) >= 3 and fields[2].isdigit():
                members = frozenset(m for m in (fields[3].split(",") if len(fields) > 3 else []) if m)
                found[int(fields[2])] = (fields[0], members)
        return found

    def group_name(self, gid: int) -> str:
        known = self.groups()
        if gid in known:
            return known[gid][0]
        if self.is_real:
            try:
                import grp

                return grp.getgrgid(gid).gr_name
            except (ImportError, KeyError):
                pass
        return str(gid)

    def node_access(self, rel: str, ident: Identity | None = None) -> NodeAccess | None:
        """Can the process open `rel` read-write? Decided the kernel's way: root passes; else the owner,
        group or other permission bits, or a POSIX ACL when the node carries one (logind's `uaccess` grants
        the seat's user access to render nodes that way)."""
        path = self.path(rel)
        try:
            st = os.stat(path)
        except OSError:
            return None
        ident = ident or self.identity()
        acl = None
        if hasattr(os, "getxattr"):
            try:
                acl = parse_posix_acl(os.getxattr(path, "system.posix_acl_access"))
            except (OSError, ValueError):
                acl = None
        allowed, how = can_open_rw(st.st_mode, st.st_uid, st.st_gid, ident, acl)
        owner = self.user_name(st.st_uid) or str(st.st_uid)
        return NodeAccess(rel, stat.filemode(st.st_mode), owner, self.group_name(st.st_gid), st.st_gid, allowed, how)

    # ---- libraries ----
    def lib_dirs(self) -> list[Path]:
        """The loader's search folders under the root: LD_LIBRARY_PATH, ld.so.conf (and its includes), then
        the usual defaults."""
        dirs: list[str] = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
        dirs += _ld_so_conf(self, "etc/ld.so.conf", depth=0)
        dirs += list(LIB_DIRS)
        seen, found = set(), []
        for d in dirs:
            p = self.path(d)
            if p not in seen and p.is_dir():
                seen.add(p)
                found.append(p)
        return found

    def find_library(self, name: str) -> list[Path]:
        """Files named `name` or `name.*` (libze_loader.so, libze_loader.so.1, libze_loader.so.1.21.9) in the
        loader's folders, first folder first."""
        hits = []
        for d in self.lib_dirs():
            hits += sorted(p for p in d.glob(name + "*") if p.name == name or p.name.startswith(name + "."))
        return hits


def library_version(candidates: list[Path], name: str) -> str | None:
    """The longest version a library's file names (or the target of its .so.N link) carry: libze_loader.so.1
    -> libze_loader.so.1.21.9 gives "1.21.9"."""
    best = None
    for p in candidates:
        for n in (p.name, Path(os.path.realpath(p)).name):
            m = re.fullmatch(re.escape(name) + r"\.(\d+(?:\.\d+)*)", n)
            if m and (best is None or len(m.group(1).split(".")) > len(best.split("."))):
                best = m.group(1)
    return best


def version_tuple(text: str | None) -> tuple[int, ...]:
    """ "6.8.0-45-generic" -> (6, 8, 0); "" -> ()."""
    m = re.match(r"(\d+(?:\.\d+)*)", text or "")
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


# POSIX ACL xattr (Linux `system.posix_acl_access`): a 4-byte version (2), then 8-byte entries: tag u16,
# perm u16, id u32. Tags: USER_OBJ 1, USER 2, GROUP_OBJ 4, GROUP 8, MASK 0x10, OTHER 0x20.
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20


def parse_posix_acl(blob: bytes) -> list[tuple[int, int, int]]:
    """[(tag, perm bits rwx, id)] from the raw xattr; ValueError when it is not a version-2 ACL."""
    if len(blob) < 4 or (len(blob) - 4) % 8 or struct.unpack_from("<I", blob)[0] != 2:
        raise ValueError("not a POSIX ACL (version 2)")
    return [struct.unpack_from("<HHI", blob, off) for off in range(4, len(blob), 8)]


def can_open_rw(
    mode: int, owner: int, group: int, ident: Identity, acl: list[tuple[int, int, int]] | None = None
) -> tuple[bool, str]:
    """The kernel's permission check for read+write (bits 6), returning (allowed, deciding class)."""
    want = 6
    if ident.uid == 0:
        return True, "root"
    if acl and any(tag in (ACL_USER, ACL_GROUP, ACL_MASK) for tag, _, _ in acl):
        mask = next((perm for tag, perm, _ in acl if tag == ACL_MASK), 7)
        if ident.uid == owner:
            perm = next((p for t, p, _ in acl if t == ACL_USER_OBJ), 0)
            return perm & want == want, "owner"
        for tag, perm, ident_id in acl:
            if tag == ACL_USER and ident_id == ident.uid:
                return perm & mask & want == want, "acl"
        matched = [
            perm
            for tag, perm, ident_id in acl
            if (tag == ACL_GROUP_OBJ and group in ident.groups) or (tag == ACL_GROUP and ident_id in ident.groups)
        ]
        if matched:
            return any(p & mask & want == want for p in matched), "acl"
        perm = next((p for t, p, _ in acl if t == ACL_OTHER), 0)
        return perm & want == want, "other"
    if ident.uid == owner:
        return (mode >> 6) & want == want, "owner"
    if group in ident.groups:
        return (mode >> 3) & want == want, "group"
    return mode & want == want, "other"


def _colon_records(text: str | None) -> list[list[str]]:
    return [line.split(":") for line in (text or "").splitlines() if line and not line.startswith("#")]


def _ld_so_conf(root: SysRoot, rel: str, depth: int) -> list[str]:
    """Folders named by an ld.so.conf file and the files it includes (globs allowed), a few levels deep."""
    dirs: list[str] = []
    if depth > 3:
        return dirs
    for line in (root.read(rel) or "").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("include "):
            for inc in root.glob(line.split(None, 1)[1].strip()):
                dirs += _ld_so_conf(root, root.rel(inc), depth + 1)
        else:
            dirs.append(line)
    return dirs
