"""Can this user open a device node? (/dev/accel/accel0 for the NPU, /dev/dri/renderD128 for the GPU.)"""

from __future__ import annotations

from aipc.doctor.check import FAIL, OK, Check
from aipc.doctor.sysroot import SysRoot


def access_check(root: SysRoot, node: str, area: str, device: str, url: str) -> Check:
    """One check: the node's mode, owner and group, and whether this process can open it read-write; when it
    cannot, the fix names the group to join (or the session to restart when /etc/group already lists the user)."""
    ident = root.identity()
    acc = root.node_access(node, ident)
    name = f"{node} access"
    if acc is None:
        return Check(area, name, FAIL, f"cannot stat {node}", needed_by=(device,), url=url)
    who = ident.user or f"uid {ident.uid}"
    found = f"{acc.mode} {acc.owner}:{acc.group}"
    if acc.allowed:
        why = {
            "root": "you are root",
            "owner": "you own it",
            "group": f"you are in group {acc.group}",
            "acl": "an ACL grants you access",
            "other": "everyone may open it",
        }[acc.how]
        return Check(area, name, OK, f"{found}; {why}", needed_by=(device,))
    detail = f"{who} cannot open {node} read-write ({found})"
    group_bits_rw = acc.mode[4:6] == "rw"
    if acc.group == "root" or not group_bits_rw:
        fix = (
            f"give the node a group with access (the driver's udev rule does this), e.g. "
            f"sudo chown root:render {node} && sudo chmod g+rw {node}"
        )
    else:
        members = root.groups().get(acc.gid, ("", frozenset()))[1]
        if ident.user and ident.user in members:
            fix = (
                f"/etc/group already lists {ident.user} in {acc.group}, but this session predates it: "
                f"log out and back in (or run: newgrp {acc.group})"
            )
        else:
            user = ident.user or "$USER"
            fix = f"sudo usermod -a -G {acc.group} {user}, then log out and back in"
    return Check(area, name, FAIL, detail, fix=fix, url=url, needed_by=(device,))
